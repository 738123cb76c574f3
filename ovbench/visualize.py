"""Side-by-side predictions (Fig. 4 of the GSNet paper): for a few images of one dataset, the
image, its ground truth and each model's prediction, with one legend of the classes shown.

Each model predicts with the dataset's own vocabulary, exactly as evaluation does, and the
label map is the argmax of its scores. Colours come from `ovbench.palette`, indexed by class
id, so a class has the same colour in the ground truth and in every prediction; ground-truth
pixels the metric ignores are black.

The grid's geometry is fixed in inches (`GridLayout`), so a panel's place in the PNG depends only
on its row and column: `GridLayout.panel_box` gives it in pixels (tests use it to look inside
a panel; the legend grows below the panels and never moves them).
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ovbench.errors import ConfigError, OvbenchError
from ovbench.palette import IGNORE_COLOUR, class_colours, colourise
from ovbench.progress import ProgressReporter

__all__ = ["DPI", "GridLayout", "ModelSpec", "Panels", "choose_images", "render_png", "resolve_checkpoint", "visualize"]

#: Resolution of the PNG; `GridLayout` positions are in inches, times this in pixels.
DPI = 100


@dataclass(frozen=True)
class ModelSpec:
    method: str
    #: a weights file, or a run id / run directory (its latest checkpoint); None: no file
    checkpoint: str | Path | None = None


@dataclass(frozen=True)
class GridLayout:
    """Where the panels of a ``rows`` x ``columns`` grid sit; lengths in inches."""

    rows: int
    columns: int
    panel: float = 2.0
    gap: float = 0.08
    row_gap: float = 0.1
    left: float = 0.3  #: room for the image names, written up the left edge
    right: float = 0.1
    top: float = 0.75  #: the figure title and the column titles

    @property
    def width(self) -> float:
        return self.left + self.columns * self.panel + (self.columns - 1) * self.gap + self.right

    @property
    def grid_height(self) -> float:
        return self.top + self.rows * self.panel + (self.rows - 1) * self.row_gap

    def panel_inches(self, row: int, column: int) -> tuple[float, float]:
        """(left, top) of a panel, from the figure's top-left corner."""
        return self.left + column * (self.panel + self.gap), self.top + row * (self.panel + self.row_gap)

    def panel_box(self, row: int, column: int, dpi: int = DPI) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1) of a panel in the PNG's pixels (origin top-left, end exclusive)."""
        x, y = self.panel_inches(row, column)
        x0, y0, size = round(x * dpi), round(y * dpi), round(self.panel * dpi)
        return x0, y0, x0 + size, y0 + size


@dataclass
class Panels:
    """What the figure shows: per image its name, RGB image, ground truth and predictions."""

    dataset: str
    class_names: list[str]
    ignore_index: int | None
    titles: list[str]  #: one per model
    names: list[str]
    images: list[np.ndarray]  #: (H, W, 3) uint8
    truths: list[np.ndarray]  #: (H, W) class ids
    predictions: list[list[np.ndarray]]  #: [image][model] (H, W) class ids


def choose_images(count: int, n: int, seed: int | None = None, indices: Sequence[int] = ()) -> list[int]:
    """Which images to show: ``indices`` as given; else ``n`` of them, the first ones, or with a
    ``seed`` a random choice (the same for the same seed), in dataset order."""
    if indices:
        bad = [index for index in indices if not 0 <= index < count]
        if bad:
            raise ConfigError(f"image index {bad[0]} is out of range: the dataset has {count} images (0..{count - 1})")
        return list(dict.fromkeys(indices))
    if n < 1:
        raise ConfigError(f"--n must be at least 1, got {n}")
    n = min(n, count)
    if seed is None:
        return list(range(n))
    chosen = np.random.default_rng(seed).choice(count, size=n, replace=False)
    return sorted(int(index) for index in chosen)


def resolve_checkpoint(reference: str | Path | None) -> Path | None:
    """A weights file, or a run (its id or directory) for the run's latest checkpoint."""
    if reference is None:
        return None
    path = Path(reference)
    if path.is_file():
        return path
    from ovbench.engine.checkpoint import latest_checkpoint
    from ovbench.runs import runs_root

    for run_dir in (path, runs_root() / str(reference)):
        if (run_dir / "request.yaml").is_file():
            found = latest_checkpoint(run_dir / "checkpoints")
            if found is None:
                raise OvbenchError(f"run {run_dir.name} has no checkpoint yet ({run_dir / 'checkpoints'})")
            return found[1]
    raise OvbenchError(f"checkpoint not found: {reference} is neither a file nor a run id or run directory")


def _title(model: ModelSpec) -> str:
    if model.checkpoint is None:
        return model.method
    from ovbench.engine.checkpoint import checkpoint_origin

    origin = checkpoint_origin(model.checkpoint) or {}
    # one short line each, so titles of neighbouring panels never run into each other
    if origin.get("run_id"):
        return f"{model.method}\n{_shorten(str(origin['run_id']))}\n{origin.get('iterations')} it"
    return f"{model.method}\n{_shorten(Path(model.checkpoint).name)}"


def _shorten(text: str, width: int = 24) -> str:
    return text if len(text) <= width else text[: width // 2 - 1] + "…" + text[-(width // 2):]


def predict_panels(models: Sequence[ModelSpec], dataset_name: str, *, n: int = 4, seed: int | None = None,
                   indices: Sequence[int] = (), data_root: str | Path | None = None, device: str = "auto",
                   scale: str | None = None, trust_checkpoint: bool = False,
                   progress: ProgressReporter | None = None) -> Panels:
    """Load each model in turn (one in memory at a time) and predict the chosen images."""
    import torch

    from ovbench.registry import build_dataset
    from ovbench.runner import load_segmenter

    if not models:
        raise ConfigError("visualize needs at least one model (--method)")
    models = [ModelSpec(model.method, resolve_checkpoint(model.checkpoint)) for model in models]
    dataset = build_dataset(dataset_name, data_root)
    if len(dataset) == 0:
        raise OvbenchError(f"dataset {dataset.name} has no images")
    chosen = choose_images(len(dataset), n, seed, indices)
    samples = [dataset[index] for index in chosen]
    vocabulary = dataset.vocabulary
    predictions: list[list[np.ndarray]] = [[] for _ in samples]
    task = progress.add_task("predict", total=len(samples) * len(models), unit="img") if progress else None
    for model in models:
        segmenter, _, torch_device = load_segmenter(model.method, checkpoint=model.checkpoint, scale=scale,
                                                    device=device, trust_checkpoint=trust_checkpoint)
        name = getattr(segmenter, "display_name", None) or model.method
        with torch.no_grad():
            for position, sample in enumerate(samples):
                image = torch.from_numpy(np.ascontiguousarray(sample["image"])).permute(2, 0, 1)[None].float()
                scores = segmenter.predict(image.to(torch_device), vocabulary)
                expected = (1, len(vocabulary), image.shape[2], image.shape[3])
                if not isinstance(scores, torch.Tensor) or tuple(scores.shape) != expected:
                    got = tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__
                    raise OvbenchError(f"{name}: predict returned scores of shape {got}, expected {expected}")
                predictions[position].append(scores.argmax(dim=1)[0].cpu().numpy())
                if progress:
                    progress.advance(task, 1)
        del segmenter
    if progress:
        progress.finish(task)
    return Panels(
        dataset=dataset.name,
        class_names=list(dataset.class_names),
        ignore_index=dataset.ignore_index,
        titles=[_title(model) for model in models],
        names=[str(sample.get("name", index)) for sample, index in zip(samples, chosen)],
        images=[np.asarray(sample["image"], dtype=np.uint8) for sample in samples],
        truths=[np.asarray(sample["mask"]) for sample in samples],
        predictions=predictions,
    )


def _legend_entries(panels: Panels) -> list[tuple[str, tuple[int, int, int]]]:
    """(name, colour) of each class any panel shows, by class id; "ignored" last if shown."""
    count = len(panels.class_names)
    shown: set[int] = set()
    ignored = False
    for truth, predicted in zip(panels.truths, panels.predictions):
        for labels, ignore_index in ((truth, panels.ignore_index), *((labels, None) for labels in predicted)):
            values = np.unique(labels)
            valid = (values >= 0) & (values < count)
            if ignore_index is not None:
                valid &= values != ignore_index
            shown.update(int(value) for value in values[valid])
            ignored |= bool((~valid).any())
    colours = class_colours(count)
    entries = [(panels.class_names[index], tuple(int(c) for c in colours[index])) for index in sorted(shown)]
    if ignored:
        entries.append(("ignored (not scored)", IGNORE_COLOUR))
    return entries


def render_png(panels: Panels) -> bytes:
    """The grid as PNG bytes: rows of image | ground truth | one column per model."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    rows, columns = len(panels.images), 2 + len(panels.titles)
    layout = GridLayout(rows, columns)
    entries = _legend_entries(panels)
    longest = max((len(name) for name, _ in entries), default=8)
    per_entry = 0.45 + 0.075 * longest
    legend_columns = max(1, min(len(entries), int((layout.width - 0.2) // per_entry)))
    legend_rows = math.ceil(len(entries) / legend_columns) if entries else 0
    legend_height = 0.25 + 0.24 * legend_rows
    width, height = layout.width, layout.grid_height + legend_height

    figure = Figure(figsize=(width, height), dpi=DPI, facecolor="white")
    figure.suptitle(f"{panels.dataset}: {rows} image{'s' if rows > 1 else ''}", y=1 - 0.12 / height,
                    va="top", fontsize="medium")
    titles = ["image", "ground truth", *panels.titles]
    count = len(panels.class_names)
    for row in range(rows):
        pictures = [panels.images[row], colourise(panels.truths[row], count, panels.ignore_index)]
        # the ignore index marks ground-truth pixels the metric skips; a prediction of that
        # class (FloodNet's queried "background") is a real answer and keeps its colour
        pictures += [colourise(labels, count) for labels in panels.predictions[row]]
        for column, picture in enumerate(pictures):
            x, y = layout.panel_inches(row, column)
            axis = figure.add_axes((x / width, 1 - (y + layout.panel) / height, layout.panel / width,
                                    layout.panel / height))
            # nearest: every pixel of a label panel keeps an exact palette colour
            axis.imshow(picture, interpolation="nearest")
            axis.set_xticks([])
            axis.set_yticks([])
            for spine in axis.spines.values():
                spine.set_linewidth(0.4)
            if row == 0:
                axis.set_title(titles[column], fontsize="small")
            if column == 0:
                axis.set_ylabel(panels.names[row], fontsize="x-small")
    if entries:
        handles = [Patch(facecolor=np.asarray(colour) / 255.0, edgecolor="black", linewidth=0.4, label=name)
                   for name, colour in entries]
        figure.legend(handles=handles, loc="lower center", ncol=legend_columns, fontsize="small", frameon=False,
                      bbox_to_anchor=(0.5, 0.05 / height))
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, facecolor="white")
    return buffer.getvalue()


def output_path(out: str | Path | None, dataset: str) -> Path:
    """``--out``: a PNG path (".png" added when missing), or a folder for the default name."""
    default = f"visualize-{dataset.replace('/', '_').replace(':', '_')}.png"
    if out is None:
        return Path(default)
    out = Path(out)
    if out.is_dir():
        return out / default
    return out if out.suffix.lower() == ".png" else out.with_name(out.name + ".png")


def visualize(models: Sequence[ModelSpec], dataset_name: str, out: str | Path | None = None, *,
              progress: ProgressReporter | None = None, **options) -> Path:
    """Predict, draw and write the PNG atomically; returns its path. ``options`` are those
    of `predict_panels`."""
    from ovbench.fileio import atomic_write_bytes

    panels = predict_panels(models, dataset_name, progress=progress, **options)
    path = output_path(out, panels.dataset)
    atomic_write_bytes(path, render_png(panels))
    return path
