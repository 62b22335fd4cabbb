"""recstack: train, serve and characterize deep learning recommendation models."""

__version__ = "0.1.0"
