"""Optimiser groups, schedules, clipping and the deterministic training data stream."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from ovbench.data.toyland import ToylandDataset
from ovbench.data.transforms import TrainTransform, TrainTransformConfig
from ovbench.engine.data import PositionBatches, TrainSamples, build_train_loader
from ovbench.engine.optim import (
    OptimizerConfig,
    ScheduleConfig,
    build_optimizer,
    build_scheduler,
    clip_full_model_grad_norm,
    lr_factor,
    optimizer_groups,
)
from ovbench.errors import ConfigError


def test_cosine_poly_and_warmup_factors():
    cosine = ScheduleConfig(name="cosine")
    assert lr_factor(cosine, 0, 100) == 1.0
    assert lr_factor(cosine, 50, 100) == pytest.approx(0.5)
    assert lr_factor(cosine, 100, 100) == pytest.approx(0.0)
    poly = ScheduleConfig(name="poly", power=0.9)
    assert lr_factor(poly, 25, 100) == pytest.approx(0.75**0.9)
    warm = ScheduleConfig(name="poly", power=0.9, warmup_iters=10, warmup_factor=0.001)
    assert lr_factor(warm, 0, 100) == pytest.approx(0.001)
    assert lr_factor(warm, 5, 100) == pytest.approx((0.001 * 0.5 + 0.5) * 0.95**0.9)
    assert lr_factor(warm, 10, 100) == pytest.approx(0.9**0.9)
    assert lr_factor(ScheduleConfig(name="constant"), 77, 100) == 1.0
    with pytest.raises(ConfigError, match="train.schedule.name"):
        ScheduleConfig(name="step")


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.clip = nn.Linear(4, 4)
        self.norm = nn.LayerNorm(4)
        self.head = nn.Conv2d(4, 2, 1)
        self.gn = nn.GroupNorm(2, 2)
        self.frozen = nn.Linear(4, 4)
        self.frozen.requires_grad_(False)


def test_groups_keep_multipliers_and_exempt_norms_and_embeddings():
    net = Net()
    adapter_groups = [
        {"params": list(net.clip.parameters()), "lr": 2e-6, "name": "clip"},
        {"params": [p for n, p in net.named_parameters() if not n.startswith(("clip", "frozen"))], "lr": 2e-4, "name": "new"},
    ]
    groups = optimizer_groups(net, adapter_groups, OptimizerConfig(lr=2e-4, weight_decay=1e-4))
    by_param = {id(p): g for g in groups for p in g["params"]}
    assert by_param[id(net.clip.weight)]["lr"] == 2e-6 and by_param[id(net.clip.weight)]["weight_decay"] == 1e-4
    assert by_param[id(net.head.weight)]["weight_decay"] == 1e-4 and by_param[id(net.head.bias)]["weight_decay"] == 1e-4
    for exempt in (net.embed.weight, net.norm.weight, net.norm.bias, net.gn.weight):
        assert by_param[id(exempt)]["weight_decay"] == 0.0
    assert id(net.frozen.weight) not in by_param
    optimizer = build_optimizer(groups, OptimizerConfig())
    scheduler = build_scheduler(optimizer, ScheduleConfig(name="cosine"), 10)
    for _ in range(5):
        optimizer.step()
        scheduler.step()
    assert {g["name"]: g["lr"] for g in optimizer.param_groups}["clip"] == pytest.approx(2e-6 * 0.5)


def test_full_model_clipping_uses_one_norm_over_all_gradients():
    a, b = nn.Parameter(torch.zeros(3)), nn.Parameter(torch.zeros(4))
    a.grad, b.grad = torch.full((3,), 3.0), torch.full((4,), 4.0)
    total = math.sqrt(3 * 9 + 4 * 16)
    norm = clip_full_model_grad_norm([a, b], 0.01)
    assert float(norm) == pytest.approx(total)
    clipped = math.sqrt(float((a.grad**2).sum() + (b.grad**2).sum()))
    assert clipped == pytest.approx(0.01, rel=1e-4)
    assert float(a.grad[0] / b.grad[0]) == pytest.approx(0.75)  # direction kept across parameters


def _stream(num_workers: int, start: int = 0, world: int = 1, rank: int = 0, accum: int = 1):
    dataset = ToylandDataset("toyland-train", num_images=12)
    transform = TrainTransform(TrainTransformConfig(short_side=[96], crop_size=[64, 64], size_divisibility=64), dataset.ignore_index)
    samples = TrainSamples(dataset, transform, seed=5)
    batches = PositionBatches(start, 6, global_batch=4, grad_accum=accum, rank=rank, world_size=world)
    return [(images.clone(), masks.clone()) for images, masks in build_train_loader(samples, batches, num_workers, seed=5, pin_memory=False)]


def test_data_stream_is_the_same_with_workers_and_when_resumed():
    plain = _stream(0)
    with_workers = _stream(2)
    assert len(plain) == len(with_workers) == 6
    for (i0, m0), (i1, m1) in zip(plain, with_workers):
        assert torch.equal(i0, i1) and torch.equal(m0, m1)
    resumed = _stream(0, start=3)
    for (i0, m0), (i1, m1) in zip(plain[3:], resumed):
        assert torch.equal(i0, i1) and torch.equal(m0, m1)


def test_processes_and_accumulation_partition_the_same_global_batch():
    plain = _stream(0)
    ranks = [_stream(0, world=2, rank=r) for r in range(2)]
    accumulated = _stream(0, accum=2)
    for iteration in range(6):
        whole = plain[iteration][0]
        assert torch.equal(torch.cat([ranks[0][iteration][0], ranks[1][iteration][0]]), whole)
        assert torch.equal(torch.cat([accumulated[2 * iteration][0], accumulated[2 * iteration + 1][0]]), whole)


def test_epochs_visit_every_sample_once():
    dataset = ToylandDataset("toyland-train", num_images=10)
    samples = TrainSamples(dataset, None, seed=1)
    first = [samples.index_of(p) for p in range(10)]
    second = [samples.index_of(p) for p in range(10, 20)]
    assert sorted(first) == sorted(second) == list(range(10)) and first != second


def test_batch_must_split_evenly():
    with pytest.raises(ConfigError, match="not divisible"):
        PositionBatches(0, 5, global_batch=6, grad_accum=4, rank=0, world_size=1)


def test_targets_carry_the_canonical_ignore_value():
    from ovbench.interface import IGNORE_INDEX

    dataset = ToylandDataset("toyland-train", num_images=4)  # ignores its class 0 ("background")
    samples = TrainSamples(dataset, None, seed=0)
    for position in range(4):
        raw = dataset[samples.index_of(position)]["mask"]
        _, target = samples[position]
        assert torch.equal(target == IGNORE_INDEX, torch.from_numpy(raw == dataset.ignore_index))
        assert not bool((target == 0).any())
