// Size limits of the CUDA kernels, in plain C++ (no CUDA headers, so CPU-only builds include it
// too). The kernels size their shared memory and registers by them (docs/DESIGN.md, "CUDA
// kernels"); the ATen glue refuses larger inputs; bindings.cpp exports them to the Python
// dispatch as attngan._C.cuda_limits. Each limit is written here only.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <string>

namespace attngan {

// Blocks along the grid's second axis: images (DAMSM) or samples (word attention).
constexpr int64_t kCudaMaxGridY = 65535;

// DAMSM: one warp lane per word; the embedding rows split over 8 warps of at most 32 rows.
constexpr int kDamsmMaxWords = 32;
constexpr int kDamsmMaxDim = 256;

// Word attention: a block keeps its caption [C, L_pad] and its grad_words accumulator in shared
// memory (2 * C * L_pad * 4 bytes <= 32 KiB), a pixel's L_pad scores in registers.
constexpr int kWordAttentionMaxWords = 64;
constexpr int kWordAttentionMaxChannels = 128;
constexpr int kWordAttentionMaxTile = 4096;  // C * L_pad

// L_pad: the smallest word count the kernels are compiled for (8, 16, 24, 32, 48, 64) that holds
// num_words words; -1 beyond 64.
constexpr int word_attention_padded_words(int64_t num_words) {
  for (int padded : {8, 16, 24, 32, 48, 64}) {
    if (num_words <= padded) return padded;
  }
  return -1;
}

// Why the CUDA word-attention kernels cannot take C channels and L words, or "" when they can.
inline std::string word_attention_cuda_unsupported(int64_t channels, int64_t num_words) {
  const int padded = word_attention_padded_words(num_words);
  if (channels <= kWordAttentionMaxChannels && padded > 0 &&
      channels * padded <= kWordAttentionMaxTile) {
    return "";
  }
  return "the CUDA kernel takes C <= " + std::to_string(kWordAttentionMaxChannels) + ", L <= " +
         std::to_string(kWordAttentionMaxWords) + " and C x L (rounded up to 8, 16, 24, 32, 48 "
         "or 64) <= " + std::to_string(kWordAttentionMaxTile) + ", got C = " +
         std::to_string(channels) + ", L = " + std::to_string(num_words);
}

}  // namespace attngan
