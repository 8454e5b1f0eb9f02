// Word attention of the generator on CPU, forward and backward: the math of docs/DESIGN.md, "Word
// attention" (schemas in csrc/registration.cpp).
//
// Mapping: at::parallel_for over (sample, block of 256 pixels). Tensors stay channel-first; a
// block's C rows are copied (converted to the compute type) into a scratch buffer as contiguous
// runs, which the hardware prefetchers follow, and processed as tiles of 16 pixels, one GCC
// vector each (one AVX-512 register of floats): every loop is a short chain of vector FMAs with
// the caption's words (copied once per sample, [C, L rounded up to 4]) as scalar broadcasts.
// Padded words are skipped entirely. The backward recomputes the softmax; grad_words is reduced
// over pixels into per-thread partial sums, then summed over threads. Half and bfloat16 compute
// in float, double in double (gradcheck); the float path is compiled for AVX-512, AVX2+FMA and
// the baseline, picked at load time (GCC target_clones).
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <type_traits>
#include <vector>

#include "cpu/checks.h"

// The 16-lane vectors are always inlined into one function, so the ABI note GCC prints for
// returning them by value does not apply.
#pragma GCC diagnostic ignored "-Wpsabi"

namespace {

constexpr int kLanes = 16;       // pixels per tile: one AVX-512 register of floats
constexpr int kBlockTiles = 16;  // tiles per block: rows are read in runs of kBlock pixels
constexpr int kBlock = kLanes * kBlockTiles;
constexpr int kWordBlock = 4;  // words per register block in the score loops

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__) && __GNUC__ >= 12
#define ATTNGAN_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define ATTNGAN_CLONES
#endif
#define ATTNGAN_INLINE inline __attribute__((always_inline))

template <typename T>
struct VecOf { typedef T type __attribute__((vector_size(kLanes * sizeof(T)))); };
template <typename T>
using Vec = typename VecOf<T>::type;
// 64-byte aligned scratch buffer (the vector types need it).
template <typename T>
struct Scratch {
  T* data;
  explicit Scratch(int64_t count) {
    size_t bytes = ((std::max<int64_t>(count, 1) * sizeof(T) + 63) / 64) * 64;
    data = static_cast<T*>(std::aligned_alloc(64, bytes));
    TORCH_CHECK(data != nullptr, "word_attention: out of memory for a ", bytes, "-byte scratch buffer");
  }
  ~Scratch() { std::free(data); }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  Vec<T>* vec() { return reinterpret_cast<Vec<T>*>(data); }
};

// exp on a tile vector. Float: Cephes-style range reduction + degree-6 polynomial (about 2 ulp),
// written with vector operations so it vectorizes; inputs here are always <= 0 (s - max).
template <typename T>
ATTNGAN_INLINE Vec<T> vexp(Vec<T> x);

template <>
ATTNGAN_INLINE Vec<double> vexp<double>(Vec<double> x) {
  for (int i = 0; i < kLanes; ++i) x[i] = std::exp(x[i]);
  return x;
}

template <>
ATTNGAN_INLINE Vec<float> vexp<float>(Vec<float> x) {
  typedef int32_t IntVec __attribute__((vector_size(kLanes * sizeof(int32_t))));
  const Vec<float> lo = Vec<float>{} - 87.3f, hi = Vec<float>{} + 88.3f;
  x = x < lo ? lo : x;
  x = x > hi ? hi : x;
  // round(x * log2(e)) by the 1.5 * 2^23 trick (exact for |value| < 2^22)
  Vec<float> n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  Vec<float> r = x - n * 0.693359375f;
  r = r + n * 2.12194440e-4f;
  Vec<float> y = 1.9875691500e-4f * r + 1.3981999507e-3f;
  y = y * r + 8.3334519073e-3f;
  y = y * r + 4.1665795894e-2f;
  y = y * r + 1.6666665459e-1f;
  y = y * r + 5.0000001201e-1f;
  y = y * (r * r) + r + 1.0f;
  const IntVec bits = (__builtin_convertvector(n, IntVec) + 127) << 23;  // 2^n
  Vec<float> scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return y * scale;
}

// out[l0 + k] = sum_c words[c, l0 + k] * rows[c * stride] for k < K (words is [C, padded_words]).
template <typename T, int K>
ATTNGAN_INLINE void project_words(const Vec<T>* __restrict rows, int64_t stride,
                                  const T* __restrict words, int64_t C, int64_t padded_words,
                                  int64_t l0, Vec<T>* __restrict out) {
  Vec<T> acc[K] = {};
  const T* w = words + l0;
  for (int64_t c = 0; c < C; ++c, w += padded_words) {
    const Vec<T> row = rows[c * stride];
#pragma GCC unroll 8
    for (int k = 0; k < K; ++k) acc[k] += w[k] * row;
  }
#pragma GCC unroll 8
  for (int k = 0; k < K; ++k) out[l0 + k] = acc[k];
}

// out[l] = sum_c words[c, l] * rows[c * stride] for l < n: 8 words per pass over the rows (eight
// independent FMA chains hide the FMA latency), then 4, 2, 1 for the rest.
template <typename T>
ATTNGAN_INLINE void project(const Vec<T>* __restrict rows, int64_t stride, const T* __restrict words,
                            int64_t C, int64_t n, int64_t padded_words, Vec<T>* __restrict out) {
  int64_t l0 = 0;
  for (; l0 + 8 <= n; l0 += 8) project_words<T, 8>(rows, stride, words, C, padded_words, l0, out);
  if (n - l0 >= 4) {
    project_words<T, 4>(rows, stride, words, C, padded_words, l0, out);
    l0 += 4;
  }
  if (n - l0 >= 2) {
    project_words<T, 2>(rows, stride, words, C, padded_words, l0, out);
    l0 += 2;
  }
  if (n - l0 >= 1) project_words<T, 1>(rows, stride, words, C, padded_words, l0, out);
}

// out[c0 + k] (rows `stride` apart) = sum_{l < n} words[c0 + k, l] * weights[l] for k < K.
template <typename T, int K>
ATTNGAN_INLINE void combine_channels(const Vec<T>* __restrict weights, const T* __restrict words,
                                     int64_t c0, int64_t n, int64_t padded_words,
                                     Vec<T>* __restrict out, int64_t stride) {
  Vec<T> acc[K] = {};
  const T* w = words + c0 * padded_words;
  for (int64_t l = 0; l < n; ++l) {
    const Vec<T> weight = weights[l];
#pragma GCC unroll 8
    for (int k = 0; k < K; ++k) acc[k] += w[l + k * padded_words] * weight;
  }
#pragma GCC unroll 8
  for (int k = 0; k < K; ++k) out[(c0 + k) * stride] = acc[k];
}

// out[c * stride] = sum_{l < n} words[c, l] * weights[l]: 8 channels at a time, then 4, then 1.
template <typename T>
ATTNGAN_INLINE void combine(const Vec<T>* __restrict weights, const T* __restrict words, int64_t C,
                            int64_t n, int64_t padded_words, Vec<T>* __restrict out, int64_t stride) {
  int64_t c = 0;
  for (; c + 8 <= C; c += 8) combine_channels<T, 8>(weights, words, c, n, padded_words, out, stride);
  if (C - c >= 4) {
    combine_channels<T, 4>(weights, words, c, n, padded_words, out, stride);
    c += 4;
  }
  for (; c < C; ++c) combine_channels<T, 1>(weights, words, c, n, padded_words, out, stride);
}

// In place: scores[l] -> softmax over l < n, per lane.
template <typename T>
ATTNGAN_INLINE void softmax(Vec<T>* __restrict scores, int64_t n) {
  Vec<T> top = scores[0];
  for (int64_t l = 1; l < n; ++l) top = scores[l] > top ? scores[l] : top;
  Vec<T> total = {};
  for (int64_t l = 0; l < n; ++l) {
    scores[l] = vexp<T>(scores[l] - top);
    total += scores[l];
  }
  const Vec<T> inverse = T(1) / total;
  for (int64_t l = 0; l < n; ++l) scores[l] *= inverse;
}

// One block of `tiles` tiles. query/context are [C, kBlockTiles] vectors, attn (may be null)
// [n, kBlockTiles], probs one tile's [padded_words] scratch.
template <typename T>
ATTNGAN_INLINE void forward_block(const Vec<T>* query, const T* words, int64_t C, int64_t n,
                                  int64_t padded_words, int64_t tiles, Vec<T>* probs,
                                  Vec<T>* context, Vec<T>* attn) {
  for (int64_t t = 0; t < tiles; ++t) {
    project<T>(query + t, kBlockTiles, words, C, n, padded_words, probs);
    softmax<T>(probs, n);
    combine<T>(probs, words, C, n, padded_words, context + t, kBlockTiles);
    if (attn != nullptr)
      for (int64_t l = 0; l < n; ++l) attn[l * kBlockTiles + t] = probs[l];
  }
}

// grad_query[c] = sum_{l<n} words[c, l] ds[l], fused with the grad_words partial sums
// acc[c, l] += grad_context[c] p[l] + query[c] ds[l]: both walk the same (c, l) pairs, so p and
// ds are loaded once for both. Rows of query / grad_context / grad_query are `stride` apart.
template <typename T>
ATTNGAN_INLINE void combine_and_accumulate(const Vec<T>* __restrict ds, const Vec<T>* __restrict probs,
                                           const Vec<T>* __restrict query,
                                           const Vec<T>* __restrict grad_context,
                                           const T* __restrict words, int64_t C, int64_t n,
                                           int64_t padded_words, Vec<T>* __restrict grad_query,
                                           int64_t stride, Vec<T>* __restrict acc) {
  int64_t c = 0;
  for (; c + 4 <= C; c += 4) {
    Vec<T> a[4] = {}, g[4], q[4];
#pragma GCC unroll 4
    for (int k = 0; k < 4; ++k) {
      g[k] = grad_context[(c + k) * stride];
      q[k] = query[(c + k) * stride];
    }
    const T* w = words + c * padded_words;
    Vec<T>* acc_c = acc + c * n;
    for (int64_t l = 0; l < n; ++l) {
      const Vec<T> d = ds[l], p = probs[l];
#pragma GCC unroll 4
      for (int k = 0; k < 4; ++k) {
        a[k] += w[l + k * padded_words] * d;
        acc_c[l + k * n] += g[k] * p + q[k] * d;
      }
    }
#pragma GCC unroll 4
    for (int k = 0; k < 4; ++k) grad_query[(c + k) * stride] = a[k];
  }
  for (; c < C; ++c) {
    Vec<T> a = {};
    const Vec<T> g = grad_context[c * stride], q = query[c * stride];
    for (int64_t l = 0; l < n; ++l) {
      a += words[c * padded_words + l] * ds[l];
      acc[c * n + l] += g * probs[l] + q * ds[l];
    }
    grad_query[c * stride] = a;
  }
}

// One block of `tiles` tiles. query / grad_context / grad_query are [C, kBlockTiles] vectors,
// grad_attn (may be null) [n, kBlockTiles]; probs and grad_scores are one tile's scratch;
// grad_words_acc ([C, n] vectors) accumulates over blocks and its lanes are summed by the caller.
template <typename T>
ATTNGAN_INLINE void backward_block(const Vec<T>* query, const Vec<T>* grad_context,
                                   const Vec<T>* grad_attn, const T* words, int64_t C, int64_t n,
                                   int64_t padded_words, int64_t tiles, Vec<T>* probs,
                                   Vec<T>* grad_scores, Vec<T>* grad_query, Vec<T>* grad_words_acc) {
  for (int64_t t = 0; t < tiles; ++t) {
    project<T>(query + t, kBlockTiles, words, C, n, padded_words, probs);
    softmax<T>(probs, n);
    project<T>(grad_context + t, kBlockTiles, words, C, n, padded_words, grad_scores);  // dp
    if (grad_attn != nullptr)
      for (int64_t l = 0; l < n; ++l) grad_scores[l] += grad_attn[l * kBlockTiles + t];
    Vec<T> dot = {};
    for (int64_t l = 0; l < n; ++l) dot += probs[l] * grad_scores[l];
    for (int64_t l = 0; l < n; ++l) grad_scores[l] = probs[l] * (grad_scores[l] - dot);  // ds
    combine_and_accumulate<T>(grad_scores, probs, query + t, grad_context + t, words, C, n,
                              padded_words, grad_query + t, kBlockTiles, grad_words_acc);
  }
}

// Entry points per element type: float is compiled per ISA (target_clones), double is not.
#define ATTNGAN_V(T, x) reinterpret_cast<Vec<T>*>(x)
#define ATTNGAN_CV(T, x) reinterpret_cast<const Vec<T>*>(x)

ATTNGAN_CLONES void forward_block_float(const float* query, const float* words, int64_t C, int64_t n,
                                        int64_t padded_words, int64_t tiles, float* probs,
                                        float* context, float* attn) {
  forward_block<float>(ATTNGAN_CV(float, query), words, C, n, padded_words, tiles,
                       ATTNGAN_V(float, probs), ATTNGAN_V(float, context), ATTNGAN_V(float, attn));
}

ATTNGAN_CLONES void backward_block_float(const float* query, const float* grad_context,
                                         const float* grad_attn, const float* words, int64_t C,
                                         int64_t n, int64_t padded_words, int64_t tiles, float* probs,
                                         float* grad_scores, float* grad_query, float* acc) {
  backward_block<float>(ATTNGAN_CV(float, query), ATTNGAN_CV(float, grad_context),
                        ATTNGAN_CV(float, grad_attn), words, C, n, padded_words, tiles,
                        ATTNGAN_V(float, probs), ATTNGAN_V(float, grad_scores),
                        ATTNGAN_V(float, grad_query), ATTNGAN_V(float, acc));
}

void forward_block_any(const float* query, const float* words, int64_t C, int64_t n,
                       int64_t padded_words, int64_t tiles, float* probs, float* context, float* attn) {
  forward_block_float(query, words, C, n, padded_words, tiles, probs, context, attn);
}

void forward_block_any(const double* query, const double* words, int64_t C, int64_t n,
                       int64_t padded_words, int64_t tiles, double* probs, double* context,
                       double* attn) {
  forward_block<double>(ATTNGAN_CV(double, query), words, C, n, padded_words, tiles,
                        ATTNGAN_V(double, probs), ATTNGAN_V(double, context), ATTNGAN_V(double, attn));
}

void backward_block_any(const float* query, const float* grad_context, const float* grad_attn,
                        const float* words, int64_t C, int64_t n, int64_t padded_words,
                        int64_t tiles, float* probs, float* grad_scores, float* grad_query,
                        float* acc) {
  backward_block_float(query, grad_context, grad_attn, words, C, n, padded_words, tiles, probs,
                       grad_scores, grad_query, acc);
}

void backward_block_any(const double* query, const double* grad_context, const double* grad_attn,
                        const double* words, int64_t C, int64_t n, int64_t padded_words,
                        int64_t tiles, double* probs, double* grad_scores, double* grad_query,
                        double* acc) {
  backward_block<double>(ATTNGAN_CV(double, query), ATTNGAN_CV(double, grad_context),
                         ATTNGAN_CV(double, grad_attn), words, C, n, padded_words, tiles,
                         ATTNGAN_V(double, probs), ATTNGAN_V(double, grad_scores),
                         ATTNGAN_V(double, grad_query), ATTNGAN_V(double, acc));
}

// rows x `valid` pixels at src (row stride `stride`) -> dst [rows, kBlock] in acc_t, zero-padded
// up to the end of the last tile. Each row is one contiguous run (prefetch-friendly).
template <typename scalar_t, typename acc_t>
void load_rows(const scalar_t* src, int64_t stride, int64_t rows, int64_t valid, acc_t* dst) {
  const int64_t padded = (valid + kLanes - 1) / kLanes * kLanes;
  for (int64_t row = 0; row < rows; ++row, src += stride, dst += kBlock) {
    if constexpr (std::is_same_v<scalar_t, acc_t>) {
      std::memcpy(dst, src, valid * sizeof(acc_t));
    } else {
      for (int64_t i = 0; i < valid; ++i) dst[i] = static_cast<acc_t>(src[i]);
    }
    std::fill(dst + valid, dst + padded, acc_t(0));
  }
}

// Asks for the next block's rows while this one computes: each row is a short run in its own
// page, which the hardware prefetchers pick up late.
template <typename scalar_t>
void prefetch_rows(const scalar_t* src, int64_t stride, int64_t rows, int64_t valid) {
  constexpr int64_t kLine = 64 / sizeof(scalar_t);
  for (int64_t row = 0; row < rows; ++row, src += stride)
    for (int64_t i = 0; i < valid; i += kLine) __builtin_prefetch(src + i, 0, 3);
}

// src [rows, kBlock] in acc_t -> `valid` pixels of each row at dst (row stride `stride`), plus
// the same pixels of `addend` (row stride `stride`) when it is not null.
template <typename scalar_t, typename acc_t>
void store_rows(const acc_t* src, int64_t stride, int64_t rows, int64_t valid, scalar_t* dst,
                const scalar_t* addend = nullptr) {
  for (int64_t row = 0; row < rows; ++row, src += kBlock, dst += stride) {
    if (addend != nullptr) {
      const scalar_t* add = addend + row * stride;
      for (int64_t i = 0; i < valid; ++i)
        dst[i] = static_cast<scalar_t>(src[i] + static_cast<acc_t>(add[i]));
    } else if constexpr (std::is_same_v<scalar_t, acc_t>) {
      std::memcpy(dst, src, valid * sizeof(acc_t));
    } else {
      for (int64_t i = 0; i < valid; ++i) dst[i] = static_cast<scalar_t>(src[i]);
    }
  }
}

// `valid` pixels of `rows` rows from src to dst, both with row stride `stride`.
template <typename scalar_t>
void copy_rows(const scalar_t* src, int64_t stride, int64_t rows, int64_t valid, scalar_t* dst) {
  for (int64_t row = 0; row < rows; ++row, src += stride, dst += stride)
    std::memcpy(dst, src, valid * sizeof(scalar_t));
}

// words[b] [C, L] -> [C, padded] in acc_t, the first n columns copied, the rest zero.
template <typename scalar_t, typename acc_t>
void load_words(const scalar_t* src, int64_t C, int64_t L, int64_t n, int64_t padded, acc_t* dst) {
  for (int64_t c = 0; c < C; ++c)
    for (int64_t l = 0; l < padded; ++l)
      dst[c * padded + l] = l < n ? static_cast<acc_t>(src[c * L + l]) : acc_t(0);
}

int64_t round_up(int64_t value, int64_t multiple) { return (value + multiple - 1) / multiple * multiple; }

// The kernel's preconditions (attngan.ops.word_attention validates the inputs before any backend
// runs; these guard memory when the op is called directly or inside a compiled graph).
void check_inputs(const at::Tensor& query, const at::Tensor& words, const at::Tensor& lengths) {
  TORCH_CHECK(query.dim() == 4 && words.dim() == 3 && lengths.dim() == 1 &&
                  words.size(0) == query.size(0) && lengths.size(0) == query.size(0) &&
                  words.size(1) == query.size(1),
              "word_attention (C++): expected query [B, C, H, W], words [B, C, L], lengths [B]; got ",
              query.sizes(), ", ", words.sizes(), ", ", lengths.sizes());
  TORCH_CHECK(query.device().is_cpu() && words.device().is_cpu() && lengths.device().is_cpu(),
              "word_attention (C++): all inputs must be CPU tensors");
  const auto type = query.scalar_type();
  TORCH_CHECK(at::isFloatingType(type) && words.scalar_type() == type &&
                  (lengths.scalar_type() == at::kLong || lengths.scalar_type() == at::kInt),
              "word_attention (C++): query and words of one floating dtype and integer lengths "
              "expected, got ", type, ", ", words.scalar_type(), ", ", lengths.scalar_type());
}

std::tuple<at::Tensor, at::Tensor> word_attention_fwd_cpu(const at::Tensor& query_in,
                                                          const at::Tensor& words_in,
                                                          const at::Tensor& lengths,
                                                          bool return_attn, bool concat) {
  check_inputs(query_in, words_in, lengths);
  const at::Tensor query = query_in.contiguous(), words = words_in.contiguous();
  const int64_t B = query.size(0), C = query.size(1), R = query.size(2) * query.size(3);
  const int64_t L = words.size(2);
  const std::vector<int64_t> lens = attngan::lengths_in_range("word_attention", lengths, L);
  // Output channels: [q; ctx] with concat, else ctx alone.
  const int64_t out_channels = concat ? 2 * C : C, context_offset = concat ? C * R : 0;
  at::Tensor out = at::empty({B, out_channels, query.size(2), query.size(3)}, query.options());
  at::Tensor attn = return_attn ? at::empty({B, L, query.size(2), query.size(3)}, query.options())
                                : at::empty({0}, query.options());
  const int64_t blocks = (R + kBlock - 1) / kBlock;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, query.scalar_type(), "word_attention_fwd", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* q = query.const_data_ptr<scalar_t>();
    const scalar_t* w = words.const_data_ptr<scalar_t>();
    scalar_t* out_p = out.mutable_data_ptr<scalar_t>();
    scalar_t* att = return_attn ? attn.mutable_data_ptr<scalar_t>() : nullptr;
    const int64_t padded = round_up(L, kWordBlock);
    at::parallel_for(0, B * blocks, 1, [&](int64_t begin, int64_t end) {
      Scratch<acc_t> word_buf(C * padded), query_buf(C * kBlock), prob_buf(padded * kLanes),
          context_buf(C * kBlock), attn_buf(return_attn ? L * kBlock : 0);
      int64_t loaded = -1;
      for (int64_t item = begin; item < end; ++item) {
        const int64_t b = item / blocks, p0 = (item % blocks) * kBlock;
        const int64_t valid = std::min<int64_t>(kBlock, R - p0), n = lens[b];
        if (b != loaded) {
          load_words(w + b * C * L, C, L, n, round_up(n, kWordBlock), word_buf.data);
          loaded = b;
        }
        load_rows(q + b * C * R + p0, R, C, valid, query_buf.data);
        if (item + 1 < end) {
          const int64_t next_b = (item + 1) / blocks, next_p0 = ((item + 1) % blocks) * kBlock;
          prefetch_rows(q + next_b * C * R + next_p0, R, C, std::min<int64_t>(kBlock, R - next_p0));
        }
        forward_block_any(query_buf.data, word_buf.data, C, n, round_up(n, kWordBlock),
                          (valid + kLanes - 1) / kLanes, prob_buf.data, context_buf.data,
                          return_attn ? attn_buf.data : nullptr);
        scalar_t* out_b = out_p + b * out_channels * R + p0;
        store_rows(context_buf.data, R, C, valid, out_b + context_offset);
        if (concat) copy_rows(q + b * C * R + p0, R, C, valid, out_b);
        if (att != nullptr) {
          store_rows(attn_buf.data, R, n, valid, att + b * L * R + p0);
          for (int64_t l = n; l < L; ++l)  // padded words: exactly zero
            std::fill_n(att + (b * L + l) * R + p0, valid, scalar_t(0));
        }
      }
    });
  });
  return {out, attn};
}

std::tuple<at::Tensor, at::Tensor> word_attention_bwd_cpu(const at::Tensor& grad_out_in,
                                                          const c10::optional<at::Tensor>& grad_attn_in,
                                                          const at::Tensor& query_in,
                                                          const at::Tensor& words_in,
                                                          const at::Tensor& lengths, bool concat) {
  check_inputs(query_in, words_in, lengths);
  const at::Tensor query = query_in.contiguous(), words = words_in.contiguous();
  const int64_t B = query.size(0), C = query.size(1), H = query.size(2), W = query.size(3);
  const int64_t R = H * W, L = words.size(2);
  const int64_t out_channels = concat ? 2 * C : C, context_offset = concat ? C * R : 0;
  TORCH_CHECK(grad_out_in.sizes() == at::IntArrayRef({B, out_channels, H, W}),
              "word_attention_bwd: the output gradient must be [B, ", concat ? "2C" : "C",
              ", H, W] = ", at::IntArrayRef({B, out_channels, H, W}), ", got ", grad_out_in.sizes());
  const at::Tensor grad_out = grad_out_in.to(query.scalar_type()).contiguous();
  at::Tensor grad_attn;
  if (grad_attn_in.has_value() && grad_attn_in->defined() && grad_attn_in->numel() > 0) {
    TORCH_CHECK(grad_attn_in->sizes() == at::IntArrayRef({B, L, H, W}),
                "word_attention_bwd: grad_attn must be [B, L, H, W], got ", grad_attn_in->sizes());
    grad_attn = grad_attn_in->to(query.scalar_type()).contiguous();
  }
  const std::vector<int64_t> lens = attngan::lengths_in_range("word_attention", lengths, L);
  at::Tensor grad_query = at::empty_like(query);
  const int64_t blocks = (R + kBlock - 1) / kBlock;
  const int64_t threads = at::get_num_threads();
  at::Tensor grad_words;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, query.scalar_type(), "word_attention_bwd", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* q = query.const_data_ptr<scalar_t>();
    const scalar_t* w = words.const_data_ptr<scalar_t>();
    const scalar_t* go = grad_out.const_data_ptr<scalar_t>();
    const scalar_t* ga = grad_attn.defined() ? grad_attn.const_data_ptr<scalar_t>() : nullptr;
    scalar_t* gq = grad_query.mutable_data_ptr<scalar_t>();
    // Per-thread partial sums of grad_words [threads, B, C, L], reduced below.
    at::Tensor partial = at::zeros({threads, B, C, L},
                                   query.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
    acc_t* part = partial.mutable_data_ptr<acc_t>();
    const int64_t padded = round_up(L, kWordBlock);
    at::parallel_for(0, B * blocks, 1, [&](int64_t begin, int64_t end) {
      Scratch<acc_t> word_buf(C * padded), query_buf(C * kBlock), grad_buf(C * kBlock),
          grad_attn_buf(ga != nullptr ? L * kBlock : 0), prob_buf(padded * kLanes),
          grad_score_buf(padded * kLanes), grad_query_buf(C * kBlock), acc_buf(C * L * kLanes);
      acc_t* mine = part + at::get_thread_num() * B * C * L;
      int64_t loaded = -1, n = 0;
      auto flush = [&](int64_t b) {  // lanes of the [C, n] accumulators -> this thread's partial
        for (int64_t c = 0; c < C; ++c)
          for (int64_t l = 0; l < n; ++l) {
            const acc_t* lanes = acc_buf.data + (c * n + l) * kLanes;
            acc_t total = 0;
            for (int i = 0; i < kLanes; ++i) total += lanes[i];
            mine[(b * C + c) * L + l] += total;
          }
      };
      for (int64_t item = begin; item < end; ++item) {
        const int64_t b = item / blocks, p0 = (item % blocks) * kBlock;
        const int64_t valid = std::min<int64_t>(kBlock, R - p0);
        if (b != loaded) {
          if (loaded >= 0) flush(loaded);
          n = lens[b];
          load_words(w + b * C * L, C, L, n, round_up(n, kWordBlock), word_buf.data);
          std::fill_n(acc_buf.data, C * n * kLanes, acc_t(0));
          loaded = b;
        }
        load_rows(q + b * C * R + p0, R, C, valid, query_buf.data);
        const scalar_t* go_b = go + b * out_channels * R + p0;  // [gq direct; gc] or [gc]
        load_rows(go_b + context_offset, R, C, valid, grad_buf.data);
        if (item + 1 < end) {
          const int64_t next_b = (item + 1) / blocks, next_p0 = ((item + 1) % blocks) * kBlock;
          const int64_t next_valid = std::min<int64_t>(kBlock, R - next_p0);
          prefetch_rows(q + next_b * C * R + next_p0, R, C, next_valid);
          prefetch_rows(go + next_b * out_channels * R + next_p0 + context_offset, R, C, next_valid);
        }
        if (ga != nullptr) load_rows(ga + b * L * R + p0, R, n, valid, grad_attn_buf.data);
        backward_block_any(query_buf.data, grad_buf.data, ga != nullptr ? grad_attn_buf.data : nullptr,
                           word_buf.data, C, n, round_up(n, kWordBlock), (valid + kLanes - 1) / kLanes,
                           prob_buf.data, grad_score_buf.data, grad_query_buf.data, acc_buf.data);
        store_rows(grad_query_buf.data, R, C, valid, gq + b * C * R + p0,
                   concat ? go_b : static_cast<const scalar_t*>(nullptr));
      }
      if (loaded >= 0) flush(loaded);
    });
    grad_words = partial.sum(0).to(query.scalar_type());
  });
  return {grad_query, grad_words};
}

}  // namespace

TORCH_LIBRARY_IMPL(attngan_C, CPU, m) {
  m.impl("word_attention_fwd", &word_attention_fwd_cpu);
  m.impl("word_attention_bwd", &word_attention_bwd_cpu);
}
