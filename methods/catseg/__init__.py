"""CAT-Seg: cost aggregation over a fine-tuned CLIP (CVPR 2024, CLIP-only version)."""

from methods.catseg.model import CatSegAggregator, CatSegConfigError, CatSegModel, build_catseg_model, set_mlp_activation

__all__ = ["CatSegAggregator", "CatSegConfigError", "CatSegModel", "build_catseg_model", "set_mlp_activation"]
