"""What `ovbench eval` does, independent of the command line: resolve the method, the
datasets and the model, evaluate each set with its own vocabulary, append records."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console

from ovbench.config import config_hash, parse_overrides
from ovbench.errors import ConfigError
from ovbench.eval.evaluate import DatasetResult, evaluate_dataset, resolve_device
from ovbench.progress import ProgressReporter
from ovbench.seeding import seed_everything
from ovbench.registry import (
    benchmark_names,
    build_dataset,
    build_segmenter,
    load_benchmark,
    method_scales,
    resolve_data_root,
    resolve_method,
)

DEFAULT_BENCHMARK = "toyland"
REAL_BENCHMARK = "ovrsiss"


@dataclass
class EvalRequest:
    method: str
    benchmark: str | None = None
    datasets: list[str] = field(default_factory=list)
    checkpoint: Path | None = None
    clip_weights: str | None = None
    scale: str | None = None
    protocol: str = "zeroshot"
    data_root: Path | None = None
    device: str = "auto"
    batch_size: int | None = None
    trust_checkpoint: bool = False
    store_path: Path | None = None
    quiet: bool = False
    overrides: list[str] = field(default_factory=list)
    #: seeds the random initialisation of anything not loaded from weights (tiny test models)
    seed: int = 0


def choose_benchmark(requested: str | None, data_root: Path | None) -> str:
    """The benchmark a command runs: the requested one, else the paper's when data is
    configured and its spec exists, else the embedded toyland."""
    if requested:
        return requested
    if data_root is not None and REAL_BENCHMARK in benchmark_names():
        return REAL_BENCHMARK
    return DEFAULT_BENCHMARK


def pick_scale(method: str, requested: str | None, benchmark_default: str | None, clip_weights: str | None) -> str | None:
    """The scale overlay to apply: the user's choice ("full" = none), else the benchmark's
    default when the method defines it. Real CLIP weights only fit the full-scale
    architecture, so they switch the benchmark's tiny overlay off."""
    if requested is not None:
        return None if requested == "full" else requested
    if clip_weights or benchmark_default is None:
        return None
    return benchmark_default if benchmark_default in method_scales(method) else None


def run_evaluation(request: EvalRequest, console: Console) -> list[DatasetResult]:
    from ovbench.results.store import ResultRecord, ResultStore, code_version, host_info, new_run_id, utc_timestamp

    data_root = resolve_data_root(request.data_root)
    if request.datasets and request.benchmark:
        raise ConfigError("give either --benchmark or --dataset, not both")
    if request.datasets:
        benchmark_name, eval_sets, default_scale, train_set = "custom", request.datasets, None, None
    else:
        benchmark_name = choose_benchmark(request.benchmark, data_root)
        spec = load_benchmark(benchmark_name)
        eval_sets, default_scale, train_set = spec.eval_sets, spec.scale, spec.train_set
    announce_toyland = not request.datasets and request.benchmark is None and benchmark_name == DEFAULT_BENCHMARK

    overrides = parse_overrides(request.overrides)
    if request.clip_weights is not None:
        overrides.setdefault("model", {})["clip_weights"] = request.clip_weights
    if request.batch_size is not None:
        overrides.setdefault("eval", {})["batch_size"] = request.batch_size
    resolved = resolve_method(request.method, scale=pick_scale(request.method, request.scale, default_scale, request.clip_weights), overrides=overrides)
    if request.clip_weights is not None and not hasattr(resolved.model_config, "clip_weights"):
        raise ConfigError(f"method {request.method} takes no CLIP weights (no model.clip_weights setting)")

    # Everything that can fail on bad input is checked before the first image is predicted.
    datasets = [build_dataset(name, data_root) for name in eval_sets]
    device = resolve_device(request.device)
    seed_everything(request.seed)
    segmenter = build_segmenter(resolved, trust_checkpoints=request.trust_checkpoint)
    if request.checkpoint is not None:
        segmenter.load_checkpoint(request.checkpoint, trusted=request.trust_checkpoint)
    segmenter.to(device)

    if announce_toyland:
        console.print(
            "no benchmark given and no data configured: running the embedded synthetic benchmark "
            "'toyland' (tiny models); use --benchmark ovrsiss --data-root DIR for the paper's",
            highlight=False,
        )
    store = ResultStore(request.store_path)
    run_id = new_run_id(request.method)
    resolved_dict = resolved.as_dict()
    resolved_dict["checkpoint"] = str(request.checkpoint) if request.checkpoint else None
    digest = config_hash(resolved_dict)
    version, host = code_version(), host_info()
    results: list[DatasetResult] = []
    with ProgressReporter(quiet=request.quiet, console=console) as progress:
        for dataset in datasets:
            result = evaluate_dataset(
                segmenter, dataset, batch_size=resolved.config.eval.batch_size, device=device, progress=progress
            )
            metrics = result.metrics
            record = ResultRecord(
                run_id=run_id,
                method=request.method,
                protocol=request.protocol,
                benchmark=benchmark_name,
                train_set=train_set if request.checkpoint else None,
                train_size=None,
                eval_set=dataset.name,
                metrics={"mIoU": metrics.mIoU, "mAcc": metrics.mAcc, "pAcc": metrics.pAcc, "fwIoU": metrics.fwIoU},
                per_class_iou=metrics.per_class_iou,
                seed=request.seed,
                iterations=None,
                config_hash=digest,
                code_version=version,
                host=host["host"],
                hardware=host["hardware"],
                wall_time_s=round(result.wall_time_s, 3),
                timestamp=utc_timestamp(),
                extra={
                    "scale": resolved.scale,
                    "checkpoint": resolved_dict["checkpoint"],
                    "num_images": result.num_images,
                    "per_class_acc": metrics.per_class_acc,
                    "valid_pixels": metrics.valid_pixels,
                    "device": str(device),
                },
            )
            # One record per finished set: a failure on a later set never loses this one,
            # and a set that failed midway leaves no record at all.
            store.append([record])
            results.append(result)
            progress.log(f"{dataset.name}: mIoU {metrics.mIoU:.2f} ({result.num_images} images, {result.wall_time_s:.1f} s)")
    progress.log(f"appended {len(results)} records to {store.path} (run {run_id})")
    return results
