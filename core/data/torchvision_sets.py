"""MNIST, Fashion-MNIST and CIFAR-10 in torchvision's on-disk formats, downloaded only when allowed."""
from __future__ import annotations

import gzip
import logging
import pickle
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path
from urllib.error import URLError

import numpy as np

from .spec import DataError, ImageDataset, RawImages

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
) -> ImageDataset:
    """Load MNIST, Fashion-MNIST or CIFAR-10 from ``root``; its test set becomes the "test" split.

    Files missing and ``allow_download`` false (or the download failing) raise DataError
    naming the folder to put the files in.
    """
    ds = TORCHVISION_SETS[name]
    root_path = Path(root).expanduser() if root is not None else default_root(name)
    folder = root_path / ds.subfolder
    try:
        _unpack_local_archives(ds, root_path, folder)
    except (OSError, tarfile.TarError, EOFError) as e:
        raise DataError(f"{folder}: could not unpack the {ds.name} archives found there ({e})") from e
    if _missing(ds, folder):
        if not allow_download:
            raise DataError(_missing_message(ds, folder, "downloading is off (allow_download=False)"))
        _download(ds, root_path, folder)
    reader = _read_cifar if name == "cifar10" else _read_mnist_like
    raw = reader(ds, folder, limit_per_class)
    return raw.to_dataset(name=name, source=f"{folder} (torchvision {ds.torchvision_class} format)",
                          license=ds.license, seed=seed)


def _missing(ds: TorchvisionSet, folder: Path) -> list[str]:
    return [f for f in ds.files if not (folder / f).is_file()]


def _missing_message(ds: TorchvisionSet, folder: Path, why: str) -> str:
    missing = ", ".join(_missing(ds, folder))
    return (
        f"{ds.name}: files missing in {folder}: {missing}; {why}. Put these files "
        f"(from {ds.origin}, unpacked) in {folder}, or pass allow_download=True to download them"
    )


def _unpack_local_archives(ds: TorchvisionSet, root: Path, folder: Path) -> None:
    """Unpack archives a user put in place by hand (MNIST .gz files, cifar-10-python.tar.gz)."""
    if ds.name == "cifar10":
        archive = root / "cifar-10-python.tar.gz"
        if _missing(ds, folder) and archive.is_file():
            with tarfile.open(archive) as tf:
                tf.extractall(root, filter="data")
        return
    for f in _missing(ds, folder):
        packed = folder / f"{f}.gz"
        if packed.is_file():
            with gzip.open(packed, "rb") as src, open(folder / f, "wb") as dst:
                shutil.copyfileobj(src, dst)


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


def _read_mnist_like(ds: TorchvisionSet, folder: Path, limit: int | None) -> RawImages:
    """Read the four idx files through torchvision's MNIST / FashionMNIST classes."""
    import torchvision.datasets as tvd

    cls = getattr(tvd, ds.torchvision_class)
    root = folder.parent.parent  # torchvision expects <root>/<ClassName>/raw
    parts = []
    for train in (True, False):
        try:
            data = cls(str(root), train=train, download=False)
        except (RuntimeError, ValueError, OSError) as e:
            raise DataError(
                f"{folder}: could not read the {ds.name} idx files ({e}); expected {', '.join(ds.files)}"
            ) from e
        images, labels = data.data.numpy(), data.targets.numpy().astype(np.int64)
        if images.ndim != 3 or len(images) != len(labels):
            raise DataError(f"{folder}: idx files hold images {images.shape} and labels {labels.shape}; "
                            "expected (N, H, W) uint8 images and N labels")
        parts.append((images[:, None], labels))
    return _join_parts(ds, folder, parts, limit)


def _read_cifar(ds: TorchvisionSet, folder: Path, limit: int | None) -> RawImages:
    """Read CIFAR-10's pickled batches (the python version), the format torchvision uses.

    Read directly rather than through torchvision.datasets.CIFAR10, which rejects any file
    whose MD5 differs from the official one. Like torchvision, this unpickles the files:
    only use batches from a trusted source.
    """
    classes = _cifar_classes(folder / "batches.meta")
    parts = []
    for names in (CIFAR_FILES[:5], CIFAR_FILES[5:6]):
        images, labels = [], []
        for n in names:
            batch = _unpickle(folder / n)
            data = np.asarray(batch.get("data"))
            labs = np.asarray(batch.get("labels", batch.get("fine_labels")), dtype=np.int64)
            if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or len(labs) != len(data):
                raise DataError(f"{folder / n}: expected 'data' uint8 (N, 3072) and N 'labels', "
                                f"got {data.dtype} {data.shape} and {labs.shape}")
            images.append(data.reshape(-1, 3, 32, 32))
            labels.append(labs)
        parts.append((np.concatenate(images), np.concatenate(labels)))
    return _join_parts(ds, folder, parts, limit, classes)


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            obj = pickle.load(f, encoding="latin1")
    except (pickle.UnpicklingError, EOFError, OSError, ValueError, AttributeError) as e:
        raise DataError(f"{path}: not a readable CIFAR-10 python batch ({e})") from e
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a pickled dict with 'data' and 'labels', got {type(obj).__name__}")
    return obj


def _cifar_classes(meta: Path) -> list[str]:
    names = _unpickle(meta).get("label_names")
    return [str(n) for n in names] if names else list(CIFAR_CLASSES)


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
