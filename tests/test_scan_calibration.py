"""SCAN's calibration stack (`ovbench_methods.scan.calibration`) at a tiny scale, on CPU.

Checked against independent references: the official checkpoint key set written out here, the
Gaussian window from its formula, the frequency module against a float64 numpy DFT, the
length-one transformer against the per-query residual MLP it reduces to, and the query
reshapes against a literal-Q version of the official ones. The published parameter counts are
checked on meta tensors (nothing allocated).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ovbench_methods.common.errors import MethodConfigError
from ovbench_methods.scan.calibration import (
    ScanCalibration,
    ScanCalibrationConfig,
    ScanCalibrationInputError,
    calibration_state,
    gaussian_window,
)

WIDTH, DIM, GRID, FFN = 32, 16, 4, 24


def tiny_config(**changes) -> ScanCalibrationConfig:
    settings = dict(clip_width=WIDTH, scan_dim=DIM, grid=GRID, ca_layers=2, ca_heads=2, tf_layers=2, tf_heads=2,
                    tf_ffn=FFN)
    settings.update(changes)
    return ScanCalibrationConfig(**settings)


def randomised(model: ScanCalibration, seed: int = 0) -> ScanCalibration:
    """Every parameter random (LayerNorm affine and biases included), so no term hides behind an init."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
    return model


def inputs(batch: int = 2, queries: int = 5, seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    embeddings = torch.randn(batch, queries, DIM, generator=generator)
    maps = [torch.randn(batch, WIDTH, GRID, GRID, generator=generator) for _ in range(3)]
    image_embedding = torch.randn(batch, DIM, generator=generator)
    return embeddings, maps, image_embedding


def official_keys(width: int, dim: int, ffn: int, ca_layers: int, tf_layers: int) -> dict[str, tuple[int, ...]]:
    """The calibration entries of a SCAN checkpoint, with shapes, written out by hand."""
    keys: dict[str, tuple[int, ...]] = {"learnable_weight": (1,)}
    for conv in ("conv1", "conv2"):
        keys[f"LFM.{conv}.weight"] = (2 * width, 2 * width, 1, 1)
        keys[f"LFM.{conv}.bias"] = (2 * width,)
    keys.update({"oriclip_mlp.fc1.weight": (dim, width), "oriclip_mlp.fc1.bias": (dim,),
                 "oriclip_mlp.fc2.weight": (dim, dim), "oriclip_mlp.fc2.bias": (dim,)})
    for i in range(ca_layers):
        keys.update({f"fusion_decoder.multiattn.{i}.in_proj_weight": (3 * dim, dim),
                     f"fusion_decoder.multiattn.{i}.in_proj_bias": (3 * dim,),
                     f"fusion_decoder.multiattn.{i}.out_proj.weight": (dim, dim),
                     f"fusion_decoder.multiattn.{i}.out_proj.bias": (dim,)})
    for i in range(ca_layers - 1):
        keys.update({f"fusion_decoder.ln.{i}.weight": (dim,), f"fusion_decoder.ln.{i}.bias": (dim,)})
    for i in range(tf_layers):
        p = f"lightweight_transformer.layers.{i}."
        keys.update({p + "self_attn.in_proj_weight": (3 * dim, dim), p + "self_attn.in_proj_bias": (3 * dim,),
                     p + "self_attn.out_proj.weight": (dim, dim), p + "self_attn.out_proj.bias": (dim,),
                     p + "linear1.weight": (ffn, dim), p + "linear1.bias": (ffn,),
                     p + "linear2.weight": (dim, ffn), p + "linear2.bias": (dim,),
                     p + "norm1.weight": (dim,), p + "norm1.bias": (dim,),
                     p + "norm2.weight": (dim,), p + "norm2.bias": (dim,)})
    return keys


# ----------------------------------------------------------------------------- weights, layout
def test_state_dict_is_the_official_key_set():
    state = ScanCalibration(tiny_config()).state_dict()
    expected = official_keys(WIDTH, DIM, FFN, ca_layers=2, tf_layers=2)
    assert set(state) == set(expected)
    assert {key: tuple(value.shape) for key, value in state.items()} == expected


def test_official_checkpoint_entries_load_unchanged():
    """The calibration entries of a whole SCAN `model` dict load strictly, other prefixes left out."""
    generator = torch.Generator().manual_seed(3)
    official = {key: torch.randn(shape, generator=generator) for key, shape in official_keys(WIDTH, DIM, FFN, 2, 2).items()}
    checkpoint = dict(official)
    checkpoint.update({"backbone.patch_embed.proj.weight": torch.zeros(1), "sem_seg_head.predictor.query_feat.weight":
                       torch.zeros(1), "clip_adapter.non_object_embedding": torch.zeros(1),
                       "clip_adapter.original_clip.proj": torch.zeros(1)})
    selected = calibration_state(checkpoint)
    assert set(selected) == set(official)
    model = ScanCalibration(tiny_config())
    model.load_state_dict(selected, strict=True)
    assert torch.equal(model.fusion_decoder.ln[0].weight, official["fusion_decoder.ln.0.weight"])


def test_learnable_weight_starts_at_one_tenth():
    model = ScanCalibration(tiny_config())
    assert model.learnable_weight.shape == (1,)
    assert model.learnable_weight.item() == pytest.approx(0.1)
    assert model.learnable_weight.requires_grad
    assert ScanCalibration(tiny_config(learnable_weight_init=0.5)).learnable_weight.item() == 0.5


def test_transformer_layers_start_identical():
    """The official encoder clones one layer, so all layers share their initial weights."""
    layers = ScanCalibration(tiny_config(tf_layers=3)).lightweight_transformer.layers
    for other in layers[1:]:
        for (name, a), (_, b) in zip(layers[0].named_parameters(), other.named_parameters()):
            assert torch.equal(a, b), name


@pytest.mark.parametrize(
    "config, counts, total_m",
    [
        (ScanCalibrationConfig.vit_b16(), (4_721_664, 656_384, 5_257_216, 15_761_920), 26.40),
        (ScanCalibrationConfig.vit_l14(), (8_392_704, 1_377_792, 11_817_984, 27_569_920), 49.16),
    ],
    ids=["ViT-B", "ViT-L"],
)
def test_published_scale_parameter_counts(config, counts, total_m):
    with torch.device("meta"):
        model = ScanCalibration(config)
    parts = ("LFM", "oriclip_mlp", "fusion_decoder", "lightweight_transformer")
    got = tuple(sum(p.numel() for p in getattr(model, part).parameters()) for part in parts)
    assert got == counts
    total = sum(p.numel() for p in model.parameters())
    assert total == sum(counts) + 1  # + learnable_weight
    assert round(total / 1e6, 2) == total_m
    assert config.num_clip_tokens == (588 if config.grid == 14 else 768)


# ----------------------------------------------------------------------------- frequency module
@pytest.mark.parametrize("height, width, sigma", [(4, 4, 3.0), (5, 6, 1.5), (14, 14, 9)])
def test_gaussian_window_matches_its_formula(height, width, sigma):
    window = gaussian_window(height, width, sigma)
    assert window.shape == (1, 1, height, width) and window.dtype == torch.float32
    for y in range(height):
        for x in range(width):
            direct = math.exp(-((y - height // 2) ** 2 + (x - width // 2) ** 2) / (2 * sigma**2))
            assert window[0, 0, y, x].item() == pytest.approx(direct, rel=1e-6)
    assert window[0, 0, height // 2, width // 2].item() == 1.0  # peak 1: no normalisation


def test_spectral_mask_centre_official_and_shifted():
    official = ScanCalibration(tiny_config()).LFM.spectral_mask(5, 6, 2.0)[0, 0]
    shifted = ScanCalibration(tiny_config(shift_spectrum=True)).LFM.spectral_mask(5, 6, 2.0)[0, 0]
    # official: zero at (h//2, w//2) of the un-shifted spectrum (a high frequency), DC only damped
    assert official[2, 3].item() == 0.0 and 0.0 < official[0, 0].item() < 1.0
    # shifted: the zero frequency removed, a plain high-pass
    assert shifted[0, 0].item() == 0.0
    assert torch.equal(shifted, torch.fft.ifftshift(official, dim=(-2, -1)))


def numpy_lfm(maps: np.ndarray, conv1: tuple, conv2: tuple, sigma: float, shift: bool) -> np.ndarray:
    """The frequency module by explicit DFT matrices in float64."""
    _, channels, h, w = maps.shape
    dft_h = np.exp(-2j * np.pi * np.outer(np.arange(h), np.arange(h)) / h)
    dft_w = np.exp(-2j * np.pi * np.outer(np.arange(w), np.arange(w)) / w)
    spectrum = np.einsum("uy,bcyx,vx->bcuv", dft_h, maps, dft_w)
    rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    if shift:  # window centred on index 0, distances measured cyclically as fftshift implies
        rows, cols = (rows + h // 2) % h, (cols + w // 2) % w
    window = np.exp(-((rows - h // 2) ** 2 + (cols - w // 2) ** 2) / (2 * sigma**2))
    spectrum = spectrum * (1 - window)
    stacked = np.concatenate([spectrum.real, spectrum.imag], axis=1)
    hidden = np.maximum(np.einsum("oi,biyx->boyx", conv1[0], stacked) + conv1[1][None, :, None, None], 0)
    mixed = np.einsum("oi,biyx->boyx", conv2[0], hidden) + conv2[1][None, :, None, None]
    complex_map = mixed[:, :channels] + 1j * mixed[:, channels:]
    inverse = np.einsum("yu,bcuv,xv->bcyx", dft_h.conj(), complex_map, dft_w.conj()) / (h * w)
    return maps + inverse.real


@pytest.mark.parametrize("shift", [False, True])
@pytest.mark.parametrize("size, sigma", [((4, 4), 3.0), ((5, 6), 1.5)])
def test_frequency_module_matches_numpy_dft(shift, size, sigma):
    lfm = randomised(ScanCalibration(tiny_config(shift_spectrum=shift))).LFM
    maps = torch.randn(2, WIDTH, *size, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        got = lfm(maps, sigma=sigma)
    as_np = lambda conv: (conv.weight.detach().double().numpy()[:, :, 0, 0], conv.bias.detach().double().numpy())
    expected = numpy_lfm(maps.double().numpy(), as_np(lfm.conv1), as_np(lfm.conv2), sigma, shift)
    assert got.dtype == torch.float32 and got.shape == maps.shape
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def test_frequency_module_adds_the_input_map():
    """Zero convolutions: the spectral branch vanishes and the residual returns the input."""
    lfm = ScanCalibration(tiny_config()).LFM
    with torch.no_grad():
        for param in lfm.parameters():
            param.zero_()
        maps = torch.randn(1, WIDTH, GRID, GRID, dtype=torch.float64)
        out = lfm(maps, sigma=3)
    assert out.dtype == torch.float32  # computed in float32, as officially
    assert torch.equal(out, maps.float())


# ----------------------------------------------------------------------------- calibration
def per_query_mlp(layer: torch.nn.TransformerEncoderLayer, x: torch.Tensor) -> torch.Tensor:
    """One post-norm encoder layer on a length-1 sequence: attention to itself is out_proj(v)."""
    dim = x.shape[-1]
    value = F.linear(x, layer.self_attn.in_proj_weight[2 * dim:], layer.self_attn.in_proj_bias[2 * dim:])
    x = F.layer_norm(x + layer.self_attn.out_proj(value), (dim,), layer.norm1.weight, layer.norm1.bias, layer.norm1.eps)
    ffn = layer.linear2(F.relu(layer.linear1(x)))
    return F.layer_norm(x + ffn, (dim,), layer.norm2.weight, layer.norm2.bias, layer.norm2.eps)


def test_lightweight_transformer_is_a_per_query_residual_mlp():
    model = randomised(ScanCalibration(tiny_config())).eval()
    x = torch.randn(6, 1, DIM, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        got = model.lightweight_transformer(x)
        expected = x
        for layer in model.lightweight_transformer.layers:
            expected = per_query_mlp(layer, expected)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def literal_q_calibrate(model: ScanCalibration, embeddings, tokens, image_embedding, literal_q: int):
    """The official reshape sequence with the number of queries as a constant."""
    fused = model.fusion_decoder(embeddings, tokens).flatten(start_dim=0, end_dim=1).unsqueeze(1)
    prior = (image_embedding / image_embedding.norm(dim=-1, keepdim=True)).unsqueeze(1)
    prior = prior.expand(-1, literal_q, -1).flatten(start_dim=0, end_dim=1).unsqueeze(1)
    return model.lightweight_transformer(fused + model.learnable_weight * prior).reshape(-1, literal_q, DIM)


def test_queries_read_from_the_tensor_match_a_literal_reshape():
    model = randomised(ScanCalibration(tiny_config())).eval()
    embeddings, maps, image_embedding = inputs(batch=3, queries=7)
    with torch.no_grad():
        tokens = model.encode_clip_tokens(maps)
        got = model.calibrate(embeddings, tokens, image_embedding)
        expected = literal_q_calibrate(model, embeddings, tokens, image_embedding, literal_q=7)
    assert torch.equal(got, expected)


def test_queries_are_calibrated_independently():
    """Queries never interact (cross-attention only, length-1 transformer): a query alone gets the
    row it gets among others, which pins the (B, Q) <-> B·Q ordering."""
    model = randomised(ScanCalibration(tiny_config())).eval()
    embeddings, maps, image_embedding = inputs(batch=2, queries=4)
    with torch.no_grad():
        tokens = model.encode_clip_tokens(maps)
        together = model.calibrate(embeddings, tokens, image_embedding)
        alone = torch.cat([model.calibrate(embeddings[:, q:q + 1], tokens, image_embedding) for q in range(4)], dim=1)
        first_image = model.calibrate(embeddings[:1], tokens[:1], image_embedding[:1])
    torch.testing.assert_close(alone, together, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(first_image, together[:1], rtol=1e-5, atol=1e-6)


def test_forward_is_encode_then_calibrate():
    model = randomised(ScanCalibration(tiny_config())).eval()
    embeddings, maps, image_embedding = inputs()
    with torch.no_grad():
        tokens = model.encode_clip_tokens(maps)
        assert tokens.shape == (2, 3 * GRID * GRID, DIM)
        out = model(embeddings, maps, image_embedding)
        assert torch.equal(out, model.calibrate(embeddings, tokens, image_embedding))
    assert out.shape == embeddings.shape


def test_clip_tokens_are_laid_out_layer_by_layer():
    """Token l·g² + (y·g + x) is layer l at grid cell (y, x), projected by the two linears."""
    model = randomised(ScanCalibration(tiny_config())).eval()
    _, maps, _ = inputs()
    with torch.no_grad():
        tokens = model.encode_clip_tokens(maps)
        layer, y, x = 2, 1, 3
        filtered = model.LFM(maps[layer], sigma=model.config.frequency_sigma[layer])
        expected = model.oriclip_mlp.fc2(model.oriclip_mlp.fc1(filtered[:, :, y, x]))
    torch.testing.assert_close(tokens[:, layer * GRID * GRID + y * GRID + x], expected, rtol=1e-5, atol=1e-6)


def test_image_prior_uses_the_normalised_embedding():
    model = randomised(ScanCalibration(tiny_config())).eval()
    embeddings, maps, image_embedding = inputs()
    with torch.no_grad():
        plain = model(embeddings, maps, image_embedding)
        scaled = model(embeddings, maps, 7.0 * image_embedding)
        model.learnable_weight.fill_(0.0)
        without = model(embeddings, maps, image_embedding)
    torch.testing.assert_close(scaled, plain, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(without, plain)


def test_training_step_reaches_every_parameter():
    model = ScanCalibration(tiny_config()).train()
    embeddings, maps, image_embedding = inputs()
    model(embeddings, maps, image_embedding).square().sum().backward()
    missing = [name for name, param in model.named_parameters() if param.grad is None or not param.grad.abs().sum() > 0]
    assert not missing


# ----------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "changes",
    [dict(frequency_sigma=(9, 7)), dict(clip_layers=()), dict(clip_layers=(0, 9, 12)), dict(frequency_sigma=(9, 0, 3)),
     dict(ca_heads=3), dict(tf_heads=5), dict(scan_dim=0), dict(tf_dropout=1.0)],
)
def test_bad_settings_are_config_errors(changes):
    with pytest.raises(MethodConfigError):
        tiny_config(**changes)


def test_bad_inputs_are_input_errors():
    model = ScanCalibration(tiny_config())
    embeddings, maps, image_embedding = inputs()
    assert issubclass(ScanCalibrationInputError, MethodConfigError)
    with pytest.raises(ScanCalibrationInputError, match="2 CLIP patch maps"):
        model(embeddings, maps[:2], image_embedding)
    with pytest.raises(ScanCalibrationInputError, match="patch map of shape"):
        model(embeddings, maps[:2] + [torch.randn(2, WIDTH, GRID + 1, GRID + 1)], image_embedding)
    with pytest.raises(ScanCalibrationInputError, match="class embeddings"):
        model(embeddings[..., :-1], maps, image_embedding)
    with pytest.raises(ScanCalibrationInputError, match="image embedding"):
        model(embeddings, maps, image_embedding[:1])
