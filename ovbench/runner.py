"""What `ovbench eval` and `ovbench run` do, independent of the command line: resolve the
method, protocol and datasets, train where the protocol says so, evaluate every set with its
own vocabulary, append records."""

from __future__ import annotations

import os
import re
import signal
import threading
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

import yaml
from rich.console import Console

from ovbench.config import build_dataclass, config_hash, is_yaml_path, parse_overrides, load_yaml
from ovbench.engine.checkpoint import checkpoint_origin
from ovbench.engine.lock import RunLock
from ovbench.errors import ConfigError, Interrupted, OvbenchError, StorageError
from ovbench.eval.evaluate import DatasetResult, evaluate_dataset, resolve_device
from ovbench.fileio import atomic_write_text, remove_stale_temp_files
from ovbench.progress import ProgressReporter
from ovbench.registry import (
    DEFAULT_BENCHMARK,
    REAL_BENCHMARK,
    BenchmarkSpec,
    ResolvedMethod,
    benchmark_names,
    build_dataset,
    build_segmenter,
    load_benchmark,
    load_protocol,
    method_scales,
    resolve_data_root,
    resolve_method,
)
from ovbench.seeding import seed_everything

#: the benchmark name records carry when the user's own sets replace a benchmark's evaluation
#: sets (`eval --dataset`, `run --eval-set`)
CUSTOM_BENCHMARK = "custom"
TOYLAND_NOTICE = (
    "no benchmark given and no data configured: running the embedded synthetic benchmark "
    f"'{DEFAULT_BENCHMARK}' (tiny models); use --benchmark {REAL_BENCHMARK} --data-root DIR to run the paper's benchmark"
)


@dataclass
class EvalRequest:
    method: str
    benchmark: str | None = None
    datasets: list[str] = field(default_factory=list)
    checkpoint: Path | None = None
    clip_weights: str | None = None
    scale: str | None = None
    #: None: the protocol of the run a training checkpoint came from, else "zeroshot"
    protocol: str | None = None
    data_root: Path | None = None
    device: str = "auto"
    batch_size: int | None = None
    trust_checkpoint: bool = False
    store_path: Path | None = None
    quiet: bool = False
    overrides: list[str] = field(default_factory=list)
    #: seeds the random initialisation of anything not loaded from weights (tiny test models)
    seed: int = 0


@dataclass
class RunRequest:
    """Everything `ovbench run` was asked; saved in the run directory so `--resume` needs
    nothing else."""

    method: str
    protocol: str = "scratch"
    benchmark: str | None = None
    train_set: str | None = None
    seed: int = 0
    iters: int | None = None
    checkpoint: str | None = None
    clip_weights: str | None = None
    scale: str | None = None
    data_root: str | None = None
    device: str = "auto"
    trust_checkpoint: bool = False
    store_path: str | None = None
    quiet: bool = False
    overrides: list[str] = field(default_factory=list)
    run_id: str | None = None
    #: set by sweeps: identifies the job so that a finished one is skipped
    job_key: str | None = None
    label: str | None = None
    #: folder holding the authors' checkpoints under their published file names (finetune)
    weights_dir: str | None = None
    #: evaluate on these datasets instead of the benchmark's evaluation sets (`--eval-set`)
    eval_sets: list[str] = field(default_factory=list)


def choose_benchmark(requested: str | None, data_root: Path | None) -> str:
    """The benchmark a command runs: the requested one (a name or a benchmark YAML path),
    else the paper's when data is configured and its spec exists, else the embedded toyland."""
    if requested:
        return requested
    if data_root is not None and REAL_BENCHMARK in benchmark_names():
        return REAL_BENCHMARK
    return DEFAULT_BENCHMARK


def evaluation_sets(benchmark: BenchmarkSpec | None, own_sets: list[str]) -> tuple[str, list[str]]:
    """(the benchmark name the records carry, the names of the sets to evaluate): the user's own
    sets (`eval --dataset`, `run --eval-set`) make the 'custom' benchmark, else the benchmark's."""
    if own_sets:
        return CUSTOM_BENCHMARK, list(own_sets)
    if benchmark is None:
        raise ConfigError("no evaluation sets: give a benchmark or a dataset")
    return benchmark.name, list(benchmark.eval_sets)


def build_eval_sets(names: list[str], data_root: Path | None) -> list:
    """The evaluation sets' readers: each name as `registry.build_dataset` reads it (a dataset
    name, optionally with parameters, or a dataset spec YAML path). A set given twice is an
    error: its records could not be told apart."""
    datasets = [build_dataset(name, data_root) for name in names]
    given: dict[str, str] = {}
    for name, dataset in zip(names, datasets):
        if dataset.name in given:
            raise ConfigError(f"evaluation set {dataset.name} is given twice ({given[dataset.name]} and {name})")
        given[dataset.name] = name
    return datasets


def _portable(name: str | None) -> str | None:
    """A YAML path as an absolute path (a run's request.yaml must work from any directory)."""
    if name and is_yaml_path(name) and Path(name).is_file():
        return str(Path(name).resolve())
    return name


def pick_scale(method: str, requested: str | None, benchmark_default: str | None, clip_weights: str | None) -> str | None:
    """The scale overlay to apply: the user's choice ("full" = none), else the benchmark's
    default when the method defines it. Real CLIP weights only fit the full-scale
    architecture, so they switch the benchmark's tiny overlay off."""
    if requested is not None:
        return None if requested == "full" else requested
    if clip_weights or benchmark_default is None:
        return None
    return benchmark_default if benchmark_default in method_scales(method) else None


def _resolve(method: str, overrides: list[str], *, scale: str | None, benchmark_scale: str | None,
             clip_weights: str | None, extra: dict[str, Any] | None = None) -> ResolvedMethod:
    nested = parse_overrides(overrides)
    for section, values in (extra or {}).items():
        nested.setdefault(section, {}).update(values)
    if clip_weights is not None:
        nested.setdefault("model", {})["clip_weights"] = clip_weights
    resolved = resolve_method(method, scale=pick_scale(method, scale, benchmark_scale, clip_weights), overrides=nested)
    if clip_weights is not None and not hasattr(resolved.model_config, "clip_weights"):
        raise ConfigError(f"method {method} takes no CLIP weights (no model.clip_weights setting)")
    return resolved


def load_segmenter(method: str, *, checkpoint: str | Path | None = None, scale: str | None = None,
                   clip_weights: str | None = None, overrides: list[str] | None = None, device: str = "auto",
                   trust_checkpoint: bool = False, seed: int = 0):
    """A ready-to-predict segmenter, for commands that use a model without training it
    (`predict`, `visualize`): resolved like `ovbench eval` resolves it, weights loaded, in eval
    mode on the device. With no ``scale``, an ovbench checkpoint's own scale is used (a toyland
    run's is tiny), else the published one. Returns ``(segmenter, resolved, device)``."""
    if scale is None and checkpoint is not None:
        origin = checkpoint_origin(checkpoint)
        scale = (origin or {}).get("scale") or None
    resolved = _resolve(method, list(overrides or []), scale=scale, benchmark_scale=None, clip_weights=clip_weights)
    torch_device = resolve_device(device)
    seed_everything(seed)
    segmenter = build_segmenter(resolved, trust_checkpoints=trust_checkpoint)
    if checkpoint is not None:
        segmenter.load_checkpoint(Path(checkpoint), trusted=trust_checkpoint)
    segmenter.to(torch_device)
    segmenter.eval()
    return segmenter, resolved, torch_device


@contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Hold a Ctrl-C (SIGINT) that arrives inside the block until the block is done, then
    deliver it to the handler that was in place: the few calls that append a record and move
    its per-image counts into place finish together or not at all. Outside the main thread
    (where handlers cannot be set) the block runs unprotected."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if received:
            signal.raise_signal(signal.SIGINT)


def evaluate_and_record(
    segmenter,
    datasets: list,
    *,
    fields: dict[str, Any],
    extra: dict[str, Any],
    store,
    batch_size: int,
    device,
    progress: ProgressReporter,
) -> list[DatasetResult]:
    """Evaluate each set and append its record as soon as it is finished: a failure on a
    later set never loses this one, and a set that failed midway leaves no record."""
    from ovbench.results.store import ResultRecord, code_version, host_info, utc_timestamp

    from ovbench.results.per_image import stage_counts

    version, host = code_version(), host_info()
    use_training_origin = getattr(segmenter, "use_training_origin", None)
    if callable(use_training_origin):
        use_training_origin(fields.get("train_set"), fields.get("protocol"))
    results = []
    for dataset in datasets:
        result = evaluate_dataset(segmenter, dataset, batch_size=batch_size, device=device, progress=progress)
        metrics = result.metrics
        # per-image counts first, under a temporary name: they go into place only with their record
        staged = stage_counts(store.path, fields["run_id"], result.per_image)
        record = ResultRecord(
            **fields,
            eval_set=dataset.name,
            metrics={"mIoU": metrics.mIoU, "mAcc": metrics.mAcc, "pAcc": metrics.pAcc, "fwIoU": metrics.fwIoU},
            per_class_iou=metrics.per_class_iou,
            code_version=version,
            host=host["host"],
            hardware=host["hardware"],
            wall_time_s=round(result.wall_time_s, 3),
            timestamp=utc_timestamp(),
            extra={
                **extra,
                "num_images": result.num_images,
                "per_class_acc": metrics.per_class_acc,
                "valid_pixels": metrics.valid_pixels,
                "device": str(device),
                "per_image": staged.reference,
                **({"inference_settings": result.inference_settings} if result.inference_settings else {}),
            },
        )
        with interrupts_deferred():  # a record never points at counts that are not in place
            try:
                store.append([record])
            except BaseException:
                staged.discard()
                raise
            staged.commit()
        results.append(result)
        progress.log(f"{dataset.name}: mIoU {metrics.mIoU:.2f} ({result.num_images} images, {result.wall_time_s:.1f} s)")
    return results


def run_evaluation(request: EvalRequest, console: Console) -> list[DatasetResult]:
    from ovbench.results.store import ResultStore, new_run_id

    data_root = resolve_data_root(request.data_root)
    if request.datasets and request.benchmark:
        raise ConfigError("give either --benchmark or --dataset, not both")
    spec = None if request.datasets else load_benchmark(choose_benchmark(request.benchmark, data_root))
    benchmark_name, eval_sets = evaluation_sets(spec, request.datasets)
    default_scale = spec.scale if spec is not None else None
    announce_toyland = not request.datasets and request.benchmark is None and benchmark_name == DEFAULT_BENCHMARK

    extra_overrides = {"eval": {"batch_size": request.batch_size}} if request.batch_size is not None else None
    resolved = _resolve(request.method, request.overrides, scale=request.scale, benchmark_scale=default_scale,
                        clip_weights=request.clip_weights, extra=extra_overrides)

    # Everything that can fail on bad input is checked before the first image is predicted.
    datasets = build_eval_sets(eval_sets, data_root)
    device = resolve_device(request.device)
    seed_everything(request.seed)
    segmenter = build_segmenter(resolved, trust_checkpoints=request.trust_checkpoint)
    if request.checkpoint is not None:
        segmenter.load_checkpoint(request.checkpoint, trusted=request.trust_checkpoint)
    segmenter.to(device)

    if announce_toyland:
        console.print(TOYLAND_NOTICE, highlight=False, markup=False)
    store = ResultStore(request.store_path)
    run_id = new_run_id(_display_name(request.method))
    resolved_dict = resolved.as_dict()
    resolved_dict["checkpoint"] = str(request.checkpoint) if request.checkpoint else None
    # weights from an ovbench training run are that run's protocol, training set and iterations
    origin = checkpoint_origin(request.checkpoint) if request.checkpoint is not None else None
    trained = origin is not None and origin.get("protocol") not in (None, "zeroshot")
    fields = {
        "run_id": run_id,
        "method": _display_name(request.method),
        "protocol": request.protocol or (origin["protocol"] if trained else "zeroshot"),
        "benchmark": benchmark_name,
        "train_set": origin.get("train_set") if trained else None,
        "seed": request.seed,
        "iterations": origin.get("iterations") if trained else None,
        "config_hash": config_hash(resolved_dict),
    }
    with ProgressReporter(quiet=request.quiet, console=console) as progress:
        try:
            results = evaluate_and_record(
                segmenter, datasets, fields=fields,
                extra={"scale": resolved.scale, "checkpoint": resolved_dict["checkpoint"],
                       "source_run": origin.get("run_id") if origin else None},
                store=store, batch_size=resolved.config.eval.batch_size, device=device, progress=progress,
            )
        except KeyboardInterrupt:
            raise Interrupted("interrupted: evaluation stopped; sets finished before it keep their records") from None
    progress.log(f"appended {len(results)} records to {store.path} (run {run_id})")
    return results


# --------------------------------------------------------------------------- training runs


_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")


def check_run_id(run_id: str) -> str:
    """A run id names one folder under $OVBENCH_HOME/runs: letters, digits, '.', '_', '-'."""
    if not isinstance(run_id, str) or not _RUN_ID.match(run_id) or ".." in run_id:
        raise ConfigError(
            f"bad run id {run_id!r}: a run id is a plain name (letters, digits, '.', '_', '-'; no '/' or '..'), "
            "the run lives in $OVBENCH_HOME/runs/<run id>"
        )
    return run_id


def runs_dir() -> Path:
    from ovbench.results.store import ovbench_home

    return ovbench_home() / "runs"


def find_run(reference: str) -> Path:
    """A run directory from its id (under $OVBENCH_HOME/runs) or its path."""
    path = Path(reference)
    if not (path / "request.yaml").is_file():
        path = runs_dir() / reference
    if not (path / "request.yaml").is_file():
        raise OvbenchError(f"no run '{reference}': expected {path / 'request.yaml'}")
    return path


def load_run_request(run_dir: Path) -> RunRequest:
    return build_dataclass(RunRequest, load_yaml(run_dir / "request.yaml"), f"{run_dir}/request.yaml")


@dataclass
class RunOutcome:
    run_id: str
    run_dir: Path
    results: list[DatasetResult]
    iterations: int
    resumed_from: int


def _display_name(method: str) -> str:
    return Path(method).stem if method.endswith((".yaml", ".yml")) else method


def run_training(request: RunRequest, console: Console, resume: bool = False) -> RunOutcome:
    """Train under a protocol, then evaluate on every evaluation set of the benchmark."""
    import torch

    from ovbench.engine.distributed import init_distributed, shutdown
    from ovbench.interface import OpenVocabSegmenter
    from ovbench.results.store import new_run_id

    if request.run_id is not None:
        check_run_id(request.run_id)
    data_root = resolve_data_root(Path(request.data_root) if request.data_root else None)
    request.benchmark = _portable(request.benchmark)
    request.eval_sets = [_portable(name) for name in request.eval_sets]
    benchmark = load_benchmark(choose_benchmark(request.benchmark, data_root))
    benchmark_name = benchmark.name
    record_benchmark, eval_set_names = evaluation_sets(benchmark, request.eval_sets)
    protocol = load_protocol(request.protocol)
    extra_overrides = {"train": {"iters": request.iters}} if request.iters is not None else None
    resolved = _resolve(request.method, request.overrides, scale=request.scale, benchmark_scale=benchmark.scale,
                        clip_weights=request.clip_weights, extra=extra_overrides)
    method = _display_name(request.method)

    # ---- every check that can fail on bad input, before any training
    if protocol.start_from == "coco_checkpoint" and request.checkpoint is None:
        known = resolved.config.coco_checkpoint
        weights_dir = request.weights_dir or os.environ.get("OVBENCH_WEIGHTS")
        if known and weights_dir and (Path(weights_dir) / known.file).is_file():
            request.checkpoint = str(Path(weights_dir) / known.file)
        else:
            where = (f"{known.file}, published by the authors at {known.published}; or put it in --weights-dir / $OVBENCH_WEIGHTS"
                     if known else f"no official COCO-Stuff checkpoint is known for {method}; train one on COCO-Stuff first")
            raise ConfigError(f"protocol {protocol.name} starts from {method}'s COCO-Stuff checkpoint: pass --checkpoint FILE ({where})")
    if protocol.start_from == "pretrained" and request.checkpoint is not None:
        raise ConfigError(f"protocol {protocol.name} starts from pretrained backbones; --checkpoint belongs to finetune or zeroshot")
    train_set_name = request.train_set or benchmark.train_set
    if protocol.train and not train_set_name:
        raise ConfigError(f"benchmark {benchmark_name} has no training set; pass --train-set NAME")
    train_set = build_dataset(train_set_name, data_root) if protocol.train else None
    eval_sets = build_eval_sets(eval_set_names, data_root)
    device = resolve_device(request.device)
    dist = init_distributed(device)
    try:
        seed_everything(request.seed)
        segmenter = build_segmenter(resolved, trust_checkpoints=request.trust_checkpoint)
        if protocol.train and type(segmenter).loss is OpenVocabSegmenter.loss:
            raise ConfigError(f"{method} is training-free: evaluate it with --protocol zeroshot")
        if request.checkpoint is not None:
            segmenter.load_checkpoint(request.checkpoint, trusted=request.trust_checkpoint)

        # ---- the run directory (rank 0 names it; every rank agrees on the id)
        run_id = request.run_id or new_run_id(method)  # generated ids are plain names already
        if dist.enabled:
            shared = [run_id]
            torch.distributed.broadcast_object_list(shared, src=0)
            run_id = shared[0]
        request.run_id = run_id
        run_dir = runs_dir() / run_id
        resolved_dict = {**resolved.as_dict(), "protocol": protocol.name, "benchmark": benchmark_name,
                         "train_set": train_set_name if protocol.train else None, "seed": request.seed,
                         "checkpoint": request.checkpoint}
        if request.eval_sets:
            resolved_dict["eval_sets"] = [dataset.name for dataset in eval_sets]
        # one process at a time per run: a second `--resume` of the same run stops here
        lock = RunLock(run_dir, run_id).acquire() if dist.is_main else None
        try:
            return _train_and_evaluate(
                request, console, resume=resume, run_id=run_id, run_dir=run_dir, resolved=resolved,
                resolved_dict=resolved_dict, protocol=protocol, benchmark_name=benchmark_name,
                record_benchmark=record_benchmark,
                train_set_name=train_set_name, train_set=train_set, eval_sets=eval_sets, segmenter=segmenter,
                dist=dist, method=method,
            )
        finally:
            if lock is not None:
                lock.release()
    finally:
        shutdown(dist)


def _hash_without_seed(resolved_dict: dict[str, Any]) -> str:
    """Runs that differ only in their seed share a config hash: the table averages exactly those."""
    return config_hash({key: value for key, value in resolved_dict.items() if key != "seed"})


def _train_and_evaluate(request: RunRequest, console: Console, *, resume: bool, run_id: str, run_dir: Path, resolved,
                        resolved_dict: dict[str, Any], protocol, benchmark_name: str, train_set_name: str | None,
                        train_set, eval_sets: list, segmenter, dist, method: str,
                        record_benchmark: str | None = None) -> RunOutcome:
    """The part of a run that holds its lock: the run directory, training, evaluation."""
    from ovbench.engine.checkpoint import latest_checkpoint
    from ovbench.engine.trainer import Trainer
    from ovbench.results.store import ResultStore

    store = ResultStore(request.store_path)
    if dist.is_main:
        if (run_dir / "request.yaml").exists() and not resume:
            raise OvbenchError(f"run {run_id} already exists at {run_dir}: continue it with --resume {run_id}")
        for folder in (run_dir, run_dir / "checkpoints"):
            # what atomic writes killed mid-way left; nobody else writes here while we hold the lock
            remove_stale_temp_files(folder)
        done_sets = {r.get("eval_set") for r in store.read() if r.get("run_id") == run_id} if resume else set()
        if resume:
            found = latest_checkpoint(run_dir / "checkpoints")
            trained = found[0] if found else 0
            target = resolved.config.train.iters if protocol.train else 0
            if trained >= target and all(d.name in done_sets for d in eval_sets):
                console.print(
                    f"run {run_id} is finished: {trained} iterations trained and a record for each of its "
                    f"{len(eval_sets)} evaluation sets in {store.path}; nothing to do (ovbench table shows it)",
                    highlight=False, markup=False,
                )
                return RunOutcome(run_id, run_dir, [], trained, trained)
        atomic_write_text(run_dir / "request.yaml", yaml.safe_dump(asdict(request), sort_keys=False))
        atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(resolved_dict, sort_keys=False))
        if train_set is not None and hasattr(train_set, "save_file_list"):
            # seeded subsets are not published anywhere: the run keeps the exact stems it saw
            train_set.save_file_list(run_dir / "train_files.txt")
    else:
        done_sets = set()

    if benchmark_name == DEFAULT_BENCHMARK and request.benchmark is None and dist.is_main:
        console.print(TOYLAND_NOTICE, highlight=False, markup=False)
    quiet = request.quiet or not dist.is_main
    resume_hint = f"ovbench run --resume {run_id}"
    with ProgressReporter(quiet=quiet, console=console) as progress:
        progress.log(f"run {run_id}: {method}, protocol {protocol.name}, {run_dir}")
        iterations, resumed_from = 0, 0
        if protocol.train:
            trainer = Trainer(
                segmenter, train_set, resolved.config.train, run_dir, seed=request.seed, dist=dist, progress=progress,
                extra_state={"method": method, "run_id": run_id, "config": resolved_dict},
            )
            try:
                summary = trainer.train(resume=resume)
            except KeyboardInterrupt:
                found = latest_checkpoint(run_dir / "checkpoints")
                kept = f"its last checkpoint is iteration {found[0]}" if found else "no checkpoint was written yet"
                raise Interrupted(f"interrupted: run {run_id} stopped in training; {kept}; continue with {resume_hint}") from None
            except StorageError as exc:
                raise StorageError(f"{exc}; once there is room, continue with {resume_hint}") from None
            iterations, resumed_from = summary.iterations, summary.resumed_from
            if summary.resumed_from:
                progress.log(f"resumed at iteration {summary.resumed_from}")
            if dist.is_main:
                remove_stale_temp_files(run_dir / "checkpoints")
        results: list[DatasetResult] = []
        if dist.is_main:
            fields = {
                "run_id": run_id,
                "method": method,
                "protocol": protocol.name,
                "benchmark": record_benchmark or benchmark_name,
                "train_set": train_set_name if protocol.train else None,
                "train_size": len(train_set) if train_set is not None else None,
                "seed": request.seed,
                "iterations": iterations,
                "config_hash": _hash_without_seed(resolved_dict),
            }
            extra = {"scale": resolved.scale, "run_dir": str(run_dir), "checkpoint": request.checkpoint,
                     "job_key": request.job_key, "label": request.label, "world_size": dist.world_size}
            segmenter.to(dist.device)
            try:
                results = evaluate_and_record(
                    segmenter, [d for d in eval_sets if d.name not in done_sets], fields=fields, extra=extra,
                    store=store, batch_size=resolved.config.eval.batch_size, device=dist.device, progress=progress,
                )
            except KeyboardInterrupt:
                raise Interrupted(
                    f"interrupted: run {run_id} stopped in evaluation; sets already evaluated keep their records; "
                    f"continue with {resume_hint}"
                ) from None
    return RunOutcome(run_id, run_dir, results, iterations, resumed_from)
