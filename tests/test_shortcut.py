"""The shortcut meter (core/shortcut.py): background swaps and accuracy before and after."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from core.data.spec import make_dataset
from core.models.base import ModelInfo, SteerableModel
from core.shortcut import meter_split, shortcut_meter, swap_backgrounds, swap_partners
from core.session.workbench import version_metrics

K, SIZE = 4, 10
PALETTE = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0], [1.0, 1.0, 0]])  # class k's background colour
OBJECT = torch.tensor([[0.2, 0.2, 0.2], [0.4, 0.4, 0.4], [0.6, 0.6, 0.6], [0.8, 0.8, 0.8]])  # class k's object grey


def generated(n_per_class: int = 12, seed: int = 0, with_masks: bool = True):
    """A set whose background colour and object grey both name the class; the object is a
    3x3 square at a random place, the mask marks it."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(K), n_per_class)
    n = len(labels)
    images = PALETTE[labels][:, :, None, None].repeat(1, 1, SIZE, SIZE).clone()
    masks = torch.zeros(n, 1, SIZE, SIZE)
    for i, c in enumerate(labels):
        r, q = rng.integers(0, SIZE - 3, size=2)
        images[i, :, r:r + 3, q:q + 3] = OBJECT[c][:, None, None]
        masks[i, 0, r:r + 3, q:q + 3] = 1
    rows = rng.permutation(n)
    splits = {"train": rows[: n // 2], "val": rows[n // 2: 3 * n // 4], "test": rows[3 * n // 4:]}
    return make_dataset(name="gen", source="generated", license="-", images=images, labels=labels,
                        classes=[f"c{k}" for k in range(K)], splits=splits, masks=masks if with_masks else None)


class ColourModel(SteerableModel):
    """Classifies by the colour nearest to a palette: of the background (the most common colour
    of the image) or of the object (the pixel that is grey)."""

    feature_layer = gradcam_layer = "dummy"
    layer_groups: dict = {}

    def __init__(self, look_at: str) -> None:
        super().__init__()
        self.info = ModelInfo("colour", 3, SIZE, K)
        self.look_at = look_at
        self.dummy = nn.Linear(1, 1)  # a parameter, so the engine can tell the device
        self._feature_dim = 3

    def features(self, x: torch.Tensor) -> torch.Tensor:
        pixels = x.flatten(2).transpose(1, 2)  # (N, HW, 3)
        grey = (pixels.max(2).values - pixels.min(2).values) < 1e-6
        grey = grey & (pixels.max(2).values < 0.9)  # the object's greys, not a white or yellow background
        w = (grey if self.look_at == "object" else ~grey).float()[:, :, None]
        return (pixels * w).sum(1) / w.sum(1).clamp(min=1)

    def head(self, f: torch.Tensor) -> torch.Tensor:
        palette = OBJECT if self.look_at == "object" else PALETTE
        return -torch.cdist(f, palette)


def test_partners_are_a_derangement_of_other_classes():
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3, 1, 2])
    p = swap_partners(len(labels), labels, seed=3)
    assert sorted(p.tolist()) == list(range(len(labels)))  # every background used once
    assert (p != torch.arange(len(labels))).all()
    assert (labels[p] != labels).all()
    assert torch.equal(p, swap_partners(len(labels), labels, seed=3))
    q = swap_partners(7, seed=1)
    assert sorted(q.tolist()) == list(range(7)) and (q != torch.arange(7)).all()
    one_class = swap_partners(5, torch.zeros(5, dtype=torch.long), seed=0)  # no other class: still a derangement
    assert (one_class != torch.arange(5)).all()
    assert swap_partners(1, seed=0).tolist() == [0]


def test_swap_keeps_the_object_and_takes_the_background_from_another_image():
    data = generated()
    x, y, m = data.images, data.labels, data.masks
    before = x.clone()
    out = swap_backgrounds(x, m, seed=5, labels=y)
    assert torch.equal(x, before)  # inputs untouched
    obj = m.bool().expand_as(x)
    assert torch.equal(out[obj], x[obj])  # pixels inside a mask never change
    p = swap_partners(len(x), y, seed=5)
    outside_both = (~m.bool() & ~m[p].bool()).expand_as(x)
    assert torch.equal(out[outside_both], x[p][outside_both])  # the partner's own pixels
    # where the partner's object was: the partner's background colour, no ghost of its object
    ghost = (~m.bool() & m[p].bool())
    assert ghost.any()
    for i in range(len(x)):
        if ghost[i, 0].any():
            assert torch.allclose(out[i][:, ghost[i, 0]], PALETTE[y[p[i]]][:, None].expand(3, int(ghost[i, 0].sum())))
    assert not torch.equal(out, x)
    assert torch.equal(out, swap_backgrounds(x, m, seed=5, labels=y))  # deterministic under seed
    assert not torch.equal(out, swap_backgrounds(x, m, seed=6, labels=y))


def test_swap_rejects_mismatched_masks():
    with pytest.raises(ValueError):
        swap_backgrounds(torch.zeros(2, 3, 4, 4), torch.zeros(2, 1, 5, 5))


def test_meter_sees_a_background_shortcut_and_not_an_object_model():
    data = generated()
    shortcut = shortcut_meter(ColourModel("background"), data)
    assert shortcut["rows"] == len(data.ids("test"))
    assert shortcut["plain_acc"] == 100.0
    assert shortcut["swapped_acc"] == 0.0  # every partner is of another class: its colour names that class
    honest = shortcut_meter(ColourModel("object"), data)
    assert honest["plain_acc"] == honest["swapped_acc"] == 100.0
    assert shortcut_meter(ColourModel("background"), data, seed=0) == shortcut  # deterministic
    assert shortcut_meter(ColourModel("background"), data, max_rows=5)["rows"] == 5


def test_meter_restores_the_training_mode():
    model = ColourModel("background").train()
    shortcut_meter(model, generated())
    assert model.training


def test_meter_is_none_without_masks():
    assert shortcut_meter(ColourModel("object"), generated(with_masks=False)) is None
    data = generated()
    data.has_mask = np.zeros(len(data.images), bool)
    assert shortcut_meter(ColourModel("object"), data) is None


def test_meter_split_prefers_the_aligned_test_copies():
    data = generated()
    assert meter_split(data) == "test"
    data.splits["test_aligned"] = data.splits["test"]
    assert meter_split(data) == "test_aligned"


def test_version_metrics_carry_the_meter_as_fractions():
    m = version_metrics(ColourModel("background"), generated())
    assert m["shortcut_plain_acc"] == 1.0 and m["shortcut_swapped_acc"] == 0.0
    assert m["shortcut_rows"] == len(generated().ids("test"))
    plain = version_metrics(ColourModel("background"), generated(with_masks=False))
    assert not any(k.startswith("shortcut_") for k in plain)



def test_pages_read_the_meter_from_metrics_or_measure_an_older_version(monkeypatch):
    from types import SimpleNamespace

    import core.models
    from app.shortcut_widgets import _measured, points_delta, version_shortcut

    data = generated()
    stored = {"shortcut_plain_acc": 0.9, "shortcut_swapped_acc": 0.2, "shortcut_rows": 3}
    versions = {0: SimpleNamespace(metrics={"test_acc": 1.0}, checkpoint="v0.pt"),
                1: SimpleNamespace(metrics=stored, checkpoint="v1.pt")}
    wb = SimpleNamespace(id="wb-meter", data=data, version=versions.__getitem__)
    assert version_shortcut(wb, 1) == {"plain": 0.9, "swapped": 0.2, "rows": 3}
    _measured.clear()
    monkeypatch.setattr(core.models, "model_from_checkpoint", lambda path: ColourModel("background"))
    # a version made before versions carried the meter: measured on the fly from its checkpoint
    assert version_shortcut(wb, 0) == {"plain": 1.0, "swapped": 0.0, "rows": len(data.ids("test"))}
    _measured.clear()
    assert version_shortcut(SimpleNamespace(id="x", data=generated(with_masks=False), version=None), 0) is None
    assert points_delta(0.5, None) == {}
    assert points_delta(0.5, 0.5) == {"delta": "±0.0 pts", "delta_color": "off", "delta_arrow": "off"}
    assert points_delta(0.5, 0.6, " vs x") == {"delta": "-10.0 pts vs x"}
