"""Dataset layer: every loader returns the one spec; bad input fails with a message naming the path."""
from __future__ import annotations

import gzip
import io
import json
import pickle
import struct
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from core.data import DataError, ImageDataset, list_builtin, load_dataset
from core.data.biased import background_colours
from core.data.folders import model_side
from core.data.splits import allocate, check_splits
from core.models import build_model, list_models

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason=f"shared real data not found at {SHARED}")


# --- tiny data in the real formats -------------------------------------------------------


def _digit_like(rng: np.random.Generator, size: tuple[int, int] = (12, 12)) -> np.ndarray:
    img = np.zeros(size, np.uint8)
    img[2:-2, 3:-3] = rng.integers(100, 256, (size[0] - 4, size[1] - 6))
    return img


def _png(arr: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


def _image_tree(root: Path, classes=("cat", "dog", "fox"), n: int = 4, size=(16, 16)) -> dict[str, np.ndarray]:
    """Write ``root/<class>/<i>.png`` grayscale images; returns relative path -> pixels."""
    rng = np.random.default_rng(0)
    written = {}
    for cls in classes:
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            arr = _digit_like(rng, size)
            (root / cls / f"{i:03d}.png").write_bytes(_png(arr))
            written[f"{cls}/{i:03d}.png"] = arr
    return written


def _tar(src: Path, dest: Path, arcname: str) -> Path:
    with tarfile.open(dest, "w:gz") as tf:
        tf.add(src, arcname=arcname)
    return dest


def _quickdraw(folder: Path, shape: str = "flat", n: int = 5, classes=("circle", "square")) -> dict[str, np.ndarray]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    rows = {}
    for cls in classes:
        flat = rng.integers(0, 256, (n, 784), dtype=np.uint8)
        arr = {"flat": flat, "row": flat.reshape(n, 1, 784), "square": flat.reshape(n, 28, 28)}[shape]
        np.save(folder / f"{cls}.npy", arr)
        rows[cls] = flat
    return rows


def _idx(path: Path, arr: np.ndarray) -> None:
    """Write an MNIST idx file (big-endian header: 0, 0, dtype 0x08 = ubyte, ndim; then dims)."""
    header = struct.pack(">BBBB", 0, 0, 8, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    path.write_bytes(header + arr.astype(np.uint8).tobytes())


def _mnist_raw(root: Path, subfolder: str = "MNIST", n_train: int = 30, n_test: int = 10, gz: bool = False):
    raw = root / subfolder / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(2)
    data = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = np.arange(n) % 10
        _idx(raw / f"{prefix}-images-idx3-ubyte", images)
        _idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
        data[prefix] = (images, labels)
    if gz:
        for f in list(raw.iterdir()):
            f.with_name(f.name + ".gz").write_bytes(gzip.compress(f.read_bytes()))
            f.unlink()
    return data


# --- built-ins and splits ----------------------------------------------------------------


def _check_spec(ds: ImageDataset) -> None:
    n = len(ds.images)
    assert ds.images.dtype == torch.float32 and ds.images.ndim == 4
    assert float(ds.images.min()) >= 0.0 and float(ds.images.max()) <= 1.0
    assert ds.labels.dtype == torch.int64 and ds.labels.shape == (n,)
    assert {"train", "val", "test", "pool"} <= set(ds.splits)
    check_splits(ds.splits, n)
    assert ds.card.total == n and list(ds.card.image_shape) == list(ds.image_shape)
    assert sum(sum(c.values()) for c in ds.card.splits.values()) == n
    if ds.masks is not None:
        assert ds.masks.shape == (n, 1, *ds.images.shape[2:])


def test_list_builtin():
    assert list_builtin() == [
        "digits", "biased-digits", "decoy-digits", "texture-digits", "mnist", "fashion-mnist", "cifar10",
    ]


def test_digits_builtin_is_upsampled_load_digits():
    from sklearn.datasets import load_digits

    ds = load_dataset("digits")
    _check_spec(ds)
    assert ds.images.shape == (1797, 1, 28, 28) and ds.classes == [str(d) for d in range(10)]
    ref = load_digits()
    small = torch.tensor(ref.data, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16
    expected = torch.nn.functional.interpolate(small, size=(28, 28), mode="bilinear", align_corners=False)
    torch.testing.assert_close(ds.images, expected.clamp(0, 1))
    assert np.array_equal(ds.labels.numpy(), ref.target)


def test_splits_disjoint_covering_stratified_and_seeded():
    a, b, c = load_dataset("digits", seed=3), load_dataset("digits", seed=3), load_dataset("digits", seed=4)
    for name in a.splits:
        assert np.array_equal(a.splits[name], b.splits[name])
        assert a.splits[name].dtype == np.int64
    assert not np.array_equal(a.splits["train"], c.splits["train"])
    labels = a.labels.numpy()
    for cls in range(10):
        n = int((labels == cls).sum())
        for name, frac in (("train", 0.6), ("val", 0.1), ("test", 0.15), ("pool", 0.15)):
            assert abs(int((labels[a.splits[name]] == cls).sum()) - frac * n) <= 1


def test_allocate_and_check_splits():
    assert sum(allocate(7, [0.6, 0.1, 0.15, 0.15])) == 7
    assert allocate(10, [0.6, 0.1, 0.15, 0.15]) == [6, 1, 2, 1]
    with pytest.raises(ValueError):
        check_splits({"train": np.array([0, 1]), "test": np.array([1, 2])}, 3)
    with pytest.raises(ValueError):
        check_splits({"train": np.array([0, 1])}, 3)


def test_limit_per_class_on_digits():
    ds = load_dataset("digits", limit_per_class=5)
    assert len(ds.images) == 50 and np.bincount(ds.labels.numpy()).tolist() == [5] * 10


# --- Quick Draw ----------------------------------------------------------------------------


@pytest.mark.parametrize("shape", ["flat", "row", "square"])
def test_quickdraw_all_three_shapes(tmp_path, shape):
    rows = _quickdraw(tmp_path / "qd", shape)
    ds = load_dataset(str(tmp_path / "qd"))
    _check_spec(ds)
    assert ds.classes == ["circle", "square"] and ds.images.shape == (10, 1, 28, 28)
    expected = np.concatenate([rows["circle"], rows["square"]]).reshape(-1, 1, 28, 28) / 255.0
    np.testing.assert_allclose(ds.images.numpy(), expected, atol=1e-6)
    assert ds.labels.tolist() == [0] * 5 + [1] * 5


def test_quickdraw_limit_takes_first_rows(tmp_path):
    rows = _quickdraw(tmp_path, n=8)
    ds = load_dataset(str(tmp_path), limit_per_class=3)
    assert ds.images.shape[0] == 6
    np.testing.assert_allclose(ds.images[3:].numpy().reshape(3, 784), rows["square"][:3] / 255.0, atol=1e-6)


@pytest.mark.parametrize(
    "bad", [np.zeros((4, 784), np.float32), np.zeros((4, 100), np.uint8), np.zeros((4, 2, 784), np.uint8)]
)
def test_quickdraw_wrong_shape_or_dtype(tmp_path, bad):
    _quickdraw(tmp_path)
    np.save(tmp_path / "square.npy", bad)
    with pytest.raises(DataError, match="uint8") as err:
        load_dataset(str(tmp_path))
    assert str(tmp_path / "square.npy") in str(err.value) and "(N, 784)" in str(err.value)


def test_quickdraw_single_class(tmp_path):
    _quickdraw(tmp_path, classes=("circle",))
    with pytest.raises(DataError, match="at least two") as err:
        load_dataset(str(tmp_path))
    assert str(tmp_path) in str(err.value)


# --- ImageFolder trees and archives -------------------------------------------------------


def test_image_folder_skips_corrupt_and_truncated(tmp_path):
    written = _image_tree(tmp_path)
    (tmp_path / "dog" / "bad.png").write_bytes(b"not an image at all")
    good = (tmp_path / "fox" / "000.png").read_bytes()
    (tmp_path / "fox" / "cut.png").write_bytes(good[: len(good) // 2])
    ds = load_dataset(str(tmp_path))
    _check_spec(ds)
    assert ds.classes == ["cat", "dog", "fox"] and ds.images.shape == (12, 1, 16, 16)
    assert len(ds.card.skipped) == 2
    assert any("dog/bad.png" in s for s in ds.card.skipped) and any("fox/cut.png" in s for s in ds.card.skipped)
    np.testing.assert_allclose(ds.images[4, 0].numpy(), written["dog/000.png"] / 255.0, atol=1e-6)


def test_image_folder_mixed_sizes_are_resized_and_noted(tmp_path):
    _image_tree(tmp_path)
    Image.fromarray(np.full((20, 16), 200, np.uint8)).save(tmp_path / "cat" / "big.png")
    ds = load_dataset(str(tmp_path))
    assert ds.image_shape == (1, 16, 16)
    assert "resized 1 image to 16x16 (from 16x20 x1; models take square images" in " ".join(ds.card.notes)


def test_image_folder_mixed_modes_become_rgb(tmp_path):
    _image_tree(tmp_path)
    Image.fromarray(np.full((16, 16, 3), (255, 0, 0), np.uint8)).save(tmp_path / "dog" / "red.jpg", quality=95)
    ds = load_dataset(str(tmp_path))
    assert ds.image_shape == (3, 16, 16)
    assert any("converted 12 grayscale images to RGB" in n for n in ds.card.notes)
    # A grey image stays grey after conversion: its three channels are equal.
    assert torch.equal(ds.images[0, 0], ds.images[0, 2])


@pytest.mark.parametrize("h,w,side", [
    (28, 28, 28), (32, 32, 32), (24, 48, 48), (27, 27, 28), (12, 12, 16), (1, 3, 16), (30, 17, 32), (64, 64, 64),
])
def test_model_side_is_square_multiple_of_4_at_least_16(h, w, side):
    assert model_side(h, w) == side


@pytest.mark.parametrize("size,side", [((24, 48), 48), ((27, 27), 28), ((10, 14), 16)])
def test_non_square_and_odd_images_fit_every_model(tmp_path, size, side):
    """(h, w) images become side x side, the card says so, and all three zoo models run on them."""
    _image_tree(tmp_path, classes=("a", "b"), n=3, size=size)
    ds = load_dataset(str(tmp_path))
    assert ds.image_shape == (1, side, side)
    h, w = size
    assert f"resized 6 images to {side}x{side} (from {w}x{h} x6;" in " ".join(ds.card.notes)
    for arch in list_models():
        model = build_model(arch, 1, side, ds.num_classes).eval()
        with torch.no_grad():
            assert model(ds.images[:2]).shape == (2, 2), arch


def test_mixed_sizes_note_lists_the_sizes(tmp_path):
    _image_tree(tmp_path, classes=("a", "b"), n=3, size=(28, 28))
    for i, (h, w) in enumerate([(20, 20), (20, 20), (30, 10), (5, 5), (7, 9)]):
        Image.fromarray(np.zeros((h, w), np.uint8)).save(tmp_path / "a" / f"x{i}.png")
    ds = load_dataset(str(tmp_path))
    assert ds.image_shape == (1, 28, 28)
    assert "resized 5 images to 28x28 (from 20x20 x2, 10x30 x1, 5x5 x1 and 1 other sizes;" in " ".join(ds.card.notes)


def test_tar_gz_equals_folder(tmp_path):
    _image_tree(tmp_path / "tree")
    archive = _tar(tmp_path / "tree", tmp_path / "pets.tar.gz", "pets")
    from_dir, from_tar = load_dataset(str(tmp_path / "tree")), load_dataset(str(archive))
    assert from_tar.name == "pets" and from_tar.classes == from_dir.classes
    assert torch.equal(from_dir.images, from_tar.images) and torch.equal(from_dir.labels, from_tar.labels)
    assert from_tar.card.skipped == []


def test_train_and_test_archives_keep_their_test_split(tmp_path):
    _image_tree(tmp_path / "src" / "train", n=10)
    _image_tree(tmp_path / "src" / "test", n=3)
    data = tmp_path / "data"
    data.mkdir()
    _tar(tmp_path / "src" / "train", data / "train.tar.gz", "train")
    _tar(tmp_path / "src" / "test", data / "test.tar.gz", "test")
    ds = load_dataset(str(data))
    _check_spec(ds)
    assert len(ds.images) == 39
    assert ds.splits["test"].tolist() == list(range(30, 39))
    assert {k: sum(v.values()) for k, v in ds.card.splits.items()} == {"train": 24, "val": 3, "test": 9, "pool": 3}
    # Same layout unpacked: a folder with train/ and test/ subfolders.
    tree = load_dataset(str(tmp_path / "src"))
    assert torch.equal(tree.images, ds.images) and np.array_equal(tree.splits["test"], ds.splits["test"])


# --- biased digits ------------------------------------------------------------------------


def test_biased_digits_colour_agrees_with_rho():
    ds = load_dataset("biased-digits", rho=0.9, seed=0)
    _check_spec(ds)
    assert ds.image_shape == (3, 28, 28) and ds.masks is not None
    colours, labels = background_colours(ds), ds.labels.numpy()

    def agree(split: str) -> float:
        idx = ds.splits[split]
        return float((colours[idx] == labels[idx]).mean())

    assert abs(agree("train") - 0.9) < 0.02
    assert abs(agree("val") - 0.9) < 0.05 and abs(agree("pool") - 0.9) < 0.05
    assert abs(agree("test") - 0.1) < 0.05
    assert agree("test_aligned") == 1.0
    # Aligned copies hold the same digits as the conflicting test set.
    assert torch.equal(ds.masks[ds.splits["test"]], ds.masks[ds.splits["test_aligned"]])
    assert set(torch.unique(ds.masks).tolist()) <= {0.0, 1.0}
    assert any("Bahng" in n for n in ds.card.notes)


def test_biased_digits_masks_are_strokes_and_seeded():
    plain = load_dataset("digits", seed=1)
    a, b = load_dataset("biased-digits", seed=1), load_dataset("biased-digits", seed=1)
    assert torch.equal(a.masks[: len(plain.images)], (plain.images > 0.5).float())
    assert torch.equal(a.images, b.images)
    # Stroke pixels are white (up to the blend with the background).
    assert float(a.images[a.masks.expand_as(a.images) > 0].min()) > 0.5
    c = load_dataset("biased-digits", seed=2)
    assert not torch.equal(a.images, c.images)


def test_biased_from_mnist_style_archives(tmp_path):
    rng = np.random.default_rng(3)
    for part, n in (("train", 6), ("test", 2)):
        for d in range(10):
            folder = tmp_path / "src" / part / str(d)
            folder.mkdir(parents=True)
            for i in range(n):
                (folder / f"{i}.png").write_bytes(_png(_digit_like(rng, (28, 28))))
    data = tmp_path / "mnistlike"
    data.mkdir()
    for part in ("train", "test"):
        _tar(tmp_path / "src" / part, data / f"{part}.tar.gz", part)
    ds = load_dataset(f"biased-digits:{data}", rho=0.99)
    _check_spec(ds)
    assert ds.image_shape == (3, 28, 28) and len(ds.splits["test"]) == 20 and len(ds.splits["test_aligned"]) == 20
    assert ds.classes == [str(d) for d in range(10)]


# --- torchvision formats ------------------------------------------------------------------


@pytest.mark.parametrize("name,files", [
    ("mnist", "MNIST/raw"), ("fashion-mnist", "FashionMNIST/raw"), ("cifar10", "cifar-10-batches-py"),
])
def test_torchvision_missing_files_names_folder(tmp_path, name, files):
    with pytest.raises(DataError) as err:
        load_dataset(name, root=str(tmp_path))
    msg = str(err.value)
    assert str(tmp_path / files) in msg and "allow_download=True" in msg
    assert ("train-images-idx3-ubyte" if name != "cifar10" else "data_batch_1") in msg


def test_torchvision_failed_download_is_a_data_error(tmp_path, monkeypatch):
    import torchvision.datasets as tvd

    def offline(self):
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz: no network")

    monkeypatch.setattr(tvd.MNIST, "download", offline)
    with pytest.raises(DataError, match="download failed") as err:
        load_dataset("mnist", root=str(tmp_path), allow_download=True)
    assert str(tmp_path / "MNIST" / "raw") in str(err.value)


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_idx_files_are_read(tmp_path, gz):
    data = _mnist_raw(tmp_path, gz=gz)
    ds = load_dataset("mnist", root=str(tmp_path))
    _check_spec(ds)
    assert ds.classes == [str(d) for d in range(10)] and len(ds.images) == 40
    assert ds.splits["test"].tolist() == list(range(30, 40))
    np.testing.assert_allclose(ds.images[30:, 0].numpy(), data["t10k"][0] / 255.0, atol=1e-6)
    assert ds.labels[:30].tolist() == data["train"][1].tolist()


def test_fashion_mnist_idx_files_and_root_path_detection(tmp_path):
    _mnist_raw(tmp_path, subfolder="FashionMNIST")
    ds = load_dataset("fashion-mnist", root=str(tmp_path))
    assert ds.classes[0] == "T-shirt/top" and len(ds.splits["test"]) == 10
    by_path = load_dataset(str(tmp_path))
    assert by_path.name == "fashion-mnist" and torch.equal(by_path.images, ds.images)


def test_cifar10_python_batches_are_read(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(4)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {"data": rng.integers(0, 256, (10, 3072), dtype=np.uint8), "labels": list(range(10))}
        (folder / name).write_bytes(pickle.dumps(batch))
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": names}))
    ds = load_dataset("cifar10", root=str(tmp_path), limit_per_class=3)
    _check_spec(ds)
    assert ds.image_shape == (3, 32, 32) and ds.classes == names
    assert len(ds.images) == 40 and len(ds.splits["test"]) == 10


@pytest.mark.parametrize("protocol", [2, pickle.DEFAULT_PROTOCOL, pickle.HIGHEST_PROTOCOL])
@pytest.mark.parametrize("key_type", [str, bytes])
def test_cifar10_batches_of_any_protocol_pass_the_restricted_unpickler(tmp_path, protocol, key_type):
    """Batches as Python 2 wrote them (str keys) or as Python 3 does (bytes keys), in the
    protocols a real batch may come in, load; their arrays and bytes come back intact."""
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(5)
    key = (lambda k: k.encode()) if key_type is bytes else (lambda k: k)
    first = None
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (10, 3072), dtype=np.uint8)
        first = data if first is None else first
        batch = {key("batch_label"): b"training batch", key("data"): data, key("labels"): list(range(10)),
                 key("filenames"): [b"a.png", b""] * 5}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=protocol))
    (folder / "batches.meta").write_bytes(pickle.dumps({key("label_names"): [c.encode() for c in "abcdefghij"]},
                                                       protocol=protocol))
    ds = load_dataset("cifar10", root=str(tmp_path))
    assert ds.classes == list("abcdefghij") and len(ds.images) == 60
    np.testing.assert_allclose(ds.images[:10].reshape(10, -1).numpy(), first / 255.0, atol=1e-6)


def test_cifar10_batch_in_python2_layout_loads(tmp_path):
    """The official batches were pickled by Python 2: numpy.core module names and the array
    bytes as a latin-1 string. Built here by hand, since no real batch is at hand."""
    data = np.arange(10 * 3072, dtype=np.uint8).reshape(10, 3072)

    class Py2Array:
        def __reduce__(self):
            state = (1, data.shape, np.dtype("u1"), False, data.tobytes().decode("latin1"))
            return np.ndarray.__reduce__(np.zeros(0))[0], (np.ndarray, (0,), "b"), state

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    raw = pickle.dumps({"data": Py2Array(), "labels": list(range(10))}, protocol=2)
    raw = raw.replace(b"numpy._core.multiarray\n_reconstruct", b"numpy.core.multiarray\n_reconstruct")
    assert b"numpy.core.multiarray\n_reconstruct" in raw
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / name).write_bytes(raw)
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": list("abcdefghij")}, protocol=2))
    ds = load_dataset("cifar10", root=str(tmp_path))
    np.testing.assert_allclose(ds.images[:10].reshape(10, -1).numpy(), data / 255.0, atol=1e-6)


# --- bad input ----------------------------------------------------------------------------


def _loose_images(p: Path) -> None:
    p.mkdir()
    (p / "a.png").write_bytes(_png(np.zeros((4, 4), np.uint8)))


def _one_class(p: Path) -> None:
    _image_tree(p, classes=("only",))


def _all_corrupt(p: Path) -> None:
    for cls in ("a", "b"):
        (p / cls).mkdir(parents=True)
        (p / cls / "x.png").write_bytes(b"garbage")


def _text_file(p: Path) -> Path:
    p.write_text("hello")
    return p


def _bad_archive(p: Path) -> Path:
    p = p.with_name("broken.tar.gz")
    p.write_bytes(b"\x1f\x8b\x08 this is not gzip")
    return p


@pytest.mark.parametrize("make,expect", [
    (lambda p: p, "no such file"),
    (lambda p: p.mkdir(), "no images"),
    (_loose_images, "subfolder"),
    (_one_class, "single class"),
    (_all_corrupt, "no readable images"),
    (_text_file, "expected a folder"),
    (_bad_archive, "not a readable tar archive"),
])
def test_bad_input_raises_data_error_naming_the_path(tmp_path, make, expect):
    target = tmp_path / "input"
    made = make(target)
    path = made if isinstance(made, Path) else target
    with pytest.raises(DataError, match=expect) as err:
        load_dataset(str(path))
    assert str(path) in str(err.value)


def test_bad_arguments():
    with pytest.raises(DataError, match="rho"):
        load_dataset("biased-digits", rho=1.5)
    with pytest.raises(DataError, match="limit_per_class"):
        load_dataset("digits", limit_per_class=0)
    with pytest.raises(DataError, match="not a built-in"):
        load_dataset("mnsit")


# --- command line -------------------------------------------------------------------------


def _describe(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "core.data", "describe", *args], cwd=ROOT, capture_output=True, text=True, timeout=300,
    )


@pytest.mark.slow
def test_describe_json(tmp_path):
    _quickdraw(tmp_path, n=6)
    out = _describe(str(tmp_path), "--json", "--seed", "1")
    assert out.returncode == 0, out.stderr
    card = json.loads(out.stdout)
    assert {"name", "classes", "image_shape", "total", "splits"} <= set(card)
    assert card["classes"] == ["circle", "square"] and card["image_shape"] == [1, 28, 28] and card["total"] == 12
    assert set(card["splits"]) == {"train", "val", "test", "pool"}
    assert sum(card["splits"]["train"].values()) + sum(card["splits"]["test"].values()) <= 12


@pytest.mark.slow
def test_describe_text_and_error(tmp_path):
    out = _describe(str(tmp_path / "missing"))
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and str(tmp_path / "missing") in out.stderr
    text = _describe("digits", "--limit-per-class", "10")
    assert text.returncode == 0 and "train" in text.stdout and "license" in text.stdout


# --- shared real data (skipped where ../shared/data is absent) ----------------------------


@pytest.mark.slow
@needs_shared
def test_shared_data_quickdraw_describe():
    out = _describe(str(SHARED / "quickdraw"), "--json")
    assert out.returncode == 0, out.stderr
    card = json.loads(out.stdout)
    assert len(card["classes"]) == 7 and card["total"] == 35000
    per_class = {c: sum(card["splits"][s][c] for s in card["splits"]) for c in card["classes"]}
    assert set(per_class.values()) == {5000}


@needs_shared
@pytest.mark.slow
@pytest.mark.parametrize("name,train,test,shape", [
    ("mnist", 60000, 10000, (1, 28, 28)), ("cifar10", 50000, 10000, (3, 32, 32)),
])
@pytest.mark.slow
def test_shared_data_archives(name, train, test, shape):
    ds = load_dataset(str(SHARED / name))
    assert ds.image_shape == shape and ds.num_classes == 10
    assert len(ds.splits["test"]) == test
    assert sum(len(ds.splits[s]) for s in ("train", "val", "pool")) == train
    assert ds.card.skipped == []
