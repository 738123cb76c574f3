"""The adapter contract: what every `OpenVocabSegmenter` must do, checked on a built method.

`run_contract` builds a method (normally at its tiny scale) and runs each check of the
interface's promises as its own row, so that one broken promise names itself instead of
surfacing later as a wrong number in a results table:

* builds: the YAML resolves into a segmenter;
* predict shape: (B,T,H,W) float scores at the input size, finite, for T = 1, 5 and 300
  (T = 300 on one small image, a sliding window on a canvas of one tile: each view costs T);
* vocabulary order: permuting the vocabulary permutes the score channels, nothing else;
* batch independence: an image's scores do not depend on the other images of the batch;
* deterministic eval: two predict calls give identical scores;
* loss finite / gradients / optimiser groups (trainable methods): the loss is finite, its
  gradient reaches every parameter the optimiser groups hold, and the groups hold exactly
  the trainable parameters, each once;
* checkpoint round-trip: a checkpoint saved as the trainer saves it, loaded into a segmenter
  built with another seed, reproduces the scores;
* official layout (adapters with `to_official_state_dict` and `convert_official_state_dict`):
  the conversion is lossless and an official-layout file reproduces the scores.

Each row catches its own exceptions (one line, `first_line`), so a failing row never hides
the others. Inputs are seeded; the tiny scale of a method takes a few seconds on a CPU.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ovbench.data.vocabulary import Vocabulary
from ovbench.errors import OvbenchError, first_line
from ovbench.interface import IGNORE_INDEX, OpenVocabSegmenter

__all__ = ["CHECK_NAMES", "CheckResult", "contract_vocabulary", "run_contract", "summarize"]

PASS, FAIL, SKIP = "pass", "fail", "skip"

#: the rows of a contract run, in order
CHECK_NAMES = (
    "builds",
    "predict shape",
    "vocabulary order",
    "batch independence",
    "deterministic eval",
    "loss finite",
    "gradients",
    "optimiser groups",
    "checkpoint round-trip",
    "official layout",
)
TRAINING_CHECKS = ("loss finite", "gradients", "optimiser groups")

#: batch size and image side of the predict checks; the T=300 check uses a smaller image.
BATCH = 2
IMAGE_SIDE = 64
LARGE_VOCABULARY_SIDE = 32
VOCABULARY_SIZES = (1, 5, 300)
#: relative tolerance of the equivariance checks (float32 sums in another order)
RTOL = 1e-5
#: how many offending names a detail line lists
LISTED = 3

REAL_NAMES = (
    "building", "road", ["tree", "forest"], "water", "car", "low vegetation", "bare soil", "ship",
    "airplane", "parking lot", "farmland", "river", "bridge", "storage tank", "playground",
)


@dataclass(frozen=True)
class CheckResult:
    """One row: `status` is "pass", "fail" or "skip"; `detail` is one line."""

    name: str
    status: str
    detail: str = ""
    seconds: float = 0.0

    @property
    def failed(self) -> bool:
        return self.status == FAIL


class CheckFailed(Exception):
    """A check's own verdict (as opposed to an exception from the adapter)."""


def contract_vocabulary(size: int) -> Vocabulary:
    """`size` distinct classes: real remote-sensing names first (not in sorted order, one with
    a synonym), then "class 15", "class 16", ..."""
    entries: list[Any] = list(REAL_NAMES[:size])
    entries += [f"class {i}" for i in range(len(entries), size)]
    return Vocabulary(entries)


def summarize(results: Sequence[CheckResult]) -> str:
    counts = {status: sum(r.status == status for r in results) for status in (PASS, FAIL, SKIP)}
    seconds = sum(r.seconds for r in results)
    return f"{counts[PASS]} passed, {counts[FAIL]} failed, {counts[SKIP]} skipped in {seconds:.1f} s"


# --------------------------------------------------------------------------- helpers


def _images(batch: int, side: int, seed: int) -> Tensor:
    """Seeded RGB in 0..255 with some structure (smooth gradients plus noise), independent
    of the global generator."""
    generator = torch.Generator().manual_seed(seed)
    noise = torch.rand(batch, 3, side, side, generator=generator)
    ramp = torch.linspace(0, 1, side)
    smooth = (ramp.view(1, 1, side, 1) + ramp.view(1, 1, 1, side)) / 2
    colours = torch.rand(batch, 3, 1, 1, generator=generator)
    return ((0.5 * noise + 0.5 * smooth * colours) * 255).float()


def _names(names: Iterable[str]) -> str:
    names = list(names)
    shown = ", ".join(names[:LISTED])
    return shown + (f" (+{len(names) - LISTED} more)" if len(names) > LISTED else "")


def _max_diff(a: Tensor, b: Tensor) -> float:
    return float((a.double() - b.double()).abs().max()) if a.numel() else 0.0


def _close(a: Tensor, b: Tensor) -> bool:
    scale = float(a.detach().abs().max()) if a.numel() else 0.0
    return a.shape == b.shape and torch.allclose(a, b, rtol=RTOL, atol=RTOL * max(scale, 1e-12))


def _predict(segmenter: OpenVocabSegmenter, images: Tensor, vocabulary: Vocabulary) -> Tensor:
    segmenter.eval()
    scores = segmenter.predict(images, vocabulary)
    if not isinstance(scores, Tensor):
        raise CheckFailed(f"predict returned {type(scores).__name__}, not a tensor")
    return scores


def _expect_shape(scores: Tensor, images: Tensor, vocabulary: Vocabulary) -> None:
    """Raise CheckFailed unless `scores` are (B,T,H,W) finite floats for these inputs."""
    b, _, h, w = images.shape
    expected = (b, len(vocabulary), h, w)
    if tuple(scores.shape) != expected:
        raise CheckFailed(f"T={len(vocabulary)}: scores {tuple(scores.shape)} for images {tuple(images.shape)}, expected {expected}")
    if not scores.is_floating_point():
        raise CheckFailed(f"T={len(vocabulary)}: scores are {scores.dtype}, expected a float dtype")
    if not torch.isfinite(scores).all():
        bad = int((~torch.isfinite(scores)).sum())
        raise CheckFailed(f"T={len(vocabulary)}: {bad} of {scores.numel()} scores are not finite")


def _is_training_free(cls: type) -> bool:
    """The adapter does not override `OpenVocabSegmenter.loss`."""
    return getattr(cls, "loss", None) is OpenVocabSegmenter.loss


def _has_static(cls: type, name: str) -> bool:
    for klass in cls.__mro__:
        if name in vars(klass):
            return isinstance(vars(klass)[name], staticmethod)
    return False


def _loss_input_side(resolved) -> tuple[int, int]:
    transform = getattr(getattr(resolved.config, "train", None), "transform", None)
    crop = getattr(transform, "crop_size", None)
    return (int(crop[0]), int(crop[1])) if crop else (IMAGE_SIDE, IMAGE_SIDE)


def _param_names(module: nn.Module) -> dict[int, str]:
    return {id(p): name for name, p in module.named_parameters(remove_duplicate=False)}


def _group_params(groups: Any) -> list[Any]:
    if not isinstance(groups, (list, tuple)):
        raise CheckFailed(f"param_groups returned {type(groups).__name__}, expected a list of dicts")
    params: list[Any] = []
    for i, group in enumerate(groups):
        if not isinstance(group, Mapping) or "params" not in group:
            raise CheckFailed(f"param_groups entry {i} is not a dict with 'params'")
        entry = group["params"]
        params.extend([entry] if isinstance(entry, Tensor) else list(entry))
    return params


# --------------------------------------------------------------------------- the checks


class _Contract:
    def __init__(self, resolved, build: Callable[[int], OpenVocabSegmenter], seed: int):
        self.resolved = resolved
        self.build = build
        self.seed = seed
        self.segmenter: OpenVocabSegmenter | None = None
        self.images = _images(BATCH, IMAGE_SIDE, seed)
        self.vocabulary = contract_vocabulary(5)
        self._reference: Tensor | None = None
        self._single: Tensor | None = None
        self._losses: tuple[dict[str, Tensor], Tensor] | None = None
        self._buffers: dict[str, Tensor] | None = None

    def restore_buffers(self) -> None:
        """Undo what the training forwards did to the buffers (only those that changed: a
        buffer the autograd graph saved must not be written while the graph lives)."""
        saved, self._buffers, self._losses = self._buffers, None, None
        if saved is None or self.segmenter is None:
            return
        with torch.no_grad():
            for name, b in self.segmenter.named_buffers():
                old = saved.get(name)
                if old is not None and old.shape == b.shape and not torch.equal(old, b):
                    b.copy_(old)

    def reference(self) -> Tensor:
        """Scores of the batch of contract images and the 5-class vocabulary (computed once)."""
        if self._reference is None:
            self._reference = _predict(self.segmenter, self.images, self.vocabulary)
        return self._reference

    def single(self) -> Tensor:
        """Scores of image 0 alone: the reference of the rows after the batch row (one image
        per predict keeps them cheap)."""
        if self._single is None:
            self._single = _predict(self.segmenter, self.images[:1], self.vocabulary)
        return self._single

    # ------------------------------------------------------------ predict rows
    def _one_tile(self):
        """The YAML's sliding window on a canvas of one tile (one tile plus the global view),
        or None when the mode is not a sliding window."""
        from ovbench.eval.inference import build_inference

        config = getattr(self.resolved.config, "inference", None)
        if getattr(config, "mode", None) != "sliding" or (config.size and list(config.size) == [config.window] * 2):
            return None
        return build_inference(dataclasses.replace(config, size=[config.window, config.window], short_side=None))

    def _predict_large(self, images: Tensor, vocabulary: Vocabulary) -> tuple[Tensor, str]:
        """Scores for a large vocabulary: the forward costs T x its views, so a sliding
        window runs on a canvas of one tile (2 views instead of the tiny scale's 5)."""
        one_tile = self._one_tile()
        if one_tile is None:
            return _predict(self.segmenter, images, vocabulary), ""
        saved = self.segmenter.inference
        self.segmenter.inference = one_tile
        try:
            return _predict(self.segmenter, images, vocabulary), f" (sliding canvas of one {one_tile.window}-px tile)"
        finally:
            self.segmenter.inference = saved

    def predict_shape(self) -> str:
        parts = []
        for size in VOCABULARY_SIZES:
            vocabulary, how = contract_vocabulary(size), ""
            if size == len(self.vocabulary):
                images, scores = self.images, self.reference()
            elif size <= len(self.vocabulary):
                images = self.images
                scores = _predict(self.segmenter, images, vocabulary)
            else:
                images = _images(1, LARGE_VOCABULARY_SIDE, self.seed + 1)
                scores, how = self._predict_large(images, vocabulary)
            _expect_shape(scores, images, vocabulary)
            b, _, h, w = images.shape
            parts.append(f"T={size} on {b}x{h}x{w}{how}")
        return f"finite {str(scores.dtype).replace('torch.', '')} (B,T,H,W) scores at the input size: " + ", ".join(parts)

    def vocabulary_order(self) -> str:
        reference = self.single()
        size = len(self.vocabulary)
        # position j of the permuted vocabulary holds class perm[j]; no class stays in place
        perm = [(3 * j + 2) % size for j in range(size)]
        permuted = Vocabulary([self.vocabulary[i] for i in perm])
        scores = _predict(self.segmenter, self.images[:1], permuted)
        if scores.shape != reference.shape:
            raise CheckFailed(f"scores of the permuted vocabulary are {tuple(scores.shape)}, of the original {tuple(reference.shape)}")
        moved = []
        for j, i in enumerate(perm):
            if not _close(scores[:, j], reference[:, i]):
                moved.append((i, j, _max_diff(scores[:, j], reference[:, i])))
        if moved:
            i, j, diff = moved[0]
            raise CheckFailed(
                f"scores did not follow the classes when the vocabulary was permuted: {len(moved)} of {size} classes differ, "
                f"e.g. {self.vocabulary[i].name!r} (position {i} -> {j}) by up to {diff:.3g}"
            )
        return f"a permutation of the {size} classes permutes the score channels (rtol {RTOL:g})"

    def batch_independence(self) -> str:
        reference = self.reference()
        single = self.single()
        if single.shape[1:] != reference.shape[1:] or len(single) != 1:
            raise CheckFailed(f"scores of image 0 alone are {tuple(single.shape)}, of the batch of {BATCH} {tuple(reference.shape)}")
        if not _close(single[0], reference[0]):
            raise CheckFailed(
                f"image 0 predicted alone differs from image 0 of a batch of {BATCH} by up to {_max_diff(single[0], reference[0]):.3g}"
            )
        return f"image 0 alone equals image 0 of a batch of {BATCH} (rtol {RTOL:g})"

    def deterministic_eval(self) -> str:
        first = self.single()
        second = _predict(self.segmenter, self.images[:1], self.vocabulary)
        if first.shape != second.shape or not torch.equal(first, second):
            detail = f"differ by up to {_max_diff(first, second):.3g}" if first.shape == second.shape else \
                f"have shapes {tuple(first.shape)} and {tuple(second.shape)}"
            raise CheckFailed(f"two predict calls on the same input {detail}")
        return "two predict calls give identical scores"

    # ------------------------------------------------------------ training rows
    def _loss(self) -> tuple[dict[str, Tensor], Tensor]:
        segmenter = self.segmenter
        h, w = _loss_input_side(self.resolved)
        generator = torch.Generator().manual_seed(self.seed + 2)
        images = _images(BATCH, max(h, w), self.seed + 2)[..., :h, :w].contiguous()
        targets = torch.randint(0, len(self.vocabulary), (BATCH, h, w), generator=generator)
        targets[:, : h // 8] = IGNORE_INDEX
        for p in segmenter.parameters():
            p.grad = None
        # a training forward may update buffers (running statistics, step counters); they
        # are put back after the backward pass, so the reference scores stay valid
        if self._buffers is None:
            self._buffers = {name: b.detach().clone() for name, b in segmenter.named_buffers()}
        segmenter.train()
        try:
            losses = segmenter(images, targets, self.vocabulary)  # forward -> loss, as the engine calls it
        finally:
            segmenter.eval()
        if not isinstance(losses, Mapping) or not losses:
            raise CheckFailed(f"loss returned {type(losses).__name__}, expected a non-empty dict of tensors")
        for key, value in losses.items():
            if not isinstance(value, Tensor) or value.numel() != 1:
                raise CheckFailed(f"loss {key!r} is not a scalar tensor")
        total = sum(losses.values())
        return losses, total

    def loss_finite(self) -> str:
        losses, total = self._loss()
        self._losses = losses, total  # the gradients row differentiates this one
        bad = [key for key, value in losses.items() if not torch.isfinite(value).all()]
        if bad:
            raise CheckFailed(f"loss not finite: {_names(f'{k}={float(losses[k].detach())}' for k in bad)}")
        return ", ".join(f"{key} {float(value.detach()):.4g}" for key, value in losses.items())

    def gradients(self) -> str:
        _, total = self._losses if self._losses is not None else self._loss()
        try:
            if not total.requires_grad:
                raise CheckFailed("the loss does not require grad: nothing would train")
            total.backward()
        finally:
            self.restore_buffers()
        names = _param_names(self.segmenter)
        params = _group_params(self.segmenter.param_groups(1e-4, 1e-4))
        # frozen entries of the groups are the groups row's finding, not this one's
        params = [p for p in params if getattr(p, "requires_grad", False)]
        missing = [names.get(id(p), "<not a parameter of the segmenter>") for p in params if p.grad is None]
        # de-duplicated here; the groups row reports duplicates
        missing = list(dict.fromkeys(missing))
        # (a non-finite loss, the previous row's failure, has non-finite gradients anyway)
        nonfinite = [names.get(id(p), "?") for p in params if p.grad is not None and not torch.isfinite(p.grad).all()] \
            if torch.isfinite(total.detach()).all() else []
        for p in self.segmenter.parameters():
            p.grad = None
        if missing:
            raise CheckFailed(f"no gradient reaches {len(missing)} parameter(s) of the optimiser groups: {_names(missing)}")
        if nonfinite:
            raise CheckFailed(f"non-finite gradient in {_names(dict.fromkeys(nonfinite))}")
        return f"the loss's gradient reaches all {len({id(p) for p in params})} parameters of the optimiser groups"

    def optimiser_groups(self) -> str:
        self.restore_buffers()
        names = _param_names(self.segmenter)
        params = _group_params(self.segmenter.param_groups(1e-4, 1e-4))
        seen: set[int] = set()
        twice, frozen, foreign = [], [], []
        for p in params:
            name = names.get(id(p))
            if name is None:
                foreign.append(f"a {tuple(p.shape)} tensor" if isinstance(p, Tensor) else repr(p))
                continue
            if id(p) in seen:
                twice.append(name)
            seen.add(id(p))
            if not p.requires_grad:
                frozen.append(name)
        trainable = {id(p): name for name, p in self.segmenter.named_parameters() if p.requires_grad}
        left_out = [name for key, name in trainable.items() if key not in seen]
        problems = []
        if left_out:
            problems.append(f"{len(left_out)} trainable parameter(s) in no optimiser group: {_names(left_out)}")
        if frozen:
            problems.append(f"{len(frozen)} frozen parameter(s) (requires_grad=False) in the groups: {_names(dict.fromkeys(frozen))}")
        if twice:
            problems.append(f"{len(set(twice))} parameter(s) in the groups more than once: {_names(dict.fromkeys(twice))}")
        if foreign:
            problems.append(f"{len(foreign)} group entries that are no parameter of the segmenter: {_names(foreign)}")
        if problems:
            raise CheckFailed("; ".join(problems))
        total = sum(p.numel() for p in self.segmenter.parameters())
        held = sum(p.numel() for p in self.segmenter.parameters() if id(p) in seen)
        return f"{len(seen)} tensors ({held:,} of {total:,} weights) in {len(self.segmenter.param_groups(1e-4, 1e-4))} group(s), each trainable, each once"

    # ------------------------------------------------------------ checkpoint rows
    def _fresh(self, offset: int) -> tuple[OpenVocabSegmenter, bool]:
        """A segmenter built with another seed, and whether its weights differ from ours
        (if they do not, a load that does nothing would go unnoticed)."""
        other = self.build(self.seed + offset)
        ours, theirs = self.segmenter.state_dict(), other.state_dict()
        differs = ours.keys() != theirs.keys() or any(
            isinstance(v, Tensor) and (v.shape != theirs[k].shape or not torch.equal(v, theirs[k])) for k, v in ours.items()
        )
        return other, differs

    def _reproduces(self, other: OpenVocabSegmenter, differed: bool, what: str) -> str:
        reference = self.single()
        after = _predict(other, self.images[:1], self.vocabulary)
        if after.shape != reference.shape or not torch.equal(after, reference):
            diff = _max_diff(after, reference) if after.shape == reference.shape else float("nan")
            raise CheckFailed(f"after loading {what} into a segmenter built with another seed, scores differ by up to {diff:.3g}")
        return "" if differed else " (note: a build with another seed has the same weights)"

    def checkpoint_round_trip(self) -> str:
        from ovbench.engine.checkpoint import save_checkpoint

        self.restore_buffers()

        with tempfile.TemporaryDirectory(prefix="ovbench-contract-") as folder:
            path = Path(folder) / "iter_0000000.pt"
            save_checkpoint(path, {"model": self.segmenter.state_dict()})
            other, differed = self._fresh(1)
            other.load_checkpoint(path, trusted=False)
            note = self._reproduces(other, differed, "an ovbench checkpoint")
        return "checkpoint {'model': state_dict()} reloads (weights_only) into a fresh build with identical scores" + note

    def official_layout(self) -> str | None:
        cls = type(self.segmenter)
        if not (_has_static(cls, "to_official_state_dict") and _has_static(cls, "convert_official_state_dict")):
            return None
        model = getattr(self.segmenter, "model", None)
        if not isinstance(model, nn.Module):
            raise CheckFailed(f"{cls.__name__} has an official layout but no torch module at .model")
        state = model.state_dict()
        official = cls.to_official_state_dict(state)
        back = cls.convert_official_state_dict(official)
        lost = [key for key in state if key not in back]
        added = [key for key in back if key not in state]
        if lost or added:
            parts = ([f"{len(lost)} key(s) lost: {_names(lost)}"] if lost else []) + \
                    ([f"{len(added)} key(s) added: {_names(added)}"] if added else [])
            raise CheckFailed("convert_official(to_official(state)) changes the keys: " + "; ".join(parts))
        changed = [key for key in state if not (isinstance(back[key], Tensor) and back[key].shape == state[key].shape
                                               and torch.equal(back[key], state[key]))]
        if changed:
            raise CheckFailed(f"convert_official(to_official(state)) changes {len(changed)} tensor(s): {_names(changed)}")
        with tempfile.TemporaryDirectory(prefix="ovbench-contract-") as folder:
            path = Path(folder) / "official.pth"
            torch.save({"model": official}, path)
            other, differed = self._fresh(2)
            other.load_checkpoint(path, trusted=False)
            note = self._reproduces(other, differed, "the official layout")
        return f"{len(state)} keys convert losslessly; an official-layout file reloads with identical scores" + note


def _exception_detail(exc: BaseException) -> str:
    """One line: an ovbench error's own message; the type name first for anything else
    (a TypeError from the adapter says more with its name)."""
    if isinstance(exc, (CheckFailed, OvbenchError)):
        return first_line(exc)
    return f"{type(exc).__name__}: {first_line(exc)}"


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _timed(name: str, check: Callable[[], str | None], skip_detail: str = "no official layout") -> CheckResult:
    start = time.perf_counter()
    try:
        detail = check()
    except Exception as exc:  # noqa: BLE001 - an adapter's exception is this row's verdict
        return CheckResult(name, FAIL, _one_line(_exception_detail(exc)), time.perf_counter() - start)
    if detail is None:
        return CheckResult(name, SKIP, skip_detail, time.perf_counter() - start)
    return CheckResult(name, PASS, _one_line(detail), time.perf_counter() - start)


def run_contract(
    name: str,
    scale: str | None = None,
    overrides: Mapping[str, Any] | Sequence[str] | None = None,
    seed: int = 0,
) -> list[CheckResult]:
    """Build method `name` (a registered name or a method YAML path) at `scale` with
    `overrides` (a nested dict or `key=value` strings) and check the interface contract.

    An unknown name or a malformed config raises (the user's input is wrong); everything
    after that, building included, is reported as rows.
    """
    from ovbench.config import parse_overrides
    from ovbench.registry import build_segmenter, resolve_method
    from ovbench.seeding import seed_everything

    if overrides is not None and not isinstance(overrides, Mapping):
        overrides = parse_overrides(list(overrides))
    try:
        resolved = resolve_method(name, scale=scale, overrides=dict(overrides) if overrides else None)
    except OvbenchError:
        raise  # an unknown name, a bad override or config: the user's input, one error line
    except Exception as exc:  # noqa: BLE001 - e.g. a SyntaxError importing the adapter's module
        return [CheckResult("builds", FAIL, _one_line(_exception_detail(exc)))] + \
            [CheckResult(check, SKIP, "not built") for check in CHECK_NAMES[1:]]

    def build(build_seed: int) -> OpenVocabSegmenter:
        seed_everything(build_seed)
        segmenter = build_segmenter(resolved)
        if not isinstance(segmenter, OpenVocabSegmenter):
            raise CheckFailed(f"the adapter built a {type(segmenter).__name__}, not an OpenVocabSegmenter")
        return segmenter.eval()

    contract = _Contract(resolved, build, seed)

    def builds() -> str:
        contract.segmenter = build(seed)
        params = sum(p.numel() for p in contract.segmenter.parameters())
        return f"{type(contract.segmenter).__name__} ({params:,} weights)"

    results = [_timed("builds", builds)]
    if results[0].failed:
        return results + [CheckResult(check, SKIP, "not built") for check in CHECK_NAMES[1:]]

    training_free = _is_training_free(type(contract.segmenter))
    rows: list[tuple[str, Callable[[], str | None]]] = [
        ("predict shape", contract.predict_shape),
        ("vocabulary order", contract.vocabulary_order),
        ("batch independence", contract.batch_independence),
        ("deterministic eval", contract.deterministic_eval),
        ("loss finite", contract.loss_finite),
        ("gradients", contract.gradients),
        ("optimiser groups", contract.optimiser_groups),
        ("checkpoint round-trip", contract.checkpoint_round_trip),
        ("official layout", contract.official_layout),
    ]
    for check, run in rows:
        if training_free and check in TRAINING_CHECKS:
            results.append(CheckResult(check, SKIP, "training-free"))
        elif check == "gradients" and results[-1].failed and contract._losses is None:
            results.append(CheckResult(check, SKIP, "no loss to differentiate (see loss finite)"))
        else:
            results.append(_timed(check, run))
    return results
