"""The version of fastrnn and fastrnn_torch: written here only (pyproject reads it)."""

__version__ = "0.2.0"
