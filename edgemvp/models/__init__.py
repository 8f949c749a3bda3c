"""Model layer: the timm factory, safe weight loading and cached base models.

Importing this package applies the torchvision compatibility step (:mod:`edgemvp._compat`) before anything
imports timm or torchvision.
"""
from edgemvp._compat import ensure_torchvision_importable

ensure_torchvision_importable()
