// The one pybind11 file of attngan._C. The kernels register themselves with the PyTorch
// dispatcher (TORCH_LIBRARY_FRAGMENT / TORCH_LIBRARY_IMPL in csrc/cpu and csrc/cuda), so
// importing this module is all Python needs; it also reports what was compiled in.
#include <torch/extension.h>

PYBIND11_MODULE(_C, m) {
  m.doc() = "attngan compiled kernels (ops live under torch.ops.attngan_C)";
#ifdef ATTNGAN_WITH_CUDA
  m.attr("with_cuda") = true;
#else
  m.attr("with_cuda") = false;
#endif
}
