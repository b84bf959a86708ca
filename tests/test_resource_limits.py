"""Limits on what user data may cost (issue 30, Resources): archives unpack to at most a cap
summed over every layer, hold at most a number of members, none bigger than a per-member cap
(read with bounded memory), and large images are scaled down to a side cap that also bounds
the models. Each refusal is one line naming the cap and its variable, and leaves nothing on
disk. The caps are set low here so that the bombs stay tiny."""
from __future__ import annotations

import gzip
import io
import tarfile
import tracemalloc
import zipfile

import numpy as np
import pytest
from PIL import Image
from support import tgz_of

from core.data import load_dataset
from core.data import folders
from core.data.folders import model_side
from core.data.limits import DEFAULT_MAX_IMAGE_SIDE, DEFAULT_MAX_MEMBERS, DEFAULT_MAX_UNPACKED_BYTES, max_image_side
from core.data.spec import DataError
from core.data.uploads import UPLOADS_DIR, store_upload
from core.models import build_model

MB = 2**20


def _png(value: int, side: int = 12) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((side, side), value, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _tree(n: int = 3) -> dict[str, bytes]:
    return {f"{cls}/{i}.png": _png(40 * c + i) for c, cls in enumerate(["cat", "dog"]) for i in range(n)}


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


@pytest.fixture
def caps(monkeypatch, tmp_path):
    """Caps low enough for tiny bombs, and a decoded-images cache that would keep any dataset."""
    monkeypatch.setenv("STEERBOARD_MAX_UNPACKED_BYTES", "1MiB")
    monkeypatch.setenv("STEERBOARD_DATA_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(folders, "CACHE_MIN_IMAGES", 0)
    return monkeypatch


def _nothing_left(tmp_path) -> None:
    uploads = tmp_path / "data" / UPLOADS_DIR
    assert not uploads.exists() or not any(uploads.iterdir()), sorted(uploads.rglob("*"))
    cache = tmp_path / "cache"
    assert not cache.exists() or not any(cache.iterdir()), sorted(cache.rglob("*"))


def test_defaults_are_the_documented_caps(monkeypatch):
    for name in ("STEERBOARD_MAX_UNPACKED_BYTES", "STEERBOARD_MAX_MEMBERS", "STEERBOARD_MAX_IMAGE_SIDE"):
        monkeypatch.delenv(name, raising=False)
    assert DEFAULT_MAX_UNPACKED_BYTES <= 2**30
    assert DEFAULT_MAX_MEMBERS == 200_000 and DEFAULT_MAX_IMAGE_SIDE == 256
    assert max_image_side() == 256 and model_side(768, 768) == 256
    monkeypatch.setenv("STEERBOARD_MAX_IMAGE_SIDE", "1000")  # settable higher
    assert model_side(768, 768) == 768
    monkeypatch.setenv("STEERBOARD_MAX_UNPACKED_BYTES", "lots")
    with pytest.raises(DataError, match="STEERBOARD_MAX_UNPACKED_BYTES='lots': expected a positive size"):
        store_upload([("a.zip", _zip(_tree()))], "/nonexistent-never-written")


def test_zip_of_zeros_over_the_cap_is_refused_and_leaves_nothing(caps, tmp_path):
    bomb = _zip({**_tree(), "cat/zeros.png": b"\0" * (3 * MB)})
    assert len(bomb) < 30_000
    with pytest.raises(DataError) as err:
        store_upload([("big.zip", bomb)], tmp_path / "data")
    assert str(err.value) == ("big.zip unpacks to more than 1.0 MiB (the cap); unpack fewer images, "
                              "or set STEERBOARD_MAX_UNPACKED_BYTES higher")
    _nothing_left(tmp_path)
    caps.setenv("STEERBOARD_MAX_UNPACKED_BYTES", "4MiB")  # settable higher: then it is stored
    assert store_upload([("big.zip", bomb)], tmp_path / "data").is_dir()


def test_gz_inside_a_zip_counts_towards_the_cap(caps, tmp_path):
    """A zip of MNIST's layout whose .gz unpacks to 3 MB is refused when stored, counted while
    decompressing; before, the .gz was unpacked to disk when the upload was opened."""
    inner = gzip.compress(b"\0" * (3 * MB))
    bomb = _zip({f"MNIST/raw/{f}.gz": inner for f in ("train-images-idx3-ubyte", "t10k-images-idx3-ubyte")})
    with pytest.raises(DataError, match=r"^mnist\.zip unpacks to more than 1\.0 MiB \(the cap\); unpack fewer "
                                        r"images, or set STEERBOARD_MAX_UNPACKED_BYTES higher$"):
        store_upload([("mnist.zip", bomb)], tmp_path / "data")
    _nothing_left(tmp_path)


def test_typed_torchvision_root_with_a_gz_bomb_writes_at_most_the_cap(caps, tmp_path):
    raw = tmp_path / "root" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    (raw / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(b"\0" * (3 * MB)))
    with pytest.raises(DataError, match=r"the \.gz files in .*raw unpacks to more than 1\.0 MiB \(the cap\)"):
        load_dataset(str(tmp_path / "root"))
    assert sorted(f.name for f in raw.iterdir()) == ["train-images-idx3-ubyte.gz"]  # no partial file left


def test_tar_gz_over_the_cap_is_refused_while_listing(caps, tmp_path):
    members = {**_tree(), **{f"dog/pad{i}.png": b"\0" * (MB // 2) for i in range(6)}}  # 3 MB, each member small
    data = tgz_of(members)
    with pytest.raises(DataError, match=r"^big\.tar\.gz unpacks to more than 1\.0 MiB \(the cap\)"):
        store_upload([("big.tar.gz", data)], tmp_path / "data")
    _nothing_left(tmp_path)
    typed = tmp_path / "big.tar.gz"
    typed.write_bytes(data)
    with pytest.raises(DataError, match=r"^big\.tar\.gz unpacks to more than 1\.0 MiB \(the cap\)"):
        load_dataset(str(typed))
    _nothing_left(tmp_path)


def test_tar_gz_member_over_the_member_cap_is_refused_without_reading_it(caps, tmp_path):
    caps.setenv("STEERBOARD_MAX_UNPACKED_BYTES", "64MiB")
    caps.setenv("STEERBOARD_MAX_MEMBER_BYTES", "1MiB")
    typed = tmp_path / "one.tar.gz"
    typed.write_bytes(tgz_of({**_tree(), "cat/huge.png": b"\0" * (8 * MB)}))
    tracemalloc.start()
    try:
        with pytest.raises(DataError) as err:
            load_dataset(str(typed))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert str(err.value) == ("one.tar.gz: 'cat/huge.png' is 8.0 MiB, more than 1.0 MiB (the cap on one file, "
                              "which is read whole); remove it, or set STEERBOARD_MAX_MEMBER_BYTES higher")
    assert peak < 2 * MB, f"peak {peak / MB:.1f} MB while refusing an 8 MB member"
    with pytest.raises(DataError, match="'cat/huge.png' is 8.0 MiB"):
        store_upload([("one.tar.gz", typed.read_bytes())], tmp_path / "data")
    _nothing_left(tmp_path)


def test_zip_member_over_the_member_cap_is_refused(caps, tmp_path):
    caps.setenv("STEERBOARD_MAX_UNPACKED_BYTES", "64MiB")
    caps.setenv("STEERBOARD_MAX_MEMBER_BYTES", "1MiB")
    with pytest.raises(DataError, match=r"^one\.zip: 'cat/huge\.png' is 3\.0 MiB, more than 1\.0 MiB"):
        store_upload([("one.zip", _zip({**_tree(), "cat/huge.png": b"\0" * (3 * MB)}))], tmp_path / "data")
    _nothing_left(tmp_path)


def test_image_file_over_the_member_cap_in_a_folder_is_refused(caps, tmp_path):
    caps.setenv("STEERBOARD_MAX_MEMBER_BYTES", "1MiB")
    for name, data in {**_tree(), "cat/huge.png": b"\0" * (2 * MB)}.items():
        (tmp_path / "pets" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "pets" / name).write_bytes(data)
    with pytest.raises(DataError, match=r"pets: 'cat/huge\.png' is 2\.0 MiB, more than 1\.0 MiB"):
        load_dataset(str(tmp_path / "pets"))
    _nothing_left(tmp_path)


@pytest.mark.parametrize("kind", ["zip", "tar.gz"])
def test_too_many_members_are_refused(caps, tmp_path, kind):
    caps.setenv("STEERBOARD_MAX_MEMBERS", "20")
    members = _tree(15)  # 30 files
    data = _zip(members) if kind == "zip" else tgz_of(members)
    with pytest.raises(DataError, match=rf"^many\.{kind.replace('.', '[.]')} holds (30|21) members or more, more "
                                        r"than 20 \(the cap\); pack fewer files, or set STEERBOARD_MAX_MEMBERS higher$"):
        store_upload([(f"many.{kind}", data)], tmp_path / "data")
    _nothing_left(tmp_path)


def test_pixel_bomb_is_skipped_before_its_pixels_are_decoded(caps, tmp_path):
    caps.setenv("STEERBOARD_MAX_MEMBER_BYTES", "1MiB")
    for name, data in _tree().items():
        (tmp_path / "pets" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "pets" / name).write_bytes(data)
    Image.new("L", (2000, 2000)).save(tmp_path / "pets" / "cat" / "bomb.png")  # a few kB, 4 MB of pixels
    assert (tmp_path / "pets" / "cat" / "bomb.png").stat().st_size < 50_000
    ds = load_dataset(str(tmp_path / "pets"))
    assert ds.card.total == 6
    assert any("bomb.png" in s and "2000x2000 pixels would take 3.8 MiB decoded" in s for s in ds.card.skipped)


def _big_images(folder, side: int = 768, n: int = 8, masks: bool = False):
    rng = np.random.default_rng(0)
    for c, cls in enumerate(("cat", "dog")):
        (folder / cls).mkdir(parents=True)
        if masks:
            (folder / "masks" / cls).mkdir(parents=True)
        for i in range(n):
            img = np.full((side, side, 3), 60 * c + i, np.uint8)
            img[: side // 2, : side // 2] = rng.integers(0, 255, 3, dtype=np.uint8)
            Image.fromarray(img).save(folder / cls / f"{i}.png")
            if masks:
                m = np.zeros((side, side), np.uint8)
                m[: side // 2, : side // 2] = 255
                Image.fromarray(m).save(folder / "masks" / cls / f"{i}.png")
    return folder


def test_large_images_are_scaled_to_the_side_cap_and_the_card_says_so(caps, tmp_path):
    """Sixteen 768 px PNGs (35 KB) gave a 1.2 GB checkpoint before: every model is now built
    for at most the capped side."""
    ds = load_dataset(str(_big_images(tmp_path / "big")))
    assert ds.image_shape == (3, 256, 256)
    note = next(n for n in ds.card.notes if n.startswith("resized"))
    assert note.startswith("resized 16 images to 256x256 (from 768x768 x16; 16 larger than the 256 px cap on the "
                           "side were scaled down, so models stay small; set STEERBOARD_MAX_IMAGE_SIDE to change")
    # The top-left quarter keeps its colour after scaling down: the pixels are the image's, shrunk.
    assert float(ds.images[0, :, 10, 10].sub(ds.images[0, :, 200, 200]).abs().sum()) > 0
    params = sum(p.numel() for p in build_model("seed-cnn", 3, ds.image_shape[1], 2).parameters())
    assert params < 40_000_000, params  # 302 million (1.2 GB) when built for the 768 px side
    with pytest.raises(ValueError, match="larger than the 256 px cap"):
        build_model("seed-cnn", 3, 768, 2)


def test_side_cap_is_configurable_and_masks_follow_their_images(caps, tmp_path):
    caps.setenv("STEERBOARD_MAX_IMAGE_SIDE", "64")
    ds = load_dataset(str(_big_images(tmp_path / "big", side=320, n=2, masks=True)))
    assert ds.image_shape == (3, 64, 64)
    assert ds.card.masked == 4 and not ds.card.mask_problems
    mask = ds.masks[0, 0]
    assert float(mask[:32, :32].mean()) == 1.0 and float(mask[32:, 32:].sum()) == 0.0


@pytest.mark.parametrize("kind", ["folder", "tar.gz"])
def test_decoded_images_over_the_cap_are_refused_while_decoding(caps, tmp_path, kind):
    """Decoding stops once the images (after scaling down) pass STEERBOARD_MAX_DECODED_BYTES:
    twelve 300x300 RGB images are 3.1 MiB decoded, refused at 1 MiB."""
    caps.setenv("STEERBOARD_MAX_DECODED_BYTES", "1MiB")
    caps.setenv("STEERBOARD_MAX_UNPACKED_BYTES", "64MiB")
    folder = _big_images(tmp_path / "pets", side=300, n=6)
    source = folder
    if kind == "tar.gz":
        source = tmp_path / "pets.tar.gz"
        with tarfile.open(source, "w:gz") as tf:
            tf.add(folder, arcname="pets")
    with pytest.raises(DataError, match=r"pets(\.tar\.gz)?: the images take more than 1\.0 MiB once decoded \(the "
                                        r"cap\); open fewer \(a limit per class\) or smaller images, or set "
                                        r"STEERBOARD_MAX_DECODED_BYTES higher$"):
        load_dataset(str(source))
    _nothing_left(tmp_path)
    caps.setenv("STEERBOARD_MAX_DECODED_BYTES", "8MiB")
    assert load_dataset(str(source)).card.total == 12
