"""Model zoo: shapes, named layers and safe checkpoints."""
from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from core.models import CheckpointError, build_model, list_models, load_checkpoint, model_from_checkpoint, save_checkpoint


@pytest.mark.parametrize("arch", ["seed-cnn", "vgg6", "resnet18"])
@pytest.mark.parametrize("channels,size,classes", [(1, 28, 10), (3, 32, 7)])
def test_forward_shape_and_named_layers(arch, channels, size, classes):
    model = build_model(arch, channels, size, classes)
    x = torch.rand(3, channels, size, size)
    assert model(x).shape == (3, classes)
    assert model.features(x).shape == (3, model.feature_dim)
    named = dict(model.named_modules())
    assert model.feature_layer in named
    assert model.gradcam_layer in named
    groups = list(model.layer_groups)
    assert len(groups) >= 4
    # every parameter belongs to exactly one group, so freezing all groups freezes everything
    grouped = [id(p) for g in groups for p in model.group_parameters(g)]
    assert len(grouped) == len(set(grouped)) == len(list(model.parameters()))


def test_layer_groups_follow_the_papers():
    assert list(build_model("seed-cnn", 1, 28, 10).layer_groups)[:4] == ["conv1", "conv2", "conv3", "conv4"]
    vgg = build_model("vgg6", 3, 32, 10)
    assert vgg.layer_groups["conv1"] == ["conv1", "bn1"]
    widths = [vgg.get_submodule(f"conv{i}").out_channels for i in range(1, 7)]
    assert widths == [32, 32, 64, 64, 128, 128]
    assert sum(isinstance(m, nn.Linear) for m in vgg.modules()) == 2
    seed = build_model("seed-cnn", 1, 28, 10)
    assert sum(isinstance(m, nn.Conv2d) for m in seed.modules()) == 4
    assert sum(isinstance(m, nn.Linear) for m in seed.modules()) == 3


def test_same_seed_same_weights_and_unknown_arch():
    a, b = build_model("seed-cnn", 1, 28, 10, seed=3), build_model("seed-cnn", 1, 28, 10, seed=3)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    with pytest.raises(ValueError, match="Unknown model"):
        build_model("alexnet", 1, 28, 10)
    assert set(list_models()) == {"seed-cnn", "vgg6", "resnet18"}


def test_checkpoint_roundtrip_is_identical(tmp_path):
    model = build_model("vgg6", 3, 32, 5, seed=1)
    path = tmp_path / "m.pt"
    save_checkpoint(model, path, list("abcde"), {"note": "x"})
    again = model_from_checkpoint(path)
    assert again.state_dict().keys() == model.state_dict().keys()
    assert all(torch.equal(again.state_dict()[k], v) for k, v in model.state_dict().items())
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize("other", [("vgg6", 1, 28, 10), ("seed-cnn", 1, 28, 7), ("seed-cnn", 3, 28, 10)])
def test_wrong_checkpoint_is_refused_and_model_untouched(tmp_path, other):
    path = tmp_path / "other.pt"
    save_checkpoint(build_model(*other, seed=5), path, [str(i) for i in range(other[3])])
    model = build_model("seed-cnn", 1, 28, 10, seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError, match="does not fit"):
        load_checkpoint(model, path)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_not_a_checkpoint(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable"):
        model_from_checkpoint(bad)
    torch.save({"weights": torch.zeros(2)}, tmp_path / "plain.pt")
    with pytest.raises(CheckpointError, match="not a steerboard checkpoint"):
        model_from_checkpoint(tmp_path / "plain.pt")
    with pytest.raises(CheckpointError, match="not found"):
        model_from_checkpoint(tmp_path / "missing.pt")


def test_resnet18_local_weights_load_where_shapes_fit(tmp_path):
    tv = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18.pth"
    torch.save(tv.state_dict(), path)
    model = build_model("resnet18", 3, 32, 10, weights_path=path)
    assert torch.equal(model.layer1[0].conv1.weight, tv.layer1[0].conv1.weight)
    assert model.conv1.weight.shape == (64, 3, 3, 3)  # small-image stem keeps its own weights
    assert model.fc.out_features == 10


@pytest.mark.parametrize("arch,flat", [("seed-cnn", 64 * 7 * 7), ("vgg6", 128 * 3 * 3)])
def test_small_images_keep_the_papers_dense_layer(arch, flat):
    """Up to 64 px nothing is pooled before the first dense layer (the papers' networks)."""
    assert build_model(arch, 1, 28, 10).fc1.in_features == flat


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["seed-cnn", "vgg6", "resnet18"])
def test_model_size_is_bounded_whatever_the_image_side(arch):
    """The first dense layer stops growing with the side squared (issue 30: seed-cnn for 768 px
    images had 302 million weights, a 1.2 GB checkpoint; at the 256 px cap without pooling, 33.6 million)."""
    sizes = {side: sum(p.numel() for p in build_model(arch, 3, side, 2).parameters()) for side in (64, 128, 256)}
    assert sizes[256] == sizes[64] and sizes[256] < 12_000_000, sizes
    model = build_model(arch, 3, 256, 2)
    x = torch.rand(2, 3, 256, 256)
    assert model(x).shape == (2, 2) and model.features(x).shape == (2, model.feature_dim)
