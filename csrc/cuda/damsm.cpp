// The CUDA DAMSM word-similarity ops for the dispatcher (schemas in csrc/registration.cpp): makes
// the inputs contiguous, allocates outputs and scratch, picks the element type and calls the
// plain launchers of damsm_kernel.cu on the current stream. Compiled only in CUDA builds.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>

#include "cuda/damsm_kernel.h"

namespace attngan {
namespace {

DamsmDtype dtype_code(at::ScalarType type) {
  return type == at::kFloat ? DamsmDtype::kFloat32
                            : (type == at::kHalf ? DamsmDtype::kFloat16 : DamsmDtype::kBFloat16);
}

// The kernels' preconditions (attngan.ops.damsm validates the inputs before any backend runs;
// these guard memory when the op is called directly). The lengths' values are not read (that
// would wait for the GPU): the kernels clamp them into [1, L].
void check_inputs(const char* name, const at::Tensor& words, const at::Tensor& lengths,
                  const at::Tensor& regions) {
  TORCH_CHECK(words.dim() == 3 && regions.dim() == 3 && lengths.dim() == 1 &&
                  lengths.size(0) == words.size(0) && regions.size(1) == words.size(1) &&
                  words.numel() > 0 && regions.numel() > 0,
              name, ": expected words [Bc, D, L], lengths [Bc], regions [Bi, D, R], none empty; got ",
              words.sizes(), ", ", lengths.sizes(), ", ", regions.sizes());
  TORCH_CHECK(words.is_cuda() && regions.device() == words.device() && lengths.device() == words.device(),
              name, ": words, lengths and regions must be on one CUDA device");
  const auto type = words.scalar_type();
  TORCH_CHECK((type == at::kFloat || type == at::kHalf || type == at::kBFloat16) &&
                  regions.scalar_type() == type &&
                  (lengths.scalar_type() == at::kLong || lengths.scalar_type() == at::kInt),
              name, ": words and regions of one dtype of float32, float16 and bfloat16 and integer "
              "lengths expected, got ", type, ", ", regions.scalar_type(), ", ", lengths.scalar_type());
  TORCH_CHECK(words.size(1) <= kDamsmMaxDim && words.size(2) <= kDamsmMaxWords &&
                  regions.size(0) <= kCudaMaxGridY,
              name, ": the CUDA kernel takes D <= ", kDamsmMaxDim, ", L <= ", kDamsmMaxWords,
              " and at most ", kCudaMaxGridY, " images, got D = ", words.size(1), ", L = ", words.size(2),
              ", ", regions.size(0), " images");
  TORCH_CHECK(regions.size(2) <= (1 << 30) && words.size(0) <= (1 << 30), name,
              ": too many regions or captions for one launch");
}

void check_launch(const char* name, cudaError_t err) {
  TORCH_CHECK(err == cudaSuccess, name, ": CUDA kernel launch failed: ", cudaGetErrorString(err));
}

at::Tensor damsm_word_similarity_fwd(const at::Tensor& words, const at::Tensor& lengths,
                                     const at::Tensor& regions, double gamma1, double gamma2) {
  const char* name = "damsm_word_similarity_fwd";
  check_inputs(name, words, lengths, regions);
  const c10::cuda::CUDAGuard guard(words.device());
  const at::Tensor w = words.contiguous(), r = regions.contiguous();
  const at::Tensor len = lengths.to(at::kLong).contiguous();
  const int64_t num_caps = w.size(0), dim = w.size(1), max_len = w.size(2);
  const int64_t num_imgs = r.size(0), num_regions = r.size(2);
  at::Tensor sim = at::empty({num_imgs, num_caps}, w.options().dtype(at::kFloat));
  check_launch(name, damsm_word_similarity_fwd_cuda(
      dtype_code(w.scalar_type()), w.data_ptr(), len.data_ptr<int64_t>(), r.data_ptr(),
      sim.data_ptr<float>(), static_cast<int>(num_imgs), static_cast<int>(num_caps), static_cast<int>(dim),
      static_cast<int>(max_len), static_cast<int>(num_regions), static_cast<float>(gamma1),
      static_cast<float>(gamma2), at::cuda::getCurrentCUDAStream()));
  return sim;
}

std::tuple<at::Tensor, at::Tensor> damsm_word_similarity_bwd(const at::Tensor& grad_s, const at::Tensor& words,
                                                             const at::Tensor& lengths,
                                                             const at::Tensor& regions, double gamma1,
                                                             double gamma2, bool need_words_grad) {
  const char* name = "damsm_word_similarity_bwd";
  check_inputs(name, words, lengths, regions);
  TORCH_CHECK(grad_s.dim() == 2 && grad_s.size(0) == regions.size(0) && grad_s.size(1) == words.size(0) &&
                  grad_s.device() == words.device(),
              name, ": grad_s must be [Bi, Bc] = [", regions.size(0), ", ", words.size(0), "] on ",
              words.device(), ", got ", grad_s.sizes(), " on ", grad_s.device());
  const c10::cuda::CUDAGuard guard(words.device());
  const at::Tensor w = words.contiguous(), r = regions.contiguous();
  const at::Tensor len = lengths.to(at::kLong).contiguous();
  const at::Tensor g = grad_s.to(at::kFloat).contiguous();   // incoming grads may be stride-0 views
  const int64_t num_caps = w.size(0), dim = w.size(1), max_len = w.size(2);
  const int64_t num_imgs = r.size(0), num_regions = r.size(2);
  at::Tensor sim = at::empty({num_imgs, num_caps}, w.options().dtype(at::kFloat));
  at::Tensor ctx = at::empty({num_imgs, num_caps, dim, max_len}, w.options());
  at::Tensor stats =
      at::empty({num_imgs, num_caps, kDamsmStats, kDamsmMaxWords}, w.options().dtype(at::kFloat));
  at::Tensor grad_regions = at::empty_like(r);
  // enough word-gradient blocks to fill the GPU (about two per SM), few partials to sum
  const int64_t sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  const int64_t wanted =
      std::max<int64_t>(1, std::min<int64_t>(num_imgs, (2 * sms + num_caps - 1) / num_caps));
  const int64_t images_per_block = (num_imgs + wanted - 1) / wanted;
  const int64_t n_blocks = (num_imgs + images_per_block - 1) / images_per_block;
  at::Tensor partial;
  if (need_words_grad) partial = at::empty({n_blocks, num_caps, dim, max_len}, w.options().dtype(at::kFloat));
  check_launch(name, damsm_word_similarity_bwd_cuda(
      dtype_code(w.scalar_type()), g.data_ptr<float>(), w.data_ptr(), len.data_ptr<int64_t>(),
      r.data_ptr(), sim.data_ptr<float>(), ctx.data_ptr(), stats.data_ptr<float>(), grad_regions.data_ptr(),
      need_words_grad ? partial.data_ptr<float>() : nullptr, static_cast<int>(images_per_block),
      static_cast<int>(num_imgs), static_cast<int>(num_caps), static_cast<int>(dim),
      static_cast<int>(max_len), static_cast<int>(num_regions), static_cast<float>(gamma1),
      static_cast<float>(gamma2), at::cuda::getCurrentCUDAStream()));
  at::Tensor grad_words = need_words_grad ? partial.sum(0).to(w.scalar_type()) : at::empty({0}, w.options());
  return {grad_words, grad_regions};
}

}  // namespace
}  // namespace attngan

TORCH_LIBRARY_IMPL(attngan_C, CUDA, m) {
  m.impl("damsm_word_similarity_fwd", &attngan::damsm_word_similarity_fwd);
  m.impl("damsm_word_similarity_bwd", &attngan::damsm_word_similarity_bwd);
}
