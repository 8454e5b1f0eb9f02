"""attngan: AttnGAN (Xu et al., CVPR 2018) with fused DAMSM and word-attention kernels.

Imports on a CPU-only machine with neither triton nor the compiled extension present; the
hot ops pick their implementation in `attngan.backend`.
"""

__version__ = "0.1.0"
