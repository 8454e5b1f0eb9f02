// The CUDA word-attention ops for the dispatcher (schemas in csrc/registration.cpp): makes the
// inputs contiguous, allocates the outputs, picks the element type and calls the plain launchers
// of word_attention_kernel.cu on the current stream. Compiled only in CUDA builds.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <limits>
#include <string>
#include <tuple>
#include <vector>

#include "cuda/word_attention_kernel.h"

namespace attngan {
namespace {

constexpr const char* kName = "word_attention (CUDA kernel)";

WordAttentionDtype dtype_code(at::ScalarType type) {
  return type == at::kFloat ? WordAttentionDtype::kFloat32
                            : (type == at::kHalf ? WordAttentionDtype::kFloat16
                                                 : WordAttentionDtype::kBFloat16);
}

// The kernels' preconditions (attngan.ops.word_attention validates the inputs before any backend
// runs; these guard memory when the op is called directly). The lengths' values are not read
// (that would wait for the GPU): the kernels clamp them into [1, L].
void check_inputs(const at::Tensor& query, const at::Tensor& words, const at::Tensor& lengths) {
  TORCH_CHECK(query.dim() == 4 && words.dim() == 3 && lengths.dim() == 1 &&
                  words.size(0) == query.size(0) && lengths.size(0) == query.size(0) &&
                  words.size(1) == query.size(1) && query.numel() > 0 && words.numel() > 0,
              kName, ": expected query [B, C, H, W], words [B, C, L], lengths [B], none empty; got ",
              query.sizes(), ", ", words.sizes(), ", ", lengths.sizes());
  TORCH_CHECK(query.is_cuda() && words.device() == query.device() && lengths.device() == query.device(),
              kName, ": query, words and lengths must be on one CUDA device");
  const auto type = query.scalar_type();
  TORCH_CHECK((type == at::kFloat || type == at::kHalf || type == at::kBFloat16) &&
                  words.scalar_type() == type &&
                  (lengths.scalar_type() == at::kLong || lengths.scalar_type() == at::kInt),
              kName, ": query and words of one dtype of float32, float16 and bfloat16 and integer "
              "lengths expected, got ", type, ", ", words.scalar_type(), ", ", lengths.scalar_type());
  const std::string unsupported = word_attention_cuda_unsupported(words.size(1), words.size(2));
  TORCH_CHECK(unsupported.empty(), kName, ": ", unsupported);
  TORCH_CHECK(query.size(0) <= kCudaMaxGridY && query.size(2) * query.size(3) <= std::numeric_limits<int>::max(),
              kName, ": at most ", kCudaMaxGridY, " samples and 2^31 regions per launch, got ", query.sizes());
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
