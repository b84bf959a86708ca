"""Readers for user data on disk: Quick Draw .npy folders, ImageFolder trees and their tar archives."""
from __future__ import annotations

import io
import logging
import os
import tarfile
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image

from .spec import DataError, ImageDataset, RawImages

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".tar.bz2", ".tar.xz")
QUICKDRAW_SHAPES = "(N, 784), (N, 1, 784) or (N, 28, 28)"
# Errors PIL raises on files that are not images or are cut short.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)
_ARCHIVE_ERRORS = (tarfile.TarError, OSError, EOFError, zlib.error)
_GREY_MODES = ("1", "L", "LA", "La", "I", "F")
MIN_SIDE = 16  # smallest square side images are resized to (see model_side)


@dataclass(frozen=True)
class _Record:
    """One decoded image and where it came from."""

    part: str  # "" for a source without splits, else "train" or "test"
    cls: str
    name: str
    pixels: np.ndarray  # uint8 (H, W) or (H, W, 3)


def load_path(path: str | Path, *, seed: int = 0, limit_per_class: int | None = None) -> ImageDataset:
    """Load a folder of Quick Draw .npy files, an ImageFolder tree, a tar(.gz) of one, or a
    folder holding train.tar.gz and test.tar.gz."""
    p = Path(path).expanduser()
    start = time.perf_counter()
    raw = read_path(p, limit_per_class=limit_per_class)
    log.info("read %d images from %s in %.1f s", len(raw.labels), p, time.perf_counter() - start)
    return raw.to_dataset(name=dataset_name(p), source=str(p.resolve()), license=_license_of(p), seed=seed)


def read_path(path: Path, *, limit_per_class: int | None = None) -> RawImages:
    """Decode whatever lies at ``path`` into uint8 images; see :func:`load_path` for the layouts."""
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    if path.is_file():
        if _is_archive(path):
            return read_archive(path, limit_per_class=limit_per_class)
        raise DataError(
            f"{path}: expected a folder (Quick Draw .npy files or class subfolders of images) "
            f"or a {'/'.join(ARCHIVE_SUFFIXES)} archive of class subfolders"
        )
    split_archives = _split_archives(path)
    if split_archives:
        return read_split_archives(split_archives, limit_per_class=limit_per_class)
    if any(f.suffix == ".npy" for f in path.iterdir() if f.is_file()):
        return read_quickdraw(path, limit_per_class=limit_per_class)
    return read_image_tree(path, limit_per_class=limit_per_class)


def dataset_name(path: Path) -> str:
    """A short name for a path source: the folder or archive name without its suffix."""
    name = path.resolve().name
    for suffix in ARCHIVE_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


# --- Quick Draw -----------------------------------------------------------------------------


def read_quickdraw(folder: Path, *, limit_per_class: int | None = None) -> RawImages:
    """Read one ``<class>.npy`` per class (Quick Draw numpy_bitmap: uint8 rows of 784 pixels)."""
    files = sorted(f for f in folder.iterdir() if f.suffix == ".npy" and f.is_file())
    if len(files) < 2:
        raise DataError(f"{folder}: found {len(files)} .npy file; need one <class>.npy per class, at least two")
    classes = [f.stem for f in files]
    blocks, labels = [], []
    for label, f in enumerate(files):
        rows = _read_bitmap_npy(f, limit_per_class)
        blocks.append(rows)
        labels.append(np.full(len(rows), label, dtype=np.int64))
    images = np.concatenate(blocks).reshape(-1, 1, 28, 28)
    note = "Quick, Draw! numpy_bitmap files, one per class (Google's Quick, Draw! data is CC BY 4.0)"
    return RawImages(images=images, labels=np.concatenate(labels), classes=classes, notes=[note])


def _read_bitmap_npy(f: Path, limit: int | None) -> np.ndarray:
    """The first ``limit`` rows of one Quick Draw file as uint8 (n, 784)."""
    if _npy_holds_objects(f):
        # np.load(allow_pickle=False) would refuse too, but with numpy's words; say what to do.
        raise DataError(
            f"{f}: holds pickled Python objects (an object array), which could run code when "
            f"loaded; refusing to load it. Only uint8 bitmaps of shape {QUICKDRAW_SHAPES} are accepted: "
            "save them with np.save(path, images.astype(np.uint8))"
        )
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


def _npy_holds_objects(f: Path) -> bool:
    """True when an .npy file's header declares a dtype with Python objects (stored pickled).

    Only the header is read; a file too broken to have one is left to np.load to report.
    """
    try:
        with open(f, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            if version == (1, 0):
                _, _, dtype = np.lib.format.read_array_header_1_0(fh)
            elif version == (2, 0):
                _, _, dtype = np.lib.format.read_array_header_2_0(fh)
            else:
                return False
    except (ValueError, OSError, EOFError, SyntaxError):
        return False
    return bool(dtype.hasobject)


# --- ImageFolder trees and archives ---------------------------------------------------------


def read_image_tree(folder: Path, *, limit_per_class: int | None = None) -> RawImages:
    """Read an ImageFolder tree: ``<class>/<image>``, optionally under ``train/`` and ``test/``."""
    names = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel = Path(dirpath).relative_to(folder)
        names += [(rel / f).as_posix() for f in sorted(filenames) if _is_image_name(f)]
    if not names:
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
    layout, notes = _layout(names, folder)
    wanted = _select(layout, limit_per_class)
    records, skipped = _decode_all(((n, (folder / n).read_bytes) for n in names if n in wanted), layout, folder)
    return _assemble(records, skipped, notes, folder)


def read_archive(path: Path, *, limit_per_class: int | None = None, part: str | None = None) -> RawImages:
    """Read an ImageFolder tree from a tar archive without extracting it to disk."""
    records, skipped, notes = _archive_records(path, limit_per_class, part)
    return _assemble(records, skipped, notes, path)


def read_split_archives(archives: dict[str, Path], *, limit_per_class: int | None = None) -> RawImages:
    """Read ``train`` and ``test`` archives as one dataset whose test archive is its test split."""
    records, skipped, notes = [], [], []
    for part, archive in archives.items():
        r, s, n = _archive_records(archive, limit_per_class, part)
        records += r
        skipped += s
        notes += n
    return _assemble(records, skipped, notes, archives["train"].parent)


def _archive_records(
    path: Path, limit: int | None, part: str | None
) -> tuple[list[_Record], list[str], list[str]]:
    """Decode the chosen members of one archive, in archive order (one pass over the stream)."""
    try:
        with tarfile.open(path, "r:*") as tf:
            all_members = tf.getmembers()
            check_archive_members(all_members, path)
            members = [m for m in all_members if m.isfile() and _is_image_name(m.name)]
            if not members:
                raise DataError(
                    f"{path}: no images ({', '.join(IMAGE_EXTENSIONS)}) in the archive; "
                    "expected one folder of images per class"
                )
            layout, notes = _layout([m.name for m in members], path, part)
            wanted = _select(layout, limit)
            chosen = ((m.name, _member_reader(tf, m)) for m in members if m.name in wanted)
            records, skipped = _decode_all(chosen, layout, path)
    except _ARCHIVE_ERRORS as e:
        raise DataError(f"{path}: not a readable tar archive ({e}); expected a .tar.gz of class folders") from e
    return records, skipped, notes


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
    def read() -> bytes:
        f = tf.extractfile(member)
        return f.read() if f is not None else b""

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
            raise DataError(f"{where}: images lie loose at the top level; expected one subfolder of images per class")
        raise DataError(f"{where}: found a single class ({dirs[0][-1]!r}); need at least two class folders")
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
    if len({cls for _, cls in layout.values()}) < 2:
        raise DataError(f"{where}: found a single class; need at least two class folders")
    notes = [f"ignored {loose} images outside the class folders"] if loose else []
    return layout, notes


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
    items: Iterable[tuple[str, Callable[[], bytes]]], layout: dict[str, tuple[str, str]], where: Path
) -> tuple[list[_Record], list[str]]:
    """Decode each image; files that fail are skipped and listed, not fatal."""
    records, skipped = [], []
    for name, read in items:
        try:
            pixels = decode_image(read())
        except _DECODE_ERRORS as e:
            skipped.append(f"{where.name}:{name} ({type(e).__name__}: {e})")
            continue
        part, cls = layout[name]
        records.append(_Record(part, cls, name, pixels))
    return records, skipped


def decode_image(data: bytes) -> np.ndarray:
    """Decode image bytes with PIL to uint8 (H, W) for grey images or (H, W, 3) for colour."""
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        if im.mode.startswith("I;16"):
            return (np.asarray(im, dtype=np.uint16) >> 8).astype(np.uint8)
        if im.mode in _GREY_MODES:
            return np.asarray(im if im.mode == "L" else im.convert("L"))
        rgb = np.asarray(im if im.mode == "RGB" else im.convert("RGB"))
        # Palette images (GIF) are often grey; keep them one channel when they are.
        if im.mode == "P" and (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all():
            return np.ascontiguousarray(rgb[..., 0])
        return rgb


def _assemble(records: list[_Record], skipped: list[str], notes: list[str], where: Path) -> RawImages:
    """Order records (part, class, name), unify channels, resize every image to one square
    side the models take (see :func:`model_side`), and stack them."""
    if not records:
        raise DataError(f"{where}: no readable images ({len(skipped)} skipped as corrupt)")
    classes = sort_class_names({r.cls for r in records})
    if len(classes) < 2:
        raise DataError(f"{where}: found a single class ({classes[0]!r}); need at least two class folders")
    index = {c: i for i, c in enumerate(classes)}
    records.sort(key=lambda r: (r.part == "test", index[r.cls], r.name))
    notes = list(notes)
    pixels = [r.pixels for r in records]

    n_grey = sum(p.ndim == 2 for p in pixels)
    colour = n_grey < len(pixels)
    if colour and n_grey:
        notes.append(f"converted {n_grey} grayscale images to RGB (the source mixes grayscale and colour)")
    side = model_side(*Counter(p.shape[:2] for p in pixels).most_common(1)[0][0])
    note = _resize_note(pixels, side)
    if note:
        notes.append(note)
    pixels = [_conform(p, colour, side) for p in pixels]
    images = np.stack(pixels)
    images = images[:, None] if images.ndim == 3 else images.transpose(0, 3, 1, 2)
    labels = np.fromiter((index[r.cls] for r in records), dtype=np.int64, count=len(records))
    is_test = np.fromiter((r.part == "test" for r in records), dtype=bool, count=len(records))
    if skipped:
        notes.append(f"skipped {len(skipped)} unreadable image{'s' if len(skipped) != 1 else ''}")
    return RawImages(
        images=np.ascontiguousarray(images), labels=labels, classes=classes,
        is_test=is_test if is_test.any() else None, notes=notes, skipped=skipped,
    )


def model_side(h: int, w: int) -> int:
    """The square side every image is resized to, from the most common size ``h`` x ``w``:
    the larger side rounded up to a multiple of 4, at least 16.

    Every model in the zoo takes square images; a side that is a multiple of 4 pools evenly
    through seed-cnn's two max-pools, and 16 keeps vgg6's three pools above 1 pixel.
    """
    return max(MIN_SIDE, -(-max(h, w) // 4) * 4)


def _resize_note(pixels: list[np.ndarray], side: int) -> str | None:
    """Say on the card how many images were resized to ``side`` x ``side`` and from which sizes."""
    sizes = Counter((p.shape[1], p.shape[0]) for p in pixels if p.shape[:2] != (side, side))
    n = sum(sizes.values())
    if not n:
        return None
    shown = ", ".join(f"{w}x{h} x{k}" for (w, h), k in sizes.most_common(3))
    if len(sizes) > 3:
        shown += f" and {len(sizes) - 3} other sizes"
    return (f"resized {n} image{'s' if n != 1 else ''} to {side}x{side} (from {shown}; "
            "models take square images with a side that is a multiple of 4)")


def _conform(p: np.ndarray, colour: bool, side: int) -> np.ndarray:
    if p.shape[:2] != (side, side):
        p = np.asarray(Image.fromarray(p).resize((side, side), Image.BILINEAR))
    if colour and p.ndim == 2:
        p = np.repeat(p[..., None], 3, axis=2)
    return p


def sort_class_names(names: Iterable[str]) -> list[str]:
    """Class names in order; numerically when all are integers, so "10" follows "9"."""
    names = list(names)
    if all(n.isdigit() for n in names):
        return sorted(names, key=int)
    return sorted(names)


# --- helpers --------------------------------------------------------------------------------


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

