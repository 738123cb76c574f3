"""The query decoders of the mask-proposal methods (OV-Seg's DETR decoder, SCAN's and EBSeg's
masked-attention decoder): exact official key sets, prediction counts, the attention-mask rule
against a hand-written reference, one layer of each decoder against a slow plain-matmul
reference, level round-robin, dropout, initialisation and the published parameter counts.

Tiny configurations: hidden 32, 4 heads, FFN 64, 5 queries, mask dim 16, class embedding 24.
"""

from __future__ import annotations

import math

import pytest
import torch

from ovbench_methods.common.errors import MethodConfigError
from ovbench_methods.common.position_encoding import SinePositionEncoding
from ovbench_methods.common.query_decoder import (
    DetrQueryDecoder,
    MaskedAttentionDecoder,
    QueryDecoderOutput,
    masked_attention_mask,
)

TINY = dict(hidden_dim=32, num_queries=5, nheads=4, dim_feedforward=64, mask_dim=16, class_embed_dim=24, class_hidden_dim=48)
LEVEL_SIZES = [(2, 3), (4, 5), (8, 9)]


@pytest.fixture(autouse=True)
def seeded():
    """Every test starts from the same initial weights, whatever runs before it."""
    torch.manual_seed(0)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def perturbed(model: torch.nn.Module, seed: int = 1) -> torch.nn.Module:
    """Random weights everywhere (norms and biases too), so no term hides behind its init."""
    g = gen(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return model


def tiny_detr(**fields) -> DetrQueryDecoder:
    settings = dict(TINY, dec_layers=2)
    settings.update(fields)
    in_channels = settings.pop("in_channels", 40)
    return DetrQueryDecoder(in_channels, **settings)


def tiny_masked(**fields) -> MaskedAttentionDecoder:
    settings = dict(TINY, dec_layers=3)
    settings.update(fields)
    in_channels = settings.pop("in_channels", 32)
    return MaskedAttentionDecoder(in_channels, **settings)


def level_features(batch: int = 2, channels: int = 32, seed: int = 3, dtype=torch.float32) -> list[torch.Tensor]:
    g = gen(seed)
    return [torch.randn(batch, channels, h, w, generator=g, dtype=dtype) for h, w in LEVEL_SIZES]


# --------------------------------------------------------------------------- slow references


def layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + 1e-5) * weight + bias


def attention(sd: dict, prefix: str, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, heads: int,
              blocked: torch.Tensor | None = None) -> torch.Tensor:
    """One image's multi-head attention, (Lq, C) x (Lk, C) -> (Lq, C), from the packed in_proj
    weights: per head softmax(q k^T / sqrt(d)) v, blocked keys (Lq, Lk) True = not attended."""
    w, b = sd[prefix + "in_proj_weight"], sd[prefix + "in_proj_bias"]
    c = query.shape[-1]
    q = query @ w[:c].T + b[:c]
    k = key @ w[c:2 * c].T + b[c:2 * c]
    v = value @ w[2 * c:].T + b[2 * c:]
    d = c // heads
    outs = []
    for h in range(heads):
        part = slice(h * d, (h + 1) * d)
        scores = q[:, part] @ k[:, part].T / math.sqrt(d)
        if blocked is not None:
            scores = scores.masked_fill(blocked, float("-inf"))
        outs.append(torch.softmax(scores, dim=-1) @ v[:, part])
    return torch.cat(outs, dim=-1) @ sd[prefix + "out_proj.weight"].T + sd[prefix + "out_proj.bias"]


def mlp(sd: dict, prefix: str, x: torch.Tensor, layers: int) -> torch.Tensor:
    for i in range(layers):
        x = x @ sd[f"{prefix}.layers.{i}.weight"].T + sd[f"{prefix}.layers.{i}.bias"]
        if i < layers - 1:
            x = torch.relu(x)
    return x


def ffn(sd: dict, prefix: str, x: torch.Tensor) -> torch.Tensor:
    hidden = torch.relu(x @ sd[prefix + "linear1.weight"].T + sd[prefix + "linear1.bias"])
    return hidden @ sd[prefix + "linear2.weight"].T + sd[prefix + "linear2.bias"]


def bilinear_resize_by_hand(plane: torch.Tensor, out_h: int, out_w: int) -> torch.Tensor:
    """(H, W) -> (out_h, out_w) with half-pixel centres (align_corners False): output pixel i
    samples source (i + 0.5)·H/out_h − 0.5, clamped at 0, neighbours clamped at the border."""
    in_h, in_w = plane.shape
    out = torch.empty(out_h, out_w, dtype=plane.dtype)
    for i in range(out_h):
        y = max((i + 0.5) * in_h / out_h - 0.5, 0.0)
        y0 = min(int(math.floor(y)), in_h - 1)
        y1, fy = min(y0 + 1, in_h - 1), y - y0
        for j in range(out_w):
            x = max((j + 0.5) * in_w / out_w - 0.5, 0.0)
            x0 = min(int(math.floor(x)), in_w - 1)
            x1, fx = min(x0 + 1, in_w - 1), x - x0
            top = plane[y0, x0] * (1 - fx) + plane[y0, x1] * fx
            bottom = plane[y1, x0] * (1 - fx) + plane[y1, x1] * fx
            out[i, j] = top * (1 - fy) + bottom * fy
    return out


# --------------------------------------------------------------------------- official key sets


def detr_layer_keys(i: int) -> set[str]:
    base = f"transformer.decoder.layers.{i}."
    names = [
        "self_attn.in_proj_weight", "self_attn.in_proj_bias", "self_attn.out_proj.weight", "self_attn.out_proj.bias",
        "multihead_attn.in_proj_weight", "multihead_attn.in_proj_bias",
        "multihead_attn.out_proj.weight", "multihead_attn.out_proj.bias",
        "linear1.weight", "linear1.bias", "linear2.weight", "linear2.bias",
        "norm1.weight", "norm1.bias", "norm2.weight", "norm2.bias", "norm3.weight", "norm3.bias",
    ]
    return {base + n for n in names}


def test_detr_keys_are_the_official_ones():
    expected = detr_layer_keys(0) | detr_layer_keys(1) | {
        "transformer.decoder.norm.weight", "transformer.decoder.norm.bias",
        "query_embed.weight",
        "input_proj.weight", "input_proj.bias",
        "class_embed.layers.0.weight", "class_embed.layers.0.bias",
        "class_embed.layers.1.weight", "class_embed.layers.1.bias",
        "mask_embed.layers.0.weight", "mask_embed.layers.0.bias",
        "mask_embed.layers.1.weight", "mask_embed.layers.1.bias",
        "mask_embed.layers.2.weight", "mask_embed.layers.2.bias",
    }
    model = tiny_detr()
    state = model.state_dict()
    assert set(state) == expected
    assert state["input_proj.weight"].shape == (32, 40, 1, 1)
    assert state["query_embed.weight"].shape == (5, 32)
    assert state["transformer.decoder.layers.1.self_attn.in_proj_weight"].shape == (96, 32)
    assert state["transformer.decoder.layers.0.linear1.weight"].shape == (64, 32)
    assert state["class_embed.layers.0.weight"].shape == (48, 32)
    assert state["class_embed.layers.1.weight"].shape == (24, 48)
    assert state["mask_embed.layers.2.weight"].shape == (16, 32)
    # an official-shaped checkpoint (prefix stripped) loads with nothing missing or unexpected
    prefixed = {"sem_seg_head.predictor." + k: v.clone() for k, v in state.items()}
    stripped = {k[len("sem_seg_head.predictor."):]: v for k, v in prefixed.items()}
    assert not tiny_detr().load_state_dict(stripped, strict=True).missing_keys


def test_detr_input_projection_only_when_needed_and_class_head_optional():
    same_width = set(tiny_detr(in_channels=32).state_dict())
    assert not any(k.startswith("input_proj") for k in same_width)
    forced = set(tiny_detr(in_channels=32, enforce_input_project=True).state_dict())
    assert {"input_proj.weight", "input_proj.bias"} <= forced
    # pre-norm: the official zero-layer encoder gains its final norm
    pre = set(tiny_detr(pre_norm=True).state_dict())
    assert pre - set(tiny_detr().state_dict()) == {"transformer.encoder.norm.weight", "transformer.encoder.norm.bias"}
    headless = tiny_detr(class_head=False)
    assert not any(k.startswith("class_embed") for k in headless.state_dict())
    out = headless(torch.randn(1, 40, 3, 4), torch.randn(1, 16, 6, 8))
    assert out.class_embeddings == [] and len(out.mask_logits) == 2


def masked_layer_keys(i: int) -> set[str]:
    sa, ca, ff = (f"transformer_self_attention_layers.{i}.", f"transformer_cross_attention_layers.{i}.",
                  f"transformer_ffn_layers.{i}.")
    return {
        sa + "self_attn.in_proj_weight", sa + "self_attn.in_proj_bias",
        sa + "self_attn.out_proj.weight", sa + "self_attn.out_proj.bias", sa + "norm.weight", sa + "norm.bias",
        ca + "multihead_attn.in_proj_weight", ca + "multihead_attn.in_proj_bias",
        ca + "multihead_attn.out_proj.weight", ca + "multihead_attn.out_proj.bias", ca + "norm.weight", ca + "norm.bias",
        ff + "linear1.weight", ff + "linear1.bias", ff + "linear2.weight", ff + "linear2.bias",
        ff + "norm.weight", ff + "norm.bias",
    }


def test_masked_decoder_keys_are_the_official_ones():
    expected = masked_layer_keys(0) | masked_layer_keys(1) | masked_layer_keys(2) | {
        "decoder_norm.weight", "decoder_norm.bias",
        "query_feat.weight", "query_embed.weight", "level_embed.weight",
        "class_embed.layers.0.weight", "class_embed.layers.0.bias",
        "class_embed.layers.1.weight", "class_embed.layers.1.bias",
        "mask_embed.layers.0.weight", "mask_embed.layers.0.bias",
        "mask_embed.layers.1.weight", "mask_embed.layers.1.bias",
        "mask_embed.layers.2.weight", "mask_embed.layers.2.bias",
    }
    state = tiny_masked().state_dict()
    assert set(state) == expected  # equal widths: the per-level projections hold nothing
    assert state["level_embed.weight"].shape == (3, 32)
    assert state["query_feat.weight"].shape == (5, 32)
    projected = set(tiny_masked(in_channels=40).state_dict())
    assert projected - expected == {f"input_proj.{i}.{p}" for i in range(3) for p in ("weight", "bias")}
    headless = set(tiny_masked(class_head=False).state_dict())
    assert headless == {k for k in expected if not k.startswith("class_embed")}


# --------------------------------------------------------------------------- outputs


def test_prediction_counts_and_shapes():
    detr = tiny_detr(dec_layers=3).eval()
    out = detr(torch.randn(2, 40, 3, 4), torch.randn(2, 16, 6, 8))
    assert isinstance(out, QueryDecoderOutput)
    assert len(out.class_embeddings) == len(out.mask_logits) == len(out.query_features) == 3
    assert out.class_embeddings[0].shape == (2, 5, 24)
    assert out.mask_logits[-1].shape == (2, 5, 6, 8)
    assert out.query_features[-1].shape == (2, 5, 32)
    last_only = tiny_detr(dec_layers=3, deep_supervision=False)
    last_only.load_state_dict(detr.state_dict())
    single = last_only.eval()(torch.randn(2, 40, 3, 4, generator=gen(0)), torch.randn(2, 16, 6, 8, generator=gen(1)))
    full = detr(torch.randn(2, 40, 3, 4, generator=gen(0)), torch.randn(2, 16, 6, 8, generator=gen(1)))
    assert len(single.mask_logits) == 1
    torch.testing.assert_close(single.mask_logits[0], full.mask_logits[-1])

    masked = tiny_masked(dec_layers=3)
    out = masked(level_features(), torch.randn(2, 16, 16, 18))
    assert len(out.class_embeddings) == len(out.mask_logits) == len(out.query_features) == 4
    assert out.class_embeddings[-1].shape == (2, 5, 24)
    assert out.mask_logits[0].shape == (2, 5, 16, 18)
    assert len(tiny_masked(dec_layers=10, nheads=2)(level_features(batch=1), torch.randn(1, 16, 8, 8)).mask_logits) == 11


# --------------------------------------------------------------------------- attention mask


def test_attention_mask_rule_against_hand_reference():
    g = gen(5)
    logits = torch.randn(2, 3, 6, 7, generator=g, dtype=torch.float64)
    logits[1, 2] = -torch.rand(6, 7, generator=g, dtype=torch.float64) - 0.1  # everywhere background
    heads, size = 2, (4, 3)
    got = masked_attention_mask(logits, size, heads)
    assert got.dtype == torch.bool and got.shape == (2 * heads, 3, 12)
    for b in range(2):
        for q in range(3):
            resized = bilinear_resize_by_hand(logits[b, q], *size).flatten()
            blocked = torch.sigmoid(resized) < 0.5
            if bool(blocked.all()):
                blocked = torch.zeros_like(blocked)
            for h in range(heads):
                assert torch.equal(got[b * heads + h, q], blocked), (b, q, h)
    assert not got[1 * heads:, 2].any()  # the fully blocked query sees every pixel
    assert got[:, :2].any()  # and the others are really masked
    # the resize samples at half-pixel centres: [-3, 1.2] -> 4 reads -3, -2, 0.15, 1.2
    # (align_corners=True would read -3, -1.6, -0.2, 1.2 and block three pixels)
    row = torch.tensor([[[[-3.0, 1.2]]]])
    assert masked_attention_mask(row, (1, 4), 1)[0, 0].tolist() == [True, True, False, False]


# --------------------------------------------------------------------------- one-layer references


def residual_block(x: torch.Tensor, block, norm: tuple[torch.Tensor, torch.Tensor], pre_norm: bool) -> torch.Tensor:
    """x + block(x) then LayerNorm (post-norm), or x + block(LayerNorm(x)) (pre-norm)."""
    if pre_norm:
        return x + block(layer_norm(x, *norm))
    return layer_norm(x + block(x), *norm)


@pytest.mark.parametrize("pre_norm", [False, True])
def test_masked_decoder_layer_against_slow_reference(pre_norm):
    model = perturbed(tiny_masked(dec_layers=1, pre_norm=pre_norm)).double()
    sd = model.state_dict()
    feats = level_features(dtype=torch.float64)
    mask_features = torch.randn(2, 16, 10, 12, generator=gen(4), dtype=torch.float64)
    out = model(feats, mask_features)
    heads, pe = 4, SinePositionEncoding(16, normalize=True)

    def predict(states: torch.Tensor):
        normed = layer_norm(states, sd["decoder_norm.weight"], sd["decoder_norm.bias"])
        return normed, mlp(sd, "class_embed", normed, 2), torch.einsum("qc,chw->qhw", mlp(sd, "mask_embed", normed, 3), mask_features[b])

    for b in range(2):
        queries, query_pos = sd["query_feat.weight"], sd["query_embed.weight"]
        normed, classes, masks = predict(queries)
        torch.testing.assert_close(out.query_features[0][b], normed)
        torch.testing.assert_close(out.class_embeddings[0][b], classes)
        torch.testing.assert_close(out.mask_logits[0][b], masks)
        # layer 0 reads level 0 with the mask of the initial prediction resized to its size
        level = feats[0][b]
        memory = level.flatten(1).T + sd["level_embed.weight"][0]
        pos = pe(level[None]).flatten(2)[0].T
        blocked = torch.stack([torch.sigmoid(bilinear_resize_by_hand(m, *LEVEL_SIZES[0]).flatten()) < 0.5 for m in masks])
        blocked[blocked.all(-1)] = False
        ca, sa, ff = ("transformer_cross_attention_layers.0.", "transformer_self_attention_layers.0.",
                      "transformer_ffn_layers.0.")
        x = residual_block(
            queries, lambda t: attention(sd, ca + "multihead_attn.", t + query_pos, memory + pos, memory, heads, blocked),
            (sd[ca + "norm.weight"], sd[ca + "norm.bias"]), pre_norm,
        )
        x = residual_block(
            x, lambda t: attention(sd, sa + "self_attn.", t + query_pos, t + query_pos, t, heads),
            (sd[sa + "norm.weight"], sd[sa + "norm.bias"]), pre_norm,
        )
        x = residual_block(x, lambda t: ffn(sd, ff, t), (sd[ff + "norm.weight"], sd[ff + "norm.bias"]), pre_norm)
        normed, classes, masks = predict(x)
        torch.testing.assert_close(out.query_features[1][b], normed)
        torch.testing.assert_close(out.class_embeddings[1][b], classes)
        torch.testing.assert_close(out.mask_logits[1][b], masks)


@pytest.mark.parametrize("pre_norm", [False, True])
def test_detr_decoder_layer_against_slow_reference(pre_norm):
    model = perturbed(tiny_detr(dec_layers=1, pre_norm=pre_norm)).double().eval()
    sd = model.state_dict()
    feature = torch.randn(2, 40, 3, 4, generator=gen(6), dtype=torch.float64)
    mask_features = torch.randn(2, 16, 6, 8, generator=gen(7), dtype=torch.float64)
    out = model(feature, mask_features)
    pe, heads = SinePositionEncoding(16, normalize=True), 4
    layer = "transformer.decoder.layers.0."
    for b in range(2):
        memory = (torch.einsum("oc,chw->ohw", sd["input_proj.weight"][:, :, 0, 0], feature[b]) + sd["input_proj.bias"][:, None, None]).flatten(1).T
        if pre_norm:  # the zero-layer encoder's final norm
            memory = layer_norm(memory, sd["transformer.encoder.norm.weight"], sd["transformer.encoder.norm.bias"])
        pos = pe(feature[b:b + 1]).flatten(2)[0].T
        query_pos = sd["query_embed.weight"]
        x = torch.zeros_like(query_pos)
        x = residual_block(
            x, lambda t: attention(sd, layer + "self_attn.", t + query_pos, t + query_pos, t, heads),
            (sd[layer + "norm1.weight"], sd[layer + "norm1.bias"]), pre_norm,
        )
        x = residual_block(
            x, lambda t: attention(sd, layer + "multihead_attn.", t + query_pos, memory + pos, memory, heads),
            (sd[layer + "norm2.weight"], sd[layer + "norm2.bias"]), pre_norm,
        )
        x = residual_block(x, lambda t: ffn(sd, layer, t), (sd[layer + "norm3.weight"], sd[layer + "norm3.bias"]), pre_norm)
        x = layer_norm(x, sd["transformer.decoder.norm.weight"], sd["transformer.decoder.norm.bias"])
        torch.testing.assert_close(out.query_features[0][b], x)
        torch.testing.assert_close(out.class_embeddings[0][b], mlp(sd, "class_embed", x, 2))
        torch.testing.assert_close(out.mask_logits[0][b], torch.einsum("qc,chw->qhw", mlp(sd, "mask_embed", x, 3), mask_features[b]))


def test_detr_padding_mask_hides_padded_pixels():
    model = perturbed(tiny_detr(dec_layers=2)).double().eval()
    g = gen(8)
    feature = torch.randn(1, 40, 3, 5, generator=g, dtype=torch.float64)
    mask_features = torch.randn(1, 16, 6, 10, generator=g, dtype=torch.float64)
    padding = torch.zeros(1, 3, 5, dtype=torch.bool)
    padding[:, :, 3:] = True
    padded = model(feature, mask_features, padding).class_embeddings[-1]
    changed = feature.clone()
    changed[..., 3:] = 100.0
    torch.testing.assert_close(model(changed, mask_features, padding).class_embeddings[-1], padded)
    cropped = model(feature[..., :3], mask_features).class_embeddings[-1]
    torch.testing.assert_close(cropped, padded)


def test_masked_layers_read_the_levels_round_robin():
    model = perturbed(tiny_masked(dec_layers=4))
    feats, mask_features = level_features(), torch.randn(2, 16, 8, 9, generator=gen(9))
    base = model(feats, mask_features).mask_logits
    changed = list(feats)
    changed[1] = changed[1] + torch.randn(changed[1].shape, generator=gen(10))
    moved = model(changed, mask_features).mask_logits
    # predictions 0 (initial queries) and 1 (after layer 0, level 0) ignore level 1; 2 reads it
    assert torch.equal(moved[0], base[0]) and torch.equal(moved[1], base[1])
    assert not torch.allclose(moved[2], base[2])


def test_dropout_only_in_the_detr_decoder():
    detr = tiny_detr()
    x, m = torch.randn(1, 40, 3, 4, generator=gen(0)), torch.randn(1, 16, 6, 8, generator=gen(1))
    torch.manual_seed(0)
    train = detr.train()(x, m).mask_logits[-1]
    evaluated = detr.eval()(x, m).mask_logits[-1]
    assert not torch.allclose(train, evaluated)
    masked = tiny_masked()
    feats, mf = level_features(batch=1), torch.randn(1, 16, 8, 9)
    torch.testing.assert_close(masked.train()(feats, mf).mask_logits[-1], masked.eval()(feats, mf).mask_logits[-1])


# --------------------------------------------------------------------------- initialisation


def xavier_bound(p: torch.Tensor) -> float:
    fan_out, fan_in = p.shape[0], p[0].numel()
    return math.sqrt(6.0 / (fan_in + fan_out))


def test_official_initialisation():
    torch.manual_seed(0)
    detr = DetrQueryDecoder(40, **dict(TINY, dec_layers=2, dim_feedforward=256))
    for name, p in detr.transformer.named_parameters():
        if p.dim() > 1:
            assert 0.9 * xavier_bound(p) < p.abs().max() <= xavier_bound(p), name
    layers = detr.transformer.decoder.layers
    assert torch.equal(layers[0].linear1.bias, layers[1].linear1.bias)  # cloned layers
    assert not torch.equal(layers[0].linear1.weight, layers[1].linear1.weight)  # re-drawn matrices
    assert not layers[0].self_attn.in_proj_bias.any() and not detr.input_proj.bias.any()
    kaiming_a1 = math.sqrt(3.0 / 40)  # gain 1 over fan-in
    assert 0.9 * kaiming_a1 < detr.input_proj.weight.abs().max() <= kaiming_a1

    masked = MaskedAttentionDecoder(40, **dict(TINY, dec_layers=2, dim_feedforward=256))
    for name, p in masked.named_parameters():
        if p.dim() > 1 and name.startswith("transformer_"):
            assert 0.9 * xavier_bound(p) < p.abs().max() <= xavier_bound(p), name
    ffn_layers = masked.transformer_ffn_layers
    assert not torch.equal(ffn_layers[0].linear1.bias, ffn_layers[1].linear1.bias)  # built one by one
    assert all(not proj.bias.any() for proj in masked.input_proj)


# --------------------------------------------------------------------------- sizes and errors


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_published_parameter_counts():
    masked = MaskedAttentionDecoder(dec_layers=10)
    one_layer = sum(count(stack[0]) for stack in (masked.transformer_self_attention_layers,
                                                  masked.transformer_cross_attention_layers, masked.transformer_ffn_layers))
    assert one_layer == 1_578_752
    heads = 3 * (256 * 256 + 256) + (256 * 1024 + 1024) + (1024 * 512 + 512)
    assert count(masked) == 10 * one_layer + 512 + 2 * 100 * 256 + 3 * 256 + heads == 16_825_344
    detr = DetrQueryDecoder()
    # six layers of two attentions, FFN and three norms; 2048 -> 256 projection; 100 queries
    assert count(detr) == 6 * 1_578_752 + 512 + (2048 * 256 + 256) + 100 * 256 + heads == 11_008_512


def test_bad_settings_and_inputs_raise_one_clear_error():
    with pytest.raises(MethodConfigError, match="divisible"):
        MaskedAttentionDecoder(hidden_dim=30, nheads=4)
    with pytest.raises(MethodConfigError, match="num_queries"):
        DetrQueryDecoder(num_queries=0)
    with pytest.raises(MethodConfigError, match="dropout"):
        DetrQueryDecoder(dropout=1.5)
    masked = tiny_masked()
    with pytest.raises(MethodConfigError, match="3 feature levels"):
        masked(level_features()[:2], torch.randn(2, 16, 8, 8))
    with pytest.raises(MethodConfigError, match="feature level"):
        masked(level_features(channels=40), torch.randn(2, 16, 8, 8))
    with pytest.raises(MethodConfigError, match="mask features"):
        masked(level_features(), torch.randn(2, 8, 8, 8))
    detr = tiny_detr()
    with pytest.raises(MethodConfigError, match="DETR"):
        detr(torch.randn(1, 32, 3, 3), torch.randn(1, 16, 6, 6))
    with pytest.raises(MethodConfigError, match="padding mask"):
        detr(torch.randn(1, 40, 3, 3), torch.randn(1, 16, 6, 6), torch.zeros(1, 2, 2, dtype=torch.bool))
