"""The remote-sensing prompt-template set is an option of the cost-volume methods."""

import pytest
import torch

from ovbench.data.catalog import load_template_set
from ovbench.data.vocabulary import Vocabulary
from ovbench.errors import ConfigError
from ovbench.registry import build_segmenter, resolve_method


@pytest.mark.parametrize("method", ["catseg", "gsnet"])
def test_remote_sensing_templates_reach_the_text_classifier(method):
    resolved = resolve_method(method, scale="tiny", overrides={"model": {"templates": "remote-sensing"}})
    segmenter = build_segmenter(resolved)
    templates = load_template_set("remote-sensing")
    assert len(templates) > 1 and list(segmenter.model.templates) == templates
    assert segmenter.model.class_encoder.num_templates == len(templates)  # P cost-volume channels
    logits = segmenter.forward_logits(torch.rand(1, 3, 128, 128) * 255, Vocabulary(["water", "road"]))
    assert logits.shape[:2] == (1, 2) and torch.isfinite(logits).all()


def test_unknown_template_set_is_a_config_error():
    with pytest.raises(ConfigError, match="remote-sensing"):
        build_segmenter(resolve_method("catseg", scale="tiny", overrides={"model": {"templates": "nope"}}))
