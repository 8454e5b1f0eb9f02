"""Triton kernels of attngan, installed as attngan.kernels (one file per op)."""
