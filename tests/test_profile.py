import csv
import io
import re

import open_clip
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cli_process import assert_one_error_line, ovbench
from ovbench.cli import main
from ovbench.profile import (
    CostSettings,
    count_flops,
    count_parameters,
    profile_method,
    profile_vocabulary,
    render_table,
    resolve_random_weights,
)
from ovbench.registry import build_segmenter, method_names

TINY_COST = CostSettings(image_size=(64, 64), classes=3, device="cpu", repeats=2)


def test_full_scale_clip_dense_is_the_whole_vit_b16_clip(capsys):
    profile = profile_method("clip-dense")  # random weights: nothing is downloaded
    reference = open_clip.create_model("ViT-B-16")
    expected = sum(p.numel() for name, p in reference.named_parameters() if name != "logit_scale")
    assert profile.trainable == 0 and profile.frozen == expected
    assert main(["profile", "--method", "clip-dense", "--scale", "tiny", "--no-flops", "--no-timing"]) == 0
    out = capsys.readouterr().out
    assert "trainable parameters: 0" in out and "GFLOPs" not in out


def test_counts_split_trainable_and_frozen_per_part():
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    model[0].requires_grad_(False)
    parts = {p.name: p for p in count_parameters(model, depth=1)}
    assert parts["0"].frozen == 16 and parts["0"].trainable == 0
    assert parts["1"].trainable == 10 and parts["1"].frozen == 0


def test_flops_of_a_conv_and_a_linear_by_hand():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Flatten(), nn.Linear(8 * 16 * 16, 10))
    out, flops = count_flops(model, torch.rand(2, 3, 16, 16))
    conv = 2 * (2 * 16 * 16 * 8) * (3 * 3 * 3)  # a multiply-add per kernel tap per output value
    linear = 2 * 2 * (8 * 16 * 16) * 10
    assert out.shape == (2, 10) and flops == conv + linear


def test_fused_cpu_attention_is_counted():
    # torch's own table has no formula for these CPU kernels: they would count as 0
    q, k, v = torch.rand(1, 2, 4, 8), torch.rand(1, 2, 6, 8), torch.rand(1, 2, 6, 8)
    _, flops = count_flops(F.scaled_dot_product_attention, q, k, v)
    assert flops == 2 * 2 * 4 * 6 * 8 + 2 * 2 * 4 * 6 * 8  # Q K^T, then the weighted sum of V
    mha = nn.MultiheadAttention(16, 4, batch_first=True).eval()
    x = torch.rand(2, 5, 16)
    with torch.no_grad():  # the fused inference fast path
        (fused, _), fused_flops = count_flops(mha, x, x, x)
    (unfused, _), unfused_flops = count_flops(mha, x, x, x, need_weights=False)  # grad on: op by op
    projections = 2 * 2 * 5 * 16 * 16 * 4  # q, k, v and out, (2*5 tokens) x 16 x 16 each
    assert fused_flops == unfused_flops == projections + 2 * 2 * 5 * 5 * 16 * 2
    torch.testing.assert_close(fused, unfused)


@pytest.mark.parametrize("method", ["clip-dense", "san"])
def test_counting_flops_leaves_predict_unchanged(method):
    torch.manual_seed(0)
    segmenter = build_segmenter(resolve_random_weights(method, "tiny")).eval()
    image, vocabulary = torch.rand(1, 3, 48, 64) * 255, profile_vocabulary(3)
    plain = segmenter.predict(image, vocabulary)
    counted, flops = count_flops(segmenter.predict, image, vocabulary)
    assert flops > 0 and torch.equal(plain, counted)


def test_vocabulary_of_the_stated_size():
    assert [c.name for c in profile_vocabulary(42).classes][-2:] == ["class 40", "class 41"]
    assert len(profile_vocabulary(5)) == 5


def test_tiny_method_costs_are_positive():
    profile = profile_method("san", scale="tiny", cost=TINY_COST)
    cost = profile.cost
    assert cost.gflops > 0 and cost.text_gflops >= 0 and cost.latency_s > 0 and cost.repeats == 2
    assert cost.model_bytes >= 4 * profile.total  # fp32 parameters, plus the buffers
    if cost.working_bytes is not None:  # Linux /proc
        assert cost.peak_bytes >= cost.model_bytes
    table = render_table([profile], "markdown")
    assert table.splitlines()[2].startswith("| san |") and "multiply-add counts 2 FLOPs" in table


def test_cli_prints_gflops_latency_and_memory(tmp_path):
    proc = ovbench(tmp_path, "profile", "--method", "clip-dense", "--scale", "tiny", "--image-size", "64", "--classes", "3", "--repeats", "2")
    assert proc.returncode == 0, proc.stderr
    gflops = re.search(r"^GFLOPs: ([0-9.]+) per image", proc.stdout, re.MULTILINE)
    latency = re.search(r"^latency: ([0-9.]+) s per image \(median of 2", proc.stdout, re.MULTILINE)
    assert gflops and float(gflops.group(1)) > 0, proc.stdout
    assert latency and float(latency.group(1)) > 0, proc.stdout
    assert "input: 1x3x64x64 image, 3 classes" in proc.stdout and "peak memory: " in proc.stdout


def test_cli_all_lists_every_method_but_the_variants(tmp_path):
    out = tmp_path / "profile.csv"
    proc = ovbench(tmp_path, "profile", "--all", "--scale", "tiny", "--image-size", "32", "--classes", "2", "--no-timing",
                   "--format", "csv", "--out", str(out), "--quiet")
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    expected = [name for name in method_names() if "/" not in name]
    assert [row["method"] for row in rows] == expected and "gsnet" in expected
    assert all(float(row["gflops"]) > 0 and row["latency_s"] == "-" for row in rows), rows
    assert all(int(row["total"]) == int(row["trainable"]) + int(row["frozen"]) for row in rows)


@pytest.mark.parametrize(
    "args, fragment",
    [
        (("--method", "nosuch"), "nosuch"),
        ((), "--method NAME or --all"),
        (("--method", "san", "--image-size", "big"), "--image-size"),
    ],
)
def test_cli_bad_input_is_one_error_line(tmp_path, args, fragment):
    assert_one_error_line(ovbench(tmp_path, "profile", *args), fragment)
