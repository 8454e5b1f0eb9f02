// Plain launchers of the CUDA word-attention kernels (word_attention_kernel.cu), callable from the
// ATen glue (word_attention.cpp) without either side seeing the other's headers: raw pointers,
// sizes, a dtype code and a cudaStream_t. All tensors are contiguous; sizes within limits.h.
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

#include "cuda/limits.h"

namespace attngan {

// Element type of query, words, context, attn and the gradients.
enum class WordAttentionDtype : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

// out = context [B, C, R] (or, with concat, [query; context] [B, 2C, R]) and, when attn is not
// null, attn [B, L, R] (exact zeros at padded words), from query [B, C, R], words [B, C, L] and
// lengths [B] (each in [1, L]).
cudaError_t word_attention_fwd_cuda(WordAttentionDtype dtype, const void* query, const void* words,
                                    const int64_t* lengths, void* out, void* attn, int batch,
                                    int channels, int num_words, int num_regions, bool concat,
                                    cudaStream_t stream);

// grad_query [B, C, R] (written whole) and grad_words_f32 [B, C, L] (fp32, must be zeroed by
// the caller: blocks add into it) from grad_out (the gradient of the forward's out, [B, 2C, R]
// with concat) and, when not null, grad_attn [B, L, R].
cudaError_t word_attention_bwd_cuda(WordAttentionDtype dtype, const void* grad_out,
                                    const void* grad_attn, const void* query, const void* words,
                                    const int64_t* lengths, void* grad_query, float* grad_words_f32,
                                    int batch, int channels, int num_words, int num_regions,
                                    bool concat, cudaStream_t stream);

}  // namespace attngan
