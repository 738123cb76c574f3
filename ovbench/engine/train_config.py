"""The training settings of a method's YAML (`train:` section) as plain dataclasses.

Kept free of torch so that reading and listing configs (`ovbench methods`, the registry)
does not load the training engine; `ovbench.engine.trainer` and `ovbench.engine.optim`
re-export these names.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ovbench.data.transforms import TrainTransformConfig
from ovbench.errors import ConfigError

__all__ = ["PRECISIONS", "SCHEDULES", "OptimizerConfig", "ScheduleConfig", "TrainConfig"]

SCHEDULES = ("cosine", "poly", "constant")
PRECISIONS = ("fp32", "bf16", "fp16")


@dataclass
class OptimizerConfig:
    lr: float = 2e-4
    weight_decay: float = 1e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    #: extra parameter-name fragments exempt from weight decay (SAN/EBSeg: pos_embed, query_embed ...)
    no_decay_names: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ConfigError(f"train.optimizer.lr must be positive, got {self.lr}")
        if self.weight_decay < 0:
            raise ConfigError(f"train.optimizer.weight_decay must be >= 0, got {self.weight_decay}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"train.optimizer.betas must be two numbers in [0, 1), got {self.betas}")


@dataclass
class ScheduleConfig:
    name: str = "cosine"
    #: poly exponent (SAN, OV-Seg, SCAN, EBSeg use 0.9)
    power: float = 0.9
    warmup_iters: int = 0
    #: the learning-rate factor at iteration 0 of a linear warmup
    warmup_factor: float = 0.001
    #: cosine/poly decay towards this fraction of the base rate
    end_factor: float = 0.0

    def __post_init__(self) -> None:
        if self.name not in SCHEDULES:
            raise ConfigError(f"train.schedule.name must be one of {', '.join(SCHEDULES)}, got {self.name!r}")
        if self.warmup_iters < 0:
            raise ConfigError(f"train.schedule.warmup_iters must be >= 0, got {self.warmup_iters}")


@dataclass
class TrainConfig:
    """Iterations, batch and optimisation of a training run (method YAML `train:` section)."""

    iters: int = 30000
    #: global batch: all processes and accumulation steps together
    batch_size: int = 4
    grad_accum: int = 1
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    #: full-model L2 gradient clipping (detectron2 CLIP_TYPE full_model); null disables
    grad_clip: float | None = 0.01
    #: fp32 everywhere by default (the official GSNet/CAT-Seg runs); bf16/fp16 autocast on GPU only
    precision: str = "fp32"
    #: TensorFloat-32 matmuls on Ampere+ GPUs, as the official runs ("high")
    tf32: bool = True
    checkpoint_every: int = 5000
    #: periodic checkpoints kept besides the final one
    keep_checkpoints: int = 2
    log_every: int = 20
    num_workers: int = 2
    transform: TrainTransformConfig = field(default_factory=TrainTransformConfig)

    def __post_init__(self) -> None:
        for name in ("iters", "batch_size", "grad_accum", "checkpoint_every", "log_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"train.{name} must be at least 1, got {getattr(self, name)}")
        if self.num_workers < 0:
            raise ConfigError(f"train.num_workers must be >= 0, got {self.num_workers}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"train.precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ConfigError(f"train.grad_clip must be positive or null, got {self.grad_clip}")
