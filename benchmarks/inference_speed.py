"""Per-image inference time of several methods at their published scale and evaluation recipe,
in one process, as ratios to a baseline method (CAT-Seg by default).

Each method is built at the published scale with random weights (no downloads; the time does
not depend on the values) and runs `predict` - the whole evaluation recipe of its YAML: CAT-Seg
and GSNet the sliding window (640 canvas, 384 tiles + a global view), SED the 768 stretch,
SAN the aspect-preserving short side 640 with masks resized to the image - on the same
random images of one size (default 640 x 640, the short side every recipe resizes to, so no
method pays for a resize the others skip). The vocabulary is LandDiscover50K-sized (40
classes) unless --classes says otherwise.

    python benchmarks/inference_speed.py                        # san, sed, catseg, gsnet on CPU
    python benchmarks/inference_speed.py --methods san catseg --images 5 --device cuda
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from ovbench.data.vocabulary import Vocabulary
from ovbench.profile import random_weights_overrides
from ovbench.registry import build_segmenter, resolve_method

DEFAULT_METHODS = ("san", "sed", "catseg", "gsnet")


def build(method: str, device: torch.device):
    resolved = resolve_method(method)
    resolved = resolve_method(method, overrides=random_weights_overrides(resolved))
    return build_segmenter(resolved).to(device).eval()


def seconds_per_image(segmenter, images: torch.Tensor, vocabulary: Vocabulary, warmup: int) -> list[float]:
    device = images.device
    times = []
    with torch.inference_mode():
        for index in range(warmup + images.shape[0]):
            image = images[index % images.shape[0]][None]
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            segmenter.predict(image, vocabulary)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if index >= warmup:
                times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS))
    parser.add_argument("--baseline", default="catseg", help="the method the ratios are relative to")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--images", type=int, default=3, help="timed images per method")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--size", type=int, nargs=2, default=[640, 640], metavar=("H", "W"))
    parser.add_argument("--classes", type=int, default=40)
    args = parser.parse_args()

    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    methods = list(dict.fromkeys([*args.methods, args.baseline]))
    generator = torch.Generator().manual_seed(0)
    images = (torch.rand(args.images, 3, *args.size, generator=generator) * 255).to(device)
    vocabulary = Vocabulary([f"class {i}" for i in range(args.classes)])
    print(f"device {device}, threads {torch.get_num_threads()}, images {args.images} x {tuple(args.size)}, "
          f"{args.classes} classes, published scale, random weights")
    results: dict[str, float] = {}
    for method in methods:
        segmenter = build(method, device)
        times = seconds_per_image(segmenter, images, vocabulary, args.warmup)
        results[method] = statistics.median(times)
        print(f"  {method:<10} {results[method]:8.3f} s/image (median of {len(times)}; {segmenter.inference!r})", flush=True)
        del segmenter
    base = results[args.baseline]
    print(f"\n| method | s/image | ratio to {args.baseline} |\n|---|---|---|")
    for method in methods:
        print(f"| {method} | {results[method]:.3f} | {results[method] / base:.2f} |")


if __name__ == "__main__":
    main()
