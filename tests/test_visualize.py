"""`ovbench visualize` (Fig. 4): the grid the installed executable writes, looked at panel by
panel; which images it picks; its refusals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cli_process import assert_one_error_line, ovbench
from ovbench.errors import ConfigError, OvbenchError
from ovbench.palette import IGNORE_COLOUR, class_colours, colourise
from ovbench.registry import build_dataset
from ovbench.visualize import DPI, GridLayout, choose_images, output_path, resolve_checkpoint


def panel(pixels: np.ndarray, layout: GridLayout, row: int, column: int, inset: int = 3) -> np.ndarray:
    """A panel's pixels, a few pixels in from its frame."""
    x0, y0, x1, y1 = layout.panel_box(row, column)
    return pixels[y0 + inset : y1 - inset, x0 + inset : x1 - inset]


def colours_of(pixels: np.ndarray) -> set[tuple[int, int, int]]:
    return {tuple(int(v) for v in colour) for colour in np.unique(pixels.reshape(-1, 3), axis=0)}


def palette_share(pixels: np.ndarray, palette: set[tuple[int, int, int]]) -> float:
    flat = [tuple(int(v) for v in colour) for colour in pixels.reshape(-1, 3)]
    return sum(colour in palette for colour in flat) / len(flat)


def test_visualize_draws_image_truth_and_each_model(tmp_path: Path, isolated_home: Path) -> None:
    out = tmp_path / "fig4"
    # two tiny random models (no weights to download): training-free CLIP and CAT-Seg
    done = ovbench(isolated_home, "visualize", "--method", "clip-dense", "--dataset", "toyland-flood", "--scale", "tiny",
                   "--compare", "catseg", "none", "--n", "2", "--out", str(out), "-q", timeout=300)
    assert done.returncode == 0, done.stderr
    path = out.with_suffix(".png")
    assert f"wrote {path}" in done.stderr
    with Image.open(path) as image:
        assert image.format == "PNG"
        pixels = np.asarray(image.convert("RGB"))
    layout = GridLayout(rows=2, columns=4)
    height, width, _ = pixels.shape
    assert width == round(layout.width * DPI)
    assert height > layout.grid_height * DPI  # the legend sits below the grid

    dataset = build_dataset("toyland-flood")
    count = len(dataset.class_names)
    palette = {tuple(int(v) for v in colour) for colour in class_colours(count)} | {IGNORE_COLOUR}
    for row in range(2):
        image, truth, first, second = (panel(pixels, layout, row, column) for column in range(4))
        # the ground truth panel is the mask in palette colours, every class of it and nothing else
        expected = colours_of(colourise(dataset[row]["mask"], count, dataset.ignore_index))
        assert colours_of(truth) == expected
        # the image panel is the photo: smooth tones, hardly a palette colour in it
        assert palette_share(image, palette) < 0.2
        assert np.abs(image.astype(int) - truth.astype(int)).mean() > 20
        # predictions are label maps too, each model's own
        for predicted in (first, second):
            assert palette_share(predicted, palette) > 0.99
            assert not np.array_equal(predicted, truth)
        assert not np.array_equal(first, second)
    # the legend (below the grid) shows a swatch of each ground-truth class
    legend = pixels[int(layout.grid_height * DPI):]
    for colour in expected - {IGNORE_COLOUR}:
        assert (np.abs(legend.astype(int) - np.asarray(colour)).max(axis=2) == 0).sum() > 20, colour


def test_choose_images() -> None:
    assert choose_images(48, 4) == [0, 1, 2, 3]
    picked = choose_images(48, 4, seed=3)
    assert picked == choose_images(48, 4, seed=3) == sorted(picked) and len(set(picked)) == 4
    assert picked != [0, 1, 2, 3] and picked != choose_images(48, 4, seed=4)
    assert choose_images(3, 10) == [0, 1, 2]
    assert choose_images(48, 4, indices=[7, 2, 7]) == [7, 2]
    with pytest.raises(ConfigError, match="image index 48 is out of range"):
        choose_images(48, 4, indices=[48])
    with pytest.raises(ConfigError, match="--n must be at least 1"):
        choose_images(48, 0)


def test_output_path(tmp_path: Path) -> None:
    assert output_path(None, "toyland-flood") == Path("visualize-toyland-flood.png")
    assert output_path(tmp_path / "a", "x") == tmp_path / "a.png"
    assert output_path(tmp_path / "a.png", "x") == tmp_path / "a.png"
    assert output_path(tmp_path, "ld:size=5") == tmp_path / "visualize-ld_size=5.png"


def test_checkpoint_of_a_run(isolated_home: Path) -> None:
    run_dir = isolated_home / "runs" / "r1"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "request.yaml").write_text("method: catseg\n")
    with pytest.raises(OvbenchError, match="run r1 has no checkpoint yet"):
        resolve_checkpoint("r1")
    for iteration in (5, 10):
        (run_dir / "checkpoints" / f"iter_{iteration:07d}.pt").write_bytes(b"")
    latest = run_dir / "checkpoints" / "iter_0000010.pt"
    assert resolve_checkpoint("r1") == resolve_checkpoint(run_dir) == latest
    assert resolve_checkpoint(latest) == latest and resolve_checkpoint(None) is None


def test_visualize_refusals(tmp_path: Path, isolated_home: Path) -> None:
    missing = ovbench(isolated_home, "visualize", "--method", "catseg", "--checkpoint", str(tmp_path / "no.pt"),
                      "--dataset", "toyland-flood", "--out", str(tmp_path / "v"))
    assert_one_error_line(missing, "checkpoint not found", "no.pt")
    half_pair = ovbench(isolated_home, "visualize", "--method", "catseg", "--dataset", "toyland-flood",
                        "--compare", "gsnet")
    assert half_pair.returncode == 2 and "--compare needs two values" in half_pair.stderr
    assert not list(tmp_path.glob("v*"))
