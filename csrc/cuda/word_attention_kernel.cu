// Word attention of the generator as CUDA kernels, forward and backward: the math of
// docs/DESIGN.md, "Word attention"; pure CUDA, no torch headers (word_attention.cpp is the glue).
//
// Mapping: one thread per pixel, blocks of kThreads consecutive pixels of one sample (grid
// [pixel blocks, B]). A block copies its caption into shared memory as fp32 [C, LP] (LP = L
// rounded up as in limits.h, zeros past n); each thread streams its pixel's C channels
// (consecutive threads, consecutive addresses: coalesced in the channel-first layout), keeps its
// LP scores in registers (LP is a template parameter) and reads the words as shared-memory
// broadcasts, float4 at a time. The backward recomputes the softmax. grad_words sums over all
// pixels: per channel a warp reduces its 32 pixels' contributions by a transpose-reduction (lane
// i ends with word i's sum), adds them into a block accumulator in shared memory, and the block
// adds that into an fp32 global buffer with atomics; a block covers `iters` x kThreads pixels so
// that fewer blocks reach the global atomics. With `concat` each thread also copies its pixel's
// query column next to its context, and the backward adds the first C channels of the output
// gradient to grad_query.
#include "cuda/word_attention_kernel.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>

namespace attngan {
namespace {

constexpr int kThreads = 128;  // pixels per block iteration, one per thread

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ float from_float<float>(float x) { return x; }
template <>
__device__ __forceinline__ __half from_float<__half>(float x) { return __float2half_rn(x); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

// words[b] [C, L] -> e [C, LP] fp32 in shared memory, the first n words, zeros after.
template <typename T, int LP>
__device__ void load_words(const T* __restrict__ words, int C, int L, int n, float* e) {
  for (int i = threadIdx.x; i < C * LP; i += blockDim.x) {
    const int c = i / LP, l = i % LP;
    e[i] = l < n ? to_float(words[c * L + l]) : 0.f;
  }
}

// out[l] = sum_c x[c * R] e[c, l] for every l < LP: one pixel's channel column x (R apart)
// against the caption in shared memory. Out of range (tail of the last block) x is taken as 0.
template <typename T, int LP>
__device__ __forceinline__ void project_onto_words(const T* __restrict__ x, int R, int C,
                                                   const float* e, bool in_range,
                                                   float (&out)[LP]) {
#pragma unroll
  for (int l = 0; l < LP; ++l) out[l] = 0.f;
  for (int c = 0; c < C; ++c) {
    const float xc = in_range ? to_float(x[static_cast<size_t>(c) * R]) : 0.f;
    const float4* row = reinterpret_cast<const float4*>(e + c * LP);
#pragma unroll
    for (int k = 0; k < LP / 4; ++k) {
      const float4 w = row[k];
      out[4 * k] += xc * w.x;
      out[4 * k + 1] += xc * w.y;
      out[4 * k + 2] += xc * w.z;
      out[4 * k + 3] += xc * w.w;
    }
  }
}

// p[l] = softmax over l < n of s[l] = sum_c q[c * R] e[c, l]; p[l] = 0 for l >= n.
template <typename T, int LP>
__device__ __forceinline__ void scores_softmax(const T* __restrict__ q, int R, int C,
                                               const float* e, int n, bool in_range,
                                               float (&p)[LP]) {
  project_onto_words<T, LP>(q, R, C, e, in_range, p);
  float top = -INFINITY;
#pragma unroll
  for (int l = 0; l < LP; ++l)
    if (l < n) top = fmaxf(top, p[l]);
  float total = 0.f;
#pragma unroll
  for (int l = 0; l < LP; ++l) {
    p[l] = l < n ? __expf(p[l] - top) : 0.f;
    total += p[l];
  }
  const float inverse = 1.f / total;
#pragma unroll
  for (int l = 0; l < LP; ++l) p[l] *= inverse;
}

// sum_l e[c, l] w[l] for one channel row.
template <int LP>
__device__ __forceinline__ float row_dot(const float* e_row, const float (&w)[LP]) {
  const float4* row = reinterpret_cast<const float4*>(e_row);
  float acc = 0.f;
#pragma unroll
  for (int k = 0; k < LP / 4; ++k) {
    const float4 v = row[k];
    acc += v.x * w[4 * k] + v.y * w[4 * k + 1] + v.z * w[4 * k + 2] + v.w * w[4 * k + 3];
  }
  return acc;
}

// Transpose-reduction over a full warp: on return, lane i holds sum over the 32 lanes of v[i].
// Each step halves the values a lane keeps and swaps the other half with its partner (offsets
// are template arguments so every index is a compile-time constant and v stays in registers).
template <int Offset>
__device__ __forceinline__ void transpose_step(float (&v)[32], int lane) {
  const bool upper = (lane & Offset) != 0;
#pragma unroll
  for (int j = 0; j < Offset; ++j) {
    const float send = upper ? v[j] : v[j + Offset];
    const float keep = upper ? v[j + Offset] : v[j];
    v[j] = keep + __shfl_xor_sync(0xffffffffu, send, Offset);
  }
  if constexpr (Offset > 1) transpose_step<Offset / 2>(v, lane);
}

__device__ __forceinline__ float warp_transpose_sum(float (&v)[32]) {
  transpose_step<16>(v, threadIdx.x & 31);
  return v[0];
}

template <typename T, int LP>
__global__ void __launch_bounds__(kThreads)
word_attention_fwd_kernel(const T* __restrict__ query, const T* __restrict__ words,
                          const int64_t* __restrict__ lengths, T* __restrict__ out,
                          T* __restrict__ attn, int C, int L, int R, int iters, bool concat) {
  extern __shared__ float4 shared[];
  float* e = reinterpret_cast<float*>(shared);  // [C, LP]
  const int b = blockIdx.y;
  const int n = static_cast<int>(min(max(lengths[b], int64_t(1)), int64_t(L)));
  load_words<T, LP>(words + static_cast<size_t>(b) * C * L, C, L, n, e);
  __syncthreads();
  for (int it = 0; it < iters; ++it) {
    const int r = (blockIdx.x * iters + it) * kThreads + threadIdx.x;
    if (r >= R) return;
    const size_t base = static_cast<size_t>(b) * C * R + r;
    float p[LP];
    scores_softmax<T, LP>(query + base, R, C, e, n, true, p);
    // out [B, C, R] (context) or [B, 2C, R] (query, then context)
    T* out_r = out + static_cast<size_t>(b) * (concat ? 2 * C : C) * R + r;
    T* context = concat ? out_r + static_cast<size_t>(C) * R : out_r;
    for (int c = 0; c < C; ++c) {
      const size_t at = static_cast<size_t>(c) * R;
      context[at] = from_float<T>(row_dot<LP>(e + c * LP, p));
      if (concat) out_r[at] = query[base + at];
    }
    if (attn != nullptr) {
      T* a = attn + static_cast<size_t>(b) * L * R + r;
#pragma unroll
      for (int l = 0; l < LP; ++l)
        if (l < L) a[static_cast<size_t>(l) * R] = from_float<T>(p[l]);
    }
  }
}

template <typename T, int LP>
__global__ void __launch_bounds__(kThreads)
word_attention_bwd_kernel(const T* __restrict__ grad_out, const T* __restrict__ grad_attn,
                          const T* __restrict__ query, const T* __restrict__ words,
                          const int64_t* __restrict__ lengths, T* __restrict__ grad_query,
                          float* __restrict__ grad_words, int C, int L, int R, int iters,
                          bool concat) {
  constexpr int kChunks = (LP + 31) / 32;
  extern __shared__ float4 shared[];
  float* e = reinterpret_cast<float*>(shared);  // [C, LP]
  float* ge = e + C * LP;                        // [C, LP] this block's part of grad_words
  const int b = blockIdx.y;
  const int n = static_cast<int>(min(max(lengths[b], int64_t(1)), int64_t(L)));
  load_words<T, LP>(words + static_cast<size_t>(b) * C * L, C, L, n, e);
  for (int i = threadIdx.x; i < C * LP; i += blockDim.x) ge[i] = 0.f;
  __syncthreads();
  const int lane = threadIdx.x & 31;
  for (int it = 0; it < iters; ++it) {
    // Out-of-range threads stay (the warp reductions need all lanes) with zero inputs, which
    // contribute nothing to grad_words.
    const int r = (blockIdx.x * iters + it) * kThreads + threadIdx.x;
    const bool in_range = r < R;
    const size_t base = static_cast<size_t>(b) * C * R + (in_range ? r : 0);
    const T* q = query + base;
    // grad_out [B, C, R] (gc) or [B, 2C, R] (gq's direct part, then gc)
    const T* direct = grad_out + static_cast<size_t>(b) * (concat ? 2 * C : C) * R + (in_range ? r : 0);
    const T* g = concat ? direct + static_cast<size_t>(C) * R : direct;
    float p[LP], ds[LP];
    scores_softmax<T, LP>(q, R, C, e, n, in_range, p);
    project_onto_words<T, LP>(g, R, C, e, in_range, ds);   // dp from gc
    if (grad_attn != nullptr && in_range) {
      const T* ga = grad_attn + static_cast<size_t>(b) * L * R + r;
#pragma unroll
      for (int l = 0; l < LP; ++l)
        if (l < n) ds[l] += to_float(ga[static_cast<size_t>(l) * R]);
    }
    float dot = 0.f;
#pragma unroll
    for (int l = 0; l < LP; ++l) dot += p[l] * ds[l];
#pragma unroll
    for (int l = 0; l < LP; ++l) ds[l] = p[l] * (ds[l] - dot);  // 0 at padded words (p = 0)
    for (int c = 0; c < C; ++c) {
      const float qc = in_range ? to_float(q[static_cast<size_t>(c) * R]) : 0.f;
      const float gc = in_range ? to_float(g[static_cast<size_t>(c) * R]) : 0.f;
      if (in_range) {
        const size_t at = static_cast<size_t>(c) * R;
        const float gq = row_dot<LP>(e + c * LP, ds) + (concat ? to_float(direct[at]) : 0.f);
        grad_query[base + at] = from_float<T>(gq);
      }
#pragma unroll
      for (int chunk = 0; chunk < kChunks; ++chunk) {
        float v[32];
#pragma unroll
        for (int j = 0; j < 32; ++j) {
          const int l = chunk * 32 + j;
          v[j] = l < LP ? gc * p[l < LP ? l : 0] + qc * ds[l < LP ? l : 0] : 0.f;
        }
        const float total = warp_transpose_sum(v);
        const int l = chunk * 32 + lane;
        if (l < n) atomicAdd(&ge[c * LP + l], total);
      }
    }
  }
  __syncthreads();
  for (int i = threadIdx.x; i < C * LP; i += blockDim.x) {
    const int c = i / LP, l = i % LP;
    if (l < n) atomicAdd(&grad_words[(static_cast<size_t>(b) * C + c) * L + l], ge[i]);
  }
}

// Pixel iterations per block: enough blocks to fill the GPU (about 1024), fewer blocks (and
// fewer global atomics) when the grid is larger.
int iterations(int batch, int num_regions) {
  const int tiles = (num_regions + kThreads - 1) / kThreads;
  const int wanted = std::max(1, std::min(8, batch * tiles / 1024));
  return std::min(wanted, tiles);
}

template <typename T, int LP>
cudaError_t launch_fwd(const void* query, const void* words, const int64_t* lengths, void* out,
                       void* attn, int batch, int channels, int num_words, int num_regions,
                       bool concat, cudaStream_t stream) {
  const int iters = iterations(batch, num_regions);
  const int per_block = kThreads * iters;
  const dim3 grid((num_regions + per_block - 1) / per_block, batch);
  const size_t shared = static_cast<size_t>(channels) * LP * sizeof(float);
  word_attention_fwd_kernel<T, LP><<<grid, kThreads, shared, stream>>>(
      static_cast<const T*>(query), static_cast<const T*>(words), lengths, static_cast<T*>(out),
      static_cast<T*>(attn), channels, num_words, num_regions, iters, concat);
  return cudaGetLastError();
}

template <typename T, int LP>
cudaError_t launch_bwd(const void* grad_out, const void* grad_attn, const void* query,
                       const void* words, const int64_t* lengths, void* grad_query,
                       float* grad_words, int batch, int channels, int num_words, int num_regions,
                       bool concat, cudaStream_t stream) {
  const int iters = iterations(batch, num_regions);
  const int per_block = kThreads * iters;
  const dim3 grid((num_regions + per_block - 1) / per_block, batch);
  const size_t shared = 2 * static_cast<size_t>(channels) * LP * sizeof(float);
  word_attention_bwd_kernel<T, LP><<<grid, kThreads, shared, stream>>>(
      static_cast<const T*>(grad_out), static_cast<const T*>(grad_attn),
      static_cast<const T*>(query), static_cast<const T*>(words), lengths,
      static_cast<T*>(grad_query), grad_words, channels, num_words, num_regions, iters, concat);
  return cudaGetLastError();
}

struct FwdArgs {
  const void* query;
  const void* words;
  const int64_t* lengths;
  void* out;
  void* attn;
  int batch, channels, num_words, num_regions;
  bool concat;
  cudaStream_t stream;
  template <typename T, int LP>
  cudaError_t run() const {
    return launch_fwd<T, LP>(query, words, lengths, out, attn, batch, channels, num_words,
                             num_regions, concat, stream);
  }
};

struct BwdArgs {
  const void* grad_out;
  const void* grad_attn;
  const void* query;
  const void* words;
  const int64_t* lengths;
  void* grad_query;
  float* grad_words;
  int batch, channels, num_words, num_regions;
  bool concat;
  cudaStream_t stream;
  template <typename T, int LP>
  cudaError_t run() const {
    return launch_bwd<T, LP>(grad_out, grad_attn, query, words, lengths, grad_query, grad_words,
                             batch, channels, num_words, num_regions, concat, stream);
  }
};

// Calls args.run<T, LP>() for the element type and padded word count.
template <typename Args>
cudaError_t dispatch(WordAttentionDtype dtype, int padded_words, const Args& args) {
  auto by_words = [&](auto type_tag) -> cudaError_t {
    using T = decltype(type_tag);
    switch (padded_words) {
      case 8: return args.template run<T, 8>();
      case 16: return args.template run<T, 16>();
      case 24: return args.template run<T, 24>();
      case 32: return args.template run<T, 32>();
      case 48: return args.template run<T, 48>();
      case 64: return args.template run<T, 64>();
      default: return cudaErrorInvalidValue;
    }
  };
  switch (dtype) {
    case WordAttentionDtype::kFloat32: return by_words(float{});
    case WordAttentionDtype::kFloat16: return by_words(__half{});
    case WordAttentionDtype::kBFloat16: return by_words(__nv_bfloat16{});
  }
  return cudaErrorInvalidValue;
}

bool supported(int channels, int num_words) {
  return channels >= 1 && num_words >= 1 && word_attention_cuda_unsupported(channels, num_words).empty();
}

}  // namespace

cudaError_t word_attention_fwd_cuda(WordAttentionDtype dtype, const void* query, const void* words,
                                    const int64_t* lengths, void* out, void* attn, int batch,
                                    int channels, int num_words, int num_regions, bool concat,
                                    cudaStream_t stream) {
  if (!supported(channels, num_words)) return cudaErrorInvalidValue;
  const int padded = word_attention_padded_words(num_words);
  if (batch == 0 || num_regions == 0) return cudaSuccess;
  return dispatch(dtype, padded, FwdArgs{query, words, lengths, out, attn, batch, channels,
                                         num_words, num_regions, concat, stream});
}

cudaError_t word_attention_bwd_cuda(WordAttentionDtype dtype, const void* grad_out,
                                    const void* grad_attn, const void* query, const void* words,
                                    const int64_t* lengths, void* grad_query, float* grad_words_f32,
                                    int batch, int channels, int num_words, int num_regions,
                                    bool concat, cudaStream_t stream) {
  if (!supported(channels, num_words)) return cudaErrorInvalidValue;
  const int padded = word_attention_padded_words(num_words);
  if (batch == 0 || num_regions == 0) return cudaSuccess;
  return dispatch(dtype, padded, BwdArgs{grad_out, grad_attn, query, words, lengths, grad_query,
                                         grad_words_f32, batch, channels, num_words, num_regions,
                                         concat, stream});
}

}  // namespace attngan
