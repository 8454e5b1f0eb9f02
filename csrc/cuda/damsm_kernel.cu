// DAMSM word-level similarity as CUDA kernels, forward and backward: the math and the backward
// terms (A, B, Bw, delta) of docs/DESIGN.md, "DAMSM word similarity"; pure CUDA, no torch headers
// (damsm.cpp is the glue).
//
// Mapping: blocks of 256 threads = 8 warps; lane t of a warp owns word t (L <= 32), the embedding
// rows d are split over the warps (d = warp + 8 k, D <= 256: at most 32 register accumulators per
// thread); regions stream in tiles of 32 through shared memory, each warp scoring 4 of them so
// that one shared-memory read of a word feeds 4 FMAs. All arithmetic is fp32 FMA on the CUDA
// cores (inputs converted on load; no tensor cores: the portable fallback behind Triton).
// - fwd kernel: one block per (caption i, image j); online softmax over region tiles. With grad_s
//   it is the backward's first pass and saves the context c [Bi, Bc, D, L] (input dtype) and the
//   per-word scalars (lse, A, B, Bw, delta).
// - bwd regions kernel: one block per (region tile, image j) keeps its regions in shared memory
//   and loops over all captions, summing in registers (no atomics).
// - bwd words kernel: one block per (caption i, block of images) sums over its images and region
//   tiles in registers and writes an fp32 partial; the caller sums the partials (deterministic).
#include "cuda/damsm_kernel.h"

#include <cmath>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace attngan {
namespace {

constexpr int kWords = kDamsmMaxWords;   // word slots = warp lanes
constexpr int kTile = 32;                // regions per shared-memory tile
constexpr int kWarps = 8;
constexpr int kThreads = kWarps * 32;
constexpr int kRows = kDamsmMaxDim / kWarps;   // embedding rows per thread
constexpr int kTileRows = kTile / kWarps;      // tile regions per warp (r = warp + 8 k)
constexpr int kPad = kWords + 1;         // row stride of [region][word] tiles read down a column
constexpr float kEps = 1e-8f;
constexpr unsigned kFull = 0xffffffffu;

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T> __device__ __forceinline__ T from_float(float x);
template <> __device__ __forceinline__ float from_float<float>(float x) { return x; }
template <> __device__ __forceinline__ __half from_float<__half>(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

__device__ __forceinline__ float warp_max(float x) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) x = fmaxf(x, __shfl_xor_sync(kFull, x, offset));
  return x;
}

__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) x += __shfl_xor_sync(kFull, x, offset);
  return x;
}

// Softmax over the words of one region (the lanes of a warp, Eq. 8); padded words get 0.
__device__ __forceinline__ float word_softmax(float s, bool word_ok) {
  const float x = word_ok ? s : -INFINITY;
  const float x_max = warp_max(x);   // every lane takes part in each shuffle
  const float p = word_ok ? __expf(x - x_max) : 0.f;
  return p / warp_sum(p);
}

__device__ __forceinline__ int clamp_length(int64_t n, int max_len) {
  return static_cast<int>(n < 1 ? 1 : (n > max_len ? max_len : n));
}

// Region tile [D][kTile] of one image into shared memory as fp32 (zeros past R); lane = region.
template <typename T>
__device__ __forceinline__ void load_region_tile(float* v_s, const T* v_g, int r0, int dim,
                                                 int num_regions, int warp, int lane) {
  const bool ok = r0 + lane < num_regions;
  for (int d = warp; d < dim; d += kWarps)
    v_s[d * kTile + lane] = ok ? to_float(v_g[static_cast<int64_t>(d) * num_regions + r0 + lane]) : 0.f;
}

// s[r, t] = v_r . e_t and gA[r, t] = v_r . gc_t for the tile regions r = warp + 8 k of this warp
// and word t = lane; each e_t, gc_t element read from shared memory serves all kTileRows regions.
__device__ __forceinline__ void dual_dot(const float* v_s, const float* e_s, const float* gc_s, int dim,
                                         int warp, int lane, float (&s)[kTileRows],
                                         float (&g_alpha)[kTileRows]) {
#pragma unroll
  for (int k = 0; k < kTileRows; ++k) s[k] = g_alpha[k] = 0.f;
  for (int d = 0; d < dim; ++d) {
    const float e = e_s[d * kWords + lane], gc = gc_s[d * kWords + lane];
#pragma unroll
    for (int k = 0; k < kTileRows; ++k) {
      const float v = v_s[d * kTile + warp + kWarps * k];   // broadcast within the warp
      s[k] = fmaf(v, e, s[k]);
      g_alpha[k] = fmaf(v, gc, g_alpha[k]);
    }
  }
}

// Per-word scalars of one pair saved by the first backward pass.
struct WordStats {
  float lse, a, b, bw, delta;
};

__device__ __forceinline__ WordStats load_stats(const float* stats, int64_t pair, int lane) {
  const float* st = stats + pair * kDamsmStats * kWords + lane;
  return {st[0], st[kWords], st[2 * kWords], st[3 * kWords], st[4 * kWords]};
}

// Region attention a and score gradient gs of region r (tile row) and word t = lane.
__device__ __forceinline__ void pair_backward(float s, float g_alpha, bool word_ok, bool region_ok,
                                              const WordStats& st, float gamma1, float& alpha, float& gs) {
  const float p = word_softmax(s, word_ok);
  alpha = (word_ok && region_ok) ? __expf(gamma1 * p - st.lse) : 0.f;
  const float g_p = gamma1 * alpha * (g_alpha - st.delta);
  gs = p * (g_p - warp_sum(p * g_p));
}

// Backward of the attention for the tile regions r = warp + 8 k of this warp and word t = lane:
// a (only where alpha_s is given) and gs written to [region][word] shared tiles of row stride
// `stride`. n = valid words of the caption, r0 = first region of the tile.
__device__ __forceinline__ void tile_backward(const float* v_s, const float* e_s, const float* gc_s,
                                              int dim, int warp, int lane, int n, int r0,
                                              int num_regions, const WordStats& st, float gamma1,
                                              float* alpha_s, float* gs_s, int stride) {
  float s[kTileRows], g_alpha[kTileRows];
  dual_dot(v_s, e_s, gc_s, dim, warp, lane, s, g_alpha);
#pragma unroll
  for (int k = 0; k < kTileRows; ++k) {
    const int r = warp + kWarps * k;
    float alpha, gs;
    pair_backward(s[k], g_alpha[k], lane < n, r0 + r < num_regions, st, gamma1, alpha, gs);
    if (alpha_s != nullptr) alpha_s[r * stride + lane] = alpha;
    gs_s[r * stride + lane] = gs;
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
damsm_fwd_kernel(const T* __restrict__ words, const int64_t* __restrict__ lengths,
                 const T* __restrict__ regions, float* __restrict__ sim, const float* __restrict__ grad_s,
                 T* __restrict__ ctx, float* __restrict__ stats, int num_caps, int dim, int max_len,
                 int num_regions, float gamma1, float gamma2) {
  extern __shared__ float smem[];
  float* e_s = smem;                      // [D][kWords]
  float* v_s = e_s + dim * kWords;        // [D][kTile]
  float* a_s = v_s + dim * kTile;         // [kTile][kWords]: gamma1 P, then exp(gamma1 P - m)
  __shared__ float scale_s[kWords];      // per-tile rescale of the context accumulator
  __shared__ float stat_s[2][kWords];     // final running sum and max of the region softmax
  __shared__ float red_s[3][kWarps][kWords];
  const int cap = blockIdx.x, img = blockIdx.y;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int n = clamp_length(lengths[cap], max_len);
  const bool word_ok = lane < n;
  const int64_t pair = static_cast<int64_t>(img) * num_caps + cap;
  const T* e_g = words + static_cast<int64_t>(cap) * dim * max_len;
  const T* v_g = regions + static_cast<int64_t>(img) * dim * num_regions;
  // padded word slots are never read, so garbage or NaN there reaches no output
  for (int d = warp; d < dim; d += kWarps)
    e_s[d * kWords + lane] = word_ok ? to_float(e_g[static_cast<int64_t>(d) * max_len + lane]) : 0.f;

  float acc[kRows];
#pragma unroll
  for (int k = 0; k < kRows; ++k) acc[k] = 0.f;
  float m = -INFINITY, l = 0.f;   // running max / sum of word `lane`, kept by warp 0
  for (int r0 = 0; r0 < num_regions; r0 += kTile) {
    __syncthreads();              // previous tile consumed
    load_region_tile(v_s, v_g, r0, dim, num_regions, warp, lane);
    __syncthreads();
    float s[kTileRows];
#pragma unroll
    for (int k = 0; k < kTileRows; ++k) s[k] = 0.f;
    for (int d = 0; d < dim; ++d) {
      const float e = e_s[d * kWords + lane];
#pragma unroll
      for (int k = 0; k < kTileRows; ++k) s[k] = fmaf(v_s[d * kTile + warp + kWarps * k], e, s[k]);
    }
#pragma unroll
    for (int k = 0; k < kTileRows; ++k) {
      const int r = warp + kWarps * k;
      const float p = word_softmax(s[k], word_ok);
      // padded regions leave the softmax over regions; padded words keep a finite value
      a_s[r * kWords + lane] = (r0 + r < num_regions) ? gamma1 * p : -INFINITY;
    }
    __syncthreads();
    if (warp == 0) {
      float m_new = m;
      for (int r = 0; r < kTile; ++r) m_new = fmaxf(m_new, a_s[r * kWords + lane]);
      float sum = 0.f;
      for (int r = 0; r < kTile; ++r) {
        const float pe = __expf(a_s[r * kWords + lane] - m_new);
        a_s[r * kWords + lane] = pe;
        sum += pe;
      }
      const float scale = __expf(m - m_new);   // 0 on the first tile (m = -inf)
      l = l * scale + sum;
      m = m_new;
      scale_s[lane] = scale;
    }
    __syncthreads();
    const float scale = scale_s[lane];
#pragma unroll
    for (int k = 0; k < kRows; ++k) acc[k] *= scale;
    // one read of each attention weight serves all rows of the thread; rows d >= D stay unused
    const int tile = min(kTile, num_regions - r0);
    for (int r = 0; r < tile; ++r) {
      const float a = a_s[r * kWords + lane];
#pragma unroll
      for (int k = 0; k < kRows; ++k) {
        const int d = warp + kWarps * k;
        if (d < dim) acc[k] = fmaf(v_s[d * kTile + r], a, acc[k]);
      }
    }
  }
  if (warp == 0) {
    stat_s[0][lane] = l;
    stat_s[1][lane] = m;
  }
  __syncthreads();
  const float inv_l = 1.f / stat_s[0][lane];
  float ec = 0.f, ee = 0.f, cc = 0.f;
#pragma unroll
  for (int k = 0; k < kRows; ++k) {
    const int d = warp + kWarps * k;
    if (d < dim) {
      const float c = acc[k] * inv_l;
      const float e = e_s[d * kWords + lane];
      acc[k] = c;
      ec = fmaf(e, c, ec);
      ee = fmaf(e, e, ee);
      cc = fmaf(c, c, cc);
    }
  }
  red_s[0][warp][lane] = ec;
  red_s[1][warp][lane] = ee;
  red_s[2][warp][lane] = cc;
  __syncthreads();
  if (warp == 0) {
    ec = ee = cc = 0.f;
    for (int w = 0; w < kWarps; ++w) {
      ec += red_s[0][w][lane];
      ee += red_s[1][w][lane];
      cc += red_s[2][w][lane];
    }
    const float norm = sqrtf(ee) * sqrtf(cc);
    const bool clamped = norm < kEps;
    const float norm_c = fmaxf(norm, kEps);
    const float cosine = ec / norm_c;
    const float z = word_ok ? gamma2 * cosine : -INFINITY;
    const float z_max = warp_max(z);
    const float ez = word_ok ? __expf(z - z_max) : 0.f;
    const float total = warp_sum(ez);
    if (lane == 0) sim[pair] = z_max + __logf(total);
    if (grad_s != nullptr) {
      const float g_r = grad_s[pair] * gamma2 * ez / total;   // 0 on padded words
      const float a = g_r / norm_c;
      const float b = clamped ? 0.f : -g_r * cosine / cc;
      const float bw = clamped ? 0.f : -g_r * cosine / ee;
      float* st = stats + pair * kDamsmStats * kWords + lane;
      st[0] = stat_s[1][lane] + __logf(stat_s[0][lane]);
      st[kWords] = a;
      st[2 * kWords] = b;
      st[3 * kWords] = bw;
      st[4 * kWords] = a * ec + b * cc;   // gc . c
    }
  }
  if (grad_s != nullptr && word_ok) {
    T* c_g = ctx + pair * dim * max_len;
#pragma unroll
    for (int k = 0; k < kRows; ++k) {
      const int d = warp + kWarps * k;
      if (d < dim) c_g[static_cast<int64_t>(d) * max_len + lane] = from_float<T>(acc[k]);
    }
  }
}

// Words of caption `cap` into e_s and gc = A e + B c of pair `pair` into gc_s (lane = word);
// returns the caption length. With direct != null also adds A c + Bw e to direct[k].
template <typename T>
__device__ __forceinline__ int load_pair(float* e_s, float* gc_s, float* direct, const T* words,
                                         const int64_t* lengths, const T* ctx, const WordStats& st,
                                         int cap, int64_t pair, int dim, int max_len, int warp, int lane) {
  const int n = clamp_length(lengths[cap], max_len);
  const bool word_ok = lane < n;
  const T* e_g = words + static_cast<int64_t>(cap) * dim * max_len;
  const T* c_g = ctx + pair * dim * max_len;
#pragma unroll
  for (int k = 0; k < kRows; ++k) {
    const int d = warp + kWarps * k;
    if (d < dim) {
      const int64_t at = static_cast<int64_t>(d) * max_len + lane;
      const float e = word_ok ? to_float(e_g[at]) : 0.f;
      const float c = word_ok ? to_float(c_g[at]) : 0.f;
      e_s[d * kWords + lane] = e;
      gc_s[d * kWords + lane] = st.a * e + st.b * c;
      if (direct != nullptr) direct[k] += st.a * c + st.bw * e;
    }
  }
  return n;
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
damsm_bwd_regions_kernel(const T* __restrict__ words, const int64_t* __restrict__ lengths,
                         const T* __restrict__ regions, const T* __restrict__ ctx,
                         const float* __restrict__ stats, T* __restrict__ grad_regions, int num_caps,
                         int dim, int max_len, int num_regions, float gamma1) {
  extern __shared__ float smem[];
  float* v_s = smem;                      // [D][kTile]
  float* e_s = v_s + dim * kTile;         // [D][kWords]
  float* gc_s = e_s + dim * kWords;       // [D][kWords]
  float* alpha_s = gc_s + dim * kWords;   // [kTile][kPad]
  float* gs_s = alpha_s + kTile * kPad;   // [kTile][kPad]
  const int r0 = blockIdx.x * kTile, img = blockIdx.y;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const T* v_g = regions + static_cast<int64_t>(img) * dim * num_regions;
  load_region_tile(v_s, v_g, r0, dim, num_regions, warp, lane);
  float acc[kRows];   // grad of region r0 + lane, rows d = warp + 8 k
#pragma unroll
  for (int k = 0; k < kRows; ++k) acc[k] = 0.f;
  for (int cap = 0; cap < num_caps; ++cap) {
    const int64_t pair = static_cast<int64_t>(img) * num_caps + cap;
    const WordStats st = load_stats(stats, pair, lane);
    __syncthreads();   // previous caption consumed (and the region tile loaded)
    const int n = load_pair(e_s, gc_s, static_cast<float*>(nullptr), words, lengths, ctx, st, cap,
                            pair, dim, max_len, warp, lane);
    __syncthreads();
    tile_backward(v_s, e_s, gc_s, dim, warp, lane, n, r0, num_regions, st, gamma1, alpha_s, gs_s,
                  kPad);
    __syncthreads();
    for (int t = 0; t < n; ++t) {
      const float alpha = alpha_s[lane * kPad + t], gs = gs_s[lane * kPad + t];
#pragma unroll
      for (int k = 0; k < kRows; ++k) {
        const int d = warp + kWarps * k;
        if (d < dim) acc[k] = fmaf(gc_s[d * kWords + t], alpha, fmaf(e_s[d * kWords + t], gs, acc[k]));
      }
    }
  }
  if (r0 + lane < num_regions) {
    T* g = grad_regions + static_cast<int64_t>(img) * dim * num_regions + r0 + lane;
#pragma unroll
    for (int k = 0; k < kRows; ++k) {
      const int d = warp + kWarps * k;
      if (d < dim) g[static_cast<int64_t>(d) * num_regions] = from_float<T>(acc[k]);
    }
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
damsm_bwd_words_kernel(const T* __restrict__ words, const int64_t* __restrict__ lengths,
                       const T* __restrict__ regions, const T* __restrict__ ctx,
                       const float* __restrict__ stats, float* __restrict__ partial, int num_imgs,
                       int num_caps, int dim, int max_len, int num_regions, float gamma1,
                       int images_per_block) {
  extern __shared__ float smem[];
  float* v_s = smem;                      // [D][kTile]
  float* e_s = v_s + dim * kTile;         // [D][kWords]
  float* gc_s = e_s + dim * kWords;       // [D][kWords]
  float* gs_s = gc_s + dim * kWords;      // [kTile][kWords]
  const int cap = blockIdx.x, blk = blockIdx.y;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  float acc[kRows];   // grad of word lane, rows d = warp + 8 k
#pragma unroll
  for (int k = 0; k < kRows; ++k) acc[k] = 0.f;
  const int img_end = min(num_imgs, (blk + 1) * images_per_block);
  for (int img = blk * images_per_block; img < img_end; ++img) {
    const int64_t pair = static_cast<int64_t>(img) * num_caps + cap;
    const WordStats st = load_stats(stats, pair, lane);
    __syncthreads();   // previous image consumed
    const int n = load_pair(e_s, gc_s, acc, words, lengths, ctx, st, cap, pair, dim, max_len, warp, lane);
    const T* v_g = regions + static_cast<int64_t>(img) * dim * num_regions;
    for (int r0 = 0; r0 < num_regions; r0 += kTile) {
      __syncthreads();   // previous tile consumed (and e_s, gc_s written)
      load_region_tile(v_s, v_g, r0, dim, num_regions, warp, lane);
      __syncthreads();
      tile_backward(v_s, e_s, gc_s, dim, warp, lane, n, r0, num_regions, st, gamma1, nullptr,
                    gs_s, kWords);
      __syncthreads();
      const int tile = min(kTile, num_regions - r0);
      for (int r = 0; r < tile; ++r) {
        const float gs = gs_s[r * kWords + lane];
#pragma unroll
        for (int k = 0; k < kRows; ++k) {
          const int d = warp + kWarps * k;
          if (d < dim) acc[k] = fmaf(v_s[d * kTile + r], gs, acc[k]);
        }
      }
    }
  }
  if (lane < max_len) {   // padded slots receive their exact zero
    float* out = partial + (static_cast<int64_t>(blk) * num_caps + cap) * dim * max_len + lane;
#pragma unroll
    for (int k = 0; k < kRows; ++k) {
      const int d = warp + kWarps * k;
      if (d < dim) out[static_cast<int64_t>(d) * max_len] = acc[k];
    }
  }
}

// Dynamic shared memory of each kernel, in bytes.
size_t fwd_smem(int dim) { return sizeof(float) * (dim * (kWords + kTile) + kTile * kWords); }
size_t bwd_regions_smem(int dim) { return sizeof(float) * (dim * (kTile + 2 * kWords) + 2 * kTile * kPad); }
size_t bwd_words_smem(int dim) { return sizeof(float) * (dim * (kTile + 2 * kWords) + kTile * kWords); }

template <typename Kernel>
cudaError_t allow_smem(Kernel kernel, size_t bytes) {
  return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes));
}

template <typename T>
cudaError_t launch_fwd(const float* grad_s, const T* words, const int64_t* lengths, const T* regions,
                       float* sim, T* ctx, float* stats, int num_imgs, int num_caps, int dim, int max_len,
                       int num_regions, float gamma1, float gamma2, cudaStream_t stream) {
  const size_t smem = fwd_smem(dim);
  cudaError_t err = allow_smem(damsm_fwd_kernel<T>, smem);
  if (err != cudaSuccess) return err;
  // captions fastest: concurrent blocks share one image's regions in L2
  damsm_fwd_kernel<T><<<dim3(num_caps, num_imgs), kThreads, smem, stream>>>(
      words, lengths, regions, sim, grad_s, ctx, stats, num_caps, dim, max_len, num_regions, gamma1, gamma2);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_bwd(const float* grad_s, const T* words, const int64_t* lengths, const T* regions,
                       float* sim, T* ctx, float* stats, T* grad_regions, float* words_partial,
                       int images_per_block, int num_imgs, int num_caps, int dim, int max_len,
                       int num_regions, float gamma1, float gamma2, cudaStream_t stream) {
  cudaError_t err = launch_fwd<T>(grad_s, words, lengths, regions, sim, ctx, stats, num_imgs, num_caps,
                                  dim, max_len, num_regions, gamma1, gamma2, stream);
  if (err != cudaSuccess) return err;
  const size_t smem_r = bwd_regions_smem(dim);
  if ((err = allow_smem(damsm_bwd_regions_kernel<T>, smem_r)) != cudaSuccess) return err;
  const int tiles = (num_regions + kTile - 1) / kTile;
  damsm_bwd_regions_kernel<T><<<dim3(tiles, num_imgs), kThreads, smem_r, stream>>>(
      words, lengths, regions, ctx, stats, grad_regions, num_caps, dim, max_len, num_regions, gamma1);
  if ((err = cudaGetLastError()) != cudaSuccess || words_partial == nullptr) return err;
  const size_t smem_w = bwd_words_smem(dim);
  if ((err = allow_smem(damsm_bwd_words_kernel<T>, smem_w)) != cudaSuccess) return err;
  const int blocks = (num_imgs + images_per_block - 1) / images_per_block;
  damsm_bwd_words_kernel<T><<<dim3(num_caps, blocks), kThreads, smem_w, stream>>>(
      words, lengths, regions, ctx, stats, words_partial, num_imgs, num_caps, dim, max_len, num_regions,
      gamma1, images_per_block);
  return cudaGetLastError();
}

}  // namespace

cudaError_t damsm_word_similarity_fwd_cuda(DamsmDtype dtype, const void* words, const int64_t* lengths,
                                           const void* regions, float* sim, int num_imgs, int num_caps,
                                           int dim, int max_len, int num_regions, float gamma1,
                                           float gamma2, cudaStream_t stream) {
  switch (dtype) {
    case DamsmDtype::kFloat32:
      return launch_fwd<float>(nullptr, static_cast<const float*>(words), lengths,
                               static_cast<const float*>(regions), sim, nullptr, nullptr, num_imgs,
                               num_caps, dim, max_len, num_regions, gamma1, gamma2, stream);
    case DamsmDtype::kFloat16:
      return launch_fwd<__half>(nullptr, static_cast<const __half*>(words), lengths,
                                static_cast<const __half*>(regions), sim, nullptr, nullptr, num_imgs,
                                num_caps, dim, max_len, num_regions, gamma1, gamma2, stream);
    case DamsmDtype::kBFloat16:
      return launch_fwd<__nv_bfloat16>(nullptr, static_cast<const __nv_bfloat16*>(words), lengths,
                                       static_cast<const __nv_bfloat16*>(regions), sim, nullptr, nullptr,
                                       num_imgs, num_caps, dim, max_len, num_regions, gamma1, gamma2,
                                       stream);
  }
  return cudaErrorInvalidValue;
}

cudaError_t damsm_word_similarity_bwd_cuda(DamsmDtype dtype, const float* grad_s, const void* words,
                                           const int64_t* lengths, const void* regions, float* sim,
                                           void* ctx, float* stats, void* grad_regions,
                                           float* words_partial, int images_per_block, int num_imgs,
                                           int num_caps, int dim, int max_len, int num_regions,
                                           float gamma1, float gamma2, cudaStream_t stream) {
  switch (dtype) {
    case DamsmDtype::kFloat32:
      return launch_bwd<float>(grad_s, static_cast<const float*>(words), lengths,
                               static_cast<const float*>(regions), sim, static_cast<float*>(ctx), stats,
                               static_cast<float*>(grad_regions), words_partial, images_per_block,
                               num_imgs, num_caps, dim, max_len, num_regions, gamma1, gamma2, stream);
    case DamsmDtype::kFloat16:
      return launch_bwd<__half>(grad_s, static_cast<const __half*>(words), lengths,
                                static_cast<const __half*>(regions), sim, static_cast<__half*>(ctx), stats,
                                static_cast<__half*>(grad_regions), words_partial, images_per_block,
                                num_imgs, num_caps, dim, max_len, num_regions, gamma1, gamma2, stream);
    case DamsmDtype::kBFloat16:
      return launch_bwd<__nv_bfloat16>(grad_s, static_cast<const __nv_bfloat16*>(words), lengths,
                                       static_cast<const __nv_bfloat16*>(regions), sim,
                                       static_cast<__nv_bfloat16*>(ctx), stats,
                                       static_cast<__nv_bfloat16*>(grad_regions), words_partial,
                                       images_per_block, num_imgs, num_caps, dim, max_len, num_regions,
                                       gamma1, gamma2, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace attngan
