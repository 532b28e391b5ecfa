"""halton: train, sample and evaluate MaskGIT models with the Halton scheduler."""

__version__ = "0.1.0"
