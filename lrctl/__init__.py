"""lrctl: an interactive terminal trainer for tuning the learning rate of a PyTorch model by hand."""

__version__ = "0.1.0"
__all__ = ["__version__"]
