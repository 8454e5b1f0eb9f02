"""Metrics: R-precision, the synthetic shapes checker, generator evaluation."""
