import open_clip

from ovbench.cli import main
from ovbench.profile import count_parameters, profile_method


def test_full_scale_clip_dense_is_the_whole_vit_b16_clip(capsys):
    profile = profile_method("clip-dense")  # random weights: nothing is downloaded
    reference = open_clip.create_model("ViT-B-16")
    expected = sum(p.numel() for name, p in reference.named_parameters() if name != "logit_scale")
    assert profile.trainable == 0 and profile.frozen == expected
    assert main(["profile", "--method", "clip-dense", "--scale", "tiny"]) == 0
    out = capsys.readouterr().out
    assert "trainable parameters: 0" in out


def test_counts_split_trainable_and_frozen_per_part():
    import torch.nn as nn

    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    model[0].requires_grad_(False)
    parts = {p.name: p for p in count_parameters(model, depth=1)}
    assert parts["0"].frozen == 16 and parts["0"].trainable == 0
    assert parts["1"].trainable == 10 and parts["1"].frozen == 0
