"""Progress while a dataset opens: every loader reports fractions that never go back and end at
1.0, with a line saying what it does ("decoding the images of train.tar.gz: 30 of 60"); the app
counts the images its evaluations run through the model, and the sidebar's Open shows its steps
in a status box. All on tiny files written here (the real sets only where marked, skipped
without them)."""
from __future__ import annotations

import gzip
import io
import pickle
import re
import struct
import tarfile
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from apptest_helpers import app_workspace  # noqa: F401  (fixture)
from core.data import load_dataset
from core.data.uploads import store_upload


class Recorder:
    """A progress callback that keeps every call."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, str]] = []

    def __call__(self, fraction: float, text: str) -> None:
        self.calls.append((fraction, text))

    def check(self, *patterns: str) -> None:
        """Fractions in [0, 1], never decreasing, the last 1.0; each pattern matches some line
        reported part of the way (0 < fraction < 1)."""
        fractions = [f for f, _ in self.calls]
        assert len(self.calls) >= 3, self.calls
        assert all(0.0 <= f <= 1.0 for f in fractions), fractions
        assert all(b >= a for a, b in zip(fractions, fractions[1:])), fractions
        assert fractions[-1] == 1.0, self.calls[-1]
        assert all(text.strip() for _, text in self.calls)
        between = [text for f, text in self.calls if 0.0 < f < 1.0]
        for pattern in patterns:
            assert any(re.search(pattern, t) for t in between), (pattern, between)


def _png(value: int, size: int = 16) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((size, size), value, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _tree(root: Path, n: int = 6, classes: tuple[str, ...] = ("a", "b")) -> Path:
    for c, cls in enumerate(classes):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            (root / cls / f"{i}.png").write_bytes(_png(20 * c + i))
    return root


def _tgz(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def _idx(arr: np.ndarray) -> bytes:
    return struct.pack(">BBBB", 0, 0, 8, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()


def _mnist_root(root: Path, gz: bool, n: int = 20) -> Path:
    """A torchvision MNIST root (<root>/MNIST/raw) with the four idx files, gzipped or not."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for part in ("train", "t10k"):
        files = {"images-idx3-ubyte": rng.integers(0, 256, (n, 28, 28), dtype=np.uint8),
                 "labels-idx1-ubyte": (np.arange(n) % 10).astype(np.uint8)}
        for suffix, arr in files.items():
            data = _idx(arr)
            (raw / f"{part}-{suffix}{'.gz' if gz else ''}").write_bytes(gzip.compress(data) if gz else data)
    return root


def _cifar_files(n: int = 10) -> dict[str, bytes]:
    rng = np.random.default_rng(1)
    out = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        out[name] = pickle.dumps({"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), "labels": list(range(n))},
                                 protocol=2)
    out["batches.meta"] = pickle.dumps({"label_names": [f"c{i}" for i in range(10)]}, protocol=2)
    return out


# --- core loaders ---------------------------------------------------------------------------


def test_image_tree_reports_decoding_then_splits(tmp_path):
    rec = Recorder()
    ds = load_dataset(str(_tree(tmp_path / "pets")), progress=rec)
    assert ds.card.total == 12
    rec.check(r"decoding the images of pets: \d+ of 12", r"building the train / val / test / pool splits")
    assert rec.calls[-1][1] == "opened pets: 12 images of 2 classes"


def test_split_archives_report_each_archive(tmp_path):
    folder = tmp_path / "split"
    folder.mkdir()
    for part in ("train", "test"):
        _tgz(folder / f"{part}.tar.gz", {f"{part}/{c}/{i}.png": _png(10 * i) for c in "ab" for i in range(4)})
    rec = Recorder()
    assert load_dataset(str(folder), progress=rec).card.total == 16
    rec.check(r"listing the members of train\.tar\.gz", r"decoding the images of train\.tar\.gz: \d+ of 8",
              r"decoding the images of test\.tar\.gz: \d+ of 8")


def test_cached_tree_reports_reading_the_cache(tmp_path, monkeypatch):
    from core.data import folders

    monkeypatch.setenv("STEERBOARD_DATA_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(folders, "CACHE_MIN_IMAGES", 1)
    tree = _tree(tmp_path / "pets")
    first = Recorder()
    load_dataset(str(tree), progress=first)
    first.check(r"keeping the 12 decoded images in the cache")
    second = Recorder()
    load_dataset(str(tree), progress=second)
    second.check(r"from the cache")
    assert not any("decoding" in t for _, t in second.calls)


def test_chunked_cache_writer_reads_back_like_np_savez(tmp_path):
    """The cache is written a chunk of rows at a time (so the bar moves); np.load must read the
    same arrays back, and the counter must reach the total."""
    import io

    from core.data import folders

    g = np.random.default_rng(0)
    arrays = {"images": g.integers(0, 256, (301, 3, 8, 8), dtype=np.uint8),
              "labels": g.integers(0, 10, 301), "is_test": g.random(301) < 0.2, "classes": np.array(["a", "b"])}
    rec = Recorder()
    buf = io.BytesIO()
    folders._savez(buf, arrays, rec, "keeping", chunk_bytes=1000)
    buf.seek(0)
    with np.load(buf) as back:
        assert set(back.files) == set(arrays)
        for name, a in arrays.items():
            assert back[name].dtype == a.dtype and np.array_equal(back[name], a), name
    fractions = [f for f, _ in rec.calls]
    assert len(fractions) > 5 and fractions == sorted(fractions) and fractions[-1] == 1.0
    rec.check(r"keeping: [\d.]+ [kKMB]+ of [\d.]+ [kKMB]+")


def test_quickdraw_reports_files(tmp_path):
    folder = tmp_path / "doodles"
    folder.mkdir()
    for name in ("cat", "sun", "car"):
        np.save(folder / f"{name}.npy", np.zeros((5, 784), np.uint8))
    rec = Recorder()
    load_dataset(str(folder), progress=rec)
    rec.check(r"reading the \.npy files of doodles: 2 of 3")


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_idx_root_reports_files(tmp_path, gz):
    rec = Recorder()
    ds = load_dataset(str(_mnist_root(tmp_path, gz)), progress=rec)
    assert ds.card.total == 40 and len(ds.ids("test")) == 20
    rec.check(r"reading the mnist files: 3 of 4", *([r"unpacking the \.gz files in .*: 2 of 4"] if gz else []))


def test_cifar_batches_report_files(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name, data in _cifar_files().items():
        (folder / name).write_bytes(data)
    rec = Recorder()
    assert load_dataset("cifar10", root=str(tmp_path), progress=rec).card.total == 60
    rec.check(r"reading the CIFAR-10 batches: 3 of 7")


def test_cifar_archive_reports_unpacking(tmp_path):
    _tgz(tmp_path / "cifar-10-python.tar.gz", {f"cifar-10-batches-py/{k}": v for k, v in _cifar_files().items()})
    rec = Recorder()
    load_dataset("cifar10", root=str(tmp_path), progress=rec)
    rec.check(r"unpacking cifar-10-python\.tar\.gz: 4 of 7", r"reading the CIFAR-10 batches: 7 of 7")


def test_shortcut_set_reports_its_base_then_the_backgrounds(tmp_path):
    rec = Recorder()
    ds = load_dataset(f"biased-digits:{_tree(tmp_path / 'pets', n=8)}", progress=rec)
    assert ds.name == "biased-pets"
    rec.check(r"decoding the images of pets", r"painting each image's background in its class colour \(16 images")


def test_digits_reports_its_end():
    rec = Recorder()
    load_dataset("digits", limit_per_class=3, progress=rec)
    assert rec.calls[0][0] == 0.0 and rec.calls[-1] == (1.0, "opened digits: 30 images of 10 classes")


def test_zip_upload_reports_unpacking(tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for c in "ab":
            for i in range(5):
                zf.writestr(f"pets/{c}/{i}.png", _png(i))
    rec = Recorder()
    store_upload([("pets.zip", buf.getvalue())], tmp_path, progress=rec)
    rec.check(r"unpacking pets\.zip: \d+ of 10")


def test_real_quickdraw_reports_seven_files(tmp_path):
    from support import shared_data_or_skip

    rec = Recorder()
    load_dataset(str(shared_data_or_skip("quickdraw")), limit_per_class=50, progress=rec)
    rec.check(r"reading the \.npy files of quickdraw: 7 of 7")


# --- app: images through the model, the dataset cache, the steps box -------------------------


def test_counting_images_counts_what_version_metrics_runs(tiny_data):
    from app.state import counting_images, metric_images
    from core.models import build_model
    from core.session.workbench import version_metrics

    model = build_model("seed-cnn", 1, 16, tiny_data.num_classes, seed=0).eval()  # as shared models are
    seen = []  # counted independently, at the first layer
    first = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    handle = first.register_forward_pre_hook(lambda m, inputs: seen.append(len(inputs[0])))
    rec = Recorder()
    total = metric_images(tiny_data)
    with counting_images(model, total, rec, "evaluating"):
        version_metrics(model, tiny_data)
    handle.remove()
    assert sum(seen) == total  # val, test and the shortcut meter's two passes (tiny data has masks)
    rec.check()
    assert rec.calls[-1][1] == f"evaluating: {total:,} of {total:,} images"
    layer = dict(model.named_modules())[model.feature_layer]
    assert not layer._forward_hooks  # removed: later forward passes report nothing
    calls = len(rec.calls)
    version_metrics(model, tiny_data)
    assert len(rec.calls) == calls


def test_counting_images_ignores_other_threads(tiny_data):
    from app.state import counting_images
    from core.engine import predict
    from core.models import build_model

    model = build_model("seed-cnn", 1, 16, tiny_data.num_classes, seed=0).eval()
    rec = Recorder()
    with counting_images(model, 10, rec, "x"):
        worker = threading.Thread(target=predict, args=(model, tiny_data.images[:8]))
        worker.start()
        worker.join()
    assert rec.calls == [(0.0, "x: 0 of 10 images")]  # the other thread's batch was not counted here


def test_metric_images_counts_the_shortcut_meter_rows():
    from app.state import metric_images
    from core.session.workbench import SHORTCUT_ROWS

    data = load_dataset("biased-digits")
    rows = min(SHORTCUT_ROWS, int(data.rows_with_mask()[data.ids("test_aligned")].sum()))
    assert metric_images(data) == len(data.ids("val")) + len(data.ids("test")) + 2 * rows


def test_dataset_cache_loads_once_and_keeps_the_latest(tmp_path):
    from app.state import DatasetCache

    cache = DatasetCache(size=2)
    trees = [str(_tree(tmp_path / name, n=3)) for name in ("p", "q", "r")]
    rec = Recorder()
    first = cache.get(trees[0], 0, rec)
    rec.check()
    again = Recorder()
    assert cache.get(trees[0], 0, again) is first and again.calls == []  # held: no reading, no progress
    cache.get(trees[1])
    cache.get(trees[2])  # the oldest goes
    assert cache.get(trees[0]) is not first


@pytest.mark.slow
def test_open_shows_its_steps_in_a_status_box(app_workspace, monkeypatch):
    """The real switch_workbench in a page that does not rerun afterwards: the box that the
    sidebar's Open shows while it waits is still there, complete, with its bar at 1.0."""
    import shutil

    from apptest_helpers import ROOT

    from streamlit.testing.v1 import AppTest

    folder = app_workspace / "data" / "progress-pets"
    if folder.exists():
        shutil.rmtree(folder)
    _tree(folder, n=6, classes=("a", "b", "c"))

    def page(root: str, folder: str) -> None:
        import sys

        sys.path.insert(0, root)
        import streamlit as st

        from app.state import boot, switch_workbench

        boot()
        st.session_state["opened"] = switch_workbench(folder, "seed-cnn")

    monkeypatch.setenv("STEERBOARD_WORKSPACE", str(app_workspace))
    import streamlit as st

    st.cache_resource.clear()
    at = AppTest.from_function(page, args=(str(ROOT), str(folder)), default_timeout=120).run()
    assert not at.exception, [e.message for e in at.exception]
    assert at.session_state["opened"] is True
    [status] = at.status
    assert re.fullmatch(r"Opened progress-pets in \d+\.\d s", status.label), status.label
    assert status.state == "complete"
    [bar] = at.progress
    assert bar.value == 100  # percent
    assert re.fullmatch(r"predicting: \d+ of \d+ images", bar.proto.text), bar.proto.text
    done = [c.value for c in at.caption if c.value.startswith("Done:")]
    assert done and re.search(r"reading the data \(\d+\.\d s\); finding the base model .*; evaluating version 0 on "
                              r"the validation and test splits \(\d+\.\d s\)$", done[-1]), done
