"""Metrics: R-precision, the synthetic shapes checker, Inception Score and FID, generator
evaluation. The evaluation protocol's defaults are here, free of imports, for the CLI's help."""

# The paper's protocol (docs/DESIGN.md, "Evaluation"): 30,000 samples, the Inception Score
# over 10 splits.
PAPER_SAMPLES = 30_000
INCEPTION_SPLITS = 10
INCEPTION_VARIANT = "torchvision"  # attngan.metrics.inception_metrics.INCEPTION_VARIANTS
# What the metrics read of a generated image: "uint8", the pixels of the PNG file the original's
# sampler writes ((x + 1) * 127.5, truncated), which the reference score tools read; or "float",
# the generator's output itself.
PIXELS = ("uint8", "float")
