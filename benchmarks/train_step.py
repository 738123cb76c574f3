"""Forward+backward time and peak memory of one training iteration, batch 1.

Compares precision (fp32 vs bf16 autocast) and attention kernels (PyTorch's math attention vs
scaled_dot_product_attention's fused kernels), all in one process against the fp32 + math
baseline, and prints ratios. On a GPU it builds the published scale (e.g. GSNet: ViT-B/16 at
384 + DINO ViT-B/8); on a CPU it builds the method's tiny scale (bf16 and fused kernels are
GPU features, so the CPU run mostly checks that the script works).

    python benchmarks/train_step.py --method gsnet
    python benchmarks/train_step.py --method catseg --iters 20 --device cuda
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from ovbench.data.vocabulary import Vocabulary
from ovbench.profile import random_weights_overrides
from ovbench.registry import build_segmenter, resolve_method

#: LandDiscover50K's class count: a training step sees the training vocabulary
NUM_CLASSES = 40


def build(method: str, scale: str | None, device: torch.device):
    resolved = resolve_method(method, scale=scale)
    resolved = resolve_method(method, scale=scale, overrides=random_weights_overrides(resolved))
    segmenter = build_segmenter(resolved).to(device)
    segmenter.train()
    crop = resolved.config.train.transform.crop_size or [384, 384]
    return segmenter, crop


def time_steps(segmenter, images, targets, vocabulary, *, precision: str, attention: str, iters: int, warmup: int):
    device = images.device
    dtype = torch.bfloat16 if precision == "bf16" else None
    kernel = sdpa_kernel([SDPBackend.MATH]) if attention == "math" else contextlib.nullcontext()
    params = [p for p in segmenter.parameters() if p.requires_grad]
    times = []
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    with kernel:
        for step in range(warmup + iters):
            for p in params:
                p.grad = None
            start = time.perf_counter()
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                loss = sum(segmenter.loss(images, targets, vocabulary).values())
            loss.backward()
            if device.type == "cuda":
                torch.cuda.synchronize()
            if step >= warmup:
                times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None
    return statistics.median(times), peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--method", default="gsnet")
    parser.add_argument("--scale", default=None, help="default: published scale on GPU, tiny on CPU")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else ("cpu" if args.device == "auto" else args.device))
    scale = args.scale if args.scale is not None else (None if device.type == "cuda" else "tiny")
    scale = None if scale == "full" else scale
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(0)
    segmenter, crop = build(args.method, scale, device)
    vocabulary = Vocabulary([f"class {i}" for i in range(NUM_CLASSES)])
    images = torch.rand(1, 3, *crop, device=device) * 255
    targets = torch.randint(0, NUM_CLASSES, (1, *crop), device=device)
    trainable = sum(p.numel() for p in segmenter.parameters() if p.requires_grad)
    print(f"{args.method} ({scale or 'published'} scale), batch 1, crop {crop[0]}x{crop[1]}, {NUM_CLASSES} classes, "
          f"{trainable / 1e6:.2f}M trainable, device {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}, "
          f"torch {torch.__version__}, median of {args.iters} after {args.warmup} warm-up")
    configs = [("fp32", "math"), ("fp32", "sdpa"), ("bf16", "math"), ("bf16", "sdpa")]
    results = {}
    for precision, attention in configs:
        seconds, peak = time_steps(segmenter, images, targets, vocabulary, precision=precision, attention=attention,
                                   iters=args.iters, warmup=args.warmup)
        results[(precision, attention)] = (seconds, peak)
    base_time, base_peak = results[("fp32", "math")]
    print(f"{'precision':<10}{'attention':<11}{'ms/iter':>10}{'speed-up':>10}{'peak MiB':>11}{'memory ratio':>14}")
    for (precision, attention), (seconds, peak) in results.items():
        memory = f"{peak:11.0f}{peak / base_peak:14.2f}" if peak is not None else f"{'n/a':>11}{'n/a':>14}"
        print(f"{precision:<10}{attention:<11}{seconds * 1e3:10.1f}{base_time / seconds:10.2f}{memory}")


if __name__ == "__main__":
    main()
