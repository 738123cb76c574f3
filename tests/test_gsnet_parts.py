"""GSNet's own modules: QGFF and the Table 3 fusion ablations, the RSIB projections, the RIPD
decoder — shapes at the published sizes, exact parameter counts, official names, the math."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ovbench_methods.common.dino import DinoArch, DinoVisionTransformer
from ovbench_methods.gsnet import (
    FUSION_TYPES,
    DecoderInputError,
    FusionInputError,
    QueryGuidedFusion,
    RipdDecoder,
    RsibProjections,
    build_cost_fusion,
    cost_volume,
)


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def streams(batch=1, classes=3, prompts=1, side=24, dim=512):
    return randn(batch, dim, side, side, seed=1), randn(batch, dim, side, side, seed=2), randn(batch, classes, prompts, dim, seed=3)


def cosine(image, text):
    """(B,C,H,W) x (B,T,P,C) -> (B,P,T,H,W), written with explicit norms."""
    image = image / image.norm(dim=1, keepdim=True)
    text = text / text.norm(dim=-1, keepdim=True)
    return (image[:, None, None] * text.permute(0, 2, 1, 3)[..., None, None]).sum(dim=3)


def conv(module, x):
    return F.conv2d(x, module.weight, module.bias, stride=module.stride, padding=module.padding)


# --------------------------------------------------------------------------- QGFF
def test_cost_volume_is_plain_cosine():
    clip, _, text = streams(batch=2, classes=4, prompts=2, side=5, dim=16)
    got = cost_volume(clip, text)
    assert got.shape == (2, 2, 4, 5, 5)
    torch.testing.assert_close(got, cosine(clip, text))


def test_qgff_full_size_shape_count_names():
    torch.manual_seed(0)
    qgff = build_cost_fusion("query_guided")
    assert isinstance(qgff, QueryGuidedFusion)
    state = qgff.state_dict()
    assert set(state) == {"conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias", "fusion_corr.weight", "fusion_corr.bias"}
    assert state["conv1.weight"].shape == (128, 1, 7, 7)
    assert state["conv2.weight"].shape == (128, 1, 7, 7)
    assert state["fusion_corr.weight"].shape == (128, 256, 7, 7)
    assert count(qgff) == 1_618_560
    assert qgff.official_prefix == "sem_seg_head.predictor.transformer."
    clip, rsib, text = streams(classes=3)
    assert qgff(clip, rsib, text).shape == (1, 128, 3, 24, 24)


def test_qgff_matches_paper_equations_per_class():
    torch.manual_seed(0)
    qgff = build_cost_fusion("query_guided", hidden_dim=16)
    clip, rsib, text = streams(batch=2, classes=3, side=6, dim=512)
    got = qgff(clip, rsib, text)
    mg, ms = cosine(clip, text), cosine(rsib, text)  # (B,1,T,H,W)
    for b in range(2):
        for t in range(3):
            zg = torch.sigmoid(conv(qgff.conv1, mg[b : b + 1, :, t]))
            zs = torch.sigmoid(conv(qgff.conv2, ms[b : b + 1, :, t]))
            zf = torch.sigmoid(conv(qgff.fusion_corr, torch.cat([zg, zs], dim=1))) + zg
            torch.testing.assert_close(got[b : b + 1, :, t], zf, rtol=1e-5, atol=1e-5)


def test_concatenation_fusion_official_form():
    torch.manual_seed(0)
    cat = build_cost_fusion("simple_concatenation")
    assert set(cat.state_dict()) == {"simple_concatenation_corr_embed.weight", "simple_concatenation_corr_embed.bias"}
    assert cat.simple_concatenation_corr_embed.weight.shape == (128, 1536, 7, 7)
    assert count(cat) == 9_633_920
    clip, rsib, text = streams(classes=2)
    assert cat(clip, rsib, text).shape == (1, 128, 2, 24, 24)
    small = build_cost_fusion("simple_concatenation", feat_dim=8, hidden_dim=4)
    clip, rsib, text = streams(batch=1, classes=2, prompts=2, side=5, dim=8)
    got = small(clip, rsib, text)
    text_mean = (text / text.norm(dim=-1, keepdim=True)).mean(dim=2)  # per-prompt L2, then mean
    for t in range(2):
        stacked = torch.cat(
            [clip / clip.norm(dim=1, keepdim=True), rsib / rsib.norm(dim=1, keepdim=True),
             text_mean[:, t, :, None, None].expand(-1, -1, 5, 5)],
            dim=1,
        )
        torch.testing.assert_close(got[:, :, t], conv(small.simple_concatenation_corr_embed, stacked), rtol=1e-5, atol=1e-5)


def test_fuse_then_query_official_form():
    torch.manual_seed(0)
    fq = build_cost_fusion("fusion_query")
    assert set(fq.state_dict()) == {"conv1.weight", "conv1.bias", "fusion_feats.weight", "fusion_feats.bias"}
    assert fq.fusion_feats.weight.shape == (512, 1024, 1, 1)
    assert count(fq) == 531_200
    clip, rsib, text = streams(classes=2, side=6)
    got = fq(clip, rsib, text)
    fused = conv(fq.fusion_feats, torch.cat([clip, rsib], dim=1))  # raw maps, fused before the query
    volume = cosine(fused, text)
    for t in range(2):
        torch.testing.assert_close(got[:, :, t], conv(fq.conv1, volume[:, :, t]), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("stream", ["clip", "rsib"])
def test_single_stream_costs(stream):
    torch.manual_seed(0)
    single = build_cost_fusion(f"{stream}_only")
    assert set(single.state_dict()) == {"conv1.weight", "conv1.bias"}
    assert count(single) == 6_400
    clip, rsib, text = streams(classes=2, side=6)
    used = clip if stream == "clip" else rsib
    args = (clip, None) if stream == "clip" else (None, rsib)
    got = single(*args, text)
    volume = cosine(used, text)
    for t in range(2):
        torch.testing.assert_close(got[:, :, t], conv(single.conv1, volume[:, :, t]), rtol=1e-5, atol=1e-5)
    with pytest.raises(FusionInputError, match=f"needs the {stream.upper()} feature map"):
        single(None, None, text)


def test_every_fusion_type_builds_and_runs():
    clip, rsib, text = streams(classes=2, side=6)
    for fusion_type in FUSION_TYPES:
        assert build_cost_fusion(fusion_type, hidden_dim=8)(clip, rsib, text).shape == (1, 8, 2, 6, 6)


def test_fusion_input_errors_are_one_line():
    qgff = build_cost_fusion("query_guided", hidden_dim=8)
    clip, rsib, text = streams(classes=2, side=6)
    cases = [
        ((clip, None, text), "needs the RSIB feature map"),
        ((clip, rsib[:, :256], text), r"RSIB map must be \(B,512,H,W\)"),
        ((clip, F.avg_pool2d(rsib, 2), text), "differ"),
        ((clip, rsib, text[..., :100]), "text embeddings"),
        ((clip, rsib, text.expand(-1, -1, 3, -1)), "1 prompt"),
        ((clip, rsib, torch.cat([text, text])), "batch"),
    ]
    for args, message in cases:
        with pytest.raises(FusionInputError, match=message) as err:
            qgff(*args)
        assert "\n" not in str(err.value)
    with pytest.raises(FusionInputError, match="unknown fusion type"):
        build_cost_fusion("attention")


# --------------------------------------------------------------------------- RSIB projections
def test_rsib_projections_full_size():
    torch.manual_seed(0)
    proj = RsibProjections()
    state = proj.state_dict()
    assert set(state) == {f"{n}.{p}" for n in ("dino_down_sample", "dino_decod_proj1", "dino_decod_proj2") for p in ("weight", "bias")}
    assert state["dino_down_sample.weight"].shape == (512, 768, 2, 2)
    assert state["dino_decod_proj1.weight"].shape == (256, 768, 1, 1)
    assert state["dino_decod_proj2.weight"].shape == (768, 128, 2, 2)  # ConvTranspose2d layout
    assert count(proj) == 2_163_584
    assert proj.source_blocks == (11, 3, 7) and proj.blocks_needed == (3, 7, 11)
    maps = {i: randn(1, 768, 48, 48, seed=i) for i in (3, 7, 11)}
    down, (g1, g2) = proj(maps)
    assert down.shape == (1, 512, 24, 24) and g1.shape == (1, 256, 48, 48) and g2.shape == (1, 128, 96, 96)
    # Each projection reads its own layer: 12 -> down-sample, 4 -> proj1, 8 -> proj2.
    torch.testing.assert_close(down, conv(proj.dino_down_sample, maps[11]))
    torch.testing.assert_close(g1, conv(proj.dino_decod_proj1, maps[3]))
    expected = F.conv_transpose2d(maps[7], proj.dino_decod_proj2.weight, proj.dino_decod_proj2.bias, stride=2)
    torch.testing.assert_close(g2, expected)
    with pytest.raises(FusionInputError, match="need DINO block 3"):
        proj({7: maps[7], 11: maps[11]})
    bare = RsibProjections(decoder_guidance=False)
    assert set(bare.state_dict()) == {"dino_down_sample.weight", "dino_down_sample.bias"}
    assert bare.blocks_needed == (11,)
    down, guidance = bare({11: maps[11]})
    assert down.shape == (1, 512, 24, 24) and guidance is None


# --------------------------------------------------------------------------- RIPD decoder
def guidance(batch=1, side=24, seed=10):
    return (randn(batch, 256, 2 * side, 2 * side, seed=seed), randn(batch, 128, 4 * side, 4 * side, seed=seed + 1))


def test_ripd_full_size_shape_names_count():
    torch.manual_seed(0)
    decoder = RipdDecoder()
    names = set(decoder.state_dict())
    expected = set()
    for stream in ("CLIP", "DINO"):
        for i in (0, 1):
            expected |= {f"{stream}_decoder_guidance_projection.{i}.0.weight", f"{stream}_decoder_guidance_projection.{i}.0.bias"}
    for stage in (1, 2):
        expected |= {f"Fusiondecoder{stage}.up.weight", f"Fusiondecoder{stage}.up.bias"}
        expected |= {f"Fusiondecoder{stage}.conv.double_conv.{j}.weight" for j in (0, 1, 3, 4)}
        expected |= {f"Fusiondecoder{stage}.conv.double_conv.{j}.bias" for j in (1, 4)}
    expected |= {"head.weight", "head.bias"}
    assert names == expected
    assert decoder.CLIP_decoder_guidance_projection[0][0].weight.shape == (32, 256, 3, 3)
    assert decoder.DINO_decoder_guidance_projection[1][0].weight.shape == (16, 128, 3, 3)
    assert decoder.Fusiondecoder1.up.weight.shape == (128, 96, 2, 2)
    assert decoder.Fusiondecoder1.conv.double_conv[0].weight.shape == (64, 160, 3, 3)
    assert decoder.Fusiondecoder1.conv.double_conv[1].num_groups == 4
    assert decoder.Fusiondecoder2.up.weight.shape == (64, 48, 2, 2)
    assert decoder.Fusiondecoder2.conv.double_conv[0].weight.shape == (32, 80, 3, 3)
    assert decoder.Fusiondecoder2.conv.double_conv[4].num_groups == 2
    assert decoder.head.weight.shape == (1, 32, 3, 3)
    projections = count(decoder.CLIP_decoder_guidance_projection) + count(decoder.DINO_decoder_guidance_projection)
    assert projections == 184_416
    assert count(decoder) - projections == 223_537
    out = decoder(randn(1, 128, 2, 24, 24), guidance(), guidance(seed=20))
    assert out.shape == (1, 2, 96, 96)


@pytest.mark.parametrize(
    "use_clip, use_dino, up1, in1, up2, in2, params",
    [
        (True, True, 96, 160, 48, 80, 407_953),
        (True, False, 96, 128, 48, 64, 292_705),   # row H: CLIP only
        (False, True, 128, 160, 64, 80, 336_273),  # row I: RSIB only
        (False, False, 128, 128, 64, 64, 221_025),  # row G: neither
    ],
)
def test_ripd_guidance_ablations(use_clip, use_dino, up1, in1, up2, in2, params):
    torch.manual_seed(0)
    decoder = RipdDecoder(use_clip_guidance=use_clip, use_dino_guidance=use_dino)
    assert decoder.Fusiondecoder1.up.out_channels == up1
    assert decoder.Fusiondecoder1.conv.double_conv[0].in_channels == in1
    assert decoder.Fusiondecoder2.up.out_channels == up2
    assert decoder.Fusiondecoder2.conv.double_conv[0].in_channels == in2
    assert (decoder.CLIP_decoder_guidance_projection is not None) == use_clip
    assert (decoder.DINO_decoder_guidance_projection is not None) == use_dino
    assert count(decoder) == params
    x = randn(1, 128, 2, 6, 6)
    clip, dino = guidance(side=6), guidance(side=6, seed=20)
    out = decoder(x, clip, dino)
    assert out.shape == (1, 2, 24, 24)
    # A stream the decoder was built without is ignored.
    again = decoder(x, clip if use_clip else None, dino if use_dino else None)
    torch.testing.assert_close(out, again)


def test_ripd_classes_batched_image_major():
    torch.manual_seed(0)
    decoder = RipdDecoder().eval()
    x = randn(2, 128, 3, 6, 6)
    clip, dino = guidance(batch=2, side=6), guidance(batch=2, side=6, seed=20)
    out = decoder(x, clip, dino)
    assert out.shape == (2, 3, 24, 24)
    for b in range(2):
        for t in range(3):
            alone = decoder(x[b : b + 1, :, t : t + 1], [g[b : b + 1] for g in clip], [g[b : b + 1] for g in dino])
            torch.testing.assert_close(out[b : b + 1, t : t + 1], alone, rtol=1e-4, atol=1e-5)


def test_ripd_input_errors_are_one_line():
    decoder = RipdDecoder()
    x = randn(1, 128, 2, 6, 6)
    clip, dino = guidance(side=6), guidance(side=6, seed=20)
    cases = [
        ((randn(1, 64, 2, 6, 6), clip, dino), r"input must be \(B,128,T,H,W\)"),
        ((x, None, dino), "needs two CLIP guidance maps"),
        ((x, clip, None), "needs two RSIB guidance maps"),
        ((x, (clip[1], clip[0]), dino), "CLIP guidance 0 must be"),
        ((x, guidance(side=5), dino), "CLIP guidance must be"),
    ]
    for args, message in cases:
        with pytest.raises(DecoderInputError, match=message) as err:
            decoder(*args)
        assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="below 16"):  # GroupNorm(C/16) needs C >= 16
        RipdDecoder(decoder_dims=(64, 8))


# --------------------------------------------------------------------------- accounting
def test_published_parameter_totals():
    """docs/methods/gsnet.md#parameter-counts: RIPD 4,036,369 and CLIP upsamplers + RSIB projections 4,523,264."""
    qgff = count(build_cost_fusion("query_guided"))
    decoder = count(RipdDecoder())
    # The aggregator's own guidance projections (built with the shared aggregator, not here).
    appearance = count(nn.Conv2d(512, 128, 3, padding=1)) + count(nn.Linear(512, 128))
    aggregator_layers = 2 * 677_120  # docs/methods/catseg.md#parameter-counts
    assert qgff == 1_618_560 and appearance == 655_616
    assert qgff + decoder + appearance + aggregator_layers == 4_036_369
    clip_upsamplers = count(nn.ConvTranspose2d(768, 256, 2, 2)) + count(nn.ConvTranspose2d(768, 128, 4, 4))
    assert clip_upsamplers == 2_359_680
    assert clip_upsamplers + count(RsibProjections()) == 4_523_264


# --------------------------------------------------------------------------- together
def test_rsib_stream_through_fusion_and_decoder_trains_only_new_modules():
    torch.manual_seed(0)
    dino = DinoVisionTransformer(DinoArch(patch_size=8, embed_dim=32, depth=8, num_heads=4))
    proj = RsibProjections(embed_dim=32, depth=8)
    qgff = build_cost_fusion("query_guided", hidden_dim=16)
    decoder = RipdDecoder(hidden_dim=16, decoder_dims=(16, 16), decoder_clip_guidance_proj_dims=(4, 4),
                          decoder_dino_guidance_proj_dims=(4, 4))
    images = torch.rand(1, 3, 384, 384) * 255
    rsib_map, rsib_guidance = proj(dino(images, blocks=proj.blocks_needed).maps)
    clip_map, text = randn(1, 512, 24, 24), randn(1, 2, 1, 512)
    logits = decoder(qgff(clip_map, rsib_map, text), guidance(), rsib_guidance)
    assert logits.shape == (1, 2, 96, 96)
    logits.sum().backward()
    assert all(p.grad is not None for m in (proj, qgff, decoder) for p in m.parameters())
    assert all(p.grad is None for p in dino.parameters())
