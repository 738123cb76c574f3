"""SED (CVPR 2024): `SedModel`, its head `SedAggregator` and the settings `SedConfig`."""

from ovbench_methods.sed.config import SedConfig, SedConfigError
from ovbench_methods.sed.decoder import REJECTED_LOGIT, SedAggregator, SedOutputs
from ovbench_methods.sed.model import LOSS_NAMES, SedModel, build_sed_model

__all__ = [
    "LOSS_NAMES", "REJECTED_LOGIT", "SedAggregator", "SedConfig", "SedConfigError", "SedModel", "SedOutputs",
    "build_sed_model",
]
