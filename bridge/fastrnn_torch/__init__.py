"""fastrnn_torch: the PyTorch bridge of fastrnn (drop-in torch.nn recurrent modules).

The autograd-backed modules arrive with the bridge issue; for now the package
holds the benchmark that compares fastrnn with torch.nn (``fastrnn bench``).
"""

__all__ = []
