// CUDA implementation of the word-attention ops (SPEC section 1, stages 2 and 3) for the
// dispatcher: checks the inputs, makes them contiguous, allocates the outputs, picks the element
// type and calls the plain launchers of word_attention_kernel.cu on the current stream. The op
// schemas are defined with the CPU kernels in csrc/cpu/word_attention.cpp; this file is compiled
// only in CUDA builds (the CPU torch wheel has no CUDA headers).
//
// Caption lengths are validated by attngan.ops.word_attention (1..L); checking them here would
// cost a device synchronisation per call, so the kernels only clamp them into [0, L].
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <limits>
#include <tuple>
#include <vector>

#include "cuda/word_attention_kernel.h"

namespace attngan {
namespace {

constexpr const char* kName = "word_attention (CUDA kernel)";

WordAttentionDtype dtype_code(at::ScalarType type) {
  TORCH_CHECK(type == at::kFloat || type == at::kHalf || type == at::kBFloat16, kName,
              ": query and words must be float32, float16 or bfloat16, got ", type,
              "; use impl='reference' for float64");
  return type == at::kFloat ? WordAttentionDtype::kFloat32
                            : (type == at::kHalf ? WordAttentionDtype::kFloat16
                                                 : WordAttentionDtype::kBFloat16);
}

void check_inputs(const at::Tensor& query, const at::Tensor& words, const at::Tensor& lengths) {
  TORCH_CHECK(query.dim() == 4 && words.dim() == 3 && lengths.dim() == 1, kName,
              ": expected query [B, C, H, W], words [B, C, L], lengths [B]; got ", query.sizes(), ", ",
              words.sizes(), ", ", lengths.sizes());
  TORCH_CHECK(query.is_cuda() && words.is_cuda() && lengths.is_cuda(), kName,
              ": the CUDA kernel needs CUDA tensors, got query on ", query.device(), ", words on ",
              words.device(), ", lengths on ", lengths.device());
  TORCH_CHECK(query.device() == words.device() && lengths.device() == query.device(), kName,
              ": query, words and lengths must be on one device");
  TORCH_CHECK(query.scalar_type() == words.scalar_type(), kName, ": query (", query.scalar_type(),
              ") and words (", words.scalar_type(), ") must share one dtype");
  dtype_code(query.scalar_type());
  TORCH_CHECK(lengths.scalar_type() == at::kLong || lengths.scalar_type() == at::kInt, kName,
              ": lengths must be int64 (or int32), got ", lengths.scalar_type());
  TORCH_CHECK(words.size(0) == query.size(0) && lengths.size(0) == query.size(0), kName,
              ": batch sizes differ (query ", query.size(0), ", words ", words.size(0), ", lengths ",
              lengths.size(0), ")");
  TORCH_CHECK(words.size(1) == query.size(1), kName, ": words have ", words.size(1),
              " channels but query has ", query.size(1));
  TORCH_CHECK(query.numel() > 0 && words.numel() > 0, kName, ": empty input (query ", query.sizes(),
              ", words ", words.sizes(), "); every size must be at least 1");
  const int64_t channels = words.size(1), num_words = words.size(2);
  const int padded = num_words <= kWordAttentionMaxWords
                         ? word_attention_padded_words(static_cast<int>(num_words)) : -1;
  TORCH_CHECK(padded > 0 && channels <= kWordAttentionMaxChannels &&
                  channels * padded <= kWordAttentionMaxTile,
              kName, ": C = ", channels, ", L = ", num_words, " is beyond the kernel (C <= ",
              kWordAttentionMaxChannels, ", L <= ", kWordAttentionMaxWords, ", C * L rounded up to 8 <= ",
              kWordAttentionMaxTile, "); use impl='triton' or 'reference'");
  TORCH_CHECK(query.size(0) <= 65535 && query.size(2) * query.size(3) <= std::numeric_limits<int>::max(),
              kName, ": at most 65535 samples and 2^31 regions per launch, got ", query.sizes());
}

void check_launch(cudaError_t err) {
  TORCH_CHECK(err == cudaSuccess, kName, ": CUDA kernel launch failed: ", cudaGetErrorString(err));
}

std::tuple<at::Tensor, at::Tensor> forward(const at::Tensor& query, const at::Tensor& words,
                                           const at::Tensor& lengths, bool return_attn,
                                           bool concat) {
  check_inputs(query, words, lengths);
  const c10::cuda::CUDAGuard guard(query.device());
  const at::Tensor q = query.contiguous(), w = words.contiguous();
  const at::Tensor len = lengths.to(at::kLong).contiguous();
  const int64_t batch = q.size(0), channels = q.size(1), height = q.size(2), width = q.size(3);
  const int64_t num_words = w.size(2);
  at::Tensor out = at::empty({batch, concat ? 2 * channels : channels, height, width}, q.options());
  at::Tensor attn = return_attn ? at::empty({batch, num_words, height, width}, q.options())
                                : at::empty({0}, q.options());
  check_launch(word_attention_fwd_cuda(
      dtype_code(q.scalar_type()), q.data_ptr(), w.data_ptr(), len.data_ptr<int64_t>(),
      out.data_ptr(), return_attn ? attn.data_ptr() : nullptr, static_cast<int>(batch),
      static_cast<int>(channels), static_cast<int>(num_words), static_cast<int>(height * width),
      concat, at::cuda::getCurrentCUDAStream()));
  return {out, attn};
}

std::tuple<at::Tensor, at::Tensor> backward(const at::Tensor& grad_out,
                                            const c10::optional<at::Tensor>& grad_attn,
                                            const at::Tensor& query, const at::Tensor& words,
                                            const at::Tensor& lengths, bool concat) {
  check_inputs(query, words, lengths);
  const int64_t batch = query.size(0), channels = query.size(1);
  const int64_t height = query.size(2), width = query.size(3);
  const std::vector<int64_t> out_shape{batch, concat ? 2 * channels : channels, height, width};
  TORCH_CHECK(grad_out.sizes() == at::IntArrayRef(out_shape) && grad_out.device() == query.device(),
              kName, ": the output gradient must be ", at::IntArrayRef(out_shape), " on ",
              query.device(), ", got ",
              grad_out.sizes(), " on ", grad_out.device());
  const c10::cuda::CUDAGuard guard(query.device());
  const at::Tensor q = query.contiguous(), w = words.contiguous();
  const at::Tensor len = lengths.to(at::kLong).contiguous();
  const at::Tensor go = grad_out.to(q.scalar_type()).contiguous();
  const int64_t num_words = w.size(2);
  at::Tensor ga;
  if (grad_attn.has_value() && grad_attn->defined() && grad_attn->numel() > 0) {
    TORCH_CHECK(grad_attn->sizes() == at::IntArrayRef({batch, num_words, height, width}) &&
                    grad_attn->device() == q.device(),
                kName, ": grad_attn must be [B, L, H, W] on ", q.device(), ", got ", grad_attn->sizes());
    ga = grad_attn->to(q.scalar_type()).contiguous();
  }
  at::Tensor grad_query = at::empty(q.sizes(), q.options());
  at::Tensor grad_words = at::zeros({batch, channels, num_words}, q.options().dtype(at::kFloat));
  check_launch(word_attention_bwd_cuda(
      dtype_code(q.scalar_type()), go.data_ptr(), ga.defined() ? ga.data_ptr() : nullptr, q.data_ptr(),
      w.data_ptr(), len.data_ptr<int64_t>(), grad_query.data_ptr(), grad_words.data_ptr<float>(),
      static_cast<int>(batch), static_cast<int>(channels), static_cast<int>(num_words),
      static_cast<int>(height * width), concat, at::cuda::getCurrentCUDAStream()));
  return {grad_query, grad_words.to(q.scalar_type())};
}

}  // namespace
}  // namespace attngan

TORCH_LIBRARY_IMPL(attngan_C, CUDA, m) {
  m.impl("word_attention_fwd", &attngan::forward);
  m.impl("word_attention_bwd", &attngan::backward);
}
