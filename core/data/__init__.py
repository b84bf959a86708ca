"""Datasets for steerboard: built-ins and user data, all returned as one ImageDataset spec.

Start with :func:`load_dataset`; :func:`list_builtin` names the built-in sources.
"""
from __future__ import annotations

import math
from pathlib import Path

from .spec import SPLITS, DataError, DatasetCard, ImageDataset, Progress, monotonic, stage

__all__ = [
    "load_dataset", "list_builtin", "parse_biased_source", "parse_shortcut_source", "shortcut_kind",
    "SHORTCUT_SETS", "ImageDataset", "DatasetCard", "DataError", "SPLITS", "Progress",
]

DEFAULT_RHO = 0.99
# The shortcut sets built over a digit source ("NAME", "NAME:SOURCE", either with "?rho=R"),
# each with its default rho: decoy digits follow Decoy-MNIST, whose square always names the class.
SHORTCUT_SETS = {"biased-digits": DEFAULT_RHO, "decoy-digits": 1.0, "texture-digits": DEFAULT_RHO}
# Folders under a torchvision root that say which set it holds.
_TORCHVISION_MARKERS = {"MNIST/raw": "mnist", "FashionMNIST/raw": "fashion-mnist", "cifar-10-batches-py": "cifar10"}


def list_builtin() -> list[str]:
    """Names that :func:`load_dataset` accepts besides paths."""
    from .torchvision_sets import TORCHVISION_SETS

    return ["digits", *SHORTCUT_SETS, *TORCHVISION_SETS]


def load_dataset(
    source: str,
    *,
    seed: int = 0,
    limit_per_class: int | None = None,
    rho: float | None = None,
    allow_download: bool = False,
    root: str | None = None,
    progress: Progress | None = None,
) -> ImageDataset:
    """Load a dataset by built-in name or path, with train / val / test / pool splits from ``seed``.

    ``source`` is one of :func:`list_builtin` ("digits", "biased-digits", "decoy-digits",
    "texture-digits", "mnist", "fashion-mnist", "cifar10"); "biased-digits:SOURCE" for a
    colour-biased set built from another digit source (a path or a name), either with "?rho=R"
    to choose the bias ("biased-digits?rho=0.997", "biased-digits:../shared/data/mnist?rho=0.997");
    the same forms of "decoy-digits" (Decoy-MNIST, Ross et al. 2017: a grey square in a random
    corner whose level names the class; default rho 1) and "texture-digits" (strokes over a
    grating whose orientation and period name the class, all of one mean brightness; default
    rho 0.99), each with the bias-conflicting "test", a "test_aligned" copy and stroke masks; or a path to
    a folder of Quick Draw ``.npy`` files, an ImageFolder tree (with an optional ``masks/``
    mirror of object masks), a tar(.gz) of one, a folder holding ``train.tar.gz`` and
    ``test.tar.gz``, or a torchvision root. ``limit_per_class`` keeps the first N images of
    each class (of each part, for sources with their own test set). ``rho`` is the bias of
    the shortcut sets, ignored by the others (default as above; the source string's ``?rho=`` says
    the same, and the two must agree when both are given); ``allow_download`` and ``root``
    apply to the torchvision sets (default root ~/.steerboard/data/<name>). Raises DataError
    when the data cannot be read.

    ``progress(fraction, text)`` (optional) hears what is being done while the data is read:
    fractions never decrease and the last call is ``(1.0, ...)``.
    """
    progress = monotonic(progress)
    ds = _load(source, seed=seed, limit_per_class=limit_per_class, rho=rho, allow_download=allow_download,
               root=root, progress=progress)
    if progress is not None:
        progress(1.0, f"opened {ds.name}: {ds.card.total:,} images of {ds.num_classes} classes")
    return ds


def _load(source: str, *, seed: int, limit_per_class: int | None, rho: float | None, allow_download: bool,
          root: str | None, progress: Progress | None) -> ImageDataset:
    if limit_per_class is not None and limit_per_class < 1:
        raise DataError(f"limit_per_class must be at least 1, got {limit_per_class}")
    key = source.strip()
    options = dict(seed=seed, limit_per_class=limit_per_class, allow_download=allow_download, root=root)
    if key == "digits":
        from .builtin import load_digits_dataset

        if progress is not None:
            progress(0.0, "reading scikit-learn's bundled digits")
        return load_digits_dataset(seed=seed, limit_per_class=limit_per_class)
    kind = shortcut_kind(key)
    if kind is not None:
        _, base_source, rho = parse_shortcut_source(key, rho)
        base = _load(base_source, rho=None, progress=stage(progress, 0.0, 0.8), **options)  # type: ignore[arg-type]
        name = kind if base_source == "digits" else None
        if progress is not None:
            what = {"biased-digits": "painting each image's background in its class colour",
                    "decoy-digits": "adding the grey corner squares",
                    "texture-digits": "laying the class gratings behind the strokes"}[kind]
            progress(0.8, f"{what} ({len(base.images):,} images, rho {rho:g})")
        if kind == "biased-digits":
            from .biased import make_biased

            return make_biased(base, rho=rho, seed=seed, name=name)
        from .shortcuts import make_decoy, make_texture

        make = make_decoy if kind == "decoy-digits" else make_texture
        return make(base, rho=rho, seed=seed, name=name)

    from .torchvision_sets import TORCHVISION_SETS, load_torchvision_set

    if key in TORCHVISION_SETS:
        return load_torchvision_set(key, progress=progress, **options)  # type: ignore[arg-type]
    path = Path(key).expanduser()
    for marker, name in _TORCHVISION_MARKERS.items():
        if (path / marker).is_dir():
            return load_torchvision_set(name, progress=progress, **{**options, "root": str(path)})  # type: ignore[arg-type]
    if not path.exists() and "/" not in key and "\\" not in key and not key.startswith("."):
        raise DataError(f"{source}: no such file or folder, and not a built-in dataset ({', '.join(list_builtin())})")
    from .folders import load_path

    return load_path(path, seed=seed, limit_per_class=limit_per_class, progress=progress)


def shortcut_kind(source: str) -> str | None:
    """The shortcut set ``source`` names ("biased-digits", "decoy-digits", "texture-digits"), or None."""
    key = source.strip()
    for kind in SHORTCUT_SETS:
        if key == kind or key.startswith((kind + "?", kind + ":")):
            return kind
    return None


def parse_shortcut_source(source: str, rho: float | None = None) -> tuple[str, str, float]:
    """Split "KIND[:SOURCE][?rho=R]" (KIND one of SHORTCUT_SETS) into the kind, the base
    source (default "digits") and rho.

    ``rho`` given as an argument must agree with the one in the string; without either, the
    kind's default (SHORTCUT_SETS).
    """
    key = source.strip()
    kind = shortcut_kind(key)
    if kind is None:
        raise DataError(f"{source}: expected one of {', '.join(SHORTCUT_SETS)}, optionally with :SOURCE and ?rho=R")
    rest = key[len(kind):]
    base, query = rest, ""
    if "?" in rest:
        base, _, query = rest.rpartition("?")
    if base.startswith(":"):
        base = base[1:]
        if not base:
            raise DataError(f"{source}: expected {kind}:SOURCE with SOURCE a digit dataset path or name")
    elif base:
        raise DataError(f"{source}: expected {kind}, {kind}:SOURCE or either with ?rho=R")
    base = base or "digits"
    if shortcut_kind(base) is not None:
        raise DataError(f"{source}: expected {kind}:SOURCE with SOURCE a digit dataset path or name")
    from_string = None
    for item in filter(None, query.split("&")):
        name, eq, value = item.partition("=")
        if name.strip() != "rho" or not eq:
            raise DataError(f"{source}: unknown option {item!r}; the only option is rho=R with R between 0 and 1")
        try:
            from_string = float(value)
        except ValueError:
            raise DataError(f"{source}: rho must be a number between 0 and 1, got {value!r}") from None
        _check_rho(from_string, source)
    if from_string is not None and rho is not None and not math.isclose(from_string, rho):
        raise DataError(f"{source}: rho={from_string} in the source but rho={rho} given; give it once")
    chosen = from_string if from_string is not None else (SHORTCUT_SETS[kind] if rho is None else rho)
    _check_rho(chosen, source)
    return kind, base, chosen


def parse_biased_source(source: str, rho: float | None = None) -> tuple[str, float]:
    """Split "biased-digits[:SOURCE][?rho=R]" into the base source (default "digits") and rho
    (any of SHORTCUT_SETS is accepted; see :func:`parse_shortcut_source`).

    ``rho`` given as an argument must agree with the one in the string; without either, 0.99.
    """
    _, base, chosen = parse_shortcut_source(source, rho)
    return base, chosen


def _check_rho(rho: float, source: str) -> None:
    if not (isinstance(rho, (int, float)) and math.isfinite(rho) and 0.0 <= rho <= 1.0):
        raise DataError(f"{source}: rho must be between 0 and 1, got {rho}")
