"""The version of fastrnn and its PyTorch bridge: written here only (pyproject reads it)."""

__version__ = "0.2.0"
