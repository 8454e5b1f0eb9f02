// Plain launchers of the CUDA DAMSM word-similarity kernels (damsm_kernel.cu), callable from the
// ATen glue (damsm.cpp) without either side seeing the other's headers: raw pointers, sizes, a
// dtype code and a cudaStream_t. All tensors are contiguous; sizes within limits.h.
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

#include "cuda/limits.h"

namespace attngan {

// Element type of words, regions, the saved context and the gradients.
enum class DamsmDtype : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

// Per-word fp32 scalars saved by the first backward pass: lse, A, B, Bw, delta (see the .cu).
constexpr int kDamsmStats = 5;

// S [Bi, Bc] (fp32) from words [Bc, D, L], lengths [Bc] (each in [1, L]) and regions [Bi, D, R].
cudaError_t damsm_word_similarity_fwd_cuda(DamsmDtype dtype, const void* words, const int64_t* lengths,
                                           const void* regions, float* sim, int num_imgs, int num_caps,
                                           int dim, int max_len, int num_regions, float gamma1,
                                           float gamma2, cudaStream_t stream);

// Gradients of sum(grad_s * S). Scratch the caller allocates: ctx [Bi, Bc, D, L] (input dtype),
// stats [Bi, Bc, kDamsmStats, kDamsmMaxWords] fp32, sim [Bi, Bc] fp32. grad_regions [Bi, D, R]
// (input dtype) is written whole. When words_partial is not null it receives fp32 partial word
// gradients [n_blocks, Bc, D, L] with n_blocks = ceil(Bi / images_per_block), to be summed over
// dim 0 by the caller.
cudaError_t damsm_word_similarity_bwd_cuda(DamsmDtype dtype, const float* grad_s, const void* words,
                                           const int64_t* lengths, const void* regions, float* sim,
                                           void* ctx, float* stats, void* grad_regions,
                                           float* words_partial, int images_per_block, int num_imgs,
                                           int num_caps, int dim, int max_len, int num_regions,
                                           float gamma1, float gamma2, cudaStream_t stream);

}  // namespace attngan
