"""Datasets for steerboard: built-ins and user data, all returned as one ImageDataset spec.

Start with :func:`load_dataset`; :func:`list_builtin` names the built-in sources.
"""
from __future__ import annotations

from pathlib import Path

from .spec import SPLITS, DataError, DatasetCard, ImageDataset

__all__ = ["load_dataset", "list_builtin", "ImageDataset", "DatasetCard", "DataError", "SPLITS"]

_BIASED_PREFIX = "biased-digits:"
# Folders under a torchvision root that say which set it holds.
_TORCHVISION_MARKERS = {"MNIST/raw": "mnist", "FashionMNIST/raw": "fashion-mnist", "cifar-10-batches-py": "cifar10"}


def list_builtin() -> list[str]:
    """Names that :func:`load_dataset` accepts besides paths."""
    from .torchvision_sets import TORCHVISION_SETS

    return ["digits", "biased-digits", *TORCHVISION_SETS]


def load_dataset(
    source: str,
    *,
    seed: int = 0,
    limit_per_class: int | None = None,
    rho: float = 0.99,
    allow_download: bool = False,
    root: str | None = None,
) -> ImageDataset:
    """Load a dataset by built-in name or path, with train / val / test / pool splits from ``seed``.

    ``source`` is one of :func:`list_builtin` ("digits", "biased-digits", "mnist",
    "fashion-mnist", "cifar10"); "biased-digits:SOURCE" for a colour-biased set built from
    another digit source (a path or a name); or a path to a folder of Quick Draw ``.npy``
    files, an ImageFolder tree, a tar(.gz) of one, a folder holding ``train.tar.gz`` and
    ``test.tar.gz``, or a torchvision root. ``limit_per_class`` keeps the first N images of
    each class (of each part, for sources with their own test set). ``rho`` is the bias of
    the biased sets; ``allow_download`` and ``root`` apply to the torchvision sets (default
    root ~/.steerboard/data/<name>). Raises DataError when the data cannot be read.
    """
    if limit_per_class is not None and limit_per_class < 1:
        raise DataError(f"limit_per_class must be at least 1, got {limit_per_class}")
    key = source.strip()
    options = dict(seed=seed, limit_per_class=limit_per_class, allow_download=allow_download, root=root)
    if key == "digits":
        from .builtin import load_digits_dataset

        return load_digits_dataset(seed=seed, limit_per_class=limit_per_class)
    if key == "biased-digits" or key.startswith(_BIASED_PREFIX):
        from .biased import make_biased

        base_source = key[len(_BIASED_PREFIX):] if key.startswith(_BIASED_PREFIX) else "digits"
        if not base_source or base_source.startswith("biased-digits"):
            raise DataError(f"{source}: expected biased-digits:SOURCE with SOURCE a digit dataset path or name")
        base = load_dataset(base_source, **options)  # type: ignore[arg-type]
        return make_biased(base, rho=rho, seed=seed, name="biased-digits" if base_source == "digits" else None)

    from .torchvision_sets import TORCHVISION_SETS, load_torchvision_set

    if key in TORCHVISION_SETS:
        return load_torchvision_set(key, **options)  # type: ignore[arg-type]
    path = Path(key).expanduser()
    for marker, name in _TORCHVISION_MARKERS.items():
        if (path / marker).is_dir():
            return load_torchvision_set(name, **{**options, "root": str(path)})  # type: ignore[arg-type]
    if not path.exists() and "/" not in key and "\\" not in key and not key.startswith("."):
        raise DataError(f"{source}: no such file or folder, and not a built-in dataset ({', '.join(list_builtin())})")
    from .folders import load_path

    return load_path(path, seed=seed, limit_per_class=limit_per_class)
