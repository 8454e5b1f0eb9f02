// The one pybind11 file of attngan._C. The kernels register themselves with the PyTorch
// dispatcher (csrc/registration.cpp, csrc/cpu, csrc/cuda), so importing this module is all Python
// needs; it also reports whether CUDA was compiled in and exports the CUDA kernels' size limits
// (csrc/cuda/limits.h) to the Python dispatch.
#include <torch/extension.h>

#include "cuda/limits.h"

PYBIND11_MODULE(_C, m) {
  m.doc() = "attngan compiled kernels (ops live under torch.ops.attngan_C)";
#ifdef ATTNGAN_WITH_CUDA
  m.attr("with_cuda") = true;
#else
  m.attr("with_cuda") = false;
#endif
  pybind11::dict damsm, word_attention, limits;
  damsm["max_dim"] = attngan::kDamsmMaxDim;
  damsm["max_words"] = attngan::kDamsmMaxWords;
  damsm["max_images"] = attngan::kCudaMaxGridY;
  word_attention["max_channels"] = attngan::kWordAttentionMaxChannels;
  word_attention["max_words"] = attngan::kWordAttentionMaxWords;
  limits["damsm_word_similarity"] = damsm;
  limits["word_attention"] = word_attention;
  m.attr("cuda_limits") = limits;
  m.def("word_attention_cuda_unsupported", &attngan::word_attention_cuda_unsupported,
        "Why the CUDA word-attention kernels cannot take C channels and L words, or ''.");
}
