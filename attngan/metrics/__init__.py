"""Metrics: R-precision, the synthetic shapes checker, Inception Score and FID, generator
evaluation."""
