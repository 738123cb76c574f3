"""EBSeg (docs/methods/ebseg.md): the SSC loss, the balancing, the seen/unseen derivation, the
surgery path, the AdaB heads, the tiny configuration of the published architecture, the
authors' checkpoint layout and the toyland run.

The official release ``EBSeg_base.pth`` is ``{"model": state_dict}`` with ``backbone.*`` (the
SAM ViT-B encoder, no neck), ``clip_visual_extractor.*`` (CLIP's stem and blocks 1-9; the
surgery blocks 3-9 with ``attn.qkv`` / ``attn.proj``), ``clip_rec_head.*`` (blocks 10-12, all
surgery blocks), both holding ``ln_post`` and ``proj``, ``ov_classifier.*`` (text tower,
``bg_embed``, ``logit_scale``, ``attn_mask``), ``sem_seg_head.{clip_fusion_layers,pixel_decoder,predictor}.*``
and ``criterion.empty_weight``.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from checkpoint_fixtures import check_conversion_inverts, check_official_file_reproduces, perturb_parameters, save_detectron2_checkpoint
from ovbench.data.vocabulary import Vocabulary
from ovbench.errors import CheckpointError
from ovbench.results.seen_unseen import training_names
from ovbench_adapters.ebseg import EbsegSegmenter, convert_official_state_dict, seen_class_flags, to_official_state_dict
from ovbench_methods.common.clip import ClipImageEncoder
from ovbench_methods.common.sam_encoder import SamEncoderConfig
from ovbench_methods.common.set_criterion import SetCriterionConfig
from ovbench_methods.ebseg.balancing import balanced_class_logits
from ovbench_methods.ebseg.config import EbsegBalancing, EbsegConfig, EbsegConfigError
from ovbench_methods.ebseg.ssc import ssc_loss, text_affinity
from ovbench_methods.ebseg.surgery import run_dual_blocks, value_value_attention

TINY_CLIP = {
    "embed_dim": 32,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 64, "layers": 6, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
VOCABULARY = Vocabulary(["road", "tree", "building", "water"])
CLASSES = tuple(c.all_names for c in VOCABULARY)


def tiny_config(**changes) -> EbsegConfig:
    settings = dict(
        sam=SamEncoderConfig(img_size=64, embed_dim=16, depth=4, num_heads=2, window_size=2, global_attn_indexes=(0, 1, 2, 3)),
        clip_weights=None, model_config=copy.deepcopy(TINY_CLIP), templates=["{}"], fusion_layers=[2, 3, 4],
        rec_first_layer=4, attn_bias_heads=2, conv_dim=32, mask_dim=16, hidden_dim=16, num_queries=6, nheads=2,
        dim_feedforward=32, dec_layers=3, transformer_layers=1, transformer_heads=2, transformer_ffn_dim=32,
        criterion=SetCriterionConfig(class_weight=1.5, matcher_class_cost=2.0, extra_class_heads={"pred_logits_1": 1.5}, num_points=64),
    )
    settings.update(changes)
    return EbsegConfig(**settings)


def tiny_segmenter(seed: int, **changes) -> EbsegSegmenter:
    torch.manual_seed(seed)
    return perturb_parameters(EbsegSegmenter(tiny_config(**changes)).eval(), seed)


def batch() -> torch.Tensor:
    return torch.rand(2, 3, 64, 80, generator=torch.Generator().manual_seed(3)) * 255


def outputs(segmenter: EbsegSegmenter) -> torch.Tensor:
    with torch.no_grad():
        return segmenter.forward_logits(batch(), VOCABULARY)


# -------------------------------------------------------------------------- SSC loss


def test_ssc_loss_matches_a_direct_computation():
    generator = torch.Generator().manual_seed(0)
    embeddings = F.normalize(torch.randn(2, 5, 8, generator=generator), dim=-1) * 1.7
    text = F.normalize(torch.randn(4, 8, generator=generator), dim=-1)
    affinity = text_affinity(text)
    indices = [(torch.tensor([3, 0, 4]), torch.tensor([1, 0, 2])), (torch.tensor([2, 1]), torch.tensor([0, 1]))]
    labels = [torch.tensor([2, 0, 3]), torch.tensor([1, 1])]
    expected = 0.0
    for image, (queries, targets) in enumerate(indices):
        classes = [int(labels[image][t]) for t in targets]
        errors = []
        for a, qa in enumerate(queries):
            for b, qb in enumerate(queries):
                gram = float(embeddings[image, qa] @ embeddings[image, qb])
                errors.append((gram - float(text[classes[a]] @ text[classes[b]])) ** 2)
        expected += sum(errors) / len(errors)
    expected /= 2
    assert math.isclose(float(ssc_loss(embeddings, indices, labels, affinity)), expected, rel_tol=1e-5)


def test_ssc_loss_is_zero_for_a_batch_with_an_unmatched_image_and_keeps_gradients_otherwise():
    embeddings = torch.randn(2, 4, 8, requires_grad=True)
    affinity = torch.eye(3)
    empty = (torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long))
    loss = ssc_loss(embeddings, [(torch.tensor([0]), torch.tensor([0])), empty], [torch.tensor([1]), torch.zeros(0, dtype=torch.long)], affinity)
    assert float(loss) == 0.0
    loss = ssc_loss(embeddings, [(torch.tensor([0, 1]), torch.tensor([0, 1]))] * 2, [torch.tensor([1, 2])] * 2, affinity)
    loss.backward()
    assert embeddings.grad is not None and embeddings.grad.abs().sum() > 0


# ------------------------------------------------------------------------- balancing


def _logits(seed: int) -> torch.Tensor:
    return torch.randn(2, 3, 5, generator=torch.Generator().manual_seed(seed)) * 3


@pytest.mark.parametrize(
    "alpha, beta, gamma, seen_source, unseen_source",
    [(0.0, 0.0, 0.0, "a", "a"), (0.0, 0.0, 1.0, "b", "b"), (1.0, 0.0, 0.0, "d", "a"), (0.0, 1.0, 0.0, "a", "d")],
)
def test_balancing_reduces_to_one_embedding_at_the_corner_settings(alpha, beta, gamma, seen_source, unseen_source):
    logits = {"a": _logits(0), "b": _logits(1), "d": _logits(2)}
    seen = torch.tensor([True, True, False, False])
    balanced = balanced_class_logits(logits["a"], logits["b"], logits["d"], seen, alpha, beta, gamma).exp()
    void = logits["a"].softmax(-1)[..., -1:]
    everyone = torch.ones(4, dtype=torch.bool)
    for flags, source in ((everyone, seen_source), (~everyone, unseen_source)):
        out = balanced_class_logits(logits["a"], logits["b"], logits["d"], flags, alpha, beta, gamma).exp()
        alone = logits[source][..., :-1].softmax(-1)
        assert torch.allclose(out[..., :-1], alone * (1 - void), atol=1e-6)
        assert torch.allclose(out[..., -1:], void, atol=1e-6)
    assert torch.allclose(balanced.sum(-1), torch.ones(2, 3), atol=1e-6)


def test_published_exponents_give_unseen_classes_no_weight_on_a():
    balancing = EbsegBalancing()
    assert (balancing.alpha, balancing.beta, balancing.gamma) == (0.09, 0.3, 0.7)
    assert 1 - balancing.beta - balancing.gamma == pytest.approx(0.0)
    with pytest.raises(EbsegConfigError):
        EbsegBalancing(alpha=0.5, gamma=0.7)


# ------------------------------------------------------------------- seen / unseen


def test_seen_classes_come_from_the_training_vocabulary_by_name_and_synonym():
    """LandDiscover50K trains with "buildings", "tree" and "background" among its 40 names: in a
    Potsdam-like vocabulary "building" (plural folded) and "tree" are seen, "clutter" through its
    synonym "background"; "car" is not (LD50K names vehicles "small-vehicle", "large-vehicle")."""
    seen_names = training_names("landdiscover50k", "scratch")
    vocabulary = Vocabulary(["impervious surfaces", "building", "low vegetation", "tree", "car", ["clutter", "background"]])
    flags = dict(zip([c.name for c in vocabulary], seen_class_flags(vocabulary, seen_names)))
    assert flags == {"impervious surfaces": False, "building": True, "low vegetation": False, "tree": True,
                     "car": False, "clutter": True}  # "clutter" is seen through its synonym "background"
    coco = training_names("coco-stuff-train", "scratch")
    assert seen_class_flags(Vocabulary(["car", ["house", "building"]]), coco) == [True, True]


def test_the_record_names_the_seen_classes_and_where_they_come_from():
    segmenter = tiny_segmenter(0)
    settings = segmenter.use_eval_set("toy", VOCABULARY)
    assert settings["seen_classes"] == [] and settings["unseen_classes"] == ["road", "tree", "building", "water"]
    segmenter.use_training_origin("landdiscover50k", "scratch")
    settings = segmenter.use_eval_set("toy", VOCABULARY)
    assert settings["seen_classes"] == ["road", "tree", "building", "water"]
    assert settings["seen_from"] == "landdiscover50k (scratch)" and settings["balancing"]["gamma"] == 0.7


# ------------------------------------------------------------------------- surgery


def _tiny_clip_encoder() -> ClipImageEncoder:
    import open_clip

    torch.manual_seed(0)
    clip = open_clip.model.CLIP(**{k: v for k, v in TINY_CLIP.items()})
    return perturb_parameters(ClipImageEncoder(clip.visual).eval(), 0)


def test_surgery_stream_follows_the_value_value_recurrence_and_leaves_clip_unchanged():
    encoder = _tiny_clip_encoder()
    tokens, _ = encoder.embed(encoder.normalize(torch.rand(1, 3, 32, 48) * 255))
    mask = torch.randn(1 * 2, tokens.shape[1], tokens.shape[1])
    with torch.no_grad():
        ordinary, _ = encoder.run_blocks(tokens, 1, 5, attn_mask=mask)
        dual, stream, _ = run_dual_blocks(encoder, tokens, None, 1, 5, attn_mask=mask)
        assert torch.allclose(dual, ordinary, atol=1e-6)
        # slow reference: explicit per-head v-v attention, accumulated on a stream starting at the input
        expected, x = tokens.clone(), tokens.clone()
        for index in range(1, 5):
            block = encoder.blocks[index]
            normed = block.ln_1(x)
            v = F.linear(normed, block.attn.in_proj_weight[64:], block.attn.in_proj_bias[64:])
            heads = []
            for head in range(2):
                vh = v[0, :, head * 16:(head + 1) * 16]
                weights = (vh @ vh.T / 4.0 + mask[head]).softmax(-1)
                heads.append(weights @ vh)
            expected = expected + block.attn.out_proj(torch.cat(heads, -1)[None])
            x = encoder.run_blocks(x, index, index + 1, attn_mask=mask)[0]
        assert torch.allclose(stream, expected, atol=1e-5)
        single = value_value_attention(encoder.blocks[1].attn, encoder.blocks[1].ln_1(tokens))
        assert single.shape == tokens.shape


def test_surgery_map_is_computed_at_inference_only():
    segmenter = tiny_segmenter(0)
    with torch.no_grad():
        evaluation = segmenter.model.forward_outputs(batch(), CLASSES)
        training = segmenter.model.forward_outputs(batch(), CLASSES, inference=False)
    assert evaluation.surgery_map is not None and evaluation.surgery_map.shape == (2, 32, 4, 6)
    assert torch.allclose(evaluation.surgery_map.norm(dim=1), torch.ones(2, 4, 6), atol=1e-5)
    assert training.surgery_map is None
    # the ordinary stream, hence A, B and the masks, is the same with and without the surgery path
    for a, b in zip(evaluation.class_logits_b, training.class_logits_b):
        assert torch.allclose(a, b, atol=1e-5)
    assert torch.allclose(evaluation.mask_logits[-1], training.mask_logits[-1], atol=1e-5)


# --------------------------------------------------------------------- the model


def test_published_defaults_and_what_trains():
    config = EbsegConfig()
    assert (config.fusion_layers, config.rec_first_layer, config.dec_layers, config.num_queries) == ([3, 6, 9], 9, 9, 100)
    assert config.criterion.class_weight == 1.5 and config.criterion.matcher_class_cost == 2.0
    assert config.criterion.extra_class_heads == {"pred_logits_1": 1.5} and config.ssc_weight == 10.0
    model = tiny_segmenter(0).model
    assert model.surgery_first_layer == 2  # 6 // 6 + 1
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert "image_encoder.visual.positional_embedding" in trainable and "backbone.pos_embed" in trainable
    assert not any(name.startswith(("text_encoder.", "image_encoder.visual.transformer.", "image_encoder.visual.conv1"))
                   for name in trainable)
    assert not any(name.startswith("backbone.") and name != "backbone.pos_embed" for name in trainable)
    assert "logit_scale" not in trainable and "sem_seg_head.predictor.logit_scale" in trainable
    assert {"bg_embed.embedding", "sem_seg_head.clip_fusion_layers.0.1.weight", "sem_seg_head.predictor.bias_scaling.weight"} <= trainable


def test_every_prediction_has_a_and_b_logits_and_the_loss_has_every_term():
    segmenter = tiny_segmenter(0).train()
    out = segmenter.model.forward_outputs(batch(), CLASSES, inference=False)
    assert len(out.class_logits_a) == len(out.class_logits_b) == len(out.mask_logits) == 4
    assert out.class_logits_a[-1].shape == (2, 6, 5) and out.mask_logits[-1].shape == (2, 6, 16, 24)  # the 64 x 96 canvas
    scale = float(torch.clamp(segmenter.model.sem_seg_head.predictor.logit_scale.detach(), max=10))
    assert torch.allclose(out.embeddings_a[-1].norm(dim=-1), torch.full((2, 6), scale), atol=1e-5)
    targets = torch.randint(0, 4, (2, 64, 80), generator=torch.Generator().manual_seed(0))
    losses = segmenter.loss(batch(), targets, VOCABULARY)
    final = {"loss_ce", "1_loss_ce", "loss_mask", "loss_dice", "loss_ssc"}
    assert final <= set(losses) and {f"1_loss_ce_{i}" for i in range(3)} <= set(losses)
    assert not any(key.startswith("loss_ssc_") for key in losses)  # SSC on the final prediction only
    sum(losses.values()).backward()
    assert segmenter.model.sem_seg_head.predictor.pool_proj[1].weight.grad.abs().sum() > 0
    assert segmenter.model.image_encoder.visual.positional_embedding.grad.abs().sum() > 0


def test_recognising_the_last_prediction_alone_gives_the_same_result():
    segmenter = tiny_segmenter(0)
    last_only = tiny_segmenter(0, rec_all_predictions_at_inference=False)
    assert torch.allclose(outputs(segmenter), outputs(last_only), atol=1e-6)


def test_seen_flags_change_the_prediction():
    segmenter = tiny_segmenter(0)
    before = outputs(segmenter)
    segmenter.use_training_origin("landdiscover50k", "scratch")
    assert not torch.allclose(before, outputs(segmenter))


def test_bad_settings_are_one_line_errors():
    with pytest.raises(EbsegConfigError, match="fusion_layers"):
        tiny_config(fusion_layers=[2, 3])
    with pytest.raises(EbsegConfigError, match="ssc_affinity"):
        tiny_config(ssc_affinity="other")
    with pytest.raises(Exception, match="attn_bias_heads"):
        EbsegSegmenter(tiny_config(attn_bias_heads=3))


# ------------------------------------------------------------------- checkpoints


def test_official_layout_has_the_published_key_names():
    state = tiny_segmenter(0).official_state_dict()
    for key in (
        "backbone.patch_embed.proj.weight",
        "backbone.pos_embed",
        "backbone.blocks.0.attn.rel_pos_h",
        "backbone.blocks.0.mlp.lin1.weight",
        "clip_visual_extractor.conv1.weight",
        "clip_visual_extractor.positional_embedding",
        "clip_visual_extractor.resblocks.0.attn.in_proj_weight",  # before the surgery path
        "clip_visual_extractor.resblocks.1.attn.qkv.weight",  # a surgery block
        "clip_visual_extractor.resblocks.3.attn.proj.bias",
        "clip_visual_extractor.ln_post.weight",
        "clip_visual_extractor.proj",
        "clip_rec_head.resblocks.0.attn.qkv.bias",
        "clip_rec_head.resblocks.1.mlp.c_fc.weight",
        "clip_rec_head.ln_post.bias",
        "clip_rec_head.proj",
        "ov_classifier.bg_embed",
        "ov_classifier.logit_scale",
        "ov_classifier.token_embedding.weight",
        "sem_seg_head.clip_fusion_layers.2.0.weight",
        "sem_seg_head.clip_fusion_layers.2.1.bias",
        "sem_seg_head.pixel_decoder.transformer.level_embed",
        "sem_seg_head.predictor.query_feat.weight",
        "sem_seg_head.predictor.mask_embed1.layers.2.weight",
        "sem_seg_head.predictor.pool_proj.0.weight",
        "sem_seg_head.predictor.pool_proj.1.weight",
        "sem_seg_head.predictor.attn_proj.layers.2.weight",
        "sem_seg_head.predictor.bias_scaling.weight",
        "sem_seg_head.predictor.logit_scale",
    ):
        assert key in state, key
    assert "clip_visual_extractor.resblocks.1.attn.in_proj_weight" not in state
    assert not any(".neck." in key or key.startswith(("image_encoder.", "text_encoder.")) for key in state)
    assert state["sem_seg_head.predictor.attn_proj.layers.2.weight"].shape == (16 * 2, 16)
    assert not any(k.startswith("sem_seg_head.predictor.class_embed") for k in state)


def _balanced_logits(segmenter: EbsegSegmenter) -> torch.Tensor:
    # The model's output with no class seen: loading the authors' file also makes COCO-Stuff's
    # names seen, which the segmenter-level scores would show as well.
    with torch.no_grad():
        return segmenter.model.predict_masks(batch(), CLASSES).class_logits


def test_official_checkpoint_loads_strictly_and_reproduces_the_outputs(tmp_path):
    check_official_file_reproduces(tiny_segmenter, _balanced_logits, tmp_path / "EBSeg_base.pth")


def test_conversion_inverts_export():
    check_conversion_inverts(tiny_segmenter(0).model.state_dict(), to_official_state_dict, convert_official_state_dict)


def test_official_weights_count_coco_stuff_as_seen(tmp_path):
    source, target = tiny_segmenter(0), tiny_segmenter(1)
    path = tmp_path / "EBSeg_base.pth"
    torch.save({"model": source.official_state_dict()}, path)
    target.load_checkpoint(path)  # no criterion weights: nothing says what it was trained on
    vocabulary = Vocabulary(["road", "car", "zebra", "impervious surface"])
    assert target.use_eval_set("toy", vocabulary)["seen_classes"] == []
    save_detectron2_checkpoint(source.official_state_dict(), path, train_classes=171)
    target.load_checkpoint(path)
    settings = target.use_eval_set("toy", vocabulary)
    assert settings["seen_classes"] == ["road", "car", "zebra"] and "official weights" in settings["seen_from"]


def test_a_mismatching_official_file_is_one_error_line(tmp_path):
    state = tiny_segmenter(0).official_state_dict()
    del state["sem_seg_head.predictor.bias_scaling.weight"]
    state["clip_visual_extractor.proj"] = state["clip_visual_extractor.proj"] + 1
    path = tmp_path / "broken.pth"
    torch.save({"model": state}, path)
    with pytest.raises(CheckpointError) as error:
        tiny_segmenter(1).load_checkpoint(path)
    assert "\n" not in str(error.value) and "clip_visual_extractor.proj" in str(error.value)
    del state["clip_visual_extractor.proj"]
    torch.save({"model": state}, path)
    with pytest.raises(CheckpointError) as error:
        tiny_segmenter(1).load_checkpoint(path)
    assert "\n" not in str(error.value) and "bias_scaling.weight" in str(error.value)


# --------------------------------------------------------------------------- toyland


def test_toyland_scratch_run_shortened(isolated_home):
    """`ovbench run --method ebseg --protocol scratch`, shortened: the loss falls and every
    record lists the seen classes of its set."""
    from toyland_runs import shortened_run

    records = shortened_run(isolated_home, "ebseg")
    settings = records[0]["extra"]["inference_settings"]
    assert settings["seen_from"].endswith("(scratch)")
    assert set(settings["seen_classes"]) | set(settings["unseen_classes"])


@pytest.mark.slow
def test_published_scale_shapes_and_parameter_counts():
    """SAM ViT-B + CLIP ViT-B/16 at 640^2 with random weights: the shapes of the pipeline table in
    docs/methods/ebseg.md and the sizes of its parts."""
    segmenter = EbsegSegmenter(EbsegConfig(clip_weights=None)).eval()
    model = segmenter.model
    count = lambda module, trainable=None: sum(  # noqa: E731
        p.numel() for p in module.parameters() if trainable is None or p.requires_grad == trainable
    )
    assert (count(model), count(model, True)) == (261_829_572, 26_622_403)
    assert (count(model.backbone), count(model.backbone, True)) == (88_883_456, 3_145_728)
    assert count(model.image_encoder, True) == 151_296 and count(model.text_encoder, True) == 0
    head = model.sem_seg_head
    assert (count(head.clip_fusion_layers), count(head.pixel_decoder), count(head.predictor)) == (1_776_384, 5_839_296, 15_709_187)
    assert (count(head.predictor.attn_proj), count(head.predictor.mask_embed1), count(head.predictor.pool_proj)) == (921_088, 263_168, 66_304)
    print(f"trainable {count(model, True):,} frozen {count(model, False):,}")
    with torch.no_grad():
        out = model.forward_outputs(torch.rand(1, 3, 640, 640) * 255, CLASSES)
    assert len(out.class_logits_a) == 10
    assert out.class_logits_a[-1].shape == (1, 100, 5) and out.class_logits_b[-1].shape == (1, 100, 5)
    assert out.mask_logits[-1].shape == (1, 100, 160, 160) and out.embeddings_a[-1].shape == (1, 100, 512)
    assert out.surgery_map.shape == (1, 512, 20, 20)
