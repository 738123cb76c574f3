"""EBSeg (image embedding balancing, CVPR 2024) at the published EBSeg-B setting; see docs/methods/ebseg.md."""

from ovbench_methods.ebseg.config import EbsegBalancing, EbsegConfig, EbsegConfigError
from ovbench_methods.ebseg.model import EbsegModel, EbsegOutputs, EbsegPrediction, build_ebseg_model

__all__ = ["EbsegBalancing", "EbsegConfig", "EbsegConfigError", "EbsegModel", "EbsegOutputs", "EbsegPrediction", "build_ebseg_model"]
