"""How many training images per second does the data pipeline deliver?

Writes a folder dataset of ``--images`` 512x512 PNG tiles and label maps (aerial-looking
toyland scenes, so PNG decoding costs what it costs on real imagery, not on noise) into a
temporary directory, then times the training stream exactly as ``ovbench run`` builds it:
``FolderDataset`` -> ``TrainSamples`` with ``TrainTransform`` (the GSNet / CAT-Seg chain: short
side 384, random 384x384 crop, SSD colour jitter, horizontal flip, padding to 384) ->
``build_train_loader``. Each worker setting reads every image once (one epoch) after one
warm-up batch (worker start-up is not timed). Settings are timed in turns, ``--repeats``
rounds, so a neighbour's load spike hits them alike; best and median images/s and the ratio
of the bests are printed.

Run:  python benchmarks/data_throughput.py [--images 200 --batch 4 --workers 0 2 --repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image

from ovbench.data.toyland import ToylandDataset
from ovbench.data.transforms import TrainTransform, TrainTransformConfig
from ovbench.engine.data import PositionBatches, TrainSamples, build_train_loader
from ovbench.registry import build_dataset


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=200, help="images generated and read per setting (default 200)")
    parser.add_argument("--size", type=int, default=512, help="side of the generated tiles (default 512)")
    parser.add_argument("--batch", type=int, default=4, help="batch size (default 4, GSNet's)")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="worker counts to compare (default 0 2)")
    parser.add_argument("--repeats", type=int, default=3, help="timed epochs per setting, taken in turns (default 3)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", type=Path, default=None, help="write the dataset here and keep it (default: a temp dir)")
    args = parser.parse_args(argv)
    for name in ("images", "size", "batch", "repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if any(w < 0 for w in args.workers):
        parser.error("--workers must be >= 0")
    if args.images < 2 * args.batch:
        parser.error("--images must be at least two batches")
    return args


def write_dataset(root: Path, count: int, size: int, seed: int) -> Path:
    """`count` PNG pairs under root/bench/{images,labels} and the spec YAML that reads them."""
    scenes = ToylandDataset("toyland-train", seed=seed, num_images=count, size=size)
    images, labels = root / "bench/images", root / "bench/labels"
    images.mkdir(parents=True, exist_ok=True)
    labels.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        sample = scenes[i]
        Image.fromarray(sample["image"]).save(images / f"{i:05d}.png")
        Image.fromarray(sample["mask"].astype(np.uint8)).save(labels / f"{i:05d}.png")
    spec = root / "bench.yaml"
    spec.write_text(yaml.safe_dump(dict(
        image_dir="bench/images", mask_dir="bench/labels", vocabulary=list(scenes.vocabulary.names),
        class_names=list(scenes.class_names), ignore_index=int(scenes.ignore_index),
    )))
    return spec


def images_per_second(samples: TrainSamples, workers: int, batch: int, seed: int) -> float:
    iterations = len(samples) // batch
    # one extra batch first: worker start-up and first-touch costs are not throughput
    batches = PositionBatches(0, iterations + 1, batch, 1, 0, 1)
    loader = build_train_loader(samples, batches, num_workers=workers, seed=seed, pin_memory=False)
    stream = iter(loader)
    next(stream)
    start = time.perf_counter()
    seen = 0
    for images, masks in stream:
        seen += images.shape[0]
    elapsed = time.perf_counter() - start
    return seen / elapsed


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(1)  # the pipeline is numpy/PIL; keep torch from competing with workers
    with tempfile.TemporaryDirectory(prefix="ovbench-throughput-") as tmp:
        root = args.keep or Path(tmp)
        start = time.perf_counter()
        spec = write_dataset(root, args.images, args.size, args.seed)
        print(f"wrote {args.images} {args.size}x{args.size} PNG pairs in {time.perf_counter() - start:.1f} s ({root})")
        dataset = build_dataset(str(spec), root)
        transform = TrainTransform(TrainTransformConfig(), dataset.ignore_index)
        samples = TrainSamples(dataset, transform, seed=args.seed)
        print(f"transform: {transform}")
        print(f"CPU cores visible: {os.cpu_count()}; batch {args.batch}; {len(samples)} images per setting")
        rates: dict[int, list[float]] = {w: [] for w in args.workers}
        for _ in range(args.repeats):
            for workers in args.workers:
                rates[workers].append(images_per_second(samples, workers, args.batch, args.seed))
        for workers, values in rates.items():
            print(f"workers={workers}: best {max(values):.1f} images/s, median {statistics.median(values):.1f} "
                  f"({', '.join(f'{v:.1f}' for v in values)})")
        base = max(rates[args.workers[0]])
        for workers in args.workers[1:]:
            print(f"ratio workers={workers} / workers={args.workers[0]} (best): {max(rates[workers]) / base:.2f}x")

if __name__ == "__main__":
    main()
