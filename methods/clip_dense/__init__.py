"""clip-dense: training-free MaskCLIP-style dense CLIP segmentation."""

from ovbench_methods.clip_dense.model import ClipDenseModel, build_clip_dense_model

__all__ = ["ClipDenseModel", "build_clip_dense_model"]
