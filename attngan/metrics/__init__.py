"""Metrics: R-precision, the synthetic shapes checker, Inception Score and FID, generator
evaluation. `PAPER_SAMPLES` is here, free of imports, for the CLI's help."""

# SPEC section 5: the Inception Score over 10 splits, R-precision over 10 folds of 3,000.
PAPER_SAMPLES = 30_000
