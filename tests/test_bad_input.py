"""Bad input, one table: each case does one bad thing inside ``tmp_path`` and expects a clear
one-line message (or, for input that is fixed up, a note saying what was done), with the
current work untouched and nothing half-written left behind.

To add a case, append a :class:`Case` to ``CASES`` in the section it belongs to (``CASES +=
[...]`` in a new, titled section above "the test"). ``run`` builds its own tiny input in
``tmp_path`` (also the current directory while it runs) and does the bad thing; ``after``
checks what must still hold afterwards and gets ``run``'s return value (None when it raised).
Every message, and the text of a case that succeeds (see :func:`as_text`), must be one line.
"""
from __future__ import annotations

import gzip
import io
import os
import pickle
import re
import struct
import tarfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from support import tgz_of

from core.data import DataError, ImageDataset, load_dataset
from core.models import CheckpointError, build_model
from core.session.store import WorkspaceError
from core.session.workbench import WorkbenchError
from core.session.paths import PathNotAllowed, check_user_path, data_roots
from core.session.runs import JobOptions


@dataclass(frozen=True)
class Case:
    id: str
    run: Callable[[Path], object]  # does the bad thing inside tmp_path; may return a value
    error: type[BaseException] | None  # expected exception type, or None when it must succeed
    says: str  # regex the exception message (or, for error=None, the returned text) must match
    after: Callable[[Path, object], None] | None = None  # extra check: the current work is untouched, etc.


# --- helpers --------------------------------------------------------------------------------


def as_text(value: object) -> str:
    """What a successful case says: a dataset's card notes and skipped files, else str()."""
    if isinstance(value, ImageDataset):
        return "; ".join(value.card.notes + value.card.skipped)
    return str(value)


def png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def image_tree(root: Path, classes: tuple[str, ...] = ("a", "b"), n: int = 3, hw: tuple[int, int] = (16, 16)) -> Path:
    """``root/<class>/<i>.png``: ``n`` grey images of height x width ``hw`` per class."""
    rng = np.random.default_rng(0)
    for cls in classes:
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            (root / cls / f"{i}.png").write_bytes(png(rng.integers(0, 256, hw, dtype=np.uint8)))
    return root


def tar_with(path: Path, members: list[tuple[tarfile.TarInfo, bytes]], mode: str = "w:gz") -> Path:
    """A tar archive holding exactly ``members`` (TarInfo, content), names as given."""
    with tarfile.open(path, mode) as tf:
        for info, data in members:
            info.size = len(data) if info.isfile() else 0
            tf.addfile(info, io.BytesIO(data) if info.isfile() else None)
    return path


def file_member(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), data


def link_member(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info, b""


def images_archive_with(tmp: Path, bad: tuple[tarfile.TarInfo, bytes]) -> Path:
    """pets.tar.gz of two good class folders plus one ``bad`` member."""
    good = [file_member(f"pets/{c}/{i}.png", png(np.full((16, 16), 40 * i, np.uint8))) for c in "ab" for i in range(3)]
    return tar_with(tmp / "pets.tar.gz", [*good, bad])


def cifar_batches(folder: Path, n: int = 10) -> None:
    """The seven files of cifar-10-batches-py, each a small valid batch."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), "labels": list(range(n))}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"c{i}" for i in range(10)]}, protocol=2))


class Payload:
    """Pickles as a call of ``func(*args)``: what a malicious batch file holds."""

    def __init__(self, func: Callable, *args: object) -> None:
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def idx(arr: np.ndarray) -> bytes:
    """An MNIST idx file (big-endian header: 0, 0, 0x08 = ubyte, ndim; then the dims)."""
    return struct.pack(">BBBB", 0, 0, 8, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()


def mnist_gz(raw: Path, n: int = 30) -> None:
    """The four MNIST files, gzipped, in ``raw`` (torchvision's <root>/MNIST/raw)."""
    raw.mkdir(parents=True)
    rng = np.random.default_rng(2)
    for prefix in ("train", "t10k"):
        files = {"images-idx3-ubyte": rng.integers(0, 256, (n, 28, 28), dtype=np.uint8),
                 "labels-idx1-ubyte": (np.arange(n) % 10).astype(np.uint8)}
        for suffix, arr in files.items():
            (raw / f"{prefix}-{suffix}.gz").write_bytes(gzip.compress(idx(arr)))


def cut_in_half(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def no_partial_files(folder: Path) -> None:
    """Nothing left over from an unpack that failed (temporary names end in .partial)."""
    left = [p.name for p in folder.rglob("*") if ".partial" in p.name]
    assert not left, f"half-written files left in {folder}: {left}"


def forward_pass(ds: ImageDataset, arch: str = "seed-cnn") -> None:
    c, h, w = ds.image_shape
    assert h == w, ds.image_shape
    model = build_model(arch, c, h, ds.num_classes).eval()
    with torch.no_grad():
        assert model(ds.images[:2]).shape == (2, ds.num_classes)


def roots_of(tmp: Path) -> list[Path]:
    """The roots a server with workspace ``tmp/ws`` and no STEERBOARD_DATA_ROOTS allows."""
    (tmp / "ws" / "data").mkdir(parents=True, exist_ok=True)
    return data_roots(tmp / "ws", extra="")


# --- data: images, archives and files a user points the app at ------------------------------


def _non_square(tmp: Path) -> ImageDataset:
    return load_dataset(str(image_tree(tmp / "wide", hw=(24, 48))))


def _non_square_after(tmp: Path, ds: object) -> None:
    assert isinstance(ds, ImageDataset) and ds.image_shape == (1, 48, 48)
    for arch in ("seed-cnn", "vgg6"):
        forward_pass(ds, arch)


def _odd_size(tmp: Path) -> ImageDataset:
    return load_dataset(str(image_tree(tmp / "odd", hw=(27, 27))))


def _odd_size_after(tmp: Path, ds: object) -> None:
    assert isinstance(ds, ImageDataset) and ds.image_shape == (1, 28, 28)
    forward_pass(ds)


def _corrupt_among_good(tmp: Path) -> ImageDataset:
    folder = image_tree(tmp / "pets")
    (folder / "b" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return load_dataset(str(folder))


def _corrupt_after(tmp: Path, ds: object) -> None:
    assert isinstance(ds, ImageDataset) and len(ds.images) == 6
    assert len(ds.card.skipped) == 1 and "b/broken.png" in ds.card.skipped[0]


def _empty_folder(tmp: Path) -> object:
    (tmp / "empty").mkdir()
    return load_dataset(str(tmp / "empty"))


def _dotdot_member(tmp: Path) -> object:
    return load_dataset(str(images_archive_with(tmp, file_member("../x/evil.png", png(np.zeros((16, 16), np.uint8))))))


def _nothing_outside(tmp: Path, _: object) -> None:
    assert not (tmp.parent / "x").exists() and not (tmp / "x").exists()


def _absolute_member(tmp: Path) -> object:
    bad = file_member(f"{tmp}/abs/evil.png", png(np.zeros((16, 16), np.uint8)))
    return load_dataset(str(images_archive_with(tmp, bad)))


def _symlink_member(tmp: Path) -> object:
    return load_dataset(str(images_archive_with(tmp, link_member("pets/a/passwd.png", "/etc/passwd"))))


def _hardlink_member(tmp: Path) -> object:
    return load_dataset(str(images_archive_with(tmp, link_member("pets/a/copy.png", "pets/a/0.png", tarfile.LNKTYPE))))


def _cifar_archive_dotdot(tmp: Path) -> object:
    root = tmp / "root"
    cifar_batches(tmp / "src")
    members = [file_member(f"cifar-10-batches-py/{f.name}", f.read_bytes()) for f in sorted((tmp / "src").iterdir())]
    root.mkdir()
    tar_with(root / "cifar-10-python.tar.gz", [*members, file_member("../escaped", b"x")])
    return load_dataset("cifar10", root=str(root))


def _cifar_archive_after(tmp: Path, _: object) -> None:
    assert not (tmp / "escaped").exists()
    assert not (tmp / "root" / "cifar-10-batches-py").exists()  # refused before anything was unpacked
    no_partial_files(tmp / "root")


def _cifar_payload(call: Callable, *args: object) -> Callable[[Path], object]:
    def run(tmp: Path) -> object:
        folder = tmp / "cifar-10-batches-py"
        cifar_batches(folder)
        evil = {"data": Payload(call, *args), "labels": [0]}
        (folder / "data_batch_2").write_bytes(pickle.dumps(evil, protocol=2))
        return load_dataset("cifar10", root=str(tmp))

    return run


def _not_pwned(tmp: Path, _: object) -> None:
    assert not (tmp / "pwned").exists(), "the pickle payload ran"


def _truncated_cifar(tmp: Path) -> object:
    root = tmp / "root"
    cifar_batches(tmp / "src", n=20)  # random pixels: ~60 kB per batch, so half the archive is mid-file
    root.mkdir()
    with tarfile.open(root / "cifar-10-python.tar.gz", "w:gz") as tf:
        tf.add(tmp / "src", arcname="cifar-10-batches-py")
    cut_in_half(root / "cifar-10-python.tar.gz")
    return load_dataset("cifar10", root=str(root))


def _truncated_cifar_after(tmp: Path, _: object) -> None:
    folder = tmp / "root" / "cifar-10-batches-py"
    assert not folder.exists() or not any(folder.iterdir()), "a half-unpacked batch would pass for a whole one"
    no_partial_files(tmp / "root")
    assert (tmp / "root" / "cifar-10-python.tar.gz").is_file()  # the user's file is left for them to replace


def _truncated_mnist(tmp: Path) -> object:
    raw = tmp / "MNIST" / "raw"
    mnist_gz(raw)
    cut_in_half(raw / "t10k-images-idx3-ubyte.gz")
    return load_dataset("mnist", root=str(tmp))


def _truncated_mnist_after(tmp: Path, _: object) -> None:
    raw = tmp / "MNIST" / "raw"
    assert not (raw / "t10k-images-idx3-ubyte").exists()
    # Files unpacked before the broken one are whole and stay, so a fixed copy only redoes that one.
    assert (raw / "train-images-idx3-ubyte").stat().st_size == 16 + 30 * 28 * 28
    no_partial_files(raw)


def _npy(tmp: Path, bad: np.ndarray) -> object:
    folder = tmp / "doodles"
    folder.mkdir()
    np.save(folder / "circle.npy", np.zeros((3, 784), np.uint8))
    np.save(folder / "square.npy", bad, allow_pickle=True)
    return load_dataset(str(folder))


def _outside_roots(tmp: Path) -> object:
    (tmp / "outside").mkdir()
    return check_user_path(str(tmp / "outside"), roots_of(tmp))


def _symlink_escape(tmp: Path) -> object:
    roots = roots_of(tmp)
    (tmp / "outside").mkdir()
    (tmp / "ws" / "data" / "shortcut").symlink_to(tmp / "outside")
    return check_user_path(str(tmp / "ws" / "data" / "shortcut"), roots)


def _dotdot_escape(tmp: Path) -> object:
    roots = roots_of(tmp)
    return check_user_path(str(tmp / "ws" / "data" / ".." / ".." / "outside"), roots)


def _cwd_is_not_a_root(tmp: Path) -> object:
    return check_user_path(".", roots_of(tmp))


def _inside_root(tmp: Path) -> object:
    roots = roots_of(tmp)
    image_tree(tmp / "ws" / "data" / "pets")
    return check_user_path(str(tmp / "ws" / "data" / "pets"), roots)


CASES: list[Case] = [
    Case("non-square-images-are-resized", _non_square, None,
         r"resized 6 images to 48x48 \(from 48x24 x6; models take square images with a side that is a multiple of 4\)",
         _non_square_after),
    Case("odd-sized-images-27-become-28", _odd_size, None, r"resized 6 images to 28x28 \(from 27x27 x6;",
         _odd_size_after),
    Case("one-class-folder", lambda t: load_dataset(str(image_tree(t / "one", classes=("only",)))), DataError,
         r"found a single class folder \('only'\); a classifier needs at least two class folders: one folder of "
         r"images per class, side by side, for example cat/1\.png, cat/2\.png, dog/1\.png"),
    Case("empty-folder", _empty_folder, DataError, r"empty: no images .*expected one subfolder of images per class"),
    Case("corrupt-image-among-good-is-skipped", _corrupt_among_good, None,
         r"skipped 1 unreadable image;.*b/broken\.png", _corrupt_after),
    Case("tar-member-with-dotdot", _dotdot_member, DataError,
         r"archive member '\.\./x/evil\.png' points outside the archive; refusing to read .*pets\.tar\.gz",
         _nothing_outside),
    Case("tar-member-with-absolute-path", _absolute_member, DataError,
         r"archive member '/.*/abs/evil\.png' points outside the archive; refusing to read .*pets\.tar\.gz"),
    Case("tar-symlink-member", _symlink_member, DataError,
         r"archive member 'pets/a/passwd\.png' is a symbolic link \(to '/etc/passwd'\); refusing to read"),
    Case("tar-hardlink-member", _hardlink_member, DataError, r"'pets/a/copy\.png' is a hard link .*refusing to read"),
    Case("cifar-archive-member-with-dotdot", _cifar_archive_dotdot, DataError,
         r"archive member '\.\./escaped' points outside the archive; refusing to unpack .*cifar-10-python\.tar\.gz",
         _cifar_archive_after),
    Case("cifar-batch-pickle-payload-os-system", _cifar_payload(os.system, "touch pwned"), DataError,
         r"data_batch_2: holds a pickled reference to (posix|nt|os)\.system, which a CIFAR-10 batch never contains; "
         r"refusing to load it", _not_pwned),
    Case("cifar-batch-pickle-payload-builtins-exec", _cifar_payload(exec, "open('pwned', 'w')"), DataError,
         r"holds a pickled reference to builtins\.exec, which a CIFAR-10 batch never contains", _not_pwned),
    Case("truncated-cifar-10-python-tar-gz", _truncated_cifar, DataError,
         r"cifar-10-python\.tar\.gz: truncated or corrupt .*delete it and download it again, or put a complete copy",
         _truncated_cifar_after),
    Case("truncated-mnist-gz", _truncated_mnist, DataError,
         r"t10k-images-idx3-ubyte\.gz: truncated or corrupt .*delete it and download it again",
         _truncated_mnist_after),
    Case("npy-with-pickled-objects", lambda t: _npy(t, np.array([{"a": 1}, "x"], dtype=object)), DataError,
         r"square\.npy: holds pickled Python objects .*refusing to load it\. Only uint8 bitmaps"),
    Case("npy-of-wrong-dtype", lambda t: _npy(t, np.zeros((3, 784), np.float64)), DataError,
         r"square\.npy: got float64 of shape \(3, 784\); expected uint8"),
    Case("path-outside-the-data-roots", _outside_roots, PathNotAllowed,
         r"outside the folders this server reads data from \(.*ws/data\).*STEERBOARD_DATA_ROOTS"),
    Case("symlink-escaping-a-root", _symlink_escape, PathNotAllowed, r"shortcut is outside the folders"),
    Case("dotdot-escaping-a-root", _dotdot_escape, PathNotAllowed, r"outside is outside the folders"),
    Case("current-directory-is-not-a-root", _cwd_is_not_a_root, PathNotAllowed, r"^\. is outside the folders"),
    Case("nul-in-a-path", lambda t: check_user_path("data/a\x00b", roots_of(t)), PathNotAllowed, r"NUL character"),
    Case("path-inside-a-root-is-accepted", _inside_root, None, r"ws/data/pets$"),
]


# --- uploads, skipped files, torchvision roots with pickles, .npy headers ----------------------


def zip_of(members: dict[str, bytes]) -> bytes:
    """A .zip holding ``members`` (name -> content) as given."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def tree_members(prefix: str = "", classes: tuple[str, ...] = ("a", "b"), n: int = 3) -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    return {f"{prefix}{c}/{i}.png": png(rng.integers(0, 256, (16, 16), dtype=np.uint8)) for c in classes for i in range(n)}


BROKEN_PNG = b"\x89PNG\r\n\x1a\n not really"


def huge_header_npy(rows: int = 10**12) -> bytes:
    """An .npy whose header claims ``rows`` x 784 uint8 but which holds three rows."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "|u1", "fortran_order": False, "shape": (rows, 784)})
    buf.write(bytes(3 * 784))
    return buf.getvalue()


def npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def mnist_members(prefix: str = "MNIST/raw/", n: int = 20) -> dict[str, bytes]:
    """The four uncompressed MNIST idx files under ``prefix``."""
    rng = np.random.default_rng(3)
    out = {}
    for part in ("train", "t10k"):
        out[f"{prefix}{part}-images-idx3-ubyte"] = idx(rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        out[f"{prefix}{part}-labels-idx1-ubyte"] = idx((np.arange(n) % 10).astype(np.uint8))
    return out


def pickle_payload_pt() -> bytes:
    """What a malicious processed/training.pt holds: a pickle that runs ``touch pwned``."""
    return pickle.dumps(Payload(os.system, "touch pwned"), protocol=2)


def write_members(root: Path, members: dict[str, bytes]) -> Path:
    for name, data in members.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def _uploads_empty(tmp: Path, _: object = None) -> None:
    uploads = tmp / "ws" / "data" / "uploads"
    left = sorted(p.name for p in uploads.iterdir()) if uploads.exists() else []
    assert not left, f"the failed upload left {left}"


def _upload(name: str, data: bytes) -> Callable[[Path], object]:
    def run(tmp: Path) -> object:
        from core.data.uploads import store_upload

        return store_upload([(name, data)], tmp / "ws" / "data")
    return run


def _upload_and_open(name: str, data: bytes) -> Callable[[Path], object]:
    def run(tmp: Path) -> object:
        from core.data.uploads import store_upload

        return load_dataset(str(store_upload([(name, data)], tmp / "ws" / "data")))
    return run


def _skipped_summary(tmp: Path) -> object:
    folder = image_tree(tmp / "pets")
    for i in range(5):
        (folder / "b" / f"broken{i}.png").write_bytes(BROKEN_PNG)
    return load_dataset(str(folder)).card.skipped_summary()


def _npy_header_too_long(tmp: Path) -> object:
    folder = tmp / "doodles"
    folder.mkdir()
    np.save(folder / "circle.npy", np.zeros((3, 784), np.uint8))
    (folder / "square.npy").write_bytes(huge_header_npy())
    return load_dataset(str(folder))


def _mnist_with_pickled_processed(tmp: Path) -> object:
    write_members(tmp / "root", {**mnist_members(), "MNIST/processed/training.pt": pickle_payload_pt(),
                                 "MNIST/processed/test.pt": pickle_payload_pt()})
    return load_dataset(str(tmp / "root"))


def _mnist_pickled_after(tmp: Path, ds: object) -> None:
    assert isinstance(ds, ImageDataset) and ds.card.total == 40 and ds.image_shape == (1, 28, 28)
    _not_pwned(tmp, ds)


def _mnist_processed_only(tmp: Path) -> object:
    write_members(tmp / "root", {"MNIST/raw/README": b"", "MNIST/processed/training.pt": pickle_payload_pt(),
                                 "MNIST/processed/test.pt": pickle_payload_pt()})
    return load_dataset(str(tmp / "root"))


def _upload_torchvision_root(tmp: Path) -> object:
    from core.data.uploads import store_upload

    members = {**mnist_members("data/MNIST/raw/"), "data/MNIST/processed/training.pt": pickle_payload_pt(),
               "data/MNIST/processed/test.pt": pickle_payload_pt()}
    path = store_upload([("mnist.zip", zip_of(members))], tmp / "ws" / "data")
    assert path.name == "data", path  # opens at the torchvision root, not inside MNIST/
    return load_dataset(str(path))


CASES += [
    Case("upload-empty-zip", _upload("empty.zip", zip_of({})), DataError,
         r"^empty\.zip: the archive holds no files; zip the folder that holds your class folders \(one folder of "
         r"images per class, side by side, for example cat/1\.png", _uploads_empty),
    Case("upload-zip-of-folders-only", _upload("dirs.zip", zip_of({"a/": b"", "b/": b""})), DataError,
         r"dirs\.zip: the archive holds no files", _uploads_empty),
    Case("upload-zip-of-one-class-folder", _upload_and_open("one.zip", zip_of(tree_members(classes=("only",)))),
         DataError, r"found a single class folder \('only'\); a classifier needs at least two class folders: "
                    r"one folder of images per class, side by side"),
    Case("upload-zip-of-one-wrapped-class-folder",
         _upload_and_open("one.zip", zip_of(tree_members("mydata/", classes=("only",)))),
         DataError, r"mydata: found a single class folder \('only'\); a classifier needs at least two class folders"),
    Case("corrupt-images-are-named-in-one-line", _skipped_summary, None,
         r"^Skipped 5 files of pets: pets:b/broken0\.png \(UnidentifiedImageError: cannot identify image file\); "
         r"pets:b/broken1\.png .*; and 2 more\. The other 6 images opened\. To include a skipped image"),
    Case("npy-header-claims-too-many-rows", _npy_header_too_long, DataError,
         r"square\.npy: its header claims 1,000,000,000,000 rows of 784 uint8 \(713\.0 TB\), but the file holds "
         r"only 2\.3 kB of data: it is shorter than its header says"),
    Case("upload-npy-header-claims-too-many-rows", _upload("big.npy", huge_header_npy()), DataError,
         r"^big\.npy: its header claims 1,000,000,000,000 rows .* shorter than its header says", _uploads_empty),
    Case("mnist-root-with-pickled-processed-files", _mnist_with_pickled_processed, None,
         r"processed/training\.pt \(a pickled PyTorch file, torchvision's old processed format: never loaded, as "
         r"unpickling can run code; the idx files in raw/ were read instead\)", _mnist_pickled_after),
    Case("mnist-root-with-only-pickled-processed-files", _mnist_processed_only, DataError,
         r"files missing in .*MNIST/raw: train-images-idx3-ubyte.* Found test\.pt, training\.pt in .*processed: "
         r"torchvision's old processed format, pickled PyTorch files that steerboard never loads", _not_pwned),
    Case("upload-zip-of-a-torchvision-root-with-pickles", _upload_torchvision_root, None,
         r"processed/training\.pt \(a pickled PyTorch file", _mnist_pickled_after),
    Case("truncated-mnist-idx", lambda t: load_dataset(str(write_members(t / "root", {
        **mnist_members(), "MNIST/raw/t10k-images-idx3-ubyte": mnist_members()["MNIST/raw/t10k-images-idx3-ubyte"][:500]}))),
         DataError, r"t10k-images-idx3-ubyte: truncated: its header says 20x28x28 values \(15,680 bytes\) but it "
                    r"holds 484; delete it and put a complete copy there"),
]


# --- store, workbench and app: append with CASES += [...] -------------------------------------

class _Payload:
    """Runs a shell command when unpickled (what a malicious checkpoint would carry)."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def _workbench(tmp: Path):
    """A workbench on tiny generated data with versions 0 and 1 (v1 trained one epoch)."""
    from support import make_tiny_dataset

    from core.engine import TrainConfig
    from core.session.store import Store
    from core.session.workbench import Workbench

    data = make_tiny_dataset()
    wb = Workbench.create(Store(tmp / "ws"), data, "tiny", build_model("seed-cnn", 1, 16, data.num_classes, seed=0))
    job = wb.train(TrainConfig(epochs=1, batch_size=16), JobOptions("v1"))
    assert job.wait(60) and job.status == "done", job.error
    wb.restore(0)
    return wb


def _restore_broken(break_file: Callable[[Path], None]) -> Callable[[Path], object]:
    def run(tmp: Path) -> object:
        wb = _workbench(tmp)
        _restore_broken.last = (wb, {k: v.clone() for k, v in wb.model.state_dict().items()})
        break_file(Path(wb.version(1).checkpoint))
        wb.restore(1)
    return run


def _model_untouched(tmp: Path, value: object) -> None:
    wb, state = _restore_broken.last
    assert wb.current_version == 0 and wb.store.get_workbench(wb.id).current_version == 0
    assert all(torch.equal(state[k], v) for k, v in wb.model.state_dict().items())
    assert not (tmp / "pwned").exists()


def _pickled_object_checkpoint(path: Path) -> None:
    torch.save({"format": "steerboard-checkpoint-1", "model": _Payload("touch pwned")}, path)


def _versionless_workbench(tmp: Path) -> object:
    from core.session.store import Store
    from core.session.workbench import Workbench

    store = Store(tmp / "ws")
    orphan = store.create_workbench("digits", "seed-cnn", {})  # what an older release could leave behind
    return Workbench.open(store, orphan.id)


def _newer_schema(tmp: Path) -> object:
    import sqlite3

    from core.session.store import Store

    store = Store(tmp / "ws")
    with sqlite3.connect(store.db_path) as db:
        db.execute("PRAGMA user_version = 7")
    return Store(tmp / "ws")


def _deleted_workspace_store(tmp: Path) -> object:
    import shutil

    wb = _workbench(tmp)
    shutil.rmtree(tmp / "ws")
    found = wb.store.get_workbench(wb.id)
    assert found is None and wb.store.generation == 1
    return f"workbench gone: {found}; workspace created again: {wb.store.db_path.exists()}"


def _lr_out_of_range(tmp: Path) -> object:
    from core.engine import check_train_settings

    check_train_settings(5, 5.0)


# App cases: an AppTest of the entry script on a workspace with a cached base model.
_APP_BASE: dict[str, Path] = {}


def _app_workspace(tmp: Path) -> Path:
    """A fresh workspace holding a copy of a base model trained once per test run."""
    import shutil
    import tempfile

    from apptest_helpers import prepare_workspace

    if "ws" not in _APP_BASE:
        _APP_BASE["ws"] = prepare_workspace(Path(tempfile.mkdtemp(prefix="bad-input-base-")) / "ws")
    ws = tmp / "app-ws"
    (ws / "base").mkdir(parents=True)
    for f in (_APP_BASE["ws"] / "base").iterdir():
        shutil.copy2(f, ws / "base" / f.name)
    return ws


def _app(tmp: Path, query: dict | None = None):
    from apptest_helpers import new_app

    return new_app(_app_workspace(tmp), query).run()


def _page_text(at) -> str:
    """Warnings and errors the page shows, one line (what a user reads)."""
    assert len(at.exception) == 0, [e.message for e in at.exception]
    return " | ".join(e.value for e in [*at.warning, *at.error])


def _app_link(wb_id: str) -> Callable[[Path], object]:
    def run(tmp: Path) -> object:
        at = _app(tmp, {"wb": wb_id})
        assert at.session_state["wb_id"] != wb_id
        return _page_text(at)
    return run


def _app_orphan_link(tmp: Path) -> object:
    from apptest_helpers import new_app

    from core.session.store import Store

    ws = _app_workspace(tmp)
    orphan = Store(ws).create_workbench("digits", "seed-cnn", {})
    at = new_app(ws, {"wb": orphan.id}).run()
    assert at.session_state["wb_id"] != orphan.id
    return _page_text(at)


def _app_lr_out_of_range(tmp: Path) -> object:
    from apptest_helpers import workbench_of

    at = _app(tmp)
    at.number_input(key="train-lr").set_value(5.0)
    at.button(key="train-start").click().run()
    wb = workbench_of(at)
    assert wb.jobs.current is None and wb.current_version == 0  # nothing started, nothing changed
    return _page_text(at)


def _app_tiny_pool(tmp: Path) -> object:
    """A 2-class folder of 6 images: its pool split holds 2 images, below every page's minimum."""
    at = _app(tmp)
    ws = Path(os.environ["STEERBOARD_WORKSPACE"])
    image_tree(ws / "data" / "tiny", n=6, hw=(16, 16))
    at.selectbox(key="sb-dataset").set_value("Folder or archive…")
    at.text_input(key="sb-folder").set_value(str(ws / "data" / "tiny"))
    at.button(key="sb-open").click().run()
    texts = [_page_text(at)]
    from apptest_helpers import ROOT, workbench_of

    assert workbench_of(at).data.name == "tiny"
    for page in ("latent.py", "monitor.py", "freezing.py", "home.py"):
        at.switch_page(str(ROOT / "pages" / page)).run()
        texts.append(_page_text(at))
    return " | ".join(t for t in texts if t) or "all pages drawn"


def _app_workspace_deleted(tmp: Path) -> object:
    import shutil

    from app.state import get_base_models

    at = _app(tmp)
    shutil.rmtree(Path(os.environ["STEERBOARD_WORKSPACE"]))
    at.run()
    text = _page_text(at)
    from apptest_helpers import workbench_of

    wb = workbench_of(at)
    assert Path(wb.version(0).checkpoint).is_file()  # the shared base model was written again
    for job in get_base_models()._jobs.values():  # the default base model trains again: stop it
        job.stop()
        job.wait(30)
    return text


CASES += [
    Case("restore-a-missing-checkpoint", _restore_broken(lambda p: p.unlink()), CheckpointError,
         r"Checkpoint not found: .*v1\.pt", _model_untouched),
    Case("restore-a-corrupt-checkpoint", _restore_broken(lambda p: p.write_bytes(b"not a checkpoint")),
         CheckpointError, r"v1\.pt is not a readable PyTorch checkpoint", _model_untouched),
    Case("restore-a-checkpoint-holding-a-pickled-object", _restore_broken(_pickled_object_checkpoint),
         CheckpointError, r"v1\.pt is not a readable PyTorch checkpoint \(UnpicklingError\)", _model_untouched),
    Case("open-a-workbench-without-versions", _versionless_workbench, WorkbenchError,
         r"workbench [0-9a-f]{12} has no model versions \(it was left half-created\)"),
    Case("workspace-of-a-newer-release", _newer_schema, WorkspaceError,
         r"written by a newer steerboard \(schema 7, this release reads up to 2\); upgrade steerboard"),
    Case("workspace-deleted-under-the-store", _deleted_workspace_store, None,
         r"workbench gone: None; workspace created again: True"),
    Case("learning-rate-out-of-range", _lr_out_of_range, ValueError,
         r"learning rate must be between 1e-05 and 1; got 5\. Type a value in that range"),
    Case("app-malformed-wb-in-the-link", _app_link("../../etc/passwd"), None,
         r"workbench id '\.\./\.\./etc/passwd' is malformed; started a fresh workbench"),
    Case("app-unknown-wb-in-the-link", _app_link("0123456789ab"), None,
         r"No workbench 0123456789ab on this server; started a fresh workbench"),
    Case("app-link-to-a-workbench-without-versions", _app_orphan_link, None,
         r"cannot be opened: workbench [0-9a-f]{12} has no model versions .*started a fresh workbench"),
    Case("app-learning-rate-out-of-range-says-so", _app_lr_out_of_range, None,
         r"Not started: The learning rate must be between 1e-05 and 1; got 5"),
    Case("app-tiny-pool-pages-draw", _app_tiny_pool, None, r"(no pool split|all pages drawn)"),
    Case("app-workspace-deleted-under-a-running-server", _app_workspace_deleted, None,
         r"it is gone from this server \(was the workspace folder deleted\?\); started a fresh workbench"),
]



# App cases of the sidebar's Open: uploads (through the real uploader widget) and typed folders.


def _all_messages(at) -> str:
    """Successes, warnings and errors the page shows, one line."""
    assert len(at.exception) == 0, [e.message for e in at.exception]
    return " | ".join(e.value for e in [*at.success, *at.warning, *at.error])


def _open_upload(at, files: list[tuple[str, bytes]], *, biased: bool = False) -> None:
    n = at.session_state["sb-upload-n"] if "sb-upload-n" in at.session_state else 0
    at.file_uploader(key=f"sb-upload-{n}").set_value([(name, data, "application/octet-stream") for name, data in files])
    if biased:
        at.checkbox(key="sb-biased").check()
    at.button(key="sb-open").click().run()


def _app_upload(files: list[tuple[str, bytes]], biased: bool = False) -> Callable[[Path], object]:
    def run(tmp: Path) -> object:
        at = _app(tmp)
        before = at.session_state["wb_id"]
        _open_upload(at, files, biased=biased)
        text = _all_messages(at)
        _app_upload.last = (at, before)
        return text
    return run


def _app_upload_refused(tmp: Path, _: object) -> None:
    at, before = _app_upload.last
    assert at.session_state["wb_id"] == before  # the current workbench stays
    uploads = Path(os.environ["STEERBOARD_WORKSPACE"]) / "data" / "uploads"
    left = sorted(p.name for p in uploads.iterdir()) if uploads.exists() else []
    assert not left, f"the failed upload left {left}"
    assert not (tmp / "pwned").exists()


def _app_upload_opened(tmp: Path, _: object) -> None:
    from apptest_helpers import workbench_of

    at, before = _app_upload.last
    assert at.session_state["wb_id"] != before
    assert not (tmp / "pwned").exists()
    _app_upload_opened.source = workbench_of(at).data_source


def _app_biased_source(tmp: Path, _: object) -> None:
    from apptest_helpers import workbench_of

    _app_upload_opened(tmp, _)
    at, _before = _app_upload.last
    source = workbench_of(at).data_source
    assert source.startswith("biased-digits:/") and "uploads" in source, source
    # Open again with another model: the sidebar shows the folder with the box ticked, and the same data opens
    at.selectbox(key="sb-model").set_value("vgg6")
    at.button(key="sb-open").click().run()
    assert "Started workbench" in _all_messages(at), _all_messages(at)
    wb = workbench_of(at)
    assert (wb.data_source, wb.arch) == (source, "vgg6")


def _app_biased_folder(tmp: Path) -> object:
    at = _app(tmp)
    ws = Path(os.environ["STEERBOARD_WORKSPACE"])
    image_tree(ws / "data" / "pets", n=4, hw=(28, 28))
    at.selectbox(key="sb-dataset").set_value("Folder or archive…")
    at.text_input(key="sb-folder").set_value(str(ws / "data" / "pets"))
    at.checkbox(key="sb-biased").check()
    at.button(key="sb-open").click().run()
    from apptest_helpers import workbench_of

    assert workbench_of(at).data_source == f"biased-digits:{(ws / 'data' / 'pets').resolve()}"
    return _all_messages(at)


def _app_open_mnist_idx_folder(tmp: Path) -> object:
    """A typed torchvision root: the page shows the open's steps, done, in a status box."""
    at = _app(tmp)
    ws = Path(os.environ["STEERBOARD_WORKSPACE"])
    write_members(ws / "data" / "tv", mnist_members())
    at.selectbox(key="sb-dataset").set_value("Folder or archive…")
    at.text_input(key="sb-folder").set_value(str(ws / "data" / "tv"))
    at.button(key="sb-open").click().run()
    return _all_messages(at)


def _app_refused_then_good_upload(tmp: Path) -> object:
    """A refused upload does not stay in the uploader to be mixed with the next file chosen."""
    at = _app(tmp)
    _open_upload(at, [("empty.zip", zip_of({}))])
    first = _all_messages(at)
    # a browser adds a newly chosen file to those the uploader holds; AppTest's set_value replaces them, so
    # check what the page shows instead: an uploader holding nothing
    held = [u.value for u in at.sidebar.file_uploader if u.value]
    assert not held, f"the uploader still holds the refused upload: {held}"
    _open_upload(at, [("pets.zip", zip_of(_GOOD_TREE))])
    return f"{first} | then: {_all_messages(at)}"


_GOOD_TREE = tree_members("pets/")
CASES += [
    Case("app-upload-empty-zip", _app_upload([("empty.zip", zip_of({}))]), None,
         r"^Upload not opened: empty\.zip: the archive holds no files; zip the folder that holds your class folders",
         _app_upload_refused),
    Case("app-upload-one-class-zip", _app_upload([("one.zip", zip_of(tree_members(classes=("only",))))]), None,
         r"^Could not open that dataset: one\.zip: found a single class folder \('only'\); a classifier needs at "
         r"least two class folders: one folder of images per class, side by side", _app_upload_refused),
    Case("app-upload-with-a-corrupt-png-says-so",
         _app_upload([("pets.zip", zip_of({**_GOOD_TREE, "pets/b/broken.png": BROKEN_PNG}))]), None,
         r"Started workbench [0-9a-f]{12} on pets .*\| Skipped 1 file of pets: "
         r"pets:b/broken\.png \(UnidentifiedImageError: cannot identify image file\)\. The other 6 "
         r"images opened", _app_upload_opened),
    Case("app-upload-with-colour-by-class", _app_upload([("pets.zip", zip_of(_GOOD_TREE))], biased=True), None,
         r"^Started workbench [0-9a-f]{12} on biased-pets with seed-cnn", _app_biased_source),
    Case("app-typed-folder-with-colour-by-class", _app_biased_folder, None,
         r"^Started workbench [0-9a-f]{12} on biased-pets with seed-cnn"),
    Case("app-upload-torchvision-root-with-pickled-pt",
         _app_upload([("mnist.zip", zip_of({**mnist_members(), "MNIST/processed/training.pt": pickle_payload_pt(),
                                           "MNIST/processed/test.pt": pickle_payload_pt()}))]), None,
         r"Started workbench .* \| Skipped 2 files of mnist: processed/test\.pt \(a pickled PyTorch file, "
         r"torchvision's old processed format: never loaded", _app_upload_opened),
    Case("app-upload-only-pickled-pt-is-refused-and-removed",
         _app_upload([("mnist.zip", zip_of({"MNIST/raw/README": b"", "MNIST/processed/training.pt": pickle_payload_pt(),
                                           "MNIST/processed/test.pt": pickle_payload_pt()}))]), None,
         r"^Could not open that dataset: mnist: files missing in mnist\.zip/MNIST/raw: .* pickled PyTorch files that "
         r"steerboard never loads", _app_upload_refused),
    Case("app-upload-npy-header-claims-too-many-rows",
         _app_upload([("big.npy", huge_header_npy()), ("ok.npy", npy_bytes(np.zeros((3, 784), np.uint8)))]), None,
         r"^Upload not opened: big\.npy: its header claims 1,000,000,000,000 rows .* shorter than its header says",
         _app_upload_refused),
    Case("app-refused-upload-then-a-good-one", _app_refused_then_good_upload, None,
         r"^Upload not opened: empty\.zip: .* \| then: Started workbench [0-9a-f]{12} on pets with seed-cnn"),
    Case("app-typed-mnist-folder-opens", _app_open_mnist_idx_folder, None, r"^Started workbench [0-9a-f]{12} on mnist"),
]



def _with_caps(run: Callable[[Path], object], **env: str) -> Callable[[Path], object]:
    """``run`` with the resource limits of core.data.limits set low (restored after)."""
    def wrapped(tmp: Path) -> object:
        old = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            return run(tmp)
        finally:
            for k, v in old.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
    return wrapped


_ONE_MIB = {"STEERBOARD_MAX_UNPACKED_BYTES": "1MiB"}
CASES += [
    Case("upload-zip-over-the-unpacked-cap",
         _with_caps(_upload("big.zip", zip_of({**tree_members(), "a/zeros.png": b"\0" * (3 << 20)})), **_ONE_MIB),
         DataError, r"^big\.zip unpacks to more than 1\.0 MiB \(the cap\); unpack fewer images, or set "
                    r"STEERBOARD_MAX_UNPACKED_BYTES higher$", _uploads_empty),
    Case("upload-zip-of-mnist-gz-over-the-cap",
         _with_caps(_upload("mnist.zip", zip_of({"MNIST/raw/train-images-idx3-ubyte.gz": gzip.compress(b"\0" * (3 << 20))})),
                    **_ONE_MIB),
         DataError, r"^mnist\.zip unpacks to more than 1\.0 MiB \(the cap\)", _uploads_empty),
    Case("upload-tar-gz-member-over-the-member-cap",
         _with_caps(_upload("one.tar.gz", tgz_of({**tree_members(), "a/huge.png": b"\0" * (3 << 20)})),
                    STEERBOARD_MAX_MEMBER_BYTES="1MiB"),
         DataError, r"^one\.tar\.gz: 'a/huge\.png' is 3\.0 MiB, more than 1\.0 MiB \(the cap on one file, which "
                    r"is read whole\); remove it, or set STEERBOARD_MAX_MEMBER_BYTES higher$", _uploads_empty),
    Case("app-upload-zip-over-the-unpacked-cap",
         _with_caps(_app_upload([("big.zip", zip_of({**_GOOD_TREE, "pets/a/zeros.png": b"\0" * (3 << 20)}))]),
                    **_ONE_MIB),
         None, r"^Upload not opened: big\.zip unpacks to more than 1\.0 MiB \(the cap\); unpack fewer images, or "
               r"set STEERBOARD_MAX_UNPACKED_BYTES higher$", _app_upload_refused),
]

# --- the test ---------------------------------------------------------------------------------


def test_case_ids_are_unique():
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids)), sorted(i for i in ids if ids.count(i) > 1)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_bad_input(case: Case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Cases write relative files (a payload's "touch pwned") into tmp_path, never the repository.
    monkeypatch.chdir(tmp_path)
    value = None
    if case.error is None:
        value = case.run(tmp_path)
        text = as_text(value)
    else:
        with pytest.raises(case.error) as err:
            case.run(tmp_path)
        text = str(err.value)
    assert "\n" not in text.strip(), f"not one line: {text!r}"
    assert re.search(case.says, text), f"{case.says!r} does not match {text!r}"
    if case.after is not None:
        case.after(tmp_path, value)
