"""SAN (Side Adapter Network, CVPR 2023) at the published ViT-B/16 setting; see docs/methods/san.md."""

from ovbench_methods.san.config import SanConfig, SanConfigError
from ovbench_methods.san.model import SanModel, SanOutputs, SanPrediction, build_san_model

__all__ = ["SanConfig", "SanConfigError", "SanModel", "SanOutputs", "SanPrediction", "build_san_model"]
