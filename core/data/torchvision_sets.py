"""MNIST, Fashion-MNIST and CIFAR-10 in torchvision's on-disk formats, downloaded only when allowed."""
from __future__ import annotations

import _codecs
import gzip
import importlib
import logging
import math
import os
import pickle
import shutil
import tarfile
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO
from urllib.error import URLError

import numpy as np

from .folders import check_archive_members, list_members
from .limits import Budget, copy_counted
from .spec import DataError, ImageDataset, Progress, RawImages, counting, stage

log = logging.getLogger(__name__)

MNIST_FILES = (
    "train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte",
)
CIFAR_FILES = (
    "data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch", "batches.meta",
)
CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
FASHION_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]


@dataclass(frozen=True)
class TorchvisionSet:
    """Where torchvision keeps one dataset under its root, and what the card says about it."""

    name: str
    torchvision_class: str
    subfolder: str  # the folder under root that holds the files
    files: tuple[str, ...]
    classes: tuple[str, ...]
    license: str
    origin: str


TORCHVISION_SETS: dict[str, TorchvisionSet] = {
    "mnist": TorchvisionSet(
        "mnist", "MNIST", "MNIST/raw", MNIST_FILES, tuple(str(d) for d in range(10)),
        "CC BY-SA 3.0 (Y. LeCun, C. Cortes, C. J. C. Burges)", "http://yann.lecun.com/exdb/mnist/",
    ),
    "fashion-mnist": TorchvisionSet(
        "fashion-mnist", "FashionMNIST", "FashionMNIST/raw", MNIST_FILES, tuple(FASHION_CLASSES),
        "MIT (Zalando Research)", "https://github.com/zalandoresearch/fashion-mnist",
    ),
    "cifar10": TorchvisionSet(
        "cifar10", "CIFAR10", "cifar-10-batches-py", CIFAR_FILES, tuple(CIFAR_CLASSES),
        "no license stated; cite Krizhevsky 2009", "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    ),
}


def default_root(name: str) -> Path:
    """Where a torchvision set is kept unless a root is given: ~/.steerboard/data/<name>."""
    return Path.home() / ".steerboard" / "data" / name


def load_torchvision_set(
    name: str,
    *,
    root: str | Path | None = None,
    allow_download: bool = False,
    seed: int = 0,
    limit_per_class: int | None = None,
    progress: Progress | None = None,
) -> ImageDataset:
    """Load MNIST, Fashion-MNIST or CIFAR-10 from ``root``; its test set becomes the "test" split.

    Files missing and ``allow_download`` false (or the download failing) raise DataError
    naming the folder to put the files in. Nothing pickled by PyTorch is ever loaded: MNIST's
    idx files are parsed here, and torchvision's old ``processed/*.pt`` files are left unread
    (listed on the card as skipped). ``progress`` hears each file read, ending at 1.0.
    """
    ds = TORCHVISION_SETS[name]
    root_path = Path(root).expanduser() if root is not None else default_root(name)
    folder = root_path / ds.subfolder
    try:
        _unpack_local_archives(ds, root_path, folder, stage(progress, 0.0, 0.3))
    except (OSError, tarfile.TarError, EOFError) as e:
        raise DataError(f"{folder}: could not unpack the {ds.name} archives found there ({e})") from e
    if _missing(ds, folder):
        if not allow_download:
            raise DataError(_missing_message(ds, folder, "downloading is off (allow_download=False)"))
        if progress is not None:
            progress(0.3, f"downloading {ds.name} into {root_path}")
        _download(ds, root_path, folder)
    reader = _read_cifar if name == "cifar10" else _read_mnist_like
    raw = reader(ds, folder, limit_per_class, stage(progress, 0.3, 0.9))
    if progress is not None:
        progress(0.9, f"building the train / val / test / pool splits of {len(raw.labels):,} images")
    out = raw.to_dataset(name=name, source=f"{folder} (torchvision {ds.torchvision_class} format)",
                         license=ds.license, seed=seed)
    if progress is not None:
        progress(1.0, f"read {out.card.total:,} images of {out.num_classes} classes")
    return out


def _missing(ds: TorchvisionSet, folder: Path) -> list[str]:
    return [f for f in ds.files if not (folder / f).is_file()]


def _missing_message(ds: TorchvisionSet, folder: Path, why: str) -> str:
    missing = ", ".join(_missing(ds, folder))
    pickled = _pickled_files(ds, folder)
    found = ""
    if pickled:
        found = (f" Found {', '.join(p.name for p in pickled)} in {pickled[0].parent}: torchvision's old processed "
                 "format, pickled PyTorch files that steerboard never loads (unpickling can run code).")
    return (
        f"{ds.name}: files missing in {folder}: {missing}; {why}.{found} Put these files "
        f"(from {ds.origin}, unpacked) in {folder}, or pass allow_download=True to download them"
    )


def _pickled_files(ds: TorchvisionSet, folder: Path) -> list[Path]:
    """torchvision's old ``<root>/<Class>/processed/*.pt`` files beside an MNIST-like ``raw/``."""
    if ds.name == "cifar10":
        return []
    processed = folder.parent / "processed"
    return sorted(f for f in processed.glob("*.pt") if f.is_file()) if processed.is_dir() else []


def _unpack_local_archives(ds: TorchvisionSet, root: Path, folder: Path, progress: Progress | None = None) -> None:
    """Unpack archives a user put in place by hand (MNIST .gz files, cifar-10-python.tar.gz).

    Each file appears under its final name only once it is complete (unpacked to a temporary
    name, then renamed), so an archive cut short never leaves a half file that a later load
    would take as whole. What they unpack to together is counted as it is decompressed and
    may not pass :func:`core.data.limits.max_unpacked_bytes` (a refusal leaves no file behind).
    """
    if ds.name == "cifar10":
        archive = root / "cifar-10-python.tar.gz"
        if _missing(ds, folder) and archive.is_file():
            _unpack_cifar_archive(archive, root, folder, progress)
        return
    packed = [f for f in _missing(ds, folder) if (folder / f"{f}.gz").is_file()]
    tick = counting(progress, len(packed), f"unpacking the .gz files in {folder}", steps=len(packed))
    budget = Budget(f"the .gz files in {folder}")
    for i, f in enumerate(packed, 1):
        _gunzip(folder / f"{f}.gz", folder / f, budget)
        tick(i)


# What reading a cut-short or damaged .gz raises; other OSErrors (a full disk, no permission)
# are not the file's fault and go to load_torchvision_set's "could not unpack".
_BROKEN_ARCHIVE = (EOFError, gzip.BadGzipFile, zlib.error)


def _truncated(path: Path, e: BaseException) -> DataError:
    return DataError(
        f"{path}: truncated or corrupt ({type(e).__name__}: {e}); delete it and download it again, "
        "or put a complete copy there"
    )


def _gunzip(packed: Path, dest: Path, budget: Budget | None = None) -> None:
    """Decompress ``packed`` to ``dest`` through a temporary file in the same folder,
    counting the bytes against ``budget`` (default: a fresh one of max_unpacked_bytes())."""
    budget = budget or Budget(packed.name)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".partial")
    try:
        with gzip.open(packed, "rb") as src, os.fdopen(fd, "wb") as dst:
            copy_counted(src, dst, budget)
        os.replace(tmp, dest)
    except _BROKEN_ARCHIVE as e:
        raise _truncated(packed, e) from e
    finally:
        Path(tmp).unlink(missing_ok=True)  # gone already after a successful rename


def _unpack_cifar_archive(archive: Path, root: Path, folder: Path, progress: Progress | None = None) -> None:
    """Unpack cifar-10-python.tar.gz into a temporary folder under ``root``, then move the
    batch files into ``folder``."""
    staging = Path(tempfile.mkdtemp(dir=root, prefix=".cifar-10-python.", suffix=".partial"))
    try:
        try:
            if progress is not None:
                progress(0.0, f"listing the members of {archive.name}")
            with tarfile.open(archive, "r:*") as tf:
                members = list_members(tf, archive.name, archive.stat().st_size)  # within the limits on archives
                check_archive_members(members, archive, action="unpack")
                tick = counting(stage(progress, 0.2, 1.0), len(members), f"unpacking {archive.name}", steps=len(members))
                for i, member in enumerate(members, 1):
                    # filter="data" refuses what the check above already did; kept as a second guard.
                    tf.extract(member, staging, filter="data")
                    tick(i)
        except tarfile.FilterError as e:
            raise DataError(f"archive member {getattr(e.tarinfo, 'name', '?')!r} would be unpacked outside "
                            f"{root} ({e}); refusing to unpack {archive}") from e
        except (tarfile.TarError, *_BROKEN_ARCHIVE) as e:
            raise _truncated(archive, e) from e
        unpacked = staging / TORCHVISION_SETS["cifar10"].subfolder
        if unpacked.is_dir():
            folder.mkdir(parents=True, exist_ok=True)
            for f in unpacked.iterdir():
                if f.is_file():
                    os.replace(f, folder / f.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _download(ds: TorchvisionSet, root: Path, folder: Path) -> None:
    import torchvision.datasets as tvd

    cls = getattr(tvd, ds.torchvision_class)
    log.info("downloading %s into %s", ds.name, root)
    try:
        cls(str(root), train=True, download=True)
        cls(str(root), train=False, download=True)
    except (RuntimeError, URLError, OSError) as e:
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(_missing_message(ds, folder, f"the download failed ({first_line})")) from e


def _read_mnist_like(ds: TorchvisionSet, folder: Path, limit: int | None, progress: Progress | None = None) -> RawImages:
    """Read the four idx files of MNIST / Fashion-MNIST (the files torchvision keeps in
    ``<root>/<Class>/raw``). torchvision's own classes are not used: they prefer the old
    ``processed/*.pt`` files when present, which are pickles."""
    parts = []
    tick = counting(progress, len(ds.files), f"reading the {ds.name} files", steps=len(ds.files))
    if progress is not None:
        progress(0.0, f"reading the {ds.name} files: 0 of {len(ds.files)}")
    for i, (image_file, label_file) in enumerate(((ds.files[0], ds.files[1]), (ds.files[2], ds.files[3]))):
        images = read_idx(folder / image_file)
        tick(2 * i + 1)
        labels = read_idx(folder / label_file).astype(np.int64)
        tick(2 * i + 2)
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels) or images.dtype != np.uint8:
            raise DataError(f"{folder}: {image_file} holds {images.dtype} {images.shape} and {label_file} holds "
                            f"{labels.shape}; expected uint8 images (N, H, W) and N labels")
        parts.append((images[:, None], labels))
    raw = _join_parts(ds, folder, parts, limit)
    for f in _pickled_files(ds, folder):
        raw.skipped.append(f"{f.parent.name}/{f.name} (a pickled PyTorch file, torchvision's old processed format: "
                           f"never loaded, as unpickling can run code; the idx files in {folder.name}/ were read instead)")
    return raw


# idx type codes (http://yann.lecun.com/exdb/mnist/): numpy dtypes, big-endian as the files are.
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: Path) -> np.ndarray:
    """One idx file (MNIST's format: two zero bytes, a type code, the number of dimensions,
    each dimension as a big-endian uint32, then the values) as a native-endian array.
    Raises DataError for a file that is not one or is cut short."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
            if len(head) < 4 or head[:2] != b"\0\0" or head[2] not in _IDX_TYPES or not 1 <= head[3] <= 4:
                raise DataError(f"{path}: not an idx file (it starts with {head.hex() or 'nothing'}; an idx file "
                                "starts with 0000, a type code such as 08 and the number of dimensions)")
            dims_raw = f.read(4 * head[3])
            if len(dims_raw) < 4 * head[3]:
                raise DataError(f"{path}: truncated inside its header; delete it and put a complete copy there")
            dims = tuple(int(d) for d in np.frombuffer(dims_raw, dtype=">u4"))
            dtype = np.dtype(_IDX_TYPES[head[2]])
            need = math.prod(dims) * dtype.itemsize
            have = path.stat().st_size - 4 - 4 * head[3]
            if have < need:
                raise DataError(f"{path}: truncated: its header says {'x'.join(map(str, dims))} values "
                                f"({need:,} bytes) but it holds {have:,}; delete it and put a complete copy there")
            data = np.frombuffer(f.read(need), dtype=dtype).reshape(dims)
    except OSError as e:
        raise DataError(f"{path}: could not be read ({e})") from e
    return data.astype(dtype.newbyteorder("="))


def _read_cifar(ds: TorchvisionSet, folder: Path, limit: int | None, progress: Progress | None = None) -> RawImages:
    """Read CIFAR-10's pickled batches (the python version), the format torchvision uses.

    Read directly rather than through torchvision.datasets.CIFAR10, which rejects any file
    whose MD5 differs from the official one and calls ``pickle.load`` on it. The batches are
    pickles; :class:`_CifarUnpickler` admits only the numpy and bytes reconstruction a real
    batch uses, so a file that would call anything else is refused, not run.
    """
    if progress is not None:
        progress(0.0, f"reading the CIFAR-10 batches: 0 of {len(CIFAR_FILES)}")
    classes = _cifar_classes(folder / "batches.meta")
    tick = counting(progress, len(CIFAR_FILES), "reading the CIFAR-10 batches", steps=len(CIFAR_FILES))
    read = 1
    tick(read)
    parts = []
    for names in (CIFAR_FILES[:5], CIFAR_FILES[5:6]):
        images, labels = [], []
        for n in names:
            batch = _unpickle(folder / n)
            read += 1
            tick(read)
            data = np.asarray(batch.get("data"))
            labs = np.asarray(batch.get("labels", batch.get("fine_labels")), dtype=np.int64)
            if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or len(labs) != len(data):
                raise DataError(f"{folder / n}: expected 'data' uint8 (N, 3072) and N 'labels', "
                                f"got {data.dtype} {data.shape} and {labs.shape}")
            images.append(data.reshape(-1, 3, 32, 32))
            labels.append(labs)
        parts.append((np.concatenate(images), np.concatenate(labels)))
    return _join_parts(ds, folder, parts, limit, classes)


def _numpy_global(module: str, name: str) -> object:
    """A numpy function by its current module; numpy 2 moved numpy.core to numpy._core."""
    try:
        return getattr(importlib.import_module(f"numpy._core.{module}"), name)
    except ImportError:  # numpy 1.x
        return getattr(importlib.import_module(f"numpy.core.{module}"), name)


def _allowed_globals() -> dict[tuple[str, str], object]:
    """The only globals a CIFAR-10 python batch refers to: numpy's array and dtype
    reconstruction (by its numpy 1 and numpy 2 module names), ``_codecs.encode`` and
    ``bytes`` / ``bytearray`` (how protocol 2 stores bytes)."""
    reconstruct = _numpy_global("multiarray", "_reconstruct")
    frombuffer = _numpy_global("numeric", "_frombuffer")  # arrays pickled with protocol 5
    allowed: dict[tuple[str, str], object] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _codecs.encode,
    }
    for core in ("numpy.core", "numpy._core"):
        allowed[(f"{core}.multiarray", "_reconstruct")] = reconstruct
        allowed[(f"{core}.numeric", "_frombuffer")] = frombuffer
    for builtins in ("builtins", "__builtin__"):  # Python 3 and Python 2 pickles
        allowed[(builtins, "bytes")] = bytes
        allowed[(builtins, "bytearray")] = bytearray
    return allowed


class _CifarUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the globals in :func:`_allowed_globals`.

    A pickle can call any global it names (``os.system`` and the like); a CIFAR-10 batch
    needs only numpy arrays, dicts, lists, strings, bytes and numbers, so every other global
    is refused before anything is called.
    """

    def __init__(self, file: BinaryIO, path: Path) -> None:
        super().__init__(file, encoding="latin1")  # the official batches were pickled by Python 2
        self._path = path
        self._allowed = _allowed_globals()

    def find_class(self, module: str, name: str) -> object:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            module = "builtins" if module == "__builtin__" else module  # protocol 2 writes Python 2's name
            raise DataError(
                f"{self._path}: holds a pickled reference to {module}.{name}, which a CIFAR-10 batch never "
                "contains; refusing to load it (use the batches from "
                "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz)"
            ) from None


def _unpickle(path: Path) -> dict:
    """Load one CIFAR-10 python batch with :class:`_CifarUnpickler`; keys become str."""
    try:
        with open(path, "rb") as f:
            obj = _CifarUnpickler(f, path).load()
    except DataError:
        raise
    except (pickle.UnpicklingError, EOFError, OSError, ValueError, AttributeError, TypeError,
            IndexError, KeyError, MemoryError) as e:
        raise DataError(f"{path}: not a readable CIFAR-10 python batch ({type(e).__name__}: {e}); "
                        "delete it and unpack cifar-10-python.tar.gz again") from e
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a pickled dict with 'data' and 'labels', got {type(obj).__name__}")
    # Batches pickled by Python 3 with bytes keys (b"data") read the same as the official ones.
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _cifar_classes(meta: Path) -> list[str]:
    names = _unpickle(meta).get("label_names")
    if not names:
        return list(CIFAR_CLASSES)
    return [n.decode("latin1") if isinstance(n, bytes) else str(n) for n in names]


def _join_parts(
    ds: TorchvisionSet,
    folder: Path,
    parts: list[tuple[np.ndarray, np.ndarray]],
    limit: int | None,
    classes: list[str] | None = None,
) -> RawImages:
    """Concatenate the train and test parts (train first), keeping the first ``limit`` per class of each."""
    classes = classes or list(ds.classes)
    images, labels, is_test = [], [], []
    for i, (imgs, labs) in enumerate(parts):
        if len(labs) and (labs.min() < 0 or labs.max() >= len(classes)):
            raise DataError(f"{folder}: labels outside 0..{len(classes) - 1}")
        if limit is not None:
            keep = np.sort(np.concatenate([np.flatnonzero(labs == c)[:limit] for c in range(len(classes))]))
            imgs, labs = imgs[keep], labs[keep]
        images.append(imgs)
        labels.append(labs)
        is_test.append(np.full(len(labs), i == 1))
    return RawImages(
        images=np.ascontiguousarray(np.concatenate(images)), labels=np.concatenate(labels),
        classes=classes, is_test=np.concatenate(is_test),
    )
