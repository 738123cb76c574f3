"""CAT-Seg (CVPR 2024), CLIP-only version: `CatSegModel` and its head `CatSegAggregator`."""

from ovbench_methods.catseg.model import CatSegAggregator, CatSegConfigError, CatSegModel, build_catseg_model

__all__ = ["CatSegAggregator", "CatSegConfigError", "CatSegModel", "build_catseg_model"]
