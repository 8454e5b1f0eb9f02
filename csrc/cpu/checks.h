// Input checks shared by the C++ CPU kernels.
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <cstdint>
#include <vector>

namespace attngan {

// The caption lengths as int64 values, each checked to be in 1..L: the kernels index the words
// by them. The message is attngan.ops._checks.check_lengths's, so that a compiled graph, where
// only this check runs, reports what eager mode does.
inline std::vector<int64_t> lengths_in_range(const char* op, const at::Tensor& lengths, int64_t L) {
  const at::Tensor values = lengths.to(at::kLong).contiguous();
  const int64_t* first = values.data_ptr<int64_t>();
  std::vector<int64_t> out(first, first + values.numel());
  if (!out.empty()) {
    const auto [low, high] = std::minmax_element(out.begin(), out.end());
    TORCH_CHECK(*low >= 1 && *high <= L, op, ": every length must be in 1..L = 1..", L, ", got min ",
                *low, ", max ", *high, ": a caption needs at least one word, and lengths must be <= L, "
                "the word slots of words.shape[2]");
  }
  return out;
}

}  // namespace attngan
