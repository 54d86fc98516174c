"""tinytamer: take a PyTorch model to a small device, measured at every step."""

__version__ = "0.1.0"
