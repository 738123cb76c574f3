"""GSNet (Ye, Zhuge, Zhang; AAAI 2025): its own modules.

- `fusion`: QGFF and the Table 3 fusion ablations (`build_cost_fusion`), the RSIB projections;
- `decoder`: RIPD, the two-stream guided upsampling decoder.
The DINO specialist stream (RSIB) is `ovbench_methods.common.dino`; the cost aggregator and the CLIP
stream are shared with CAT-Seg in `ovbench_methods.common`.
"""

from ovbench_methods.gsnet.decoder import DecoderInputError, DoubleConv, FusionUp, RipdDecoder
from ovbench_methods.gsnet.fusion import (
    FUSION_TYPES,
    ConcatenationFusion,
    CostFusion,
    FuseThenQueryFusion,
    FusionInputError,
    QueryGuidedFusion,
    RsibProjections,
    SingleStreamCost,
    build_cost_fusion,
    cost_volume,
)

__all__ = [
    "FUSION_TYPES",
    "ConcatenationFusion",
    "CostFusion",
    "DecoderInputError",
    "DoubleConv",
    "FuseThenQueryFusion",
    "FusionInputError",
    "FusionUp",
    "QueryGuidedFusion",
    "RipdDecoder",
    "RsibProjections",
    "SingleStreamCost",
    "build_cost_fusion",
    "cost_volume",
]
