// The schemas of the compiled ops, torch.ops.attngan_C.*, defined once here; csrc/cpu and
// csrc/cuda register their kernels for them (TORCH_LIBRARY_IMPL), and attngan/ops/_library.py
// wraps each backend in a custom op with its fake function and autograd (docs/DESIGN.md,
// "Registration").
#include <torch/library.h>

TORCH_LIBRARY(attngan_C, m) {
  // S [Bi, Bc] (float32; float64 for float64 inputs) from words [Bc, D, L], lengths [Bc] (each in
  // 1..L) and regions [Bi, D, R].
  m.def("damsm_word_similarity_fwd(Tensor words, Tensor lengths, Tensor regions, float gamma1, "
        "float gamma2) -> Tensor");
  // (grad_words [Bc, D, L], or an empty tensor without need_words_grad; grad_regions [Bi, D, R])
  // from the gradient of S, both in the inputs' dtype.
  m.def("damsm_word_similarity_bwd(Tensor grad_s, Tensor words, Tensor lengths, Tensor regions, "
        "float gamma1, float gamma2, bool need_words_grad) -> (Tensor, Tensor)");
  // Whether the C++ kernel computes the products of bfloat16 inputs on the AMX tiles here.
  m.def("damsm_cpu_amx() -> bool");
  // (out, attn) from query [B, C, H, W], words [B, C, L], lengths [B]: out is the context
  // [B, C, H, W], or with concat [query; context] [B, 2C, H, W]; attn [B, L, H, W] when
  // return_attn, else an empty tensor.
  m.def("word_attention_fwd(Tensor query, Tensor words, Tensor lengths, bool return_attn, "
        "bool concat) -> (Tensor, Tensor)");
  // (grad_query, grad_words) from grad_out, the gradient of out (its shape follows concat), and
  // grad_attn (None or empty when the map was not used).
  m.def("word_attention_bwd(Tensor grad_out, Tensor? grad_attn, Tensor query, Tensor words, "
        "Tensor lengths, bool concat) -> (Tensor, Tensor)");
}
