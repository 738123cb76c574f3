"""AdamW with parameter groups, learning-rate schedules and gradient clipping, as the
official detectron2 code bases configure them."""

from __future__ import annotations

import math
from typing import Any, Iterable

import torch
from torch import nn

from ovbench.engine.train_config import SCHEDULES, OptimizerConfig, ScheduleConfig  # noqa: F401 (re-exported)
from ovbench.errors import ConfigError

#: module types whose parameters never get weight decay (detectron2's WEIGHT_DECAY_NORM = 0)
NORM_TYPES = (
    nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.GroupNorm,
    nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d, nn.LayerNorm, nn.LocalResponseNorm,
)


def lr_factor(schedule: ScheduleConfig, iteration: int, max_iters: int) -> float:
    """The multiplier of every group's base rate at `iteration` (0-based), detectron2-style:
    the decay runs over the whole run and a linear warmup multiplies it at the start."""
    progress = min(iteration / max(max_iters, 1), 1.0)
    if schedule.name == "cosine":
        decay = schedule.end_factor + (1 - schedule.end_factor) * 0.5 * (1 + math.cos(math.pi * progress))
    elif schedule.name == "poly":
        decay = schedule.end_factor + (1 - schedule.end_factor) * (1 - progress) ** schedule.power
    else:
        decay = 1.0
    if iteration < schedule.warmup_iters:
        alpha = iteration / schedule.warmup_iters
        decay *= schedule.warmup_factor * (1 - alpha) + alpha
    return decay


def is_no_decay(module: nn.Module, name: str, param: nn.Parameter, extra_names: Iterable[str]) -> bool:
    """Norm layers, embeddings and biases-free scalars of those never decay (detectron2
    WEIGHT_DECAY_NORM = WEIGHT_DECAY_EMBED = 0)."""
    if isinstance(module, NORM_TYPES) or isinstance(module, nn.Embedding):
        return True
    return any(fragment in name for fragment in extra_names)


def split_weight_decay(
    model: nn.Module, params: Iterable[nn.Parameter], weight_decay: float, extra_names: Iterable[str] = ()
) -> list[tuple[list[nn.Parameter], float]]:
    """Partition `params` into (decayed, not decayed) lists by the module that owns each."""
    wanted = {id(p) for p in params}
    extra_names = tuple(extra_names)
    decayed: list[nn.Parameter] = []
    exempt: list[nn.Parameter] = []
    seen: set[int] = set()
    for module_name, module in model.named_modules():
        for param_name, param in module.named_parameters(recurse=False):
            if id(param) not in wanted or id(param) in seen:
                continue
            seen.add(id(param))
            full = f"{module_name}.{param_name}" if module_name else param_name
            (exempt if is_no_decay(module, full, param, extra_names) else decayed).append(param)
    return [(decayed, weight_decay), (exempt, 0.0)]


def build_optimizer(groups: list[dict[str, Any]], config: OptimizerConfig) -> torch.optim.AdamW:
    groups = [g for g in groups if g["params"]]
    if not groups:
        raise ConfigError("the model has no trainable parameters")
    for group in groups:
        # the schedule scales from this, so a group's multiplier survives LambdaLR
        group.setdefault("initial_lr", group["lr"])
    return torch.optim.AdamW(groups, lr=config.lr, betas=tuple(config.betas), eps=config.eps, weight_decay=config.weight_decay)


def build_scheduler(optimizer: torch.optim.Optimizer, schedule: ScheduleConfig, max_iters: int) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: lr_factor(schedule, it, max_iters))


def clip_full_model_grad_norm(params: list[nn.Parameter], max_norm: float | None) -> torch.Tensor:
    """detectron2's CLIP_TYPE "full_model": one L2 norm over every gradient, returned for
    logging and for catching non-finite gradients."""
    grads = [p for p in params if p.grad is not None]
    if not grads:
        return torch.tensor(0.0)
    if max_norm is None:
        return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad.detach(), 2) for p in grads]), 2)
    return torch.nn.utils.clip_grad_norm_(grads, max_norm, norm_type=2.0)


def optimizer_groups(model: nn.Module, adapter_groups: list[dict[str, Any]], config: OptimizerConfig) -> list[dict[str, Any]]:
    """The adapter's groups (learning-rate multipliers, e.g. CLIP at 0.01x) each split into
    a decayed part and a norm/embedding part without weight decay."""
    groups: list[dict[str, Any]] = []
    for group in adapter_groups:
        weight_decay = group.get("weight_decay", config.weight_decay)
        for params, decay in split_weight_decay(model, group["params"], weight_decay, config.no_decay_names):
            if params:
                groups.append({**group, "params": params, "weight_decay": decay})
    return groups
