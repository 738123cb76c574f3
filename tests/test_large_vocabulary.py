"""Large vocabularies: bounded work per step, same results as doing it all at once.

Structural, not timing, tests: each one would break if memory went back to growing with the
vocabulary in one piece (every prompt through the text tower in one batch, prompts padded
to the full 77-token context, the (B, T, H, W) score stack upsampled in one piece, a whole
batch of (B, T, H, W) scores asked for at once), and checks the bounded path gives the
same numbers as the unbounded one.
"""

from __future__ import annotations

import copy

import open_clip
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import ovbench_methods.common.text as text
import ovbench.eval.evaluate as evaluate
import ovbench.eval.inference as inference
from ovbench_methods.clip_dense.model import ClipDenseModel
from ovbench_methods.common.text import ClipTextEncoder, TemplateClassEncoder, encode_class_prompts
from ovbench.data.toyland import ToylandDataset
from ovbench.eval.inference import SlidingWindow, WholeImage

TINY_CONFIG = {
    "embed_dim": 64,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "patch_size": 16, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
TEMPLATES = ("a photo of a {}.", "there is a {} in the scene.", "a black and white photo of the {}.")
CLASSES = tuple((f"class {index:03d}",) for index in range(30)) + (("low vegetation", "grass", "meadow"),)


def tiny_clip(seed: int = 0) -> open_clip.CLIP:
    torch.manual_seed(seed)
    return open_clip.CLIP(**copy.deepcopy(TINY_CONFIG)).eval()


class TowerCalls:
    """Records the (rows, length) of every token batch the text tower receives."""

    def __init__(self, encoder: ClipTextEncoder) -> None:
        self.shapes: list[tuple[int, int]] = []
        # The transformer sees the tokens after ClipTextEncoder cut them: that is what costs.
        encoder.transformer.register_forward_pre_hook(self._record)

    def _record(self, module: nn.Module, args: tuple) -> None:
        x = args[0]
        rows, length = (x.shape[0], x.shape[1]) if getattr(module, "batch_first", True) else (x.shape[1], x.shape[0])
        self.shapes.append((int(rows), int(length)))


def reference_class_embeddings(clip: open_clip.CLIP, classes, templates) -> Tensor:
    """The prompt ensemble computed the plain way: every prompt at full context, one batch."""
    tokenizer = open_clip.SimpleTokenizer()
    rows = []
    with torch.no_grad():
        for names in classes:
            prompts = [template.format(name) for name in names for template in templates]
            per_prompt = F.normalize(clip.encode_text(tokenizer(prompts)), dim=-1)
            rows.append(F.normalize(per_prompt.mean(0), dim=-1))
    return torch.stack(rows)


# ------------------------------------------------------------------------- text side


def test_class_prompts_reach_the_text_tower_in_bounded_chunks(monkeypatch) -> None:
    clip = tiny_clip()
    model = ClipDenseModel(clip, open_clip.SimpleTokenizer(), TEMPLATES)
    calls = TowerCalls(model.text_encoder)
    monkeypatch.setattr(text, "TEXT_CHUNK_SIZE", 16)
    with torch.no_grad():
        chunked = model.class_embeddings(CLASSES)
    num_prompts = sum(len(names) for names in CLASSES) * len(TEMPLATES)
    assert max(rows for rows, _ in calls.shapes) <= 16
    assert sum(rows for rows, _ in calls.shapes) == num_prompts
    # Padding is not fed: these prompts are at most ~15 tokens of the 77-token context.
    assert max(length for _, length in calls.shapes) < 20

    model.clear_text_cache()
    monkeypatch.setattr(text, "TEXT_CHUNK_SIZE", 100_000)
    calls.shapes.clear()
    with torch.no_grad():
        unchunked = model.class_embeddings(CLASSES)
    assert calls.shapes and calls.shapes[0][0] == num_prompts  # really one batch this time
    torch.testing.assert_close(chunked, unchunked, atol=1e-6, rtol=0)
    torch.testing.assert_close(chunked, reference_class_embeddings(clip, CLASSES, TEMPLATES), atol=1e-5, rtol=0)


def test_chunk_size_is_validated() -> None:
    clip = tiny_clip()
    with pytest.raises(ValueError, match="chunk size"):
        encode_class_prompts(ClipTextEncoder(clip), open_clip.SimpleTokenizer(), CLASSES, TEMPLATES, batch_size=0)


def test_cut_context_gives_the_full_context_embeddings() -> None:
    clip = tiny_clip()
    encoder = ClipTextEncoder(clip)
    tokens = open_clip.SimpleTokenizer()(["water", "a photo of a tree with many many leaves.", "x"])
    assert encoder.used_length(tokens) == int(tokens.argmax(-1).max()) + 1 < 77
    with torch.no_grad():
        # Equal up to float rounding (other matrix shapes, other summation blocking).
        torch.testing.assert_close(encoder(tokens), clip.encode_text(tokens), atol=1e-5, rtol=1e-5)


def test_context_is_not_cut_without_a_causal_mask() -> None:
    # Without the causal mask every position sees the padding: nothing may be dropped.
    clip = tiny_clip()
    clip.attn_mask = None
    encoder = ClipTextEncoder(clip)
    tokens = open_clip.SimpleTokenizer()(["water", "a photo of a tree."])
    assert encoder.used_length(tokens) == 77
    with torch.no_grad():
        torch.testing.assert_close(encoder(tokens), clip.encode_text(tokens), atol=1e-6, rtol=0)


def test_template_class_encoder_runs_the_tower_in_bounded_chunks(monkeypatch) -> None:
    # The CAT-Seg / GSNet side: one embedding per (class, template), with gradients in training.
    clip = tiny_clip()
    encoder = ClipTextEncoder(clip)
    calls = TowerCalls(encoder)
    classes = CLASSES[:20]
    monkeypatch.setattr(text, "TEXT_CHUNK_SIZE", 7)
    chunked = TemplateClassEncoder(open_clip.SimpleTokenizer(), TEMPLATES)(encoder, classes)
    assert max(rows for rows, _ in calls.shapes) <= 7
    chunked.sum().backward()  # gradients still reach the tower through every chunk
    assert encoder.token_embedding.weight.grad is not None
    monkeypatch.setattr(text, "TEXT_CHUNK_SIZE", 100_000)
    with torch.no_grad():
        unchunked = TemplateClassEncoder(open_clip.SimpleTokenizer(), TEMPLATES)(encoder, classes)
    assert chunked.shape == (20, len(TEMPLATES), 64)
    torch.testing.assert_close(chunked.detach(), unchunked, atol=1e-6, rtol=0)


# ---------------------------------------------------------------------- score side

NUM_CLASSES = 50


class ClassLogitsModel(nn.Module):
    """Quarter-resolution logits of about unit size (no saturated sigmoid, no argmax ties)."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Conv2d(3, NUM_CLASSES, kernel_size=5, stride=4, padding=2)

    def forward(self, views: Tensor) -> Tensor:
        return self.conv(views / 255)


class ResizeRecorder:
    """Wraps inference._resize and keeps the shape of every class-score tensor it makes."""

    def __init__(self, monkeypatch) -> None:
        self.shapes: list[torch.Size] = []
        original = inference._resize

        def recording(tensor: Tensor, size, antialias: bool = False) -> Tensor:
            out = original(tensor, size, antialias)
            if out.shape[1] != 3:  # not an image
                self.shapes.append(out.shape)
            return out

        monkeypatch.setattr(inference, "_resize", recording)


MODES = {
    "whole-none": lambda: WholeImage(size=(64, 96), activation="none"),
    "whole-sigmoid": lambda: WholeImage(size=(64, 96), activation="sigmoid"),
    "whole-softmax": lambda: WholeImage(size=(64, 96), activation="softmax"),
    "sliding-sigmoid": lambda: SlidingWindow(size=(96, 96), window=64, stride=32, global_view=64, activation="sigmoid"),
    "sliding-softmax": lambda: SlidingWindow(size=(96, 96), window=64, stride=32, global_view=80, activation="softmax"),
    "sliding-no-global": lambda: SlidingWindow(size=(96, 96), window=64, stride=32, global_view=None, activation="none"),
}


@pytest.mark.parametrize("name", sorted(MODES))
def test_scores_are_upsampled_in_bounded_class_chunks(monkeypatch, name: str) -> None:
    model = ClassLogitsModel().eval()
    images = torch.rand(2, 3, 50, 70, generator=torch.Generator().manual_seed(1)) * 255
    with torch.no_grad():
        expected = MODES[name]()(model, images)
        monkeypatch.setattr(inference, "SCORE_CHUNK_ELEMENTS", 200_000)
        recorder = ResizeRecorder(monkeypatch)
        got = MODES[name]()(model, images)
    # All 50 classes upsampled at once would be 2 x 50 x 64 x 96 = 614k floats and more.
    assert recorder.shapes and max(shape.numel() for shape in recorder.shapes) <= 200_000
    assert max(shape[1] for shape in recorder.shapes) < NUM_CLASSES
    assert got.shape == expected.shape == (2, NUM_CLASSES, 50, 70)
    # Equal to float rounding: interpolation vectorises differently over fewer channels.
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)
    assert torch.equal(got.argmax(1), expected.argmax(1))


# ----------------------------------------------------------------------- evaluation


class RecordingSegmenter(nn.Module):
    """A stand-in with the evaluation surface of an OpenVocabSegmenter."""

    method_name = "recording"

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[int] = []
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, kernel_size=3, padding=1)

    def predict(self, images: Tensor, vocabulary) -> Tensor:
        self.batches.append(images.shape[0])
        with torch.no_grad():
            logits = self.conv(images / 255)
        return logits[:, torch.arange(len(vocabulary)) % 8]


def test_evaluation_asks_for_a_bounded_score_stack(monkeypatch) -> None:
    dataset = ToylandDataset("toyland-urban", num_images=5, size=64)
    segmenter = RecordingSegmenter()
    whole = evaluate.evaluate_dataset(segmenter, dataset, batch_size=5)
    assert segmenter.batches == [5]
    per_image = len(dataset.vocabulary) * 64 * 64
    monkeypatch.setattr(evaluate, "MAX_SCORE_ELEMENTS", 2 * per_image)
    segmenter.batches.clear()
    bounded = evaluate.evaluate_dataset(segmenter, dataset, batch_size=5)
    assert segmenter.batches == [2, 2, 1]
    assert bounded.num_images == whole.num_images == 5
    assert bounded.metrics.to_dict() == whole.metrics.to_dict()
