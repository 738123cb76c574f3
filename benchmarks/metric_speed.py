"""How much does ConfusionMatrix.update cost over the bincount it is built on?

Times one update over a batch of random label maps (default: 40 classes, 16 maps of
1024x1024, like an LD50K-sized evaluation batch) against

- a bare ``torch.bincount(k*gt + pred, minlength=k*k)``: no ignore handling and no input
  checks, so the ratio ours/bare is the price of the checks and the ignore label;
- the bincount call alone on an index computed beforehand (the counting pass's own cost);
- torchmetrics' ``MulticlassJaccardIndex.update``, when torchmetrics is installed (it is not
  an ovbench dependency; the row is skipped with a note otherwise).

Each candidate gets a warm-up call, then ``--repeats`` timed calls; best and median are
printed. Run:  python benchmarks/metric_speed.py [--classes 40 --maps 16 --size 1024 --repeats 7]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable

import torch

from ovbench.eval.metrics import ConfusionMatrix


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--classes", type=int, default=40, help="evaluator classes (default 40, LD50K)")
    parser.add_argument("--maps", type=int, default=16, help="label maps per update (default 16)")
    parser.add_argument("--size", type=int, default=1024, help="label map side in pixels (default 1024)")
    parser.add_argument("--repeats", type=int, default=7, help="timed calls per candidate (default 7)")
    parser.add_argument("--ignore-index", type=int, default=255, help="ignore label (default 255)")
    parser.add_argument("--ignore-share", type=float, default=0.05, help="share of ignored GT pixels (default 0.05)")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads for torch (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for name in ("classes", "maps", "size", "repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if not 0.0 <= args.ignore_share < 1.0:
        parser.error("--ignore-share must be in [0, 1)")
    return args


def time_call(fn: Callable[[], object], repeats: int, device: torch.device) -> list[float]:
    """Seconds per call; one untimed warm-up first (allocator, lazy init, CUDA kernels)."""

    def synchronise() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    fn()
    synchronise()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronise()
        seconds.append(time.perf_counter() - start)
    return seconds


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads > 0:
        # On a shared machine one thread gives steadier numbers than a parallel region
        # that waits for its slowest, descheduled thread.
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    k = args.classes
    generator = torch.Generator().manual_seed(args.seed)
    shape = (args.maps, args.size, args.size)
    gt = torch.randint(0, k, shape, generator=generator, dtype=torch.int64)
    gt[torch.rand(shape, generator=generator) < args.ignore_share] = args.ignore_index
    pred = torch.randint(0, k, shape, generator=generator, dtype=torch.int64)
    gt, pred = gt.to(device), pred.to(device)
    pixels = gt.numel()

    ours = ConfusionMatrix(k, args.ignore_index, device=device)

    def run_ours() -> None:
        ours.reset()
        ours.update(pred, gt)

    flat_gt, flat_pred = gt.reshape(-1), pred.reshape(-1)  # views: bincount wants 1-D input

    def run_bare() -> torch.Tensor:
        return torch.bincount(k * flat_gt + flat_pred, minlength=k * k)

    # The counting pass alone, on an index built beforehand: shows how much of either row
    # above is the index arithmetic (and its fresh 128 MB allocations) rather than counting.
    precomputed_index = k * flat_gt + flat_pred

    def run_count_only() -> torch.Tensor:
        return torch.bincount(precomputed_index, minlength=k * k)

    candidates: dict[str, Callable[[], object]] = {
        "ConfusionMatrix.update": run_ours,
        "bare torch.bincount": run_bare,
        "bincount of a precomputed index": run_count_only,
    }
    notes = []
    try:
        from torchmetrics.classification import MulticlassJaccardIndex
    except ImportError:
        notes.append("torchmetrics not importable: its rows are skipped")
    else:
        for validate in (True, False):
            metric = MulticlassJaccardIndex(
                num_classes=k, ignore_index=args.ignore_index, average=None, validate_args=validate
            ).to(device)

            def run_torchmetrics(metric=metric) -> None:
                metric.reset()
                metric.update(pred, gt)

            candidates[f"torchmetrics Jaccard (validate_args={validate})"] = run_torchmetrics
        # Same counts, same [target, pred] layout: a wrong comparison would be no comparison.
        run_ours()
        run_torchmetrics()
        if not torch.equal(metric.confmat.to(torch.int64).cpu(), ours.matrix.cpu()):
            notes.append("WARNING: torchmetrics' confusion matrix differs from ours")
        else:
            notes.append("torchmetrics' confusion matrix equals ours")

    print(
        f"{k} classes, {args.maps} maps of {args.size}x{args.size} ({pixels / 1e6:.1f} Mpixel, int64), "
        f"ignore {args.ignore_index} on {args.ignore_share:.0%} of GT, device {device}, "
        f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, {args.repeats} repeats"
    )
    results = {name: time_call(fn, args.repeats, device) for name, fn in candidates.items()}
    bare_best = min(results["bare torch.bincount"])
    bare_median = statistics.median(results["bare torch.bincount"])
    print(f"{'candidate':42s} {'best ms':>9s} {'median ms':>10s} {'Mpix/s':>8s} {'best/bare':>10s} {'median/bare':>12s}")
    for name, seconds in results.items():
        best, median = min(seconds), statistics.median(seconds)
        print(
            f"{name:42s} {best * 1e3:9.1f} {median * 1e3:10.1f} {pixels / best / 1e6:8.0f} "
            f"{best / bare_best:10.2f} {median / bare_median:12.2f}"
        )
    for note in notes:
        print(f"note: {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
