"""Model size and cost at the published scale: parameters, FLOPs, latency and peak memory.

Backbone weights are never downloaded here: every `*_weights` setting of the method's model
config is set to null, so the published architecture is built with random weights (parameter
counts, FLOPs and timings do not depend on the values).

Cost is measured on one `predict` call, the method's evaluation recipe (its YAML's inference
section: resize, sliding window, mask classification) applied to one image; docs/profile.md
says what is counted and how.
"""

from __future__ import annotations

import ctypes
import dataclasses
import gc
import re
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ovbench.errors import ConfigError
from ovbench.registry import ResolvedMethod, build_segmenter, resolve_method

#: the vocabulary the cost is measured with: LandDiscover50K's 40 training classes (the
#: benchmark's largest evaluation vocabulary, FAST, has 37)
DEFAULT_CLASSES = 40
DEFAULT_VOCABULARY = "landdiscover"
#: side of the square input image; each recipe then resizes or tiles it as in evaluation
DEFAULT_IMAGE_SIZE = (640, 640)

MIB = 1 << 20


@dataclass
class PartCount:
    name: str
    trainable: int
    frozen: int

    @property
    def total(self) -> int:
        return self.trainable + self.frozen


@dataclass
class CostSettings:
    """What one profiled `predict` call sees and how often it is timed."""

    image_size: tuple[int, int] = DEFAULT_IMAGE_SIZE
    classes: int = DEFAULT_CLASSES
    device: str = "auto"
    repeats: int = 3
    flops: bool = True
    timing: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if len(self.image_size) != 2 or min(self.image_size) < 1:
            raise ConfigError(f"image size must be two positive sides, got {self.image_size}")
        if self.classes < 1:
            raise ConfigError(f"--classes must be at least 1, got {self.classes}")
        if self.repeats < 1:
            raise ConfigError(f"--repeats must be at least 1, got {self.repeats}")


@dataclass
class CostProfile:
    """The cost of one `predict` on a (1, 3, H, W) image with `classes` classes."""

    image_size: tuple[int, int]
    classes: int
    device: str
    threads: int
    #: FLOPs of one predict with the vocabulary's text embeddings already cached, as every image
    #: of an evaluation set after the first is predicted (None: not counted)
    flops: int | None = None
    #: FLOPs the first predict of a new vocabulary adds (the text encoder), once per vocabulary
    text_flops: int | None = None
    #: median wall time of the timed predict calls, text embeddings cached (None: not timed)
    latency_s: float | None = None
    repeats: int = 0
    #: bytes of the model's parameters and buffers (resident on the device)
    model_bytes: int = 0
    #: the most memory one predict call added above what was allocated before it
    working_bytes: int | None = None
    #: how `working_bytes` was measured (or why it could not be)
    memory_method: str = ""

    @property
    def gflops(self) -> float | None:
        return None if self.flops is None else self.flops / 1e9

    @property
    def text_gflops(self) -> float | None:
        return None if self.text_flops is None else self.text_flops / 1e9

    @property
    def peak_bytes(self) -> int | None:
        """Model tensors plus the working memory of one predict at its peak."""
        return None if self.working_bytes is None else self.model_bytes + self.working_bytes


@dataclass
class ModelProfile:
    method: str
    scale: str | None
    parts: list[PartCount]
    #: the pretrained towers the method is built on (e.g. "ViT-B-16 + DINO vit_base_8")
    backbone: str = ""
    cost: CostProfile | None = None

    @property
    def trainable(self) -> int:
        return sum(p.trainable for p in self.parts)

    @property
    def frozen(self) -> int:
        return sum(p.frozen for p in self.parts)

    @property
    def total(self) -> int:
        return self.trainable + self.frozen


def count_parameters(module: nn.Module, depth: int = 1) -> list[PartCount]:
    """Counts per submodule down to `depth` levels (shared parameters counted once, where first met)."""
    seen: set[int] = set()
    parts: list[PartCount] = []

    def visit(prefix: str, mod: nn.Module, level: int) -> None:
        if level == depth or not list(mod.named_children()):
            trainable = frozen = 0
            for param in mod.parameters():
                if id(param) in seen:
                    continue
                seen.add(id(param))
                if param.requires_grad:
                    trainable += param.numel()
                else:
                    frozen += param.numel()
            if trainable or frozen:
                parts.append(PartCount(prefix or "(model)", trainable, frozen))
            return
        own_trainable = own_frozen = 0
        for param in mod.parameters(recurse=False):
            if id(param) not in seen:
                seen.add(id(param))
                if param.requires_grad:
                    own_trainable += param.numel()
                else:
                    own_frozen += param.numel()
        if own_trainable or own_frozen:
            parts.append(PartCount(f"{prefix}(own)" if prefix else "(own)", own_trainable, own_frozen))
        for name, child in mod.named_children():
            visit(f"{prefix}.{name}" if prefix else name, child, level + 1)

    visit("", module, 0)
    return parts


def random_weights_overrides(resolved: ResolvedMethod) -> dict:
    """model.<x>_weights = null for every weights setting the method's config has."""
    config = resolved.model_config
    if config is None or not dataclasses.is_dataclass(config):
        return {}
    fields = [f.name for f in dataclasses.fields(config) if f.name.endswith("_weights")]
    return {"model": {name: None for name in fields}} if fields else {}


def backbone_of(resolved: ResolvedMethod) -> str:
    """The pretrained towers the model config names (`arch`, `dino_arch`); "(resized)" where a
    scale overlay replaces a tower's published shape (the tiny scale)."""
    config = resolved.model_config
    if config is None:
        return ""
    towers = []
    arch = getattr(config, "arch", None)
    if arch:
        towers.append(f"{arch} (resized)" if getattr(config, "model_config", None) else str(arch))
    dino = getattr(config, "dino_arch", None)
    if getattr(config, "use_rsib", False) and dino:
        towers.append(f"DINO {dino.get('variant', 'ViT')} (resized)" if isinstance(dino, dict) else f"DINO {dino}")
    return " + ".join(towers)


# --------------------------------------------------------------------------- FLOPs


def _attention_flops(batch_heads: int, queries: int, keys: int, key_dim: int, value_dim: int) -> int:
    """Q K^T and the attention-weighted sum of V, a multiply-add counted as 2 FLOPs."""
    return 2 * batch_heads * queries * keys * (key_dim + value_dim)


def _cpu_flash_attention_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    # (B, H, L, E) x (B, H, S, E) x (B, H, S, Ev); key/value heads broadcast to the query's
    *lead, queries, key_dim = query_shape
    keys, value_dim = key_shape[-2], value_shape[-1]
    batch_heads = 1
    for size in lead:
        batch_heads *= size
    return _attention_flops(batch_heads, queries, keys, key_dim, value_dim)


def _native_multi_head_attention_flops(query_shape, key_shape, value_shape, embed_dim, num_heads, *args, out_shape=None, **kwargs) -> int:
    # nn.MultiheadAttention's inference fast path is one fused op: the q/k/v in-projections,
    # the attention of every head (their dims sum to embed_dim) and the out-projection.
    batch = query_shape[0] if len(query_shape) == 3 else 1
    queries, keys = query_shape[-2], key_shape[-2]
    projections = 2 * embed_dim * embed_dim * batch * (queries + 2 * keys + queries)
    return projections + _attention_flops(batch, queries, keys, embed_dim, embed_dim)


def extra_flop_formulas() -> dict[Any, Callable]:
    """Formulas for fused CPU ops `torch.utils.flop_counter` has none for; without them the
    attention of every transformer (and, in nn.MultiheadAttention's fast path, its
    projections too) would count as 0 FLOPs on CPU while CUDA's attention ops are counted."""
    formulas = {
        "_scaled_dot_product_flash_attention_for_cpu": _cpu_flash_attention_flops,
        "_native_multi_head_attention": _native_multi_head_attention_flops,
    }
    aten = torch.ops.aten
    return {getattr(aten, name): formula for name, formula in formulas.items() if hasattr(aten, name)}


def count_flops(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, int]:
    """(fn(*args, **kwargs), its FLOPs) counted by torch.utils.flop_counter.FlopCounterMode:
    matrix products, convolutions and attention, a multiply-add as 2 FLOPs; element-wise ops,
    norms, resizing and softmax count 0."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False, custom_mapping=extra_flop_formulas()) as counter:
        result = fn(*args, **kwargs)
    return result, counter.get_total_flops()


# --------------------------------------------------------------------------- memory

_PROC_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")
CPU_MEMORY_METHOD = "CPU: growth of the peak resident set size, VmHWM of /proc/self/status reset through /proc/self/clear_refs"
CUDA_MEMORY_METHOD = "CUDA: torch.cuda.max_memory_allocated above the allocation before the call"


def _status_kib(field: str) -> int | None:
    try:
        match = re.search(rf"^{field}:\s+(\d+) kB", _PROC_STATUS.read_text(), re.MULTILINE)
    except OSError:
        return None
    return int(match.group(1)) if match else None


def _release_free_heap() -> None:
    # glibc keeps freed blocks mapped: without giving them back, a call reusing the previous
    # call's freed memory would show no RSS growth at all
    gc.collect()
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _reset_peak_rss() -> bool:
    """Start a new VmHWM high-water mark at the current RSS (Linux, writing "5" to clear_refs)."""
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True


class PeakMemory:
    """The most memory a block adds above what is allocated when it starts.

    CUDA: the caching allocator's exact peak. CPU: the process's peak RSS, which counts every
    allocation (torch's, oneDNN's, Python's); there is no per-tensor peak on CPU.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.growth: int | None = None
        self.method = CUDA_MEMORY_METHOD if device.type == "cuda" else CPU_MEMORY_METHOD
        self._before: int | None = None

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._before = torch.cuda.memory_allocated(self.device)
        else:
            _release_free_heap()
            rss = _status_kib("VmRSS")
            if rss is None or not _reset_peak_rss():
                self.method = "not measured: needs Linux /proc/self/status and /proc/self/clear_refs"
            else:
                self._before = _status_kib("VmRSS") or rss
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._before is None:
            return
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.growth = max(torch.cuda.max_memory_allocated(self.device) - self._before, 0)
        else:
            peak = _status_kib("VmHWM")
            self.growth = None if peak is None else max(peak - self._before, 0) * 1024


# --------------------------------------------------------------------------- cost


def profile_vocabulary(classes: int):
    """The first `classes` LandDiscover50K class names, then "class N" names beyond its 40."""
    from ovbench.data.catalog import load_vocabulary
    from ovbench.data.vocabulary import Vocabulary

    names = [c.name for c in load_vocabulary(DEFAULT_VOCABULARY).classes][:classes]
    names += [f"class {i}" for i in range(len(names), classes)]
    return Vocabulary(names)


def profile_image(image_size: tuple[int, int], seed: int = 0) -> torch.Tensor:
    """(1, 3, H, W) uniform noise in 0..255: no method present has content-dependent cost."""
    generator = torch.Generator().manual_seed(seed)
    return torch.rand((1, 3, *image_size), generator=generator) * 255


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def model_bytes(module: nn.Module) -> int:
    tensors = {id(t): t for t in (*module.parameters(), *module.buffers())}
    return sum(t.numel() * t.element_size() for t in tensors.values())


def measure_cost(segmenter: nn.Module, settings: CostSettings, device: torch.device) -> CostProfile:
    """FLOPs, latency and peak memory of `segmenter.predict` on one image.

    Calls, in order: one predict with a fresh vocabulary (counted when FLOPs are asked for;
    otherwise an uncounted warm-up), one counted predict with the text embeddings cached, then
    `repeats` timed predicts. The difference of the two counts is the text encoder's share.
    """
    image = profile_image(settings.image_size, settings.seed).to(device)
    vocabulary = profile_vocabulary(settings.classes)
    cost = CostProfile(
        image_size=tuple(settings.image_size), classes=settings.classes, device=str(device),
        threads=torch.get_num_threads(), model_bytes=model_bytes(segmenter),
    )
    if settings.flops:
        _, first = count_flops(segmenter.predict, image, vocabulary)
        _, cached = count_flops(segmenter.predict, image, vocabulary)
        cost.flops, cost.text_flops = cached, max(first - cached, 0)
    if settings.timing:
        if not settings.flops:
            segmenter.predict(image, vocabulary)  # warm-up: text embeddings, kernel selection
        times, peaks = [], []
        for _ in range(settings.repeats):
            with PeakMemory(device) as memory:
                _synchronize(device)
                start = time.perf_counter()
                segmenter.predict(image, vocabulary)
                _synchronize(device)
                times.append(time.perf_counter() - start)
            cost.memory_method = memory.method
            if memory.growth is not None:
                peaks.append(memory.growth)
        cost.latency_s, cost.repeats = statistics.median(times), len(times)
        cost.working_bytes = max(peaks) if peaks else None
    return cost


# --------------------------------------------------------------------------- methods


def resolve_random_weights(method: str, scale: str | None = None) -> ResolvedMethod:
    resolved = resolve_method(method, scale=scale)
    overrides = random_weights_overrides(resolved)
    return resolve_method(method, scale=scale, overrides=overrides) if overrides else resolved


def profile_method(method: str, scale: str | None = None, depth: int = 1, cost: CostSettings | None = None) -> ModelProfile:
    """Parameter counts of `method` built with random weights and, with `cost`, what one
    predict costs (on the device `cost.device` names)."""
    from ovbench.eval.evaluate import resolve_device
    from ovbench.seeding import seed_everything

    resolved = resolve_random_weights(method, scale)
    device = resolve_device(cost.device) if cost is not None else None
    seed_everything(cost.seed if cost is not None else 0)
    segmenter = build_segmenter(resolved)
    profile = ModelProfile(method, scale, count_parameters(segmenter, depth=depth), backbone_of(resolved))
    if cost is not None and (cost.flops or cost.timing):
        segmenter.to(device).eval()
        try:
            profile.cost = measure_cost(segmenter, cost, device)
        finally:
            del segmenter
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return profile


# --------------------------------------------------------------------------- tables

TABLE_FORMATS = ("plain", "markdown", "csv")
TABLE_COLUMNS = ("method", "backbone", "trainable", "frozen", "total", "GFLOPs", "text GFLOPs", "latency (s)", "peak memory (MiB)")


def _millions(count: int) -> str:
    return f"{count / 1e6:.2f}M"


def _number(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def table_rows(profiles: list[ModelProfile], exact: bool = False) -> list[list[str]]:
    """One row per profile in TABLE_COLUMNS order; parameters in millions unless `exact`."""
    params = (lambda n: str(n)) if exact else _millions
    rows = []
    for profile in profiles:
        cost = profile.cost
        rows.append([
            profile.method, profile.backbone or "-", params(profile.trainable), params(profile.frozen), params(profile.total),
            _number(cost and cost.gflops, 3 if exact else 2), _number(cost and cost.text_gflops, 3 if exact else 2),
            _number(cost and cost.latency_s, 3),
            _number(cost and cost.peak_bytes and cost.peak_bytes / MIB, 0),
        ])
    return rows


def table_notes(profiles: list[ModelProfile]) -> list[str]:
    """What the cost columns mean, from the settings the profiles were measured with."""
    costs = [p.cost for p in profiles if p.cost is not None]
    scales = sorted({p.scale or "published" for p in profiles})
    notes = [f"parameters at the {', '.join(scales)} scale, random weights; trainable = what the method's training updates"]
    if not costs:
        return notes
    cost = costs[0]
    height, width = cost.image_size
    notes.append(
        f"cost of one predict (the method's evaluation recipe) on a 1x3x{height}x{width} image with {cost.classes} classes, "
        f"on {device_text(cost)}"
    )
    if any(c.flops is not None for c in costs):
        notes.append(
            "GFLOPs: torch.utils.flop_counter.FlopCounterMode (a multiply-add counts 2 FLOPs; matmuls, convolutions and "
            "attention only), per image with the vocabulary's text embeddings cached as in evaluation; text GFLOPs: "
            "added once per vocabulary by the text encoder"
        )
    timed = [c for c in costs if c.latency_s is not None]
    if timed:
        repeats = sorted({c.repeats for c in timed})
        notes.append(f"latency: median of {'/'.join(map(str, repeats))} timed predict call(s) after a warm-up, text embeddings cached")
        methods = sorted({c.memory_method for c in timed if c.memory_method})
        notes.append(f"peak memory: model parameters and buffers + the most one predict added ({'; '.join(methods)})")
    return notes


def device_text(cost: CostProfile) -> str:
    return f"{cost.device} ({cost.threads} threads)" if cost.device == "cpu" else cost.device


def render_table(profiles: list[ModelProfile], fmt: str = "markdown") -> str:
    """The profiles as a markdown (notes below), CSV (exact counts, no notes) or plain-text table."""
    fmt = fmt.lower()
    if fmt not in TABLE_FORMATS:
        raise ConfigError(f"unknown format '{fmt}'; choose {', '.join(TABLE_FORMATS)}")
    if fmt == "csv":
        import csv
        import io

        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["method", "backbone", "trainable", "frozen", "total", "gflops", "text_gflops", "latency_s", "peak_memory_mib"])
        writer.writerows(table_rows(profiles, exact=True))
        return buffer.getvalue()
    rows = table_rows(profiles)
    numeric = [column not in ("method", "backbone") for column in TABLE_COLUMNS]
    if fmt == "markdown":
        lines = ["| " + " | ".join(TABLE_COLUMNS) + " |", "|" + "|".join("---:" if n else "---" for n in numeric) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        return "\n".join(lines) + "\n\n" + "".join(f"- {note}\n" for note in table_notes(profiles))
    widths = [max(len(column), *(len(row[i]) for row in rows)) if rows else len(column) for i, column in enumerate(TABLE_COLUMNS)]

    def line(cells) -> str:
        return "  ".join(cell.rjust(w) if n else cell.ljust(w) for cell, w, n in zip(cells, widths, numeric)).rstrip()

    body = [line(TABLE_COLUMNS), line("-" * w for w in widths), *(line(row) for row in rows)]
    return "\n".join(body) + "\n" + "".join(f"{note}\n" for note in table_notes(profiles))
