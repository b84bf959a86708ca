"""Datasets with object masks: an ImageFolder tree's masks/ mirror (folders, archives, split
archives), problems reported per file, the exporter's round trip, biased-digits' rho in the
source string, and the cache of decoded images."""
from __future__ import annotations

import os
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from support import shared_data_or_skip
from PIL import Image

from core.data import DataError, folders, load_dataset, parse_biased_source
from core.data.__main__ import main as cli
from core.data.biased import background_colours
from core.data.export import export_image_folder

# --- tiny trees with masks ----------------------------------------------------------------


def _save(arr: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def _pair(k: int, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """An image with one bright 3x3 block at a place unique to ``k``, and its mask (255 there)."""
    h, w = size
    r, c = 1 + (k * 5) % (h - 4), 1 + (k * 3) % (w - 4)
    image = np.full((h, w), 20, np.uint8)
    image[r : r + 3, c : c + 3] = 230
    mask = np.zeros((h, w), np.uint8)
    mask[r : r + 3, c : c + 3] = 255
    return image, mask


def _tree(
    root: Path, parts: tuple[str, ...] = ("",), classes=("cat", "dog"), n: int = 3, size=(16, 16),
    masks: bool = True, mask_ext: str = "png",
) -> dict[str, np.ndarray]:
    """Write ``root/[part/]<class>/<i>.png`` and ``root/masks/[part/]<class>/<i>.<mask_ext>``;
    returns relative image path -> mask (bool)."""
    written, k = {}, 0
    for part in parts:
        for cls in classes:
            for i in range(n):
                rel = Path(part, cls, f"{i:03d}.png")
                image, mask = _pair(k, size)
                _save(image, root / rel)
                if masks:
                    _save(mask, (root / "masks" / rel).with_suffix(f".{mask_ext}"))
                written[rel.as_posix()] = mask > 0
                k += 1
    return written


def _tar(src: Path, dest: Path, arcname: str = "") -> Path:
    with tarfile.open(dest, "w:gz") as tf:
        if arcname:
            tf.add(src, arcname=arcname)
        else:
            for child in sorted(src.iterdir()):
                tf.add(child, arcname=child.name)
    return dest


def _check_aligned(ds, written: dict[str, np.ndarray], order: list[str]) -> None:
    """Row i holds image order[i]; its mask is that image's mask and covers its bright block."""
    assert ds.masks is not None and ds.masks.dtype == torch.float32
    assert ds.masks.shape == (len(order), 1, *ds.images.shape[2:])
    assert set(torch.unique(ds.masks).tolist()) <= {0.0, 1.0}
    for row, rel in enumerate(order):
        want = written[rel]
        if want.shape == tuple(ds.images.shape[2:]):
            assert np.array_equal(ds.masks[row, 0].numpy() > 0, want), rel
        assert torch.equal(ds.masks[row, 0] > 0, ds.images[row, 0] > 0.5), rel


# --- masks in folders -----------------------------------------------------------------------


def test_masks_found_aligned_and_not_a_class(tmp_path):
    written = _tree(tmp_path)
    # Any image extension counts: one mask as .bmp instead of .png.
    png = tmp_path / "masks" / "dog" / "001.png"
    Image.open(png).save(png.with_suffix(".bmp"))
    png.unlink()
    ds = load_dataset(str(tmp_path))
    assert ds.classes == ["cat", "dog"] and len(ds.images) == 6
    order = sorted(written)
    _check_aligned(ds, written, order)
    # dog/001 is image k=4: its block starts at row 1 + 20 % 12 = 9, column 1 + 12 % 12 = 1.
    assert ds.masks[4, 0, 9, 1] == 1 and ds.masks[4, 0, 8, 1] == 0 and ds.masks[4, 0, 9:12, 1:4].sum() == 9
    assert ds.has_mask.dtype == bool and ds.has_mask.all() and ds.rows_with_mask().all()
    assert ds.card.masked == 6 and ds.card.mask_problems == []
    assert "masks for 6 of 6 images" in ds.card.notes
    assert ds.card.to_dict()["masked"] == 6 and ds.card.to_dict()["mask_problems"] == []


def test_no_masks_folder_changes_nothing(tmp_path):
    _tree(tmp_path, masks=False)
    ds = load_dataset(str(tmp_path))
    assert ds.masks is None and ds.has_mask is None and not ds.rows_with_mask().any()
    assert ds.card.masked == 0 and ds.card.mask_problems == []
    assert not any("mask" in n for n in ds.card.notes)


def test_missing_mask_is_reported_and_flagged(tmp_path):
    _tree(tmp_path)
    (tmp_path / "masks" / "cat" / "002.png").unlink()
    ds = load_dataset(str(tmp_path))
    assert ds.has_mask.tolist() == [True, True, False, True, True, True]
    assert float(ds.masks[2].sum()) == 0.0 and float(ds.masks[3].sum()) == 9.0
    assert ds.card.masked == 5
    assert len(ds.card.mask_problems) == 1 and "cat/002.png: no mask" in ds.card.mask_problems[0]
    assert "masks for 5 of 6 images; 1 without a mask (listed in mask_problems)" in ds.card.notes


def test_mis_sized_mask_is_reported_and_treated_as_missing(tmp_path):
    _tree(tmp_path)
    _save(np.full((20, 20), 255, np.uint8), tmp_path / "masks" / "dog" / "000.png")
    ds = load_dataset(str(tmp_path))
    assert ds.has_mask.tolist() == [True, True, True, False, True, True]
    assert float(ds.masks[3].sum()) == 0.0
    (problem,) = ds.card.mask_problems
    assert "masks/dog/000.png: mask is 20x20 but its image dog/000.png is 16x16; treated as missing" in problem
    assert "1 with a mis-sized or unreadable mask, treated as missing" in " ".join(ds.card.notes)


def test_unreadable_orphan_and_second_masks_are_reported(tmp_path):
    _tree(tmp_path)
    (tmp_path / "masks" / "cat" / "000.png").write_bytes(b"not a png")
    _save(np.zeros((16, 16), np.uint8), tmp_path / "masks" / "cat" / "999.png")  # no such image
    _save(np.zeros((16, 16), np.uint8), tmp_path / "masks" / "dog" / "001.bmp")  # dog/001.png has one already
    ds = load_dataset(str(tmp_path))
    assert ds.has_mask.tolist() == [False, True, True, True, True, True]
    problems = " | ".join(ds.card.mask_problems)
    assert "masks/cat/000.png: unreadable mask" in problems
    assert "masks/cat/999.png: matches no image" in problems
    assert "masks/dog/001.png: a second mask for dog/001; using masks/dog/001.bmp" in problems
    # The mask kept for dog/001 is the first by name (.bmp, all zero here).
    assert float(ds.masks[4].sum()) == 0.0 and ds.has_mask[4]


def test_colour_and_palette_masks_count_any_non_zero_value(tmp_path):
    _tree(tmp_path)
    rgb = np.zeros((16, 16, 3), np.uint8)
    rgb[0, 0] = (0, 0, 1)  # dark, but not zero
    _save(rgb, tmp_path / "masks" / "cat" / "000.png")
    # Palette indices count, not their colours: index 0 is painted white here, index 3 black.
    pal = Image.fromarray(np.eye(16, dtype=np.uint8) * 3, mode="P")
    pal.putpalette([255, 255, 255] + [0, 0, 0] * 255)
    pal.save(tmp_path / "masks" / "cat" / "001.png")
    ds = load_dataset(str(tmp_path))
    assert ds.masks[0, 0].nonzero().tolist() == [[0, 0]]
    assert torch.equal(ds.masks[1, 0], torch.eye(16))


def test_train_and_test_tree_with_masks_keeps_test_split(tmp_path):
    written = _tree(tmp_path, parts=("train", "test"), n=4)
    (tmp_path / "masks" / "test" / "dog" / "003.png").unlink()
    ds = load_dataset(str(tmp_path))
    assert ds.classes == ["cat", "dog"] and len(ds.images) == 16
    assert ds.splits["test"].tolist() == list(range(8, 16))
    order = sorted(written, key=lambda r: (r.startswith("test/"), r.split("/")[1], r))
    assert not ds.has_mask[15] and ds.has_mask[:15].all()
    written["test/dog/003.png"] = np.zeros((16, 16), bool)
    ds.images[15] = 0  # its block no longer has a mask to agree with
    _check_aligned(ds, written, order)
    assert "test/dog/003.png: no mask" in ds.card.mask_problems[0]


def test_masks_resized_with_non_square_images(tmp_path):
    written = _tree(tmp_path, size=(12, 20))
    ds = load_dataset(str(tmp_path))
    assert ds.image_shape == (1, 20, 20)
    for row, rel in enumerate(sorted(written)):
        original = written[rel].astype(np.uint8)
        nearest = np.asarray(Image.fromarray(original).resize((20, 20), Image.NEAREST))
        assert np.array_equal(ds.masks[row, 0].numpy(), nearest.astype(np.float32)), rel
        # Still over the object: the resized block is bright where its mask is.
        assert float(ds.images[row, 0][ds.masks[row, 0] > 0].min()) > 0.5
    assert "masks for 6 of 6 images (6 resized to 20x20 with their images, nearest neighbour)" in ds.card.notes


# --- masks in archives ----------------------------------------------------------------------


def test_masks_inside_an_archive_equal_the_folder(tmp_path):
    _tree(tmp_path / "pets")
    folder = load_dataset(str(tmp_path / "pets"))
    # A tar of the folder wraps everything in "pets/": masks are at pets/masks/...
    wrapped = load_dataset(str(_tar(tmp_path / "pets", tmp_path / "pets.tar.gz", "pets")))
    top = load_dataset(str(_tar(tmp_path / "pets", tmp_path / "flat.tar.gz")))
    for ds in (wrapped, top):
        assert ds.classes == ["cat", "dog"]
        assert torch.equal(ds.images, folder.images) and torch.equal(ds.masks, folder.masks)
        assert ds.has_mask.all() and ds.card.masked == 6


def _split_archives(tmp_path: Path, where: str) -> tuple[Path, dict[str, np.ndarray]]:
    """train.tar.gz / test.tar.gz holding train/... and test/...; masks inside each archive
    ("inside": masks/train/... at its top) or in a masks/ folder next to them ("beside")."""
    src = tmp_path / "src"
    written = _tree(src, parts=("train", "test"), n=4)
    data = tmp_path / where
    data.mkdir()
    for part in ("train", "test"):
        with tarfile.open(data / f"{part}.tar.gz", "w:gz") as tf:
            tf.add(src / part, arcname=part)
            if where == "inside":
                tf.add(src / "masks" / part, arcname=f"masks/{part}")
    if where == "beside":
        os.rename(src / "masks", data / "masks")
    return data, written


@pytest.mark.parametrize("where", ["inside", "beside"])
def test_masks_with_split_archives(tmp_path, where):
    data, written = _split_archives(tmp_path, where)
    ds = load_dataset(str(data))
    assert ds.classes == ["cat", "dog"] and ds.splits["test"].tolist() == list(range(8, 16))
    order = sorted(written, key=lambda r: (r.startswith("test/"), r.split("/")[1], r))
    _check_aligned(ds, written, order)
    assert ds.has_mask.all() and ds.card.masked == 16 and ds.card.mask_problems == []


def test_split_archive_masks_without_part_folder_inside(tmp_path):
    """Inside the train archive, masks/<class>/... (no train/) belongs to train/<class>/..."""
    src = tmp_path / "src"
    written = _tree(src, parts=("train", "test"), n=2)
    data = tmp_path / "data"
    data.mkdir()
    for part in ("train", "test"):
        with tarfile.open(data / f"{part}.tar.gz", "w:gz") as tf:
            tf.add(src / part, arcname=part)
            tf.add(src / "masks" / part, arcname="masks")
    ds = load_dataset(str(data))
    order = sorted(written, key=lambda r: (r.startswith("test/"), r.split("/")[1], r))
    _check_aligned(ds, written, order)
    assert ds.has_mask.all()


def test_limit_per_class_decodes_only_the_masks_it_needs(tmp_path):
    data, _ = _split_archives(tmp_path, "inside")
    ds = load_dataset(str(data), limit_per_class=1)
    assert len(ds.images) == 4 and ds.has_mask.all() and ds.card.mask_problems == []


# --- exporter -------------------------------------------------------------------------------


def test_export_round_trip_biased_digits(tmp_path):
    ds = load_dataset("biased-digits?rho=0.9", limit_per_class=12, seed=3)
    ds.has_mask[5] = False  # a row without a mask stays without one
    out = tmp_path / "export"
    summary = export_image_folder(ds, out)
    assert summary.left_out == {"test_aligned": len(ds.splits["test_aligned"])}
    assert (out / "train" / "7").is_dir() and (out / "masks" / "test").is_dir()
    back = load_dataset(str(out), seed=3)

    kept = np.concatenate([ds.splits[s] for s in ("train", "val", "pool", "test")])
    is_test = np.isin(kept, ds.splits["test"])
    labels = ds.labels.numpy()
    # A reload orders rows by part, class and file name (= zero-padded id).
    order = kept[np.lexsort((kept, labels[kept], is_test))]
    assert back.classes == ds.classes and len(back.images) == len(order)
    assert torch.equal(back.labels, ds.labels[order])
    assert (back.images - ds.images[order]).abs().max() <= 0.5 / 255 + 1e-6
    assert torch.equal(back.masks, ds.masks[order] * torch.from_numpy(ds.has_mask[order]).view(-1, 1, 1, 1).float())
    assert np.array_equal(back.has_mask, ds.has_mask[order])
    assert back.splits["test"].tolist() == list(range(int((~is_test).sum()), len(order)))
    width = len(str(len(ds.images) - 1))
    part = "test" if 5 in ds.splits["test"] else "train"
    rel = f"{part}/{ds.classes[labels[5]]}/{5:0{width}d}"
    assert back.card.mask_problems == [f"export:{rel}.png: no mask (expected masks/{rel} with an image extension)"]
    # The same colours come back: the bias survives the round trip.
    assert np.array_equal(background_colours(back), background_colours(ds)[order])


def test_export_cli_and_refusing_a_non_empty_folder(tmp_path, capsys):
    out = tmp_path / "out"
    assert cli(["export", "biased-digits?rho=0.9", str(out), "--limit-per-class", "3"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("wrote 20 train and 10 test images, 30 masks, to") and "test_aligned (10 rows)" in line
    assert cli(["export", "digits", str(out), "--limit-per-class", "3"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(out) in err and "not an empty folder" in err
    with pytest.raises(DataError, match="not an empty folder"):
        export_image_folder(load_dataset("digits", limit_per_class=2), out)
    assert not list(tmp_path.glob(".out.*"))  # nothing half-written left behind


# --- rho in the source string ---------------------------------------------------------------


@pytest.mark.parametrize("source,base,rho", [
    ("biased-digits", "digits", 0.99),
    ("biased-digits?rho=0.997", "digits", 0.997),
    ("biased-digits?rho=1", "digits", 1.0),
    ("biased-digits:../shared/data/mnist?rho=0.997", "../shared/data/mnist", 0.997),
    ("biased-digits:/data/x", "/data/x", 0.99),
])
def test_parse_biased_source(source, base, rho):
    assert parse_biased_source(source) == (base, rho)


@pytest.mark.parametrize("source,says", [
    ("biased-digits?rho=1.5", "rho must be between 0 and 1, got 1.5"),
    ("biased-digits?rho=-0.1", "rho must be between 0 and 1, got -0.1"),
    ("biased-digits?rho=nan", "rho must be between 0 and 1"),
    ("biased-digits?rho=abc", "rho must be a number between 0 and 1, got 'abc'"),
    ("biased-digits?rho=", "rho must be a number"),
    ("biased-digits?limit=3", "unknown option 'limit=3'"),
    ("biased-digits:?rho=0.9", "expected biased-digits:SOURCE"),
])
def test_bad_rho_in_source_is_a_data_error(source, says):
    with pytest.raises(DataError, match="rho|SOURCE|option") as err:
        load_dataset(source)
    assert says in str(err.value) and str(err.value).startswith(source)
    assert "\n" not in str(err.value)


def test_rho_from_source_string_sets_the_bias_and_is_recorded():
    ds = load_dataset("biased-digits?rho=0.8")
    assert ds.name == "biased-digits" and "rho=0.8" in ds.card.source
    train = ds.splits["train"]
    agree = float((background_colours(ds)[train] == ds.labels.numpy()[train]).mean())
    assert abs(agree - 0.8) < 0.02
    assert ds.has_mask is not None and ds.has_mask.all() and ds.card.masked == len(ds.images)
    same = load_dataset("biased-digits", rho=0.8)
    assert torch.equal(same.images, ds.images)
    assert load_dataset("biased-digits?rho=0.8", rho=0.8).card.source == ds.card.source
    with pytest.raises(DataError, match=r"rho=0.8 in the source but rho=0.9 given"):
        load_dataset("biased-digits?rho=0.8", rho=0.9)


# --- cache of decoded images ----------------------------------------------------------------


def test_cache_reuses_decoded_images_and_notices_changes(tmp_path, monkeypatch):
    _tree(tmp_path / "pets")
    (tmp_path / "pets" / "masks" / "dog" / "002.png").unlink()
    cache = tmp_path / "cache"
    monkeypatch.setenv(folders.CACHE_ENV, str(cache))
    monkeypatch.setattr(folders, "CACHE_MIN_IMAGES", 1)
    first = load_dataset(str(tmp_path / "pets"))
    assert len(list(cache.glob("*.npz"))) == 1

    calls = []
    real = folders.read_path
    monkeypatch.setattr(folders, "read_path", lambda *a, **k: calls.append(a) or real(*a, **k))
    again = load_dataset(str(tmp_path / "pets"))
    assert calls == []
    assert torch.equal(again.images, first.images) and torch.equal(again.masks, first.masks)
    assert np.array_equal(again.has_mask, first.has_mask) and again.card.to_dict() == first.card.to_dict()

    # A changed file (size or modification time) means decoding again, and replaces the entry.
    mask = tmp_path / "pets" / "masks" / "cat" / "000.png"
    _save(np.zeros((16, 16), np.uint8), mask)
    os.utime(mask, ns=(time.time_ns(), time.time_ns() + 10**9))
    changed = load_dataset(str(tmp_path / "pets"))
    assert len(calls) == 1 and float(changed.masks[0].sum()) == 0.0
    assert len(list(cache.glob("*.npz"))) == 1

    # A broken entry is ignored and replaced; "off" turns the cache off.
    (entry,) = cache.glob("*.npz")
    entry.write_bytes(b"garbage")
    assert torch.equal(load_dataset(str(tmp_path / "pets")).masks, changed.masks) and len(calls) == 2
    monkeypatch.setenv(folders.CACHE_ENV, "off")
    load_dataset(str(tmp_path / "pets"))
    load_dataset(str(tmp_path / "pets"))
    assert len(calls) == 4


def test_small_sources_are_not_cached(tmp_path, monkeypatch):
    _tree(tmp_path / "pets")
    monkeypatch.setenv(folders.CACHE_ENV, str(tmp_path / "cache"))
    load_dataset(str(tmp_path / "pets"))
    assert not (tmp_path / "cache").exists()


# --- real data ------------------------------------------------------------------------------


@pytest.mark.slow
def test_biased_mnist_rho_0997():
    mnist = shared_data_or_skip("mnist")
    start = time.perf_counter()
    ds = load_dataset(f"biased-digits:{mnist}?rho=0.997")
    seconds = time.perf_counter() - start
    assert ds.image_shape == (3, 28, 28) and ds.num_classes == 10
    assert sum(len(ds.splits[s]) for s in ("train", "val", "pool")) == 60000
    assert len(ds.splits["test"]) == 10000 and len(ds.splits["test_aligned"]) == 10000
    assert ds.has_mask.all() and ds.card.masked == 80000
    assert "rho=0.997" in ds.card.source
    train = ds.splits["train"]
    # Colours read back from a sample of the pixels (the whole set takes a while on two cores).
    sample = np.random.default_rng(0).choice(train, 5000, replace=False)
    sub = type(ds)(ds.name, ds.images[sample], ds.labels[sample], ds.classes, {}, ds.card, ds.masks[sample])
    agree = float((background_colours(sub) == ds.labels.numpy()[sample]).mean())
    assert abs(agree - 0.997) < 0.003
    assert "train agrees for 99.7%" in " ".join(ds.card.notes)
    print(f"loaded biased MNIST in {seconds:.1f} s")
