// DAMSM word-level similarity on CPU, forward and backward: the math of docs/DESIGN.md, "DAMSM
// word similarity" (schemas in csrc/registration.cpp).
//
// Mapping. The valid words of all captions are gathered once into E^T [N, D] (N = sum of lengths;
// padded slots are never read). A work item is (image j, a contiguous block of captions), handed
// to the intra-op threads dynamically; its rows of E^T against V[j] make every product a GEMM of
// a few hundred rows (at::mm, MKL, single-threaded inside the parallel_for):
//   forward : S^T = E^T v [n, R] -> P, alpha (row passes, in place) -> C^T = alpha v^T [n, D]
//   backward: the same recomputed (nothing per pair is kept between the passes), then
//             dC^T = A E^T + B C^T, dalpha = dC^T v, dS (row passes),
//             dv = [dC^T; E^T]^T [alpha; dS] (one GEMM of inner size 2n),
//             dE^T += (dS + A alpha) v^T (A c_t folded in, since C^T = alpha v^T), and the Bw e_t
//             term added once at the end; per-group word accumulators summed in a fixed order.
// No [B_img, B_cap, R, L] tensor exists: per thread a few [n, R] and [n, D] buffers. The row
// passes (softmaxes, cosines, log-sum-exps) run in float (double for gradcheck) over contiguous
// memory, vectorized (AVX-512 / AVX2 clones picked at load time). The GEMMs run on FloatGemm
// (MKL in float or double) or, for bfloat16 inputs on a CPU with AMX, on AmxGemm (bfloat16
// products with float accumulation on the AMX tiles).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/native/CPUBlas.h>
#include <c10/util/ParallelGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <utility>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "cpu/checks.h"

// Without it GCC will not if-convert the float compares of the max/clamp loops below, so they
// would stay scalar; these loops never rely on floating-point traps.
#pragma GCC optimize("no-trapping-math")

#define ATTNGAN_INLINE inline __attribute__((always_inline))
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define ATTNGAN_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define ATTNGAN_CLONES
#endif

namespace attngan {
namespace {

constexpr double kNormEps = 1e-8;  // clamp of the norm product, as the original's cosine
// AMX products (AmxGemm): operand sizes padded to multiples of kAmxAlign; B packed in column
// panels of at most kAmxPanel (the widths the oneDNN ukernel packs: 16, 32, 48, 64).
constexpr int64_t kAmxAlign = 16;
constexpr int64_t kAmxPanel = 64;

int64_t round_up(int64_t x, int64_t to) { return (x + to - 1) / to * to; }

// Flush denormals to zero on this thread while alive. The word softmax of real scores is very
// peaked, so p and the score gradients are full of values below 1e-38; fed to the GEMMs as
// denormals they made the backward twice as slow (microcode assists). Values that small carry
// nothing at float precision.
class FlushDenormals {
 public:
  FlushDenormals() {
#if defined(__x86_64__)
    saved_ = _mm_getcsr();
    _mm_setcsr(saved_ | 0x8040);  // FTZ | DAZ
#endif
  }
  ~FlushDenormals() {
#if defined(__x86_64__)
    _mm_setcsr(saved_);
#endif
  }
  FlushDenormals(const FlushDenormals&) = delete;
  FlushDenormals& operator=(const FlushDenormals&) = delete;

 private:
  unsigned int saved_ = 0;
};

template <typename T>
ATTNGAN_INLINE T exp_approx(T x) {
  return std::exp(x);
}

// exp for float in a form the vectorizer accepts: x = n ln2 + r, |r| <= ln2 / 2, e^r by a
// degree-7 polynomial (Cephes' expf coefficients), 2^n assembled in the exponent bits. Inputs
// here are always <= 0 (a max was subtracted); below -88 the result is 0 or a tiny normal.
template <>
ATTNGAN_INLINE float exp_approx<float>(float x) {
  x = x > -88.0f ? x : -88.0f;
  x = x < 88.0f ? x : 88.0f;
  const float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // round to nearest
  const float r = (x - n * 0.693359375f) + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

// Softmax over the words of each caption (per region), then over regions (per word).
// scores: [n, R] rows of one block (caption after caption, lengths[c] rows each, ld apart); on
// return it holds p. alpha: [n, R] output, rows ld apart. work: 2 R scratch values.
template <typename T>
ATTNGAN_INLINE void attention_rows(T* __restrict scores, T* __restrict alpha,
                                   const int64_t* lengths, int64_t num_captions, int64_t R,
                                   int64_t ld, T gamma1, T* __restrict work) {
  T* __restrict top = work;
  T* __restrict sum = work + R;
  int64_t t0 = 0;
  for (int64_t c = 0; c < num_captions; ++c) {
    const int64_t n = lengths[c];
    T* seg = scores + t0 * ld;
    std::memcpy(top, seg, sizeof(T) * R);
    for (int64_t t = 1; t < n; ++t) {
      const T* __restrict row = seg + t * ld;
#pragma omp simd
      for (int64_t r = 0; r < R; ++r) top[r] = row[r] > top[r] ? row[r] : top[r];
    }
    std::fill(sum, sum + R, T(0));
    for (int64_t t = 0; t < n; ++t) {
      T* __restrict row = seg + t * ld;
#pragma omp simd
      for (int64_t r = 0; r < R; ++r) {
        const T e = exp_approx<T>(row[r] - top[r]);
        row[r] = e;
        sum[r] += e;
      }
    }
#pragma omp simd
    for (int64_t r = 0; r < R; ++r) top[r] = T(1) / sum[r];
    for (int64_t t = 0; t < n; ++t) {
      T* __restrict row = seg + t * ld;
      T* __restrict out = alpha + (t0 + t) * ld;
      T row_max = -std::numeric_limits<T>::infinity();
#pragma omp simd reduction(max : row_max)
      for (int64_t r = 0; r < R; ++r) {
        const T p = row[r] * top[r];
        row[r] = p;
        const T z = gamma1 * p;
        row_max = z > row_max ? z : row_max;
      }
      T row_sum = 0;
#pragma omp simd reduction(+ : row_sum)
      for (int64_t r = 0; r < R; ++r) {
        const T e = exp_approx<T>(gamma1 * row[r] - row_max);
        out[r] = e;
        row_sum += e;
      }
      const T inv = T(1) / row_sum;
#pragma omp simd
      for (int64_t r = 0; r < R; ++r) out[r] *= inv;
    }
    t0 += n;
  }
}

// Per word row t: dot = c_t . e_t, cc = |c_t|^2 (D contiguous values each).
template <typename T>
ATTNGAN_INLINE void context_dots(const T* __restrict context, const T* __restrict words,
                                 int64_t n, int64_t D, T* __restrict dot, T* __restrict cc) {
  for (int64_t t = 0; t < n; ++t) {
    const T* __restrict c = context + t * D;
    const T* __restrict e = words + t * D;
    T ce = 0, c2 = 0;
#pragma omp simd reduction(+ : ce, c2)
    for (int64_t d = 0; d < D; ++d) {
      ce += c[d] * e[d];
      c2 += c[d] * c[d];
    }
    dot[t] = ce;
    cc[t] = c2;
  }
}

// R_t = dot / max(|c| |e|, eps) for each row.
template <typename T>
ATTNGAN_INLINE T cosine(T dot, T cc, T enorm, T* q_out) {
  const T q = std::sqrt(cc) * enorm;
  *q_out = q;
  return dot / std::max(q, static_cast<T>(kNormEps));
}

// Backward of the region softmax then of the word softmax, in place.
// d: [n, R] dalpha on entry, dS on return. p and alpha as attention_rows left them (all three
// with rows ld apart). With need_words, p is overwritten by dS + a_t alpha (the rows the word
// gradient needs).
template <typename T>
ATTNGAN_INLINE void attention_rows_backward(T* __restrict p, const T* __restrict alpha,
                                            T* __restrict d, const T* __restrict a,
                                            const int64_t* lengths, int64_t num_captions,
                                            int64_t R, int64_t ld, T gamma1, bool need_words,
                                            T* __restrict acc) {
  int64_t t0 = 0;
  for (int64_t c = 0; c < num_captions; ++c) {
    const int64_t n = lengths[c];
    std::fill(acc, acc + R, T(0));
    for (int64_t t = t0; t < t0 + n; ++t) {
      const T* __restrict al = alpha + t * ld;
      const T* __restrict pr = p + t * ld;
      T* __restrict dr = d + t * ld;
      T dot = 0;
#pragma omp simd reduction(+ : dot)
      for (int64_t r = 0; r < R; ++r) dot += al[r] * dr[r];
#pragma omp simd
      for (int64_t r = 0; r < R; ++r) {
        const T dp = gamma1 * al[r] * (dr[r] - dot);
        dr[r] = dp;
        acc[r] += pr[r] * dp;
      }
    }
    for (int64_t t = t0; t < t0 + n; ++t) {
      const T* __restrict al = alpha + t * ld;
      T* __restrict pr = p + t * ld;
      T* __restrict dr = d + t * ld;
      if (need_words) {
        const T at = a[t];
#pragma omp simd
        for (int64_t r = 0; r < R; ++r) {
          const T ds = pr[r] * (dr[r] - acc[r]);
          dr[r] = ds;
          pr[r] = ds + at * al[r];
        }
      } else {
#pragma omp simd
        for (int64_t r = 0; r < R; ++r) dr[r] = pr[r] * (dr[r] - acc[r]);
      }
    }
    t0 += n;
  }
}

// rows[t] = a[t] * words[t] + b[t] * rows[t]  (rows holds C^T on entry, dC^T on return).
template <typename T>
ATTNGAN_INLINE void combine_rows(T* __restrict rows, const T* __restrict words,
                                 const T* __restrict a, const T* __restrict b, int64_t n,
                                 int64_t D) {
  for (int64_t t = 0; t < n; ++t) {
    T* __restrict out = rows + t * D;
    const T* __restrict e = words + t * D;
    const T at = a[t], bt = b[t];
#pragma omp simd
    for (int64_t d = 0; d < D; ++d) out[d] = at * e[d] + bt * out[d];
  }
}

// float row kernels, cloned for AVX-512 / AVX2 / baseline x86-64 and picked at load time.
ATTNGAN_CLONES void attention_rows_f(float* s, float* al, const int64_t* len, int64_t nc,
                                     int64_t R, int64_t ld, float g1, float* w) {
  attention_rows<float>(s, al, len, nc, R, ld, g1, w);
}
ATTNGAN_CLONES void attention_rows_backward_f(float* p, const float* al, float* d, const float* a,
                                              const int64_t* len, int64_t nc, int64_t R,
                                              int64_t ld, float g1, bool nw, float* acc) {
  attention_rows_backward<float>(p, al, d, a, len, nc, R, ld, g1, nw, acc);
}
ATTNGAN_CLONES void context_dots_f(const float* c, const float* e, int64_t n, int64_t D,
                                   float* dot, float* cc) {
  context_dots<float>(c, e, n, D, dot, cc);
}
ATTNGAN_CLONES void combine_rows_f(float* rows, const float* e, const float* a, const float* b,
                                   int64_t n, int64_t D) {
  combine_rows<float>(rows, e, a, b, n, D);
}
// The row kernels as called: float gets AVX-512 / AVX2 / baseline clones picked at load time,
// double (gradcheck only) the baseline build.
template <typename T> struct Rows;
template <> struct Rows<float> {
  static void attention(float* s, float* al, const int64_t* len, int64_t nc, int64_t R,
                        int64_t ld, float g1, float* w) {
    attention_rows_f(s, al, len, nc, R, ld, g1, w);
  }
  static void attention_backward(float* p, const float* al, float* d, const float* a,
                                 const int64_t* len, int64_t nc, int64_t R, int64_t ld, float g1,
                                 bool nw, float* acc) {
    attention_rows_backward_f(p, al, d, a, len, nc, R, ld, g1, nw, acc);
  }
  static void dots(const float* c, const float* e, int64_t n, int64_t D, float* dot, float* cc) {
    context_dots_f(c, e, n, D, dot, cc);
  }
  static void combine(float* rows, const float* e, const float* a, const float* b, int64_t n,
                      int64_t D) {
    combine_rows_f(rows, e, a, b, n, D);
  }
};
template <> struct Rows<double> {
  static void attention(double* s, double* al, const int64_t* len, int64_t nc, int64_t R,
                        int64_t ld, double g1, double* w) {
    attention_rows<double>(s, al, len, nc, R, ld, g1, w);
  }
  static void attention_backward(double* p, const double* al, double* d, const double* a,
                                 const int64_t* len, int64_t nc, int64_t R, int64_t ld,
                                 double g1, bool nw, double* acc) {
    attention_rows_backward<double>(p, al, d, a, len, nc, R, ld, g1, nw, acc);
  }
  static void dots(const double* c, const double* e, int64_t n, int64_t D, double* dot,
                   double* cc) {
    context_dots<double>(c, e, n, D, dot, cc);
  }
  static void combine(double* rows, const double* e, const double* a, const double* b, int64_t n,
                      int64_t D) {
    combine_rows<double>(rows, e, a, b, n, D);
  }
};

// Inputs checked, words gathered to E^T [N, D], regions as [B_img, D, R], in the compute type
// (the regions in bfloat16 for AmxGemm, which packs them from there).
struct Prepared {
  at::Tensor words_t;                // [N, ld_d] valid words only, zero past column D
  at::Tensor regions;                // [B_img, D, R] contiguous; bfloat16 for AmxGemm
  at::Tensor enorm;                  // [N] |e_t|
  std::vector<int64_t> lengths;      // [B_cap]
  std::vector<int64_t> offsets;      // [B_cap + 1] first row of each caption in words_t
  at::Tensor valid_index;            // [N] flat index (i * L + t) of each row in [B_cap * L]
  int64_t num_images, num_captions, D, L, R, N;
  int64_t ld_d, ld_r;                // row strides of the D-long and R-long row buffers
  int64_t blocks;                    // caption blocks per image (work items = B_img * blocks)
};

// The kernel's preconditions (attngan.ops.damsm validates the inputs before any backend runs;
// these guard memory when the op is called directly or inside a compiled graph).
void check_inputs(const at::Tensor& words, const at::Tensor& lengths, const at::Tensor& regions) {
  TORCH_CHECK(words.dim() == 3 && regions.dim() == 3 && lengths.dim() == 1 &&
                  lengths.size(0) == words.size(0) && regions.size(1) == words.size(1) &&
                  words.numel() > 0 && regions.numel() > 0,
              "damsm_word_similarity (C++): expected words [Bc, D, L], lengths [Bc], regions "
              "[Bi, D, R], none empty; got ", words.sizes(), ", ", lengths.sizes(), ", ",
              regions.sizes());
  TORCH_CHECK(words.device().is_cpu() && regions.device().is_cpu() && lengths.device().is_cpu(),
              "damsm_word_similarity (C++): all inputs must be CPU tensors");
  const auto type = words.scalar_type();
  TORCH_CHECK(at::isFloatingType(type) && regions.scalar_type() == type &&
                  (lengths.scalar_type() == at::kLong || lengths.scalar_type() == at::kInt),
              "damsm_word_similarity (C++): words and regions of one floating dtype and integer "
              "lengths expected, got ", type, ", ", regions.scalar_type(), ", ",
              lengths.scalar_type());
}

Prepared prepare(const at::Tensor& words, const at::Tensor& lengths, const at::Tensor& regions,
                 at::ScalarType compute, bool amx) {
  check_inputs(words, lengths, regions);
  const int64_t threads = at::get_num_threads();
  // The preparation is a few small ATen ops: run them on this thread (they see themselves
  // inside a parallel region). Each would otherwise fork and join the thread team, and on a
  // machine shared with other work every join waits for a descheduled thread.
  c10::ParallelGuard serial(true);
  Prepared pr;
  pr.num_captions = words.size(0);
  pr.D = words.size(1);
  pr.L = words.size(2);
  pr.num_images = regions.size(0);
  pr.R = regions.size(2);
  pr.lengths = lengths_in_range("damsm_word_similarity", lengths, pr.L);
  pr.offsets.assign(pr.num_captions + 1, 0);
  std::vector<int64_t> index;
  for (int64_t i = 0; i < pr.num_captions; ++i) {
    const int64_t n = pr.lengths[i];
    pr.offsets[i + 1] = pr.offsets[i] + n;
    for (int64_t t = 0; t < n; ++t) index.push_back(i * pr.L + t);
  }
  pr.N = pr.offsets[pr.num_captions];
  pr.valid_index = at::tensor(index, at::TensorOptions().dtype(at::kLong));
  // The AMX products take operands zero-padded to multiples of 16 (see AmxGemm); rows of D
  // values may carry that padding everywhere (zeros change no dot product), rows of R values
  // may not (the softmaxes), so R-long rows keep R values ld_r apart.
  pr.ld_d = amx ? round_up(pr.D, kAmxAlign) : pr.D;
  pr.ld_r = amx ? round_up(pr.R, kAmxAlign) : pr.R;
  // [B_cap, D, L] -> [B_cap * L, D] -> the N valid rows.
  // Detached: the kernel is differentiated by its backward op, never by autograd, and
  // at::mm_out refuses inputs that require grad.
  pr.words_t = words.detach().transpose(1, 2).reshape({pr.num_captions * pr.L, pr.D})
                   .index_select(0, pr.valid_index).to(compute);
  if (pr.ld_d != pr.D) pr.words_t = at::constant_pad_nd(pr.words_t, {0, pr.ld_d - pr.D});
  pr.words_t = pr.words_t.contiguous();
  // AmxGemm packs the regions straight from bfloat16 (the inputs' dtype there); no float copy
  pr.regions = regions.detach().to(amx ? at::kBFloat16 : compute).contiguous();
  pr.enorm = at::linalg_vector_norm(pr.words_t, 2, {1}).contiguous();
  // Enough items for every thread even when there are few images (R-precision: 1 image
  // against 100 captions); one block per image when images alone keep the threads busy.
  const int64_t want = (2 * threads + pr.num_images - 1) / pr.num_images;
  pr.blocks = std::max<int64_t>(1, std::min<int64_t>(want, pr.num_captions));
  return pr;
}

// Captions [c0, c1) of caption block b.
std::pair<int64_t, int64_t> block_range(const Prepared& pr, int64_t b) {
  const int64_t per = (pr.num_captions + pr.blocks - 1) / pr.blocks;
  const int64_t c0 = std::min(b * per, pr.num_captions);
  return {c0, std::min(c0 + per, pr.num_captions)};
}

int64_t max_block_rows(const Prepared& pr) {
  int64_t rows = 0;
  for (int64_t b = 0; b < pr.blocks; ++b) {
    const auto [c0, c1] = block_range(pr, b);
    rows = std::max(rows, pr.offsets[c1] - pr.offsets[c0]);
  }
  return rows;
}

// Runs body(state, k) for every k in [0, count) on the intra-op threads, each thread taking the
// next k when it is done with its last: on a machine shared with other work the threads do
// not run at the same speed, and a static split would wait for the slowest. state = init() is
// built once per thread (its buffers).
template <typename Init, typename Body>
void parallel_dynamic(int64_t count, const Init& init, const Body& body) {
  std::atomic<int64_t> next{0};
  const int64_t threads = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), count));
  at::parallel_for(0, threads, 1, [&](int64_t, int64_t) {
    FlushDenormals flush;
    auto state = init();
    for (int64_t k = next++; k < count; k = next++) body(state, k);
  });
}

// ------------------------------------------------------------------- the matrix products
// Every GEMM of a work item multiplies by image j's regions v [D, R] or by v^T. Rows of the
// engine's Scalar (float, or double for gradcheck) in and out, D-long rows ld_d apart and R-long
// rows ld_r apart (Prepared):
//   set_image(j)
//   times_v(rows [n, D], n, out [n, R])            out = rows v
//   times_vt(rows [n, R], n, out [n, D], add)      out = rows v^T  (or += with add)
//   region_gradient(x [2n, D], y [2n, R], n, dv)   dv [D, R] (contiguous) = x^T y, dv in
//                                                  kRegionGradient (an image's whole gradient:
//                                                  the dtype returned) or in Scalar (a part)
// Two engines:
//   FloatGemm<T>: at::mm_out in T (MKL's sgemm / dgemm), ld_d = D, ld_r = R.
//   AmxGemm: bfloat16 operands, float accumulation and results, on the AMX tiles through
//     ATen's oneDNN brgemm ukernel (at::native::cpublas). For bfloat16 inputs on a CPU that
//     has AMX: the operands the products see are the ones the GPU kernels' bfloat16 tensor-core
//     dots see (inputs as given, alpha, dC and dS rounded to bfloat16).

template <typename T>
class FloatGemm {
 public:
  using Scalar = T;
  static constexpr at::ScalarType kRegionGradient = c10::CppTypeToScalarType<T>::value;
  FloatGemm(const Prepared& pr, int64_t /*max_rows*/) : pr_(pr), options_(pr.words_t.options()) {}
  void set_image(int64_t j) { v_ = pr_.regions[j]; }
  void times_v(const T* rows, int64_t n, T* out) {
    at::Tensor result = wrap(out, n, pr_.R);
    at::mm_out(result, wrap(rows, n, pr_.D), v_);
  }
  void times_vt(const T* rows, int64_t n, T* out, bool add) {
    at::Tensor result = wrap(out, n, pr_.D);
    if (add) {
      result.addmm_(wrap(rows, n, pr_.R), v_.t());
    } else {
      at::mm_out(result, wrap(rows, n, pr_.R), v_.t());
    }
  }
  void region_gradient(const T* x, const T* y, int64_t n, at::Tensor& dv) {
    at::mm_out(dv, wrap(x, 2 * n, pr_.D).t(), wrap(y, 2 * n, pr_.R));
  }

 private:
  at::Tensor wrap(const T* data, int64_t rows, int64_t cols) const {
    return at::from_blob(const_cast<T*>(data), {rows, cols}, options_);
  }
  const Prepared& pr_;
  at::TensorOptions options_;
  at::Tensor v_;
};

#if defined(__x86_64__) && defined(__GNUC__)
// Float to bfloat16 (round to nearest even, as the GPU kernels' casts) with AVX512-BF16, which
// every CPU with AMX-BF16 has; only AmxGemm calls these.
#define ATTNGAN_AVX512_BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))

ATTNGAN_AVX512_BF16 ATTNGAN_INLINE __m256i bfloat16_of(__m512 x) {
  return reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(x));
}

// 16 values from p as floats, lanes off in m read as 0: float as it is, bfloat16 widened exactly
// (its bits in the upper half of each 32-bit lane; the maskz forms because GCC 12 warns of the
// plain ones' undefined pass-through operand).
ATTNGAN_AVX512_BF16 ATTNGAN_INLINE __m512 load_floats(const float* p, __mmask16 m) {
  return _mm512_maskz_loadu_ps(m, p);
}
ATTNGAN_AVX512_BF16 ATTNGAN_INLINE __m512 load_floats(const uint16_t* p, __mmask16 m) {
  const __m512i wide = _mm512_maskz_cvtepu16_epi32(0xFFFF, _mm256_maskz_loadu_epi16(m, p));
  return _mm512_castsi512_ps(_mm512_maskz_slli_epi32(0xFFFF, wide, 16));
}

// out [rows, cols] (rows ld_out apart) = in [rows, cols] (rows ld_in apart) rounded to bfloat16,
// nothing written past column cols.
ATTNGAN_AVX512_BF16 void store_bfloat16_rows(const float* in, int64_t rows, int64_t cols,
                                             int64_t ld_in, uint16_t* out, int64_t ld_out) {
  for (int64_t i = 0; i < rows; ++i) {
    for (int64_t c = 0; c < cols; c += 16) {
      const __mmask16 m =
          static_cast<__mmask16>((1u << std::min<int64_t>(16, cols - c)) - 1u);
      _mm256_mask_storeu_epi16(out + i * ld_out + c, m,
                               bfloat16_of(_mm512_maskz_loadu_ps(m, in + i * ld_in + c)));
    }
  }
}

// out [rows, ld_out] = in [rows, cols] (rows ld_in apart) in bfloat16; ld_out is a multiple of
// 16 >= cols and the columns [cols, ld_out) become 0.
ATTNGAN_AVX512_BF16 void rows_to_bfloat16(const float* in, int64_t rows, int64_t cols,
                                          int64_t ld_in, uint16_t* out, int64_t ld_out) {
  const int64_t full = cols / 16 * 16;
  const __mmask16 tail = static_cast<__mmask16>((1u << (cols - full)) - 1u);
  for (int64_t i = 0; i < rows; ++i) {
    const float* x = in + i * ld_in;
    uint16_t* y = out + i * ld_out;
    int64_t c = 0;
    for (; c < full; c += 16) {
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(y + c), bfloat16_of(_mm512_loadu_ps(x + c)));
    }
    for (; c < ld_out; c += 16) {
      const __mmask16 m = c == full ? tail : 0;
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(y + c),
                          bfloat16_of(_mm512_maskz_loadu_ps(m, x + c)));
    }
  }
}

// out [cols, ld_out] = in^T for in [rows, cols] (rows ld_in apart), in bfloat16, through 16 x 16
// tiles (contiguous loads, 32-byte stores).
ATTNGAN_AVX512_BF16 void columns_to_bfloat16(const float* in, int64_t rows, int64_t cols,
                                             int64_t ld_in, uint16_t* out, int64_t ld_out) {
  alignas(64) uint16_t tile[16][16];
  for (int64_t i0 = 0; i0 < rows; i0 += 16) {
    const int64_t ni = std::min<int64_t>(16, rows - i0);
    for (int64_t c0 = 0; c0 < cols; c0 += 16) {
      const int64_t nc = std::min<int64_t>(16, cols - c0);
      const __mmask16 m = static_cast<__mmask16>((1u << nc) - 1u);
      for (int64_t k = 0; k < ni; ++k) {
        _mm256_store_si256(reinterpret_cast<__m256i*>(tile[k]),
                           bfloat16_of(_mm512_maskz_loadu_ps(m, in + (i0 + k) * ld_in + c0)));
      }
      for (int64_t c = 0; c < nc; ++c) {
        uint16_t* y = out + (c0 + c) * ld_out + i0;
        for (int64_t k = 0; k < ni; ++k) y[k] = tile[k][c];
      }
    }
  }
}

// packed = b [K, N] in the VNNI-2 layout the oneDNN brgemm ukernel takes for bfloat16 (what
// cpublas::pack writes): column panels of width w <= kAmxPanel, the one at column n0 stored at
// packed + n0 * K as [K / 2][w][2]. b is float or bfloat16 rows ld apart; rows >= rows and
// columns >= cols read as 0. K even, N a multiple of 16.
template <typename In>
ATTNGAN_AVX512_BF16 void pack_bfloat16(const In* in, int64_t rows, int64_t cols, int64_t ld,
                                       int64_t K, int64_t N, uint16_t* packed) {
  alignas(64) static const uint16_t kInterleave[32] = {0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5,
                                                       21, 6, 22, 7, 23, 8, 24, 9, 25, 10, 26,
                                                       11, 27, 12, 28, 13, 29, 14, 30, 15, 31};
  const __m512i interleave = _mm512_load_si512(kInterleave);
  for (int64_t k = 0; k < K; k += 2) {  // a pair of rows at a time, all panels: streaming reads
    for (int64_t n0 = 0; n0 < N; n0 += kAmxPanel) {
      const int64_t width = std::min(kAmxPanel, N - n0);
      uint16_t* out = packed + n0 * K + k * width;  // pair row k / 2 of this panel
      for (int64_t c = 0; c < width; c += 16) {
        const int64_t valid = std::clamp<int64_t>(cols - (n0 + c), 0, 16);
        const __mmask16 m = static_cast<__mmask16>((1u << valid) - 1u);
        const __m512 even = k < rows ? load_floats(in + k * ld + n0 + c, m)
                                     : _mm512_setzero_ps();
        const __m512 odd = k + 1 < rows ? load_floats(in + (k + 1) * ld + n0 + c, m)
                                        : _mm512_setzero_ps();
        const __m512i both = reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(odd, even));
        _mm512_storeu_si512(out + 2 * c, _mm512_permutexvar_epi16(interleave, both));
      }
    }
  }
}

// packed = in^T in the layout of pack_bfloat16, for in [rows, cols] float or bfloat16 rows ld
// apart: B [K, N] with B[k, n] = in[n, k], 0 past the input. The VNNI pairs (k, k + 1) of a
// column n are neighbours in in's row n, so 16 rows x 32 columns of in become 16 x 16 pairs,
// transposed through a tile (gathers from it).
template <typename In>
ATTNGAN_AVX512_BF16 void pack_bfloat16_transposed(const In* in, int64_t rows, int64_t cols,
                                                  int64_t ld, int64_t K, int64_t N,
                                                  uint16_t* packed) {
  alignas(64) uint32_t tile[16][16];  // [column n of B][pair of B's rows]
  const __m512i down = _mm512_mullo_epi32(_mm512_set1_epi32(16),
                                          _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6,
                                                           5, 4, 3, 2, 1, 0));
  for (int64_t n0 = 0; n0 < N; n0 += kAmxPanel) {
    const int64_t width = std::min(kAmxPanel, N - n0);
    uint32_t* panel = reinterpret_cast<uint32_t*>(packed + n0 * K);  // [K / 2][width] pairs
    for (int64_t c = 0; c < width; c += 16) {
      for (int64_t k0 = 0; k0 < K; k0 += 32) {
        const int64_t valid = std::clamp<int64_t>(cols - k0, 0, 32);
        const __mmask16 lo = static_cast<__mmask16>((1u << std::min<int64_t>(valid, 16)) - 1u);
        const __mmask16 hi =
            static_cast<__mmask16>((1u << std::max<int64_t>(valid - 16, 0)) - 1u);
        for (int64_t i = 0; i < 16; ++i) {
          const int64_t n = n0 + c + i;
          __m512 first = _mm512_setzero_ps(), second = _mm512_setzero_ps();
          if (n < rows) {
            first = load_floats(in + n * ld + k0, lo);
            second = load_floats(in + n * ld + k0 + 16, hi);
          }
          _mm512_store_si512(tile[i],
                             reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(second, first)));
        }
        const int64_t pairs = std::min<int64_t>(16, (K - k0) / 2);
        for (int64_t q = 0; q < pairs; ++q) {
          const __m512i column = _mm512_mask_i32gather_epi32(
              _mm512_setzero_si512(), 0xFFFF,
              _mm512_add_epi32(down, _mm512_set1_epi32(static_cast<int>(q))), tile, 4);
          _mm512_storeu_si512(panel + (k0 / 2 + q) * width + c, column);
        }
      }
    }
  }
}

// The engine for bfloat16 inputs on AMX (see the top of this section). Per image: v and v^T
// packed once (D and R zero-padded to multiples of 16); per product: the float rows rounded to
// bfloat16 as the left operand, panels of <= kAmxPanel output columns, one brgemm call each.
class AmxGemm {
 public:
  using Scalar = float;
  static constexpr at::ScalarType kRegionGradient = at::kBFloat16;
  AmxGemm(const Prepared& pr, int64_t max_rows)
      : pr_(pr), Dp_(pr.ld_d), Rp_(pr.ld_r), v_packed_(Dp_ * Rp_), vt_packed_(Rp_ * Dp_),
        lhs_(std::max(max_rows * std::max(Dp_, Rp_), Dp_ * 2 * max_rows)),
        rhs_packed_(2 * max_rows * Rp_), dv_(Dp_ * Rp_) {}
  AmxGemm(const AmxGemm&) = delete;
  AmxGemm& operator=(const AmxGemm&) = delete;
  ~AmxGemm() { at::native::cpublas::brgemm_release(true); }  // this thread's tile state

  void set_image(int64_t j) {
    if (j == image_) return;  // the same image as this thread's last item: packed already
    image_ = j;
    const int64_t D = pr_.D, R = pr_.R;
    const auto* v = reinterpret_cast<const uint16_t*>(pr_.regions.data_ptr<at::BFloat16>()) +
                    j * D * R;
    pack_bfloat16(v, D, R, R, Dp_, Rp_, v_packed_.data());
    pack_bfloat16_transposed(v, D, R, R, Rp_, Dp_, vt_packed_.data());
  }
  void times_v(const float* rows, int64_t n, float* out) {
    rows_to_bfloat16(rows, n, Dp_, Dp_, lhs_.data(), Dp_);
    product(n, Dp_, Rp_, Dp_, v_packed_.data(), out, Rp_, false);
  }
  void times_vt(const float* rows, int64_t n, float* out, bool add) {
    rows_to_bfloat16(rows, n, pr_.R, Rp_, lhs_.data(), Rp_);
    product(n, Rp_, Dp_, Rp_, vt_packed_.data(), out, Dp_, add);
  }
  void region_gradient(const float* x, const float* y, int64_t n, at::Tensor& dv) {
    columns_to_bfloat16(x, 2 * n, Dp_, Dp_, lhs_.data(), 2 * n);       // x^T [Dp, 2n]
    pack_bfloat16(y, 2 * n, pr_.R, Rp_, 2 * n, Rp_, rhs_packed_.data());
    product(Dp_, 2 * n, Rp_, 2 * n, rhs_packed_.data(), dv_.data(), Rp_, false);
    if (dv.scalar_type() == at::kBFloat16) {  // an image's whole gradient: in the inputs' dtype
      store_bfloat16_rows(dv_.data(), pr_.D, pr_.R, Rp_,
                          reinterpret_cast<uint16_t*>(dv.data_ptr<at::BFloat16>()), pr_.R);
      return;
    }
    float* out = dv.data_ptr<float>();
    for (int64_t d = 0; d < pr_.D; ++d) {
      std::memcpy(out + d * pr_.R, dv_.data() + d * Rp_, sizeof(float) * pr_.R);
    }
  }

 private:
  // c [M, N] (ldc apart) = (or +=) lhs_ [M, K] (lda apart) times the packed b, panel by panel.
  void product(int64_t M, int64_t K, int64_t N, int64_t lda, const uint16_t* packed, float* c,
               int64_t ldc, bool add) const {
    const auto* a16 = reinterpret_cast<const at::BFloat16*>(lhs_.data());
    const auto* b16 = reinterpret_cast<const at::BFloat16*>(packed);
    for (int64_t n0 = 0; n0 < N; n0 += kAmxPanel) {
      const int64_t width = std::min(kAmxPanel, N - n0);
      at::native::cpublas::brgemm(M, width, K, lda, width, ldc, add, a16, b16 + n0 * K, c + n0,
                                  true);
    }
  }
  const Prepared& pr_;
  int64_t Dp_, Rp_;
  int64_t image_ = -1;
  std::vector<uint16_t> v_packed_, vt_packed_;  // image j: v [Dp, Rp], v^T [Rp, Dp], packed
  std::vector<uint16_t> lhs_, rhs_packed_;      // operands of one product (bfloat16)
  std::vector<float> dv_;                       // [Dp, Rp] region gradient
};
#endif  // x86-64 GCC / Clang

// Whether bfloat16 products run on AmxGemm: a CPU with AMX-BF16 (the oneDNN ukernel packs for
// it) and no ATTNGAN_CPU_AMX=0.
bool amx_available() {
  const char* flag = std::getenv("ATTNGAN_CPU_AMX");
  if (flag != nullptr && std::strcmp(flag, "0") == 0) return false;
#if defined(ATTNGAN_AVX512_BF16)
  return at::native::cpublas::could_pack(at::kBFloat16);
#else
  return false;
#endif
}

template <typename Gemm>
at::Tensor forward_impl(const Prepared& pr, double gamma1, double gamma2) {
  using T = typename Gemm::Scalar;
  const auto options = pr.words_t.options();
  at::Tensor out = at::empty({pr.num_images, pr.num_captions}, options);
  T* out_p = out.data_ptr<T>();
  const int64_t R = pr.R, ld_d = pr.ld_d, ld_r = pr.ld_r;
  const int64_t max_rows = max_block_rows(pr);
  const T g1 = static_cast<T>(gamma1), g2 = static_cast<T>(gamma2);
  const T* words = pr.words_t.data_ptr<T>();
  struct Buffers {
    Gemm gemm;
    at::Tensor scores, alpha, context;  // s -> p [n, R]; alpha [n, R]; C^T [n, D]
    std::vector<T> work, cosv, cc;
  };
  auto init = [&] {
    return Buffers{Gemm(pr, max_rows), at::empty({max_rows, ld_r}, options),
                   at::empty({max_rows, ld_r}, options), at::empty({max_rows, ld_d}, options),
                   std::vector<T>(2 * R), std::vector<T>(max_rows), std::vector<T>(max_rows)};
  };
  parallel_dynamic(pr.num_images * pr.blocks, init, [&](Buffers& buf, int64_t item) {
    const int64_t j = item / pr.blocks;
    const auto [c0, c1] = block_range(pr, item % pr.blocks);
    const int64_t r0 = pr.offsets[c0], n = pr.offsets[c1] - r0;
    if (n == 0) return;
    T *s = static_cast<T*>(buf.scores.data_ptr()), *a = static_cast<T*>(buf.alpha.data_ptr());
    T* ctx = static_cast<T*>(buf.context.data_ptr());
    const T* e = words + r0 * ld_d;                                        // [n, D]
    buf.gemm.set_image(j);
    buf.gemm.times_v(e, n, s);                                             // [n, R] eq. 7
    Rows<T>::attention(s, a, pr.lengths.data() + c0, c1 - c0, R, ld_r, g1,
                       buf.work.data());                                   // eqs. 8, 9
    buf.gemm.times_vt(a, n, ctx, false);                                   // [n, D]
    T* cosv = buf.cosv.data();
    Rows<T>::dots(ctx, e, n, ld_d, cosv, buf.cc.data());
    const T* en = pr.enorm.data_ptr<T>() + r0;
    int64_t t0 = 0;
    for (int64_t i = c0; i < c1; ++i) {
      const int64_t len = pr.lengths[i];
      T top = -std::numeric_limits<T>::infinity();
      for (int64_t t = t0; t < t0 + len; ++t) {
        T q;
        cosv[t] = g2 * cosine<T>(cosv[t], buf.cc[t], en[t], &q);
        top = std::max(top, cosv[t]);
      }
      T sum = 0;
      for (int64_t t = t0; t < t0 + len; ++t) sum += std::exp(cosv[t] - top);
      out_p[j * pr.num_captions + i] = top + std::log(sum);                // eq. 10
      t0 += len;
    }
  });
  return out;
}
template <typename Gemm>
std::pair<at::Tensor, at::Tensor> backward_impl(const Prepared& pr, const at::Tensor& grad_s,
                                                double gamma1, double gamma2, bool need_words) {
  using T = typename Gemm::Scalar;
  const auto options = pr.words_t.options();
  const int64_t R = pr.R, D = pr.D, N = pr.N, ld_d = pr.ld_d, ld_r = pr.ld_r;
  const int64_t max_rows = max_block_rows(pr);
  const T g1 = static_cast<T>(gamma1), g2 = static_cast<T>(gamma2), eps = kNormEps;
  const at::Tensor grad = grad_s.detach().to(options.dtype()).contiguous();
  const T* grad_p = grad.data_ptr<T>();
  const T* words = pr.words_t.data_ptr<T>();
  const int64_t items = pr.num_images * pr.blocks;
  // With one caption block per image, dv of image j is written in place (by AmxGemm in
  // bfloat16, the dtype returned); otherwise each block writes its own slot, in the compute
  // type, and the slots are summed.
  at::Tensor grad_regions = pr.blocks == 1
      ? at::empty({pr.num_images, D, R}, options.dtype(Gemm::kRegionGradient))
      : at::empty({pr.num_images, pr.blocks, D, R}, options);
  // The word gradient sums over images. Items are handed out in fixed groups of consecutive
  // items, each group with its own [N, D] accumulator, summed in group order at the end: the
  // result does not depend on which thread ran what (deterministic), the threads still
  // balance. About 4 groups per thread, fewer when the accumulators would pass ~64 MB.
  const int64_t threads = at::get_num_threads();
  const int64_t affordable = (int64_t{64} << 20) / std::max<int64_t>(1, N * ld_d * sizeof(T));
  const int64_t groups = need_words
      ? std::min(items, std::max(threads, std::min(4 * threads, affordable))) : items;
  const int64_t per_group = (items + groups - 1) / groups;
  std::vector<at::Tensor> words_acc(groups), coef_acc(groups);
  struct Buffers {
    Gemm gemm;
    at::Tensor lhs, rhs, prob;  // [dC^T; E^T] [2n, D]; [alpha; dalpha -> dS] [2n, R];
                                // s -> p -> dS + a alpha [n, R]
    std::vector<T> work, dot, cc, a, b, cosv, qv;
  };
  auto init = [&] {
    return Buffers{Gemm(pr, max_rows), at::empty({2 * max_rows, ld_d}, options),
                   at::empty({2 * max_rows, ld_r}, options), at::empty({max_rows, ld_r}, options),
                   std::vector<T>(2 * R),
                   std::vector<T>(max_rows), std::vector<T>(max_rows), std::vector<T>(max_rows),
                   std::vector<T>(max_rows), std::vector<T>(pr.L), std::vector<T>(pr.L)};
  };
  auto run_item = [&](Buffers& buf, int64_t item, T* coef_rows, T* word_rows) {
    const int64_t j = item / pr.blocks;
    const auto [c0, c1] = block_range(pr, item % pr.blocks);
    const int64_t r0 = pr.offsets[c0], n = pr.offsets[c1] - r0;
    at::Tensor dv = pr.blocks == 1 ? grad_regions[j] : grad_regions[j][item % pr.blocks];
    if (n == 0) {
      dv.zero_();
      return;
    }
    const T* e = words + r0 * ld_d;
    // x = [C^T -> dC^T; E^T] [2n, D], y = [alpha; dalpha -> dS] [2n, R]
    T *x = static_cast<T*>(buf.lhs.data_ptr()), *y = static_cast<T*>(buf.rhs.data_ptr());
    T *ctx = x, *al = y, *d = y + n * ld_r;
    T* p = static_cast<T*>(buf.prob.data_ptr());
    std::memcpy(x + n * ld_d, e, sizeof(T) * n * ld_d);
    buf.gemm.set_image(j);
    buf.gemm.times_v(e, n, p);                                             // s, recomputed
    Rows<T>::attention(p, al, pr.lengths.data() + c0, c1 - c0, R, ld_r, g1, buf.work.data());
    buf.gemm.times_vt(al, n, ctx, false);                                  // C^T, recomputed
    T *dot = buf.dot.data(), *cc = buf.cc.data(), *a = buf.a.data(), *b = buf.b.data();
    T *cosv = buf.cosv.data(), *qv = buf.qv.data();
    Rows<T>::dots(ctx, e, n, ld_d, dot, cc);
    // Log-sum-exp and cosine backward: dL/dc_t = a_t e_t + b_t c_t and
    // dL/de_t = a_t c_t + coef_t e_t, with g_t = dS[j, i] * g2 * softmax_t(g2 R)_t.
    const T* en = pr.enorm.data_ptr<T>() + r0;
    int64_t t0 = 0;
    for (int64_t i = c0; i < c1; ++i) {
      const int64_t len = pr.lengths[i];
      const T gs = grad_p[j * pr.num_captions + i];
      T top = -std::numeric_limits<T>::infinity();
      for (int64_t t = 0; t < len; ++t) {
        cosv[t] = cosine<T>(dot[t0 + t], cc[t0 + t], en[t0 + t], &qv[t]);
        top = std::max(top, g2 * cosv[t]);
      }
      T sum = 0;
      for (int64_t t = 0; t < len; ++t) sum += std::exp(g2 * cosv[t] - top);
      for (int64_t t = 0; t < len; ++t) {
        const T g = gs * g2 * std::exp(g2 * cosv[t] - top) / sum;
        if (qv[t] >= eps) {
          a[t0 + t] = g / qv[t];
          b[t0 + t] = -g * cosv[t] / cc[t0 + t];
          if (coef_rows) coef_rows[r0 + t0 + t] -= g * cosv[t] / (en[t0 + t] * en[t0 + t]);
        } else {  // clamped norm product: only the dot product carries gradient
          a[t0 + t] = g / eps;
          b[t0 + t] = 0;
        }
      }
      t0 += len;
    }
    Rows<T>::combine(ctx, e, a, b, n, ld_d);                               // dC^T
    buf.gemm.times_v(ctx, n, d);                                           // dalpha [n, R]
    Rows<T>::attention_backward(p, al, d, a, pr.lengths.data() + c0, c1 - c0, R, ld_r, g1,
                                need_words, buf.work.data());
    buf.gemm.region_gradient(x, y, n, dv);                                 // dv [D, R]
    if (word_rows) buf.gemm.times_vt(p, n, word_rows + r0 * ld_d, true);   // de^T [n, D]
  };
  parallel_dynamic(groups, init, [&](Buffers& buf, int64_t group) {
    T *word_rows = nullptr, *coef_rows = nullptr;
    if (need_words) {
      words_acc[group] = at::zeros({N, ld_d}, options);
      coef_acc[group] = at::zeros({N}, options);
      word_rows = words_acc[group].data_ptr<T>();
      coef_rows = coef_acc[group].data_ptr<T>();
    }
    const int64_t last = std::min(items, (group + 1) * per_group);
    for (int64_t item = group * per_group; item < last; ++item) {
      run_item(buf, item, coef_rows, word_rows);
    }
  });
  c10::ParallelGuard serial(true);  // the small reductions below: on this thread (see prepare)
  if (pr.blocks != 1) grad_regions = grad_regions.sum(1);
  at::Tensor grad_words;
  if (need_words) {
    at::Tensor total = words_acc[0], coef = coef_acc[0];
    for (int64_t g = 1; g < groups; ++g) {
      total.add_(words_acc[g]);
      coef.add_(coef_acc[g]);
    }
    total.addcmul_(coef.unsqueeze(1), pr.words_t);
    grad_words = at::zeros({pr.num_captions * pr.L, D}, options)
                     .index_copy_(0, pr.valid_index, total.narrow(1, 0, D))
                     .view({pr.num_captions, pr.L, D})
                     .transpose(1, 2);
  }
  return {grad_words, grad_regions};
}

template <typename Gemm>
struct EngineTag {
  using type = Gemm;
};

// Prepares the inputs for the engine that computes them and returns body(pr, EngineTag<Gemm>{}):
// double (gradcheck) and float on MKL; bfloat16 on the AMX tiles when the CPU has them
// (ATTNGAN_CPU_AMX=0 computes it as float instead); float16 as float.
template <typename Body>
auto with_engine(const at::Tensor& words, const at::Tensor& lengths, const at::Tensor& regions,
                 const Body& body) {
  if (words.scalar_type() == at::kDouble) {
    return body(prepare(words, lengths, regions, at::kDouble, false),
                EngineTag<FloatGemm<double>>{});
  }
#if defined(ATTNGAN_AVX512_BF16)
  if (words.scalar_type() == at::kBFloat16 && amx_available()) {
    return body(prepare(words, lengths, regions, at::kFloat, true), EngineTag<AmxGemm>{});
  }
#endif
  return body(prepare(words, lengths, regions, at::kFloat, false),
              EngineTag<FloatGemm<float>>{});
}

at::Tensor damsm_word_similarity_fwd_cpu(const at::Tensor& words, const at::Tensor& lengths,
                                         const at::Tensor& regions, double gamma1,
                                         double gamma2) {
  return with_engine(words, lengths, regions, [&](const Prepared& pr, auto engine) {
    return forward_impl<typename decltype(engine)::type>(pr, gamma1, gamma2);
  });
}

std::tuple<at::Tensor, at::Tensor> damsm_word_similarity_bwd_cpu(
    const at::Tensor& grad_s, const at::Tensor& words, const at::Tensor& lengths,
    const at::Tensor& regions, double gamma1, double gamma2, bool need_words_grad) {
  auto [gw, gr] = with_engine(words, lengths, regions, [&](const Prepared& pr, auto engine) {
    TORCH_CHECK(grad_s.dim() == 2 && grad_s.size(0) == pr.num_images &&
                    grad_s.size(1) == pr.num_captions,
                "damsm_word_similarity_bwd: grad_s must be [B_img, B_cap] = [", pr.num_images,
                ", ", pr.num_captions, "], got ", grad_s.sizes());
    TORCH_CHECK(grad_s.device().is_cpu(), "damsm_word_similarity_bwd: grad_s must be on CPU");
    return backward_impl<typename decltype(engine)::type>(pr, grad_s, gamma1, gamma2,
                                                          need_words_grad);
  });
  c10::ParallelGuard serial(true);
  gr = gr.to(regions.scalar_type());
  gw = need_words_grad ? gw.contiguous().to(words.scalar_type())
                       : at::empty({0}, words.options());
  return {gw, gr};
}

}  // namespace
}  // namespace attngan

TORCH_LIBRARY_IMPL(attngan_C, CPU, m) {
  m.impl("damsm_word_similarity_fwd", &attngan::damsm_word_similarity_fwd_cpu);
  m.impl("damsm_word_similarity_bwd", &attngan::damsm_word_similarity_bwd_cpu);
}

// An op without tensor arguments: reached through its CompositeImplicitAutograd kernel.
TORCH_LIBRARY_IMPL(attngan_C, CompositeImplicitAutograd, m) {
  m.impl("damsm_cpu_amx", &attngan::amx_available);
}
