"""Does evaluation with a large vocabulary scale linearly in the number of classes T?

Builds clip-dense at its ``tiny`` scale exactly as the harness does (``resolve_method`` ->
``build_segmenter``: the adapter, its YAML's inference mode, the maskclip85 templates), then
for each vocabulary size T (made-up names "class 0001", ...) times on ``--images`` random
``--size`` x ``--size`` images:

- ``cold``: the first ``predict`` with that vocabulary, which encodes T x 85 prompts;
- ``cached``: a second ``predict``, the text embeddings coming from the model's cache;
- ``metric``: argmax, ``ConfusionMatrix.update`` over T classes and ``compute``.

Each T runs in a fresh Python process, so every encode is cold and each peak is its own:
``peak MB`` is how far the process's maximum resident set size (``resource.ru_maxrss``) rose
above what building the model had reached. The ratios ``t/t0`` (cold + cached + metric) and
``mem/mem0`` are against the smallest T: linear scaling shows as ratios close to T/T0.

Run:  python benchmarks/large_vocabulary.py [--classes 250 500 1000 2000 --images 2 --size 64]
On a machine shared with other jobs, ``--threads 1`` gives steadier (not faster) numbers.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

CHILD_FLAG = "--one-vocabulary"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--classes", type=int, nargs="+", default=[250, 500, 1000, 2000],
                        help="vocabulary sizes T to time (default 250 500 1000 2000)")
    parser.add_argument("--images", type=int, default=2, help="images per predict call (default 2)")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels (default 64)")
    parser.add_argument("--method", default="clip-dense", help="method to build (default clip-dense)")
    parser.add_argument("--scale", default="tiny", help="method scale (default tiny)")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads for torch (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(CHILD_FLAG, type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for name in ("images", "size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if any(t < 1 for t in args.classes):
        parser.error("--classes must all be at least 1")
    return args


def peak_rss_mb() -> float:
    # ru_maxrss is in KiB on Linux (bytes on macOS, where the MB column reads 1024x too high).
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure_one(args: argparse.Namespace, num_classes: int) -> dict[str, float]:
    """Runs in the child process: build the segmenter, then time one vocabulary."""
    import torch

    from ovbench.data.vocabulary import Vocabulary
    from ovbench.eval.metrics import ConfusionMatrix
    from ovbench.registry import build_segmenter, resolve_method

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    segmenter = build_segmenter(resolve_method(args.method, scale=args.scale))
    segmenter.eval()
    generator = torch.Generator().manual_seed(args.seed)
    shape = (args.images, 3, args.size, args.size)
    images = torch.rand(shape, generator=generator) * 255
    masks = torch.randint(0, num_classes, (args.images, args.size, args.size), generator=generator)
    names = [f"class {index:04d}" for index in range(num_classes)]
    vocabulary = Vocabulary(names)
    baseline = peak_rss_mb()

    start = time.perf_counter()
    segmenter.predict(images, vocabulary)
    cold = time.perf_counter() - start
    start = time.perf_counter()
    scores = segmenter.predict(images, vocabulary)
    cached = time.perf_counter() - start
    start = time.perf_counter()
    confusion = ConfusionMatrix(num_classes, ignore_index=255)
    confusion.update(scores.argmax(dim=1), masks)
    confusion.compute(names)
    metric = time.perf_counter() - start
    return {
        "classes": num_classes,
        "cold": cold,
        "cached": cached,
        "metric": metric,
        "peak_mb": peak_rss_mb() - baseline,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }


def run_child(argv: list[str], num_classes: int) -> dict[str, float]:
    command = [sys.executable, __file__, *argv, CHILD_FLAG, str(num_classes)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"T={num_classes} failed:\n{done.stderr.strip()}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    if args.one_vocabulary is not None:
        print(json.dumps(measure_one(args, args.one_vocabulary)))
        return 0
    # Each child gets the same options (it ignores --classes) plus the one T it measures.
    rows = []
    for num_classes in sorted(set(args.classes)):
        rows.append(run_child(argv, num_classes))
        if len(rows) == 1:
            first = rows[0]
            print(
                f"{args.method} ({args.scale}), {args.images} images of {args.size}x{args.size}, "
                f"torch {first['torch']}, {first['threads']} CPU threads, one process per T"
            )
            print(f"{'T':>6s} {'cold s':>8s} {'cached s':>9s} {'metric s':>9s} {'total s':>8s} "
                  f"{'peak MB':>8s} {'T/T0':>6s} {'t/t0':>6s} {'mem/mem0':>9s}")
        row, base = rows[-1], rows[0]
        total = row["cold"] + row["cached"] + row["metric"]
        base_total = base["cold"] + base["cached"] + base["metric"]
        memory_ratio = row["peak_mb"] / base["peak_mb"] if base["peak_mb"] > 0 else float("nan")
        print(
            f"{row['classes']:6d} {row['cold']:8.2f} {row['cached']:9.3f} {row['metric']:9.3f} {total:8.2f} "
            f"{row['peak_mb']:8.1f} {row['classes'] / base['classes']:6.1f} {total / base_total:6.2f} "
            f"{memory_ratio:9.2f}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
