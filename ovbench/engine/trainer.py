"""The iteration-based training loop shared by every method."""

from __future__ import annotations

import contextlib
import json
import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel

from ovbench.data.base import SegmentationDataset
from ovbench.data.transforms import TrainTransform, TrainTransformConfig  # noqa: F401 (re-exported)
from ovbench.errors import OvbenchError, first_line, storage_error
from ovbench.engine.checkpoint import (
    checkpoint_name,
    encode_checkpoint,
    latest_checkpoint,
    load_checkpoint,
    prune_checkpoints,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from ovbench.engine.data import PositionBatches, TrainSamples, build_train_loader
from ovbench.engine.distributed import DistInfo, all_reduce_sum
from ovbench.engine.optim import (
    build_optimizer,
    build_scheduler,
    clip_full_model_grad_norm,
    optimizer_groups,
)
from ovbench.engine.train_config import PRECISIONS, OptimizerConfig, ScheduleConfig, TrainConfig  # noqa: F401 (re-exported)
from ovbench.fileio import atomic_write_text
from ovbench.progress import ProgressReporter


class TrainingDiverged(OvbenchError):
    """The loss or the gradient norm stopped being finite."""


@dataclass
class TrainSummary:
    iterations: int
    resumed_from: int
    final_checkpoint: Path | None
    wall_time_s: float
    last_loss: float | None


def _one_line(exc: BaseException) -> str:
    """DataLoader workers wrap errors with the worker's traceback; keep the error's own line."""
    text = str(exc).strip()
    if "Original Traceback" in text:
        last = text.splitlines()[-1]
        return last.split(": ", 1)[1] if ": " in last else last
    return first_line(exc)


class Trainer:
    def __init__(
        self,
        segmenter,
        dataset: SegmentationDataset,
        config: TrainConfig,
        run_dir: Path,
        *,
        seed: int,
        dist: DistInfo,
        progress: ProgressReporter | None = None,
        extra_state: dict[str, Any] | None = None,
    ):
        self.segmenter = segmenter
        self.dataset = dataset
        self.config = config
        self.run_dir = Path(run_dir)
        self.checkpoint_dir = self.run_dir / "checkpoints"
        self.log_path = self.run_dir / "log.jsonl"
        self.seed = seed
        self.dist = dist
        self.progress = progress
        self.extra_state = extra_state or {}
        self.device = dist.device
        self.precision = config.precision
        if self.precision != "fp32" and self.device.type != "cuda":
            warnings.warn(f"train.precision={self.precision} needs a GPU; training in fp32 on {self.device}", stacklevel=2)
            self.precision = "fp32"

    # ------------------------------------------------------------------ state
    def _payload(self, iteration: int, optimizer, scheduler, scaler) -> dict[str, Any]:
        return {
            "iteration": iteration,
            "model": self.segmenter.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else None,
            "rng": rng_state(),
            "data": {"position": iteration * self.config.batch_size, "seed": self.seed},
            **self.extra_state,
        }

    def _truncate_log(self, iteration: int) -> None:
        """Lines logged after the checkpoint we resume from belong to the lost future."""
        if not self.log_path.exists():
            return
        kept = []
        for line in self.log_path.read_text().splitlines():
            try:
                if json.loads(line).get("iteration", 0) <= iteration:
                    kept.append(line)
            except json.JSONDecodeError:
                continue  # a line torn by the kill
        atomic_write_text(self.log_path, "".join(f"{line}\n" for line in kept))

    def _log(self, entry: dict[str, Any]) -> None:
        if self.dist.is_main:
            try:
                with self.log_path.open("a", encoding="utf-8") as handle:
                    handle.write(json.dumps(entry) + "\n")
            except OSError as exc:
                raise storage_error(exc, "cannot write training log") from None

    # ------------------------------------------------------------------ loop
    def train(self, resume: bool = False) -> TrainSummary:
        cfg = self.config
        start_time = time.perf_counter()
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = cfg.tf32
            torch.backends.cudnn.allow_tf32 = cfg.tf32
        self.segmenter.to(self.device)
        self.segmenter.train()
        trainable = [p for p in self.segmenter.parameters() if p.requires_grad]
        groups = optimizer_groups(self.segmenter, self.segmenter.param_groups(cfg.optimizer.lr, cfg.optimizer.weight_decay), cfg.optimizer)
        optimizer = build_optimizer(groups, cfg.optimizer)
        scheduler = build_scheduler(optimizer, cfg.schedule, cfg.iters)
        scaler = torch.amp.GradScaler("cuda") if self.precision == "fp16" else None

        start = 0
        found = latest_checkpoint(self.checkpoint_dir) if resume else None
        if found is not None:
            start, path = found
            state = load_checkpoint(path)
            self.segmenter.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            if scaler is not None and state.get("scaler"):
                scaler.load_state_dict(state["scaler"])
            set_rng_state(state["rng"])
        if resume and self.dist.is_main:
            # also with no checkpoint yet: lines of a run killed before its first one are void
            self._truncate_log(start)
        if start >= cfg.iters:
            return TrainSummary(start, start, found[1] if found else None, 0.0, None)

        model = self.segmenter
        if self.dist.enabled:
            model = DistributedDataParallel(
                self.segmenter, device_ids=[self.device.index] if self.device.type == "cuda" else None, find_unused_parameters=False
            )
        transform = TrainTransform(cfg.transform, self.dataset.ignore_index)
        samples = TrainSamples(self.dataset, transform, self.seed)
        batches = PositionBatches(start, cfg.iters, cfg.batch_size, cfg.grad_accum, self.dist.rank, self.dist.world_size)
        loader = build_train_loader(samples, batches, cfg.num_workers, self.seed, pin_memory=self.device.type == "cuda")
        stream = iter(loader)
        vocabulary = self.dataset.vocabulary
        autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)

        task = self.progress.add_task("train", total=cfg.iters) if self.progress else None
        if self.progress and start:
            self.progress.advance(task, start, status=f"resumed at {start}")
        last_loss: float | None = None
        window_start, window_iters = time.perf_counter(), 0
        final_path: Path | None = None
        # A checkpoint is written only once the weights it holds have given a finite loss on
        # the next batch: a step can turn finite weights into ones that explode on the next
        # forward (lr 1e30), and the file the divergence message names must really be good.
        pending: tuple[Path, bytes] | None = None
        for iteration in range(start, cfg.iters):
            optimizer.zero_grad(set_to_none=True)
            loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
            parts: dict[str, float] = {}
            for micro_step in range(cfg.grad_accum):
                try:
                    images, targets = next(stream)
                except OvbenchError as exc:
                    raise type(exc)(_one_line(exc)) from None
                images = images.to(self.device, non_blocking=True).float()
                targets = targets.to(self.device, non_blocking=True)
                sync = contextlib.nullcontext()
                if self.dist.enabled and micro_step < cfg.grad_accum - 1:
                    sync = model.no_sync()
                with sync:
                    with torch.autocast(self.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                        losses = model(images, targets, vocabulary)
                    loss = sum(losses.values())
                    scaled = loss / cfg.grad_accum
                    (scaler.scale(scaled) if scaler is not None else scaled).backward()
                loss_sum += loss.detach().double() / cfg.grad_accum
                for name, value in losses.items():
                    parts[name] = parts.get(name, 0.0) + float(value.detach()) / cfg.grad_accum
            # every process must agree to stop, or the others would wait forever in all-reduce
            mean_loss = all_reduce_sum(loss_sum, self.dist) / self.dist.world_size
            if scaler is not None:
                scaler.unscale_(optimizer)
            grad_norm = clip_full_model_grad_norm(trainable, cfg.grad_clip)
            finite = torch.isfinite(mean_loss) & torch.isfinite(grad_norm.to(mean_loss.device).double())
            if scaler is None and not bool(finite):
                self._diverged(iteration + 1, float(mean_loss), float(grad_norm))
            if pending is not None:
                save_checkpoint(*pending)
                prune_checkpoints(self.checkpoint_dir, cfg.keep_checkpoints)
                pending = None
            used_lrs = [group["lr"] for group in optimizer.param_groups]
            if scaler is not None:
                scaler.step(optimizer)  # fp16 overflow: the scaler skips the step and lowers its scale
                scaler.update()
            else:
                optimizer.step()
            scheduler.step()
            done = iteration + 1
            last_loss = float(mean_loss)
            window_iters += 1
            if done % cfg.log_every == 0 or done == cfg.iters or done == start + 1:
                elapsed = time.perf_counter() - window_start
                rate = window_iters / elapsed if elapsed > 0 else None
                lr = used_lrs[0]
                self._log(
                    {
                        "iteration": done,
                        "loss": last_loss,
                        "losses": parts,
                        "lr": used_lrs,
                        "grad_norm": float(grad_norm),
                        "it_per_s": rate,
                        "time": time.time(),
                    }
                )
                window_start, window_iters = time.perf_counter(), 0
                # rate, elapsed time and ETA come from the progress bar: one of each
                status = f"loss {last_loss:.4f}  lr {lr:.2e}"
            else:
                status = None
            if self.progress:
                self.progress.advance(task, 1, status=status)
            if done % cfg.checkpoint_every == 0 or done == cfg.iters:
                if not all(bool(torch.isfinite(p).all()) for p in trainable):
                    self._diverged(done, float(mean_loss), float(grad_norm), weights=True)
                if self.dist.is_main:
                    path = self.checkpoint_dir / checkpoint_name(done)
                    encoded = encode_checkpoint(self._payload(done, optimizer, scheduler, scaler))
                    if done == cfg.iters:  # no next batch to vouch for it; its weights are finite
                        save_checkpoint(path, encoded)
                        prune_checkpoints(self.checkpoint_dir, cfg.keep_checkpoints + 1)
                    else:
                        pending = (path, encoded)
                    final_path = path
        return TrainSummary(cfg.iters, start, final_path, time.perf_counter() - start_time, last_loss)

    def _diverged(self, iteration: int, loss: float, grad_norm: float, weights: bool = False) -> None:
        found = latest_checkpoint(self.checkpoint_dir)
        where = f"the last good checkpoint is {found[1]}" if found else "no checkpoint was written yet"
        if weights:
            what = "the weights are no longer finite"
        else:
            what = f"loss is {loss}" if not math.isfinite(loss) else f"gradient norm is {grad_norm}"
        optimizer = self.config.optimizer
        advice = (f"start a new run with a lower learning rate (train.optimizer.lr, now {optimizer.lr:g})"
                  + (" or gradient clipping (train.grad_clip=0.01)" if self.config.grad_clip is None else ""))
        raise TrainingDiverged(f"training diverged at iteration {iteration}: {what}; {where}; {advice}")
