"""The decoy-digits (Decoy-MNIST, Ross et al. 2017) and texture-digits shortcut sets: shapes,
splits, masks, how often the shortcut names the class, rho in the source string, seeds, the
card, and that the shortcut alone predicts the class in train."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from core.data import DataError, list_builtin, load_dataset, parse_biased_source, parse_shortcut_source
from core.data.shortcuts import DECOY_LEVELS, TEXTURE_MEAN, _waves, corner_masks, decoy_side
from core.data.spec import ImageDataset
from core.data.splits import check_splits

N = 20  # images per class of the bundled digits: 200 in all, 30 of them test


# Readers of the shortcut from the pixels (the tests' oracles: the app never reads them back).
def decoy_levels(ds: ImageDataset) -> tuple[np.ndarray, np.ndarray]:
    """The class whose level each row's square has, and the square's corner, read from the pixels.

    The square is the corner region that is most nearly uniform and bright (its minimum less
    ten times its spread: a stroke seldom fills a whole corner evenly); its mean is matched to the
    nearest of DECOY_LEVELS.
    """
    if ds.images.shape[1] != 1:
        raise ValueError(f"{ds.name}: not a decoy dataset (needs 1 channel)")
    h, w = ds.images.shape[2:]
    regions = corner_masks(h, w).flatten(1)  # (4, HW)
    pixels = ds.images[:, 0].flatten(1)  # (N, HW)
    mins = torch.stack([pixels[:, r].min(dim=1).values for r in regions], dim=1)
    maxs = torch.stack([pixels[:, r].max(dim=1).values for r in regions], dim=1)
    corner = (mins - 10 * (maxs - mins)).argmax(dim=1)
    means = torch.stack([pixels[:, r].mean(dim=1) for r in regions], dim=1)
    level = means.gather(1, corner[:, None])  # (N, 1)
    return (level - DECOY_LEVELS[None]).abs().argmin(dim=1).numpy(), corner.numpy()


def texture_energies(ds: ImageDataset) -> np.ndarray:
    """(N, 10): how strongly each class's grating is present in each row's background.

    The energy of the background pixels (intensity below 0.5: strokes are brighter) projected
    on each class's sine and cosine wave; the largest names the grating.
    """
    if ds.images.shape[1] != 1:
        raise ValueError(f"{ds.name}: not a texture dataset (needs 1 channel)")
    h, w = ds.images.shape[2:]
    sin, cos = _waves(h, w)
    pixels = ds.images[:, 0]
    background = (pixels < 0.5).float()
    centred = (pixels - TEXTURE_MEAN) * background
    a = torch.einsum("nhw,khw->nk", centred, sin)
    b = torch.einsum("nhw,khw->nk", centred, cos)
    return (a * a + b * b).numpy()


def texture_classes(ds: ImageDataset) -> np.ndarray:
    """The class whose grating each row's background has, read from the pixels."""
    return texture_energies(ds).argmax(axis=1)


def _agree(shortcut: np.ndarray, ds, split: str) -> float:
    idx = ds.splits[split]
    return float((shortcut[idx] == ds.labels.numpy()[idx]).mean())


def _rate(ds, split: str, rho: float) -> float:
    """The share of a split that gets its class's shortcut: round(rho * n) rows of each class."""
    counts = np.bincount(ds.labels.numpy()[ds.splits[split]], minlength=ds.num_classes)
    return sum(round(rho * n) for n in counts) / counts.sum()


@pytest.fixture(scope="module")
def decoy():
    return load_dataset("decoy-digits", limit_per_class=N)


@pytest.fixture(scope="module")
def texture():
    return load_dataset("texture-digits", limit_per_class=N)


def test_listed_as_built_ins():
    names = list_builtin()
    assert "decoy-digits" in names and "texture-digits" in names
    assert names.index("biased-digits") < names.index("decoy-digits") < names.index("texture-digits")


@pytest.mark.parametrize("kind", ["decoy", "texture"])
def test_shapes_splits_and_masks(kind, request):
    ds = request.getfixturevalue(kind)
    plain = load_dataset("digits", limit_per_class=N)
    n, t = len(plain.images), len(plain.splits["test"])
    assert ds.name == f"{kind}-digits" and ds.classes == plain.classes
    assert ds.images.shape == (n + t, 1, 28, 28) and ds.images.dtype == torch.float32
    assert float(ds.images.min()) >= 0.0 and float(ds.images.max()) <= 1.0
    check_splits(ds.splits, len(ds.images))
    for s in ("train", "val", "test", "pool"):
        assert np.array_equal(ds.splits[s], plain.splits[s])
    assert ds.splits["test_aligned"].tolist() == list(range(n, n + t))
    assert torch.equal(ds.labels[ds.splits["test_aligned"]], ds.labels[ds.splits["test"]])
    assert ds.masks.shape == (n + t, 1, 28, 28) and set(torch.unique(ds.masks).tolist()) <= {0.0, 1.0}
    assert ds.has_mask.all() and ds.card.masked == n + t
    # The aligned copies hold the same digits as the conflicting test rows.
    assert torch.equal(ds.masks[ds.splits["test"]], ds.masks[ds.splits["test_aligned"]])


def test_decoy_square_is_in_a_corner_and_outside_the_mask(decoy):
    plain = load_dataset("digits", limit_per_class=N)
    strokes = torch.cat([plain.images, plain.images[plain.splits["test"]]]) > 0.5
    levels, corners = decoy_levels(decoy)
    assert decoy_side(28, 28) == 4 and decoy_side(56, 56) == 8 and decoy_side(8, 8) == 1
    square = corner_masks(28, 28)[torch.from_numpy(corners)].unsqueeze(1)
    assert int(square[0].sum()) == 16
    # The square holds one grey level (its class's or another's) and overwrites the digit.
    inside = decoy.images[square].view(-1, 16)
    assert torch.equal(inside, inside[:, :1].expand(-1, 16))
    assert torch.allclose(inside[:, 0], DECOY_LEVELS[torch.from_numpy(levels)])
    assert not (decoy.masks.bool() & square).any()
    assert torch.equal(decoy.masks.bool(), strokes & ~square)
    # Outside the square the image is the digit itself.
    assert torch.equal(decoy.images[~square], torch.cat([plain.images, plain.images[plain.splits["test"]]])[~square])
    # Every corner is used, and aligned test rows keep their test row's corner.
    assert set(corners.tolist()) == {0, 1, 2, 3}
    assert np.array_equal(corners[decoy.splits["test"]], corners[decoy.splits["test_aligned"]])


def test_decoy_square_where_a_stroke_passes_is_not_masked():
    # A digit source whose strokes fill the top-left corner: the square covers them, the mask drops them.
    ds = load_dataset("decoy-digits", limit_per_class=N)
    base = load_dataset("digits", limit_per_class=N)
    base.images[:, :, :6, :6] = 1.0
    from core.data.shortcuts import make_decoy

    filled = make_decoy(base, rho=1.0, seed=0)
    _, corners = decoy_levels(ds)
    top_left = np.flatnonzero(corners == 0)
    assert len(top_left)
    assert float(filled.masks[top_left, 0, :4, :4].sum()) == 0.0
    assert float(filled.masks[top_left, 0, 4:6, :6].min()) == 1.0
    assert torch.equal(filled.images[top_left, 0, :4, :4], ds.images[top_left, 0, :4, :4])


def test_decoy_level_names_the_class_at_rho(decoy):
    levels, _ = decoy_levels(decoy)
    for split in ("train", "val", "pool", "test_aligned"):
        assert _agree(levels, decoy, split) == 1.0, split  # Decoy-MNIST: rho 1 by default
    # Test: the level is independent of the class (30 rows here; the whole bundled digits below).
    assert _agree(levels, decoy, "test") < 0.3
    assert len(set(levels[decoy.splits["test"]].tolist())) >= 8
    full = load_dataset("decoy-digits")
    levels, _ = decoy_levels(full)
    assert abs(_agree(levels, full, "test") - 0.1) < 0.04
    assert np.bincount(levels[full.splits["test"]], minlength=10).min() >= 15
    assert "rho=1.0" in decoy.card.source

    half = load_dataset("decoy-digits?rho=0.8", limit_per_class=N)
    levels, _ = decoy_levels(half)
    assert _agree(levels, half, "train") == _rate(half, "train", 0.8)
    assert _agree(levels, half, "pool") == _rate(half, "pool", 0.8)
    assert _agree(levels, half, "test_aligned") == 1.0 and _agree(levels, half, "test") < 0.3


def test_texture_names_the_class_at_rho_with_one_brightness(texture):
    got = texture_classes(texture)
    assert _agree(got, texture, "train") == _rate(texture, "train", 0.99)
    assert _agree(got, texture, "test_aligned") == 1.0
    assert _agree(got, texture, "test") < 0.3
    assert len(set(got[texture.splits["test"]].tolist())) >= 8
    full = load_dataset("texture-digits")
    assert abs(_agree(texture_classes(full), full, "test") - 0.1) < 0.04
    # Strokes are white over the grating; off the strokes every class has the same mean brightness.
    plain = load_dataset("digits", limit_per_class=N)
    assert float(texture.images[texture.masks > 0].min()) > 0.5
    zero = torch.cat([plain.images, plain.images[plain.splits["test"]]])[:, 0] == 0  # off every stroke
    assert float(texture.images[:, 0][zero].max()) < 0.5
    per_class = [float(texture.images[:, 0][zero & (texture.labels == k).view(-1, 1, 1)].mean()) for k in range(10)]
    assert max(per_class) - min(per_class) < 0.03 and abs(np.mean(per_class) - TEXTURE_MEAN) < 0.03

    low = load_dataset("texture-digits?rho=0.7", limit_per_class=N)
    assert _agree(texture_classes(low), low, "train") == _rate(low, "train", 0.7)


def test_shortcut_alone_predicts_the_class_in_train(decoy, texture):
    # Decoy: the square's grey level, one number per image.
    _, corners = decoy_levels(decoy)
    regions = corner_masks(28, 28).flatten(1)
    pixels = decoy.images[:, 0].flatten(1)
    level = torch.stack([pixels[i, regions[c]].mean() for i, c in enumerate(corners)]).numpy()[:, None]
    # Texture: the energy of each class's grating in the background.
    energy = np.log(texture_energies(texture) + 1e-6)
    for ds, x, c in ((decoy, level, 1e4), (texture, energy, 1.0)):
        labels, train = ds.labels.numpy(), ds.splits["train"]
        clf = LogisticRegression(C=c, max_iter=5000).fit(x[train], labels[train])
        assert clf.score(x[train], labels[train]) >= 0.95
        assert clf.score(x[ds.splits["test_aligned"]], labels[ds.splits["test_aligned"]]) >= 0.95
        assert clf.score(x[ds.splits["test"]], labels[ds.splits["test"]]) <= 0.3  # the shortcut fails there


@pytest.mark.parametrize("source", ["decoy-digits", "texture-digits"])
def test_seeded(source):
    a, b = load_dataset(source, seed=1, limit_per_class=8), load_dataset(source, seed=1, limit_per_class=8)
    assert torch.equal(a.images, b.images) and torch.equal(a.masks, b.masks)
    assert all(np.array_equal(a.splits[s], b.splits[s]) for s in a.splits)
    c = load_dataset(source, seed=2, limit_per_class=8)
    assert not torch.equal(a.images, c.images)


@pytest.mark.parametrize("source,kind,base,rho", [
    ("decoy-digits", "decoy-digits", "digits", 1.0),
    ("decoy-digits?rho=0.9", "decoy-digits", "digits", 0.9),
    ("decoy-digits:../shared/data/mnist", "decoy-digits", "../shared/data/mnist", 1.0),
    ("texture-digits", "texture-digits", "digits", 0.99),
    ("texture-digits:/data/x?rho=0.5", "texture-digits", "/data/x", 0.5),
    ("biased-digits?rho=0.997", "biased-digits", "digits", 0.997),
])
def test_parse_shortcut_source(source, kind, base, rho):
    assert parse_shortcut_source(source) == (kind, base, rho)
    assert parse_biased_source(source) == (base, rho)


@pytest.mark.parametrize("source,says", [
    ("decoy-digits?rho=1.5", "rho must be between 0 and 1, got 1.5"),
    ("decoy-digits?rho=abc", "rho must be a number between 0 and 1, got 'abc'"),
    ("texture-digits?rho=-1", "rho must be between 0 and 1, got -1"),
    ("texture-digits?size=3", "unknown option 'size=3'"),
    ("decoy-digits:?rho=0.9", "expected decoy-digits:SOURCE"),
    ("decoy-digits:texture-digits", "expected decoy-digits:SOURCE"),
    ("texture-digitsX", "expected one of biased-digits, decoy-digits, texture-digits"),
])
def test_bad_source_is_a_data_error(source, says):
    with pytest.raises(DataError) as err:
        parse_shortcut_source(source) if source.endswith("X") else load_dataset(source)
    assert says in str(err.value) and str(err.value).startswith(source) and "\n" not in str(err.value)


def test_rho_argument_and_string_must_agree():
    assert load_dataset("decoy-digits", rho=0.8, limit_per_class=4).card.source.endswith("(rho=0.8, seed=0)")
    with pytest.raises(DataError, match=r"rho=0.8 in the source but rho=0.9 given"):
        load_dataset("texture-digits?rho=0.8", rho=0.9)
    with pytest.raises(DataError, match="rho must be between 0 and 1"):
        load_dataset("decoy-digits", rho=2.0)


def test_wrapping_another_digit_source(tmp_path):
    # Any digit source: here an exported plain digits folder.
    from core.data.export import export_image_folder

    export_image_folder(load_dataset("digits", limit_per_class=4), tmp_path / "d")
    ds = load_dataset(f"decoy-digits:{tmp_path / 'd'}?rho=0.5")
    assert ds.name.startswith("decoy-") and ds.name != "decoy-digits" and ds.image_shape == (1, 28, 28)
    assert "rho=0.5" in ds.card.source and len(ds.splits["test_aligned"]) == len(ds.splits["test"])
    assert load_dataset(f"texture-digits:{tmp_path / 'd'}").name.startswith("texture-")


def test_cards_say_what_the_shortcut_is(decoy, texture):
    notes = " | ".join(decoy.card.notes)
    assert "Ross et al." in notes and "4x4 px grey square" in notes and "corners" in notes
    assert "(255 - 25k)/255" in notes and "rho=1.0" in notes and "train agrees for 100.0%" in notes
    assert "test: bias-conflicting" in notes and "test_aligned" in notes and "False under the square" in notes
    notes = " | ".join(texture.card.notes)
    assert "grating" in notes and "orientation and period name the class" in notes and "not brightness" in notes
    assert "rho=0.99" in notes and "test: bias-conflicting" in notes and "test_aligned" in notes
