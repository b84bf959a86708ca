"""Readers for user data on disk: Quick Draw .npy folders, ImageFolder trees and their tar archives."""
from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import re
import tarfile
import tempfile
import time
import zipfile
import zlib
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import BinaryIO

import numpy as np
from PIL import Image

from .limits import (SIDE_ENV, Budget, DecodedBudget, max_image_side, max_member_bytes, max_members, member_too_big, size_text,
                     too_many)
from .spec import DataError, ImageDataset, Progress, RawImages, counting, stage

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".tar.bz2", ".tar.xz")
QUICKDRAW_SHAPES = "(N, 784), (N, 1, 784) or (N, 28, 28)"
# Errors PIL raises on files that are not images or are cut short.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)
_ARCHIVE_ERRORS = (tarfile.TarError, OSError, EOFError, zlib.error)
_GREY_MODES = ("1", "L", "LA", "La", "I", "F")
MIN_SIDE = 16  # smallest square side images are resized to (see model_side)
MASKS_DIR = "masks"  # top-level folder of an ImageFolder tree that mirrors it with object masks


@dataclass(frozen=True)
class _Record:
    """One decoded image and where it came from."""

    part: str  # "" for a source without splits, else "train" or "test"
    cls: str
    name: str
    pixels: np.ndarray  # uint8 (H, W) or (H, W, 3), scaled down to at most max_image_side()
    key: str = ""  # path below the tree's root without extension: its mask is masks/<key>.<ext>
    origin: str = ""  # the folder or archive it came from, for messages
    size: tuple[int, int] = (0, 0)  # (H, W) of the file, before any scaling down

    @property
    def shape(self) -> tuple[int, int]:
        """(H, W) of the image as stored in its file."""
        return self.size if self.size != (0, 0) else tuple(self.pixels.shape[:2])  # type: ignore[return-value]


@dataclass(frozen=True)
class _Mask:
    """One decoded mask file (bool (H, W), True = object), or why it could not be decoded."""

    origin: str
    name: str
    pixels: np.ndarray | None  # scaled down (nearest) like its image when larger than max_image_side()
    error: str | None = None
    size: tuple[int, int] = (0, 0)  # (H, W) of the file, before any scaling down

    @property
    def shape(self) -> tuple[int, int]:
        """(H, W) of the mask as stored in its file (only for a decoded one)."""
        if self.size != (0, 0) or self.pixels is None:
            return self.size
        return tuple(self.pixels.shape[:2])  # type: ignore[return-value]


@dataclass
class _Masks:
    """The masks/ folder of one source: every mask file by key, the decoded ones (only those
    of images that were read), the keys of all images, and problems found while indexing."""

    files: dict[str, tuple[str, str]] = field(default_factory=dict)  # key -> (origin, name)
    image_keys: set[str] = field(default_factory=set)
    decoded: dict[str, _Mask] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def merge(self, other: _Masks) -> None:
        for key, where in other.files.items():
            self.files.setdefault(key, where)
        self.image_keys |= other.image_keys
        self.decoded.update(other.decoded)
        self.problems += other.problems


def load_path(path: str | Path, *, seed: int = 0, limit_per_class: int | None = None,
              progress: Progress | None = None) -> ImageDataset:
    """Load a folder of Quick Draw .npy files, an ImageFolder tree, a tar(.gz) of one, or a
    folder holding train.tar.gz and test.tar.gz.

    Large image trees and archives are decoded once and kept in a cache (see :func:`cache_dir`).
    ``progress`` (see :data:`core.data.spec.Progress`) hears each step, ending at 1.0.
    """
    p = Path(path).expanduser()
    start = time.perf_counter()
    raw = read_path_cached(p, limit_per_class=limit_per_class, progress=stage(progress, 0.0, 0.95))
    log.info("read %d images from %s in %.1f s", len(raw.labels), p, time.perf_counter() - start)
    if progress is not None:
        progress(0.95, f"building the train / val / test / pool splits of {len(raw.labels):,} images")
    ds = raw.to_dataset(name=dataset_name(p), source=str(p.resolve()), license=_license_of(p), seed=seed)
    if progress is not None:
        progress(1.0, f"read {ds.card.total:,} images of {ds.num_classes} classes")
    return ds


def read_path(path: Path, *, limit_per_class: int | None = None, progress: Progress | None = None) -> RawImages:
    """Decode whatever lies at ``path`` into uint8 images; see :func:`load_path` for the layouts."""
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    kind = _kind(path)
    if kind == "archive":
        return read_archive(path, limit_per_class=limit_per_class, progress=progress)
    if kind == "other file":
        raise DataError(
            f"{path}: expected a folder (Quick Draw .npy files or class subfolders of images) "
            f"or a {'/'.join(ARCHIVE_SUFFIXES)} archive of class subfolders"
        )
    if kind == "split archives":
        return read_split_archives(_split_archives(path), limit_per_class=limit_per_class, progress=progress)
    if kind == "quickdraw":
        return read_quickdraw(path, limit_per_class=limit_per_class, progress=progress)
    return read_image_tree(path, limit_per_class=limit_per_class, progress=progress)


def _kind(path: Path) -> str:
    """Which layout lies at an existing ``path``."""
    if path.is_file():
        return "archive" if _is_archive(path) else "other file"
    if _split_archives(path):
        return "split archives"
    if any(f.suffix == ".npy" for f in path.iterdir() if f.is_file()):
        return "quickdraw"
    return "image tree"


def dataset_name(path: Path) -> str:
    """A short name for a path source: the folder or archive name without its suffix."""
    name = path.resolve().name
    for suffix in ARCHIVE_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


# --- cache of decoded images ----------------------------------------------------------------

CACHE_ENV = "STEERBOARD_DATA_CACHE"
# Below this many images decoding takes a second or two: not worth the disk.
CACHE_MIN_IMAGES = 5000
# Bump when what the readers produce changes, so old entries are not reused.
CACHE_FORMAT = 2  # 2: images larger than max_image_side() are scaled down


def cache_dir() -> Path | None:
    """Where decoded images are cached: $STEERBOARD_DATA_CACHE, else $XDG_CACHE_HOME/steerboard/
    datasets, else ~/.cache/steerboard/datasets; None when $STEERBOARD_DATA_CACHE is off/0/none."""
    raw = os.environ.get(CACHE_ENV, "").strip()
    if raw.lower() in ("off", "0", "none", "false", "no"):
        return None
    if raw:
        return Path(raw).expanduser()
    base = os.environ.get("XDG_CACHE_HOME", "").strip()
    return (Path(base) if base else Path.home() / ".cache") / "steerboard" / "datasets"


def read_path_cached(path: Path, *, limit_per_class: int | None = None, progress: Progress | None = None) -> RawImages:
    """:func:`read_path`, but a large image tree or archive is decoded once: its uint8 arrays are
    kept in :func:`cache_dir`, keyed by the path, the limit and every input file's size and
    modification time (MNIST's 70,000 PNGs take about 20 s to decode and 0.2 s to read back)."""
    folder = cache_dir()
    if folder is None or not path.exists() or _kind(path) == "quickdraw":
        return read_path(path, limit_per_class=limit_per_class, progress=progress)
    if progress is not None:
        progress(0.0, f"checking the files of {path.name}")
    prefix, key = _cache_key(path, limit_per_class)
    entry = folder / f"{prefix}-{key}.npz"
    if progress is not None and entry.is_file():
        progress(0.05, f"reading the images of {path.name} decoded on an earlier open (from the cache)")
    raw = _read_cache(entry)
    if raw is not None:
        log.info("read %s from the cache %s", path, entry)
        if progress is not None:
            progress(1.0, f"read {len(raw.labels):,} images from the cache")
        return raw
    raw = read_path(path, limit_per_class=limit_per_class, progress=stage(progress, 0.05, 0.95))
    if len(raw.labels) >= CACHE_MIN_IMAGES:
        if progress is not None:
            progress(0.95, f"keeping the {len(raw.labels):,} decoded images in the cache, so the next open is quick")
        _write_cache(entry, raw, prefix, stage(progress, 0.95, 1.0))
    if progress is not None:
        progress(1.0, f"decoded {len(raw.labels):,} images")
    return raw


def _cache_key(path: Path, limit: int | None) -> tuple[str, str]:
    """(a hash of the source and limit, a hash of its input files' sizes and modification times)."""
    resolved = path.resolve()
    prefix = hashlib.sha256(f"{resolved}\0{limit}".encode()).hexdigest()[:16]
    h = hashlib.sha256(f"{CACHE_FORMAT}\0{resolved}\0{limit}\0side {max_image_side()}".encode())
    if resolved.is_file():
        files = [resolved]
    else:
        files = []
        for dirpath, dirnames, filenames in os.walk(resolved):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            files += [Path(dirpath) / f for f in sorted(filenames) if not f.startswith(".")]
    for f in files:
        st = f.stat()
        h.update(f"{f.relative_to(resolved) if f != resolved else ''}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return prefix, h.hexdigest()[:24]


def _write_cache(entry: Path, raw: RawImages, prefix: str, progress: Progress | None = None) -> None:
    """Write atomically (a reader never sees half a file) and drop older entries of the same source."""
    arrays = {"images": raw.images, "labels": raw.labels}
    if raw.is_test is not None:
        arrays["is_test"] = raw.is_test
    if raw.masks is not None:
        arrays["masks"] = raw.masks
        arrays["has_mask"] = raw.has_mask
    meta = {"classes": raw.classes, "notes": raw.notes, "skipped": raw.skipped, "mask_problems": raw.mask_problems}
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=entry.parent, prefix=f".{entry.stem}.", suffix=".partial")
        try:
            with os.fdopen(fd, "wb") as f:
                _savez(f, arrays, progress, f"keeping the {len(raw.labels):,} decoded images in the cache")
            os.replace(tmp, entry)
        finally:
            Path(tmp).unlink(missing_ok=True)
        for old in entry.parent.glob(f"{prefix}-*.npz"):
            if old != entry:
                old.unlink(missing_ok=True)
    except OSError as e:  # a read-only or full disk only costs the next load its time
        log.warning("could not cache decoded images in %s (%s)", entry.parent, e)


def _savez(f: BinaryIO, arrays: dict[str, np.ndarray], progress: Progress | None, what: str,
           chunk_bytes: int = 8 << 20) -> None:
    """``np.savez(f, **arrays)`` (the same file: an uncompressed zip of .npy files), written a
    chunk of rows at a time so ``progress`` hears how far it is ("WHAT: 120.0 MB of 184.3 MB")."""
    arrays = {name: np.ascontiguousarray(a) for name, a in arrays.items()}
    total = sum(a.nbytes for a in arrays.values())
    done = 0
    with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, arr in arrays.items():
            with zf.open(f"{name}.npy", "w", force_zip64=True) as out:
                np.lib.format.write_array_header_2_0(out, np.lib.format.header_data_from_array_1_0(arr))
                rows = max(1, chunk_bytes // max(1, arr[:1].nbytes)) if arr.ndim else 1
                for start in range(0, max(1, len(arr)) if arr.ndim else 1, rows):
                    part = arr[start:start + rows] if arr.ndim else arr
                    out.write(part.tobytes())
                    done += part.nbytes
                    if progress is not None and total:
                        progress(done / total, f"{what}: {_bytes(done)} of {_bytes(total)}")


def _read_cache(entry: Path) -> RawImages | None:
    """The cached arrays, or None when there is no entry or it cannot be read (then it is removed)."""
    if not entry.is_file():
        return None
    try:
        with np.load(entry, allow_pickle=False) as z:
            meta = json.loads(z["meta"].tobytes().decode())
            images, labels = z["images"], z["labels"]
            masks = z["masks"] if "masks" in z.files else None
            raw = RawImages(
                images=images, labels=labels, classes=list(meta["classes"]),
                is_test=z["is_test"] if "is_test" in z.files else None,
                notes=list(meta["notes"]), skipped=list(meta["skipped"]),
                masks=masks, has_mask=z["has_mask"] if masks is not None else None,
                mask_problems=list(meta["mask_problems"]),
            )
        if images.dtype != np.uint8 or images.ndim != 4 or len(labels) != len(images):
            raise ValueError(f"images {images.dtype} {images.shape}, {len(labels)} labels")
        return raw
    except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile) as e:
        log.warning("ignoring the unreadable cache entry %s (%s)", entry, e)
        entry.unlink(missing_ok=True)
        return None


# --- Quick Draw -----------------------------------------------------------------------------


def read_quickdraw(folder: Path, *, limit_per_class: int | None = None, progress: Progress | None = None) -> RawImages:
    """Read one ``<class>.npy`` per class (Quick Draw numpy_bitmap: uint8 rows of 784 pixels)."""
    files = sorted(f for f in folder.iterdir() if f.suffix == ".npy" and f.is_file())
    if len(files) < 2:
        raise DataError(f"{folder}: found {len(files)} .npy file; need one <class>.npy per class, at least two")
    classes = [f.stem for f in files]
    blocks, labels = [], []
    tick = counting(progress, len(files), f"reading the .npy files of {folder.name}", steps=len(files))
    if progress is not None:
        progress(0.0, f"reading the .npy files of {folder.name}: 0 of {len(files)}")
    for label, f in enumerate(files):
        rows = _read_bitmap_npy(f, limit_per_class)
        blocks.append(rows)
        labels.append(np.full(len(rows), label, dtype=np.int64))
        tick(label + 1)
    images = np.concatenate(blocks).reshape(-1, 1, 28, 28)
    note = "Quick, Draw! numpy_bitmap files, one per class (Google's Quick, Draw! data is CC BY 4.0)"
    return RawImages(images=images, labels=np.concatenate(labels), classes=classes, notes=[note])


def _read_bitmap_npy(f: Path, limit: int | None) -> np.ndarray:
    """The first ``limit`` rows of one Quick Draw file as uint8 (n, 784)."""
    with open(f, "rb") as fh:
        check_npy_header(fh, f.stat().st_size, str(f))
    try:
        # mmap: with a limit only the rows taken are read from disk.
        arr = np.load(f, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise DataError(f"{f}: not a readable .npy file ({e}); expected uint8 of shape {QUICKDRAW_SHAPES}") from e
    shape_ok = (arr.ndim == 2 and arr.shape[1] == 784) or (arr.ndim == 3 and arr.shape[1:] in ((1, 784), (28, 28)))
    if arr.dtype != np.uint8 or not shape_ok:
        raise DataError(
            f"{f}: got {arr.dtype} of shape {arr.shape}; expected uint8 of shape {QUICKDRAW_SHAPES} "
            "(Quick Draw numpy_bitmap: 0 = background, 255 = ink)"
        )
    if arr.shape[0] == 0:
        raise DataError(f"{f}: has no rows; expected uint8 of shape {QUICKDRAW_SHAPES} with N > 0")
    return np.array(arr[:limit]).reshape(-1, 784)


def read_npy_header(fh: BinaryIO) -> tuple[tuple[int, ...], np.dtype, int] | None:
    """The shape, dtype and header length of the .npy file open in ``fh`` (at its start),
    reading only the header; None when it has no header numpy can parse."""
    try:
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
        elif version in ((2, 0), (3, 0)):
            shape, _, dtype = np.lib.format.read_array_header_2_0(fh)
        else:
            return None
    except (ValueError, OSError, EOFError, SyntaxError, TypeError):
        return None
    return tuple(int(d) for d in shape), dtype, int(fh.tell())


def check_npy_header(fh: BinaryIO, size: int, where: str) -> None:
    """Refuse an .npy file of ``size`` bytes before loading it, from its header alone: one
    holding Python objects (stored pickled), or one whose header claims more data than the
    file holds (numpy would try to allocate it all first). A file without a readable header
    is left to ``np.load`` to report."""
    header = read_npy_header(fh)
    if header is None:
        return
    shape, dtype, offset = header
    if dtype.hasobject:
        # np.load(allow_pickle=False) would refuse too, but with numpy's words; say what to do.
        raise DataError(
            f"{where}: holds pickled Python objects (an object array), which could run code when "
            f"loaded; refusing to load it. Only uint8 bitmaps of shape {QUICKDRAW_SHAPES} are accepted: "
            "save them with np.save(path, images.astype(np.uint8))"
        )
    need = math.prod(shape) * dtype.itemsize
    have = max(0, size - offset)
    if need > have:
        rows = shape[0] if shape else 1
        each = "x".join(map(str, shape[1:])) or "1"
        raise DataError(
            f"{where}: its header claims {rows:,} rows of {each} {dtype} ({_bytes(need)}), but the file holds only "
            f"{_bytes(have)} of data: it is shorter than its header says (cut short, or the header is wrong). "
            "Save the array again with np.save and upload or copy the whole file"
        )


def _bytes(n: int) -> str:
    for unit, size in (("TB", 2**40), ("GB", 2**30), ("MB", 2**20), ("kB", 2**10)):
        if n >= size:
            return f"{n / size:,.1f} {unit}"
    return f"{n:,} bytes"


# --- ImageFolder trees and archives ---------------------------------------------------------


def read_image_tree(folder: Path, *, limit_per_class: int | None = None, progress: Progress | None = None) -> RawImages:
    """Read an ImageFolder tree: ``<class>/<image>``, optionally under ``train/`` and ``test/``,
    with object masks under a top-level ``masks/`` folder when there is one."""
    if progress is not None:
        progress(0.0, f"listing the images in {folder.name}")
    names = _image_names_under(folder)
    image_names, mask_names, root = _split_mask_names(names)
    if not image_names:
        archives = [f.name for f in sorted(folder.iterdir()) if f.is_file() and _is_archive(f)]
        if archives:
            raise DataError(
                f"{folder}: no images, but archives {archives}; pass one archive as the source, "
                "or put train.tar.gz and test.tar.gz here together"
            )
        raise DataError(
            f"{folder}: no images ({', '.join(IMAGE_EXTENSIONS)}) or Quick Draw .npy files found; "
            "expected one subfolder of images per class"
        )
    layout, notes = _layout(image_names, folder)
    wanted = _select(layout, limit_per_class)
    keys = {n: _image_key(n, root, None) for n in image_names}
    masks = _mask_index(mask_names, root, folder.name, None, set(keys.values()))
    wanted_key_set = {keys[n] for n in wanted}
    mask_items = [(key, name) for key, (_, name) in masks.files.items() if key in wanted_key_set]
    total = len(wanted) + len(mask_items)
    tick = counting(stage(progress, 0.02, 0.85), total, f"decoding the images of {folder.name}")
    records, skipped = _decode_all(
        ((n, _file_reader(folder, n)) for n in image_names if n in wanted), layout, folder, keys, tick,
        DecodedBudget(folder.name),
    )
    wanted_keys = {r.key for r in records}
    for i, (key, name) in enumerate(mask_items):
        if key in wanted_keys:
            masks.decoded[key] = _decode_mask(folder.name, name, _file_reader(folder, name))
        tick(len(wanted) + i + 1)
    return _assemble(records, skipped, notes, folder, masks if masks.files else None, stage(progress, 0.85, 1.0))


def read_archive(path: Path, *, limit_per_class: int | None = None, part: str | None = None,
                 progress: Progress | None = None) -> RawImages:
    """Read an ImageFolder tree (with its ``masks/`` folder, if any) from a tar archive
    without extracting it to disk."""
    records, skipped, notes, masks = _archive_records(path, limit_per_class, part, stage(progress, 0.0, 0.85),
                                                      DecodedBudget(path.name))
    return _assemble(records, skipped, notes, path, masks if masks.files else None, stage(progress, 0.85, 1.0))


def read_split_archives(archives: dict[str, Path], *, limit_per_class: int | None = None,
                        progress: Progress | None = None) -> RawImages:
    """Read ``train`` and ``test`` archives as one dataset whose test archive is its test split.

    Masks may lie inside each archive (``masks/train/...`` at its top) or in a ``masks/``
    folder next to the archives (``masks/train/<class>/<image>``); inside the archive wins.
    """
    records, skipped, notes = [], [], []
    masks = _Masks()
    sizes = {part: max(1, archive.stat().st_size) for part, archive in archives.items()}
    done = 0
    decoded = DecodedBudget(archives["train"].parent.name)  # both archives together
    for part, archive in archives.items():  # each archive's share of the reading: its share of the bytes
        share = 0.85 * sizes[part] / sum(sizes.values())
        r, s, n, m = _archive_records(archive, limit_per_class, part, stage(progress, done, done + share), decoded)
        done += share
        records += r
        skipped += s
        notes += n
        masks.merge(m)
    folder = archives["train"].parent
    beside = folder / MASKS_DIR
    if beside.is_dir():
        # Keys are paths below masks/, which mirror the archives' own train/... and test/... paths.
        wanted_keys = {r.key for r in records}
        names = _image_names_under(beside)
        outside = _mask_index([f"{MASKS_DIR}/{n}" for n in names], 0, folder.name, None, set())
        for key, (origin, name) in outside.files.items():
            if key in masks.files:
                continue
            masks.files[key] = (origin, name)
            if key in wanted_keys:
                masks.decoded[key] = _decode_mask(origin, name, _file_reader(folder, name))
        masks.problems += outside.problems
    return _assemble(records, skipped, notes, folder, masks if masks.files else None, stage(progress, 0.85, 1.0))


def _archive_records(
    path: Path, limit: int | None, part: str | None, progress: Progress | None = None,
    decoded: DecodedBudget | None = None,
) -> tuple[list[_Record], list[str], list[str], _Masks]:
    """Decode the chosen members (images and their masks) of one archive, in archive order
    (one pass over the stream: seeking back in a .tar.gz means decompressing it again)."""
    if progress is not None:
        progress(0.0, f"listing the members of {path.name}")
    try:
        with tarfile.open(path, "r:*") as tf:
            all_members = list_members(tf, path.name, path.stat().st_size, progress)
            check_archive_members(all_members, path)
            members = [m for m in all_members if m.isfile() and _is_image_name(m.name)]
            image_names, mask_names, root = _split_mask_names([m.name for m in members])
            if not image_names:
                raise DataError(
                    f"{path}: no images ({', '.join(IMAGE_EXTENSIONS)}) in the archive; "
                    "expected one folder of images per class"
                )
            layout, notes = _layout(image_names, path, part)
            wanted = _select(layout, limit)
            keys = {n: _image_key(n, root, part) for n in image_names}
            masks = _mask_index(mask_names, root, path.name, part, set(keys.values()))
            wanted_masks = {masks.files[keys[n]][1]: keys[n] for n in wanted if keys[n] in masks.files}
            records, skipped = [], []
            # Listing a .tar.gz reads it through once: a tenth of the time, the decoding the rest.
            tick = counting(stage(progress, 0.1, 1.0), len(wanted) + len(wanted_masks),
                            f"decoding the images of {path.name}")
            done = 0
            for m in members:
                if m.name in wanted:
                    one = _decode_one(m.name, _member_reader(tf, m), layout, path, keys, decoded)
                    (records if isinstance(one, _Record) else skipped).append(one)
                elif m.name in wanted_masks:
                    masks.decoded[wanted_masks[m.name]] = _decode_mask(path.name, m.name, _member_reader(tf, m))
                else:
                    continue
                done += 1
                tick(done)
    except _ARCHIVE_ERRORS as e:
        raise DataError(f"{path}: not a readable tar archive ({e}); expected a .tar.gz of class folders") from e
    return records, skipped, notes, masks


def list_members(tf: tarfile.TarFile, what: str, size: int, progress: Progress | None = None,
                 budget: Budget | None = None) -> list[tarfile.TarInfo]:
    """``tf.getmembers()`` of an archive of ``size`` bytes named ``what``, reporting how far
    through the file the listing is (listing a .tar.gz decompresses all of it: seconds for
    CIFAR-10's 50,000 images), within the limits of :mod:`core.data.limits`: at most
    max_members() members, none bigger than max_member_bytes(), and a stream (decompressed)
    of at most ``budget``'s cap (default max_unpacked_bytes()). Each member is checked before
    the stream is read past it, so a bomb is refused after at most the cap is decompressed."""
    raw = getattr(tf.fileobj, "fileobj", tf.fileobj)  # the compressed file under a GzipFile, else the file
    size = max(1, size)
    budget = budget or Budget(what)
    member_cap, count_cap = max_member_bytes(), max_members()
    count = seen = 0
    while True:
        m = tf.next()
        if m is None:
            break
        count += 1
        if count > count_cap:
            raise too_many(what, count, count_cap)
        if m.isfile() and m.size > member_cap:
            raise member_too_big(what, m.name, m.size, member_cap)
        # tf.offset: where the next header starts in the (decompressed) stream, reached by reading past this member.
        budget.take(tf.offset - seen)
        seen = tf.offset
        if progress is not None and count % 1000 == 0 and hasattr(raw, "tell"):
            progress(0.1 * min(1.0, raw.tell() / size), f"listing the members of {what}: {count:,} so far")
    return tf.getmembers()


def check_archive_members(members: Iterable[tarfile.TarInfo], archive: Path, action: str = "read") -> None:
    """Refuse an archive with a member that could reach outside it when unpacked: an absolute
    path, a ``..`` component, a symbolic or hard link, or a device file.

    Reading images from the stream would not follow these, but an archive of images never
    needs them, and one that has them was made to escape its folder; refusing the whole
    archive (rather than skipping the member) makes that visible.
    """
    for m in members:
        name = m.name
        parts = PurePosixPath(name.replace("\\", "/")).parts
        drive = len(name) > 1 and name[0].isalpha() and name[1] == ":"  # C:\... on Windows
        if name.startswith(("/", "\\")) or drive or ".." in parts:
            why = "points outside the archive"
        elif m.issym() or m.islnk():
            why = f"is a {'symbolic' if m.issym() else 'hard'} link (to {m.linkname!r})"
        elif m.isdev():
            why = "is a device file or pipe"
        else:
            continue
        raise DataError(f"archive member {name!r} {why}; refusing to {action} {archive} "
                        "(an archive of images should hold only folders and regular files)")


def _member_reader(tf: tarfile.TarFile, member: tarfile.TarInfo) -> Callable[[], bytes]:
    """Read one member whole, at most max_member_bytes() of it (:func:`list_members` has
    refused bigger ones already; this is the second guard)."""
    def read() -> bytes:
        f = tf.extractfile(member)
        if f is None:
            return b""
        cap = max_member_bytes()
        data = f.read(cap + 1)
        if len(data) > cap:
            raise member_too_big(tf.name or "the archive", member.name, member.size, cap)
        return data

    return read


def _file_reader(folder: Path, name: str) -> Callable[[], bytes]:
    """Read ``folder/name`` whole, refusing a file bigger than max_member_bytes()."""
    def read() -> bytes:
        path = folder / name
        cap = max_member_bytes()
        size = path.stat().st_size
        if size > cap:
            raise member_too_big(str(folder), name, size, cap)
        with open(path, "rb") as f:
            data = f.read(cap + 1)
        if len(data) > cap:  # it grew since
            raise member_too_big(str(folder), name, None, cap)
        return data

    return read


def _layout(
    names: list[str], where: Path, part: str | None = None
) -> tuple[dict[str, tuple[str, str]], list[str]]:
    """Map image paths to (part, class): the first folder below what all paths share is the
    class, unless those folders are exactly train/ and test/, which then hold the classes."""
    parts = [PurePosixPath(n).parts for n in names]
    dirs = [p[:-1] for p in parts]
    common = _common_prefix_len(dirs)
    if all(len(d) == common for d in dirs):
        if common == 0:
            raise DataError(f"{where}: images lie loose at the top level; expected one subfolder of images per "
                            "class, side by side, for example cat/1.png, cat/2.png, dog/1.png")
        raise DataError(single_class_message(where, dirs[0][-1]))
    rest = [p[common:] for p in parts]
    firsts = {r[0] for r in rest if len(r) > 1}
    presplit = part is None and firsts == {"train", "test"} and all(len(r) > 2 for r in rest)
    layout: dict[str, tuple[str, str]] = {}
    loose = 0
    for name, r in zip(names, rest):
        if len(r) == 1:
            loose += 1  # like torchvision's ImageFolder: files beside the class folders belong to no class
        elif presplit:
            layout[name] = (r[0], r[1])
        else:
            layout[name] = (part or "", r[0])
    found = sorted({cls for _, cls in layout.values()})
    if len(found) < 2:
        raise DataError(single_class_message(where, found[0] if found else None))
    notes = [f"ignored {loose} images outside the class folders"] if loose else []
    return layout, notes


LAYOUT_EXAMPLE = "one folder of images per class, side by side, for example cat/1.png, cat/2.png, dog/1.png"


def single_class_message(where: object, cls: str | None) -> str:
    """What to say about a tree whose images all lie in one class folder."""
    found = f"a single class folder ({cls!r})" if cls is not None else "a single class folder"
    return (f"{where}: found {found}; a classifier needs at least two class folders: {LAYOUT_EXAMPLE}. "
            "Zip the folder that holds them, or type its path")


def _common_prefix_len(seqs: list[tuple[str, ...]]) -> int:
    first = min(seqs, key=len)
    for i, item in enumerate(first):
        if any(s[i] != item for s in seqs):
            return i
    return len(first)


def _select(layout: dict[str, tuple[str, str]], limit: int | None) -> set[str]:
    """Names to decode: all, or the first ``limit`` by name of each class in each part."""
    if limit is None:
        return set(layout)
    groups: dict[tuple[str, str], list[str]] = {}
    for name, key in layout.items():
        groups.setdefault(key, []).append(name)
    return {n for names in groups.values() for n in sorted(names)[:limit]}


def _decode_all(
    items: Iterable[tuple[str, Callable[[], bytes]]],
    layout: dict[str, tuple[str, str]],
    where: Path,
    keys: dict[str, str],
    tick: Callable[[int], None] = lambda done: None,
    decoded_budget: DecodedBudget | None = None,
) -> tuple[list[_Record], list[str]]:
    """Decode each image; files that fail are skipped and listed, not fatal. ``tick(done)``
    hears the count after each one."""
    records, skipped = [], []
    for i, (name, read) in enumerate(items, 1):
        decoded = _decode_one(name, read, layout, where, keys, decoded_budget)
        (records if isinstance(decoded, _Record) else skipped).append(decoded)
        tick(i)
    return records, skipped


def _decode_one(
    name: str, read: Callable[[], bytes], layout: dict[str, tuple[str, str]], where: Path, keys: dict[str, str],
    decoded: DecodedBudget | None = None,
) -> _Record | str:
    """One image as a record, or the line for the card's skipped list when it cannot be decoded;
    its pixels count against ``decoded`` (the refusal, once past its cap, is raised)."""
    data = read()  # a file over the cap on one file is refused here (DataError), not skipped
    try:
        pixels, size = _decode_scaled(data, max_image_side())
    except _DECODE_ERRORS as e:
        return f"{where.name}:{name} ({_decode_reason(e)})"
    if decoded is not None:
        decoded.take(pixels.nbytes)
    part, cls = layout[name]
    return _Record(part, cls, name, pixels, key=keys[name], origin=where.name, size=size)


def _decode_reason(e: BaseException) -> str:
    """Why PIL could not decode a file, without the in-memory buffer's address it names."""
    text = _BUFFER_REPR.sub("", str(e)).strip()
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


_BUFFER_REPR = re.compile(r"\s*<_io\.BytesIO object at 0x[0-9a-fA-F]+>")


def _open_checked(data: bytes) -> Image.Image:
    """PIL's image for ``data`` with only its header read; ValueError when its pixels would
    take more than max_member_bytes() (a small file can claim a huge image: a pixel bomb)."""
    im = Image.open(io.BytesIO(data))
    w, h = im.size
    need = w * h * max(1, len(im.getbands()))
    cap = max_member_bytes()
    if need > cap:
        im.close()
        raise ValueError(f"{w}x{h} pixels would take {size_text(need)} decoded, more than {size_text(cap)} "
                         "(the cap on one file, STEERBOARD_MAX_MEMBER_BYTES)")
    return im


def _scaled_size(h: int, w: int, max_side: int | None) -> tuple[int, int]:
    """(H, W) with the longer side brought down to ``max_side`` (aspect kept), or as it is."""
    if max_side is None or max(h, w) <= max_side:
        return h, w
    f = max_side / max(h, w)
    return max(1, min(max_side, round(h * f))), max(1, min(max_side, round(w * f)))


def _decode_scaled(data: bytes, max_side: int | None) -> tuple[np.ndarray, tuple[int, int]]:
    """Image bytes decoded with PIL to uint8 (H, W) for grey images or (H, W, 3) for colour,
    and the file's own (H, W); with ``max_side``, an image whose longer side is larger is scaled
    down to it (aspect kept). An image that would take more than max_member_bytes() once decoded
    raises ValueError before its pixels are decoded."""
    with _open_checked(data) as im:
        w, h = im.size
        th, tw = _scaled_size(h, w, max_side)
        if (th, tw) != (h, w):
            im.draft(None, (tw, th))  # JPEG: decode at a reduced scale, at least (tw, th)
        im.load()
        if im.mode.startswith("I;16"):
            out = (np.asarray(im, dtype=np.uint16) >> 8).astype(np.uint8)
        elif im.mode in _GREY_MODES:
            out = np.asarray(im if im.mode == "L" else im.convert("L"))
        else:
            rgb = np.asarray(im if im.mode == "RGB" else im.convert("RGB"))
            # Palette images (GIF) are often grey; keep them one channel when they are.
            if im.mode == "P" and (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all():
                rgb = np.ascontiguousarray(rgb[..., 0])
            out = rgb
    if out.shape[:2] != (th, tw):
        out = np.asarray(Image.fromarray(out).resize((tw, th), Image.BILINEAR))
    return out, (h, w)


def _assemble(
    records: list[_Record], skipped: list[str], notes: list[str], where: Path, masks: _Masks | None = None,
    progress: Progress | None = None,
) -> RawImages:
    """Order records (part, class, name), unify channels, resize every image to one square
    side the models take (see :func:`model_side`), and stack them; with ``masks``, match each
    image to its mask and resize the masks the same way."""
    if not records:
        raise DataError(f"{where}: no readable images ({len(skipped)} skipped as corrupt)")
    classes = sort_class_names({r.cls for r in records})
    if len(classes) < 2:
        raise DataError(single_class_message(where, classes[0]))
    index = {c: i for i, c in enumerate(classes)}
    records.sort(key=lambda r: (r.part == "test", index[r.cls], r.name))
    notes = list(notes)
    pixels = [r.pixels for r in records]

    n_grey = sum(p.ndim == 2 for p in pixels)
    colour = n_grey < len(pixels)
    if colour and n_grey:
        notes.append(f"converted {n_grey} grayscale images to RGB (the source mixes grayscale and colour)")
    sizes = [r.shape for r in records]  # as in the files; pixels larger than max_image_side() are scaled down already
    side = model_side(*Counter(sizes).most_common(1)[0][0])
    note = _resize_note(sizes, side)
    if note:
        notes.append(note)
    tick = counting(stage(progress, 0.0, 0.9), len(pixels), f"bringing the images to {side}x{side}")
    images = np.empty((len(pixels), 3 if colour else 1, side, side), dtype=np.uint8)  # filled in place: no stacking
    for i, p in enumerate(pixels):
        p = _conform(p, colour, side)
        images[i] = p.transpose(2, 0, 1) if colour else p
        tick(i + 1)
    labels = np.fromiter((index[r.cls] for r in records), dtype=np.int64, count=len(records))
    is_test = np.fromiter((r.part == "test" for r in records), dtype=bool, count=len(records))
    if skipped:
        notes.append(f"skipped {len(skipped)} unreadable image{'s' if len(skipped) != 1 else ''}")
    mask_array = has_mask = None
    problems: list[str] = []
    if masks is not None:
        if progress is not None:
            progress(0.9, f"matching {len(records):,} images to their masks")
        mask_array, has_mask, problems, note = _match_masks(records, masks, side)
        notes.append(note)
    if progress is not None:
        progress(1.0, f"{len(records):,} images of {len(classes)} classes")
    return RawImages(
        images=np.ascontiguousarray(images), labels=labels, classes=classes,
        is_test=is_test if is_test.any() else None, notes=notes, skipped=skipped,
        masks=mask_array, has_mask=has_mask, mask_problems=problems,
    )


def _match_masks(
    records: list[_Record], masks: _Masks, side: int
) -> tuple[np.ndarray, np.ndarray, list[str], str]:
    """Masks uint8 (N, 1, side, side) in {0, 1} aligned with ``records``, a has-mask flag per
    row, the per-file problems for the card, and a one-line note.

    A mask whose size differs from its image's original size would not line up with the
    object after resizing, so it is reported and treated as missing rather than stretched.
    """
    out = np.zeros((len(records), 1, side, side), dtype=np.uint8)
    has = np.zeros(len(records), dtype=bool)
    problems = list(masks.problems)
    missing = bad = resized = 0
    for i, r in enumerate(records):
        m = masks.decoded.get(r.key)
        h, w = r.shape
        if m is None:
            missing += 1
            problems.append(f"{r.origin}:{r.name}: no mask (expected {MASKS_DIR}/{r.key} with an image extension)")
        elif m.pixels is None:
            bad += 1
            problems.append(f"{m.origin}:{m.name}: unreadable mask ({m.error}); {r.name} treated as having no mask")
        elif m.shape != (h, w):
            bad += 1
            mh, mw = m.shape
            problems.append(f"{m.origin}:{m.name}: mask is {mw}x{mh} but its image {r.name} is {w}x{h}; "
                            "treated as missing")
        else:
            resized += (h, w) != (side, side)
            out[i, 0] = _conform_mask(m.pixels, side)
            has[i] = True
    orphans = sorted(k for k in masks.files if k not in masks.image_keys)
    for key in orphans:
        origin, name = masks.files[key]
        problems.append(f"{origin}:{name}: matches no image (expected an image at {key} with an image extension)")
    details = []
    if missing:
        details.append(f"{missing} without a mask")
    if bad:
        details.append(f"{bad} with a mis-sized or unreadable mask, treated as missing")
    if orphans:
        details.append(f"{len(orphans)} mask file{'s' if len(orphans) != 1 else ''} matching no image")
    note = f"masks for {int(has.sum())} of {len(records)} images"
    if resized:
        note += f" ({resized} resized to {side}x{side} with their images, nearest neighbour)"
    if details:
        note += f"; {', '.join(details)} (listed in mask_problems)"
    return out, has, problems, note


def model_side(h: int, w: int) -> int:
    """The square side every image is resized to, from the most common size ``h`` x ``w``:
    the larger side rounded up to a multiple of 4, at least 16, at most max_image_side()
    (256 unless $STEERBOARD_MAX_IMAGE_SIDE says otherwise).

    Every model in the zoo takes square images; a side that is a multiple of 4 pools evenly
    through seed-cnn's two max-pools, and 16 keeps vgg6's three pools above 1 pixel. The cap
    keeps a model's size (seed-cnn's first dense layer grows with the side squared) and its
    training memory bounded whatever the images' size.
    """
    return min(max_image_side(), max(MIN_SIDE, -(-max(h, w) // 4) * 4))


def _resize_note(sizes: list[tuple[int, int]], side: int) -> str | None:
    """Say on the card how many images were resized to ``side`` x ``side``, from which sizes
    ((H, W) as in the files), and whether the cap on the side did it."""
    counts = Counter((w, h) for h, w in sizes if (h, w) != (side, side))
    n = sum(counts.values())
    if not n:
        return None
    shown = ", ".join(f"{w}x{h} x{k}" for (w, h), k in counts.most_common(3))
    if len(counts) > 3:
        shown += f" and {len(counts) - 3} other sizes"
    cap = max_image_side()
    capped = sum(k for (w, h), k in counts.items() if max(w, h) > cap)
    why = "models take square images with a side that is a multiple of 4"
    if capped:
        why = (f"{capped} larger than the {cap} px cap on the side were scaled down, so models stay small; "
               f"set {SIDE_ENV} to change the cap; {why}")
    return f"resized {n} image{'s' if n != 1 else ''} to {side}x{side} (from {shown}; {why})"


def _conform(p: np.ndarray, colour: bool, side: int) -> np.ndarray:
    if p.shape[:2] != (side, side):
        p = np.asarray(Image.fromarray(p).resize((side, side), Image.BILINEAR))
    if colour and p.ndim == 2:
        p = np.repeat(p[..., None], 3, axis=2)
    return p


def _conform_mask(m: np.ndarray, side: int) -> np.ndarray:
    """Bool (H, W) -> uint8 {0, 1} (side, side); nearest neighbour keeps it binary and aligned."""
    u8 = m.astype(np.uint8)
    if u8.shape != (side, side):
        u8 = np.asarray(Image.fromarray(u8).resize((side, side), Image.NEAREST))
    return u8


def _decode_mask_scaled(data: bytes, max_side: int | None) -> tuple[np.ndarray, tuple[int, int]]:
    """A mask image decoded to bool (H, W), True where any colour channel is non-zero, and the
    file's own (H, W); with ``max_side``, one whose longer side is larger is scaled down to it
    (nearest neighbour), as :func:`_decode_scaled` scales its image."""
    with _open_checked(data) as im:
        im.load()
        mode = im.mode
        # An alpha channel says nothing about the object: keep the value or colour channels.
        if mode in ("LA", "La", "PA"):
            im = im.getchannel(0)
        elif mode not in ("1", "L", "P", "I", "F", "RGB") and not mode.startswith("I;16"):
            im = im.convert("RGB")  # RGBA, CMYK, YCbCr, ...
        # Raw values, not a conversion to grey: a palette index or a dark colour that is not
        # zero still marks the object.
        arr = np.asarray(im)
    mask = arr.any(axis=-1) if arr.ndim == 3 else arr != 0
    h, w = mask.shape
    th, tw = _scaled_size(h, w, max_side)
    if (th, tw) != (h, w):
        mask = np.asarray(Image.fromarray(mask.astype(np.uint8)).resize((tw, th), Image.NEAREST)) != 0
    return mask, (h, w)


def _decode_mask(origin: str, name: str, read: Callable[[], bytes]) -> _Mask:
    data = read()  # a file over the cap on one file is refused here (DataError), not skipped
    try:
        pixels, size = _decode_mask_scaled(data, max_image_side())
        return _Mask(origin, name, pixels, size=size)
    except _DECODE_ERRORS as e:
        return _Mask(origin, name, None, _decode_reason(e))


def sort_class_names(names: Iterable[str]) -> list[str]:
    """Class names in order; numerically when all are integers, so "10" follows "9"."""
    names = list(names)
    if all(n.isdigit() for n in names):
        return sorted(names, key=int)
    return sorted(names)


# --- helpers --------------------------------------------------------------------------------


def _image_names_under(folder: Path) -> list[str]:
    """Posix paths relative to ``folder`` of every image file below it, sorted; hidden folders skipped."""
    names = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel = Path(dirpath).relative_to(folder)
        names += [(rel / f).as_posix() for f in sorted(filenames) if _is_image_name(f)]
    return names


def _split_mask_names(names: list[str]) -> tuple[list[str], list[str], int]:
    """Separate the files under the tree's top-level masks/ folder from the images.

    The tree's root is the folder all paths share (an archive of a folder wraps everything in
    its name), but never masks/ itself. Returns image names, mask names and the root's depth.
    """
    parts = [PurePosixPath(n).parts for n in names]
    if not parts:
        return [], [], 0
    root = _common_prefix_len([p[:-1] for p in parts])
    shared = parts[0][:root]
    if MASKS_DIR in shared:
        root = shared.index(MASKS_DIR)
    images, masks = [], []
    for name, p in zip(names, parts):
        (masks if len(p) > root + 1 and p[root] == MASKS_DIR else images).append(name)
    return images, masks, root


def _mask_index(mask_names: list[str], root: int, origin: str, part: str | None, image_keys: set[str]) -> _Masks:
    """Key every mask file by the image path it mirrors; a second mask for one image is reported."""
    masks = _Masks(image_keys=image_keys)
    for name in sorted(mask_names):
        key = _strip_extension("/".join(PurePosixPath(name).parts[root + 1:]))
        if part:
            # masks/<class>/... inside the train archive belongs to train/<class>/...
            key = _with_part(key, part)
        if key in masks.files:
            masks.problems.append(f"{origin}:{name}: a second mask for {key}; using {masks.files[key][1]}")
            continue
        masks.files[key] = (origin, name)
    return masks


def _image_key(name: str, root: int, part: str | None) -> str:
    """Where an image's mask is looked up: its path below the tree's root, without extension,
    starting with its part (train/ or test/) when read from a split archive."""
    key = _strip_extension("/".join(PurePosixPath(name).parts[root:]))
    return _with_part(key, part) if part else key


def _with_part(key: str, part: str) -> str:
    return key if key.startswith(part + "/") else f"{part}/{key}"


def _strip_extension(name: str) -> str:
    stem, dot, ext = name.rpartition(".")
    return stem if dot and "/" not in ext else name


def _is_image_name(name: str) -> bool:
    base = name.rsplit("/", 1)[-1]
    return not base.startswith(".") and base.lower().endswith(IMAGE_EXTENSIONS)


def _is_archive(path: Path) -> bool:
    return path.name.lower().endswith(ARCHIVE_SUFFIXES)


def _split_archives(folder: Path) -> dict[str, Path]:
    """{"train": path, "test": path} when ``folder`` holds one archive of each, else {}."""
    found: dict[str, Path] = {}
    for f in sorted(folder.iterdir()):
        if f.is_file() and _is_archive(f):
            stem = dataset_name(f)
            if stem in ("train", "test"):
                found.setdefault(stem, f)
    return found if len(found) == 2 else {}


def _license_of(path: Path) -> str:
    """Point to a LICENSE file shipped with the data, if there is one."""
    folder = path if path.is_dir() else path.parent
    for f in sorted(folder.iterdir()):
        if f.is_file() and f.name.upper().startswith(("LICENSE", "LICENCE", "COPYING")):
            return f"see {f}"
    return "unknown (user data)"

