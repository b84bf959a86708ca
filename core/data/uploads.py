"""Uploaded datasets: validate what a browser sent and store it under the workspace's
``data/uploads/`` folder, where the normal readers open it.

Accepted, as one upload:

- a ``.zip`` of an ImageFolder tree (one folder per class; an optional ``masks/`` folder as
  the attention page defines it): unpacked into a folder, member by member, after every
  member passed the same checks as a tar archive's (no absolute path, no ``..``, no links);
- a ``.tar.gz`` / ``.tgz`` of the same: kept as it is (the readers open tar archives without
  unpacking them) once its members pass the checks;
- one or more Quick Draw ``.npy`` files (one class each): kept in a folder, each checked to be
  a plain numeric array (``allow_pickle=False``: a pickled payload is refused).

Every archive is held to the limits of :mod:`core.data.limits`: what it unpacks to, summed
over every layer (a zip's members and the ``.gz`` / ``.tar.gz`` files inside it, which the
readers decompress later; a .tar.gz's stream), is counted as it is decompressed and may not
pass max_unpacked_bytes(); it holds at most max_members() members, none over
max_member_bytes(). A refused upload leaves nothing on disk.

The stored name carries a hash of the content, so the same upload twice is stored once. The
caller opens the returned path like a typed one; when that fails it calls
:func:`discard_upload`, so a bad upload leaves nothing behind.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import re
import shutil
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

import numpy as np

from core.data.folders import LAYOUT_EXAMPLE, _is_image_name, check_archive_members, check_npy_header, list_members
from core.data.limits import Budget, copy_counted, max_member_bytes, max_members, member_too_big, too_big, too_many
from core.data.spec import DataError, Progress, counting

UPLOADS_DIR = "uploads"
_SAFE = re.compile(r"[^A-Za-z0-9._ -]+")


def _fresh_part_dir(out: Path) -> Path:
    """An empty ``.<name>.part`` folder beside ``out`` to write into before renaming it to ``out``
    (what a crash leaves there is a part folder, never a half-written ``out``)."""
    tmp = out.parent / f".{out.name}.part"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def upload_kind(name: str) -> str | None:
    """"zip", "tar" or "npy" from a file name, or None for anything else."""
    low = name.lower()
    if low.endswith(".zip"):
        return "zip"
    if low.endswith((".tar.gz", ".tgz", ".tar")):
        return "tar"
    if low.endswith(".npy"):
        return "npy"
    return None


def _safe_stem(name: str) -> str:
    base = PurePosixPath(name.replace("\\", "/")).name
    for suffix in (".tar.gz", ".tgz", ".tar", ".zip", ".npy"):
        if base.lower().endswith(suffix):
            base = base[: -len(suffix)]
            break
    return (_SAFE.sub("_", base).strip(" ._") or "upload")[:60]


def store_upload(files: Sequence[tuple[str, bytes]], data_dir: str | Path, *,
                 max_unpacked_bytes: int | None = None, progress: Progress | None = None) -> Path:
    """Validate ``files`` ((name, content) pairs, as uploaded) and store them under
    ``data_dir/uploads``; returns the path to open. Raises :class:`DataError` with a
    one-line reason (and stores nothing) when the upload is not one of the accepted forms or
    passes a limit (``max_unpacked_bytes`` overrides :func:`core.data.limits.max_unpacked_bytes`).
    ``progress`` hears the members of a .zip as they are unpacked, ending at 1.0."""
    if not files:
        raise DataError("Nothing was uploaded; choose a .zip or .tar.gz of class folders, or Quick Draw .npy files.")
    kinds = {upload_kind(name) for name, _ in files}
    if None in kinds:
        bad = next(name for name, _ in files if upload_kind(name) is None)
        raise DataError(f"{bad}: not a .zip, .tar.gz or .npy file; upload a .zip or .tar.gz of class folders, "
                        "or Quick Draw .npy files")
    if len(kinds) > 1 or (kinds != {"npy"} and len(files) > 1):
        raise DataError("Upload one archive (.zip or .tar.gz), or any number of Quick Draw .npy files, not a mix.")
    digest = hashlib.sha256()
    for name, data in sorted(files):
        digest.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
    tag = digest.hexdigest()[:10]
    root = Path(data_dir) / UPLOADS_DIR
    root.mkdir(parents=True, exist_ok=True)
    kind = kinds.pop()
    name, data = files[0]
    if progress is not None:
        progress(0.0, f"checking {name}" + (f" and {len(files) - 1} more" if len(files) > 1 else ""))
    budget = Budget(name, max_unpacked_bytes)
    if kind == "tar":
        out = _store_tar(name, data, root, tag, budget, progress)
    elif kind == "zip":
        out = _store_zip(name, data, root, tag, budget, progress)
    else:
        out = _store_npy(files, root, tag)
    if progress is not None:
        progress(1.0, f"stored {name}")
    return out


def discard_upload(path: str | Path, data_dir: str | Path) -> None:
    """Remove a stored upload (file or folder) that could not be opened. Only paths inside
    ``data_dir/uploads`` are touched."""
    root = (Path(data_dir) / UPLOADS_DIR).resolve()
    p = Path(path).resolve()
    top = p
    while top.parent != root and top.parent != top:  # the folder an unpacked zip went into
        top = top.parent
    if top.parent != root:
        return
    if top.is_dir():
        shutil.rmtree(top, ignore_errors=True)
    else:
        top.unlink(missing_ok=True)


def _store_tar(name: str, data: bytes, root: Path, tag: str, budget: Budget,
               progress: Progress | None = None) -> Path:
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tf:
            members = list_members(tf, name, len(data), progress, budget)  # the limits, counted as it decompresses
            check_archive_members(members, Path(name), action="store")
    except tarfile.TarError as exc:
        raise DataError(f"{name}: not a readable tar archive ({exc}); expected a .tar.gz of class folders") from exc
    except (EOFError, OSError) as exc:  # gzip stream cut short: an interrupted upload
        raise DataError(f"{name}: the archive is truncated or damaged ({exc}); upload it again") from exc
    out = root / f"{_safe_stem(name)}-{tag}.tar.gz"
    if not out.exists():
        tmp = out.with_suffix(".part")
        tmp.write_bytes(data)
        tmp.replace(out)
    return out


def _zip_member_problem(info: zipfile.ZipInfo) -> str | None:
    name = info.filename
    parts = PurePosixPath(name.replace("\\", "/")).parts
    drive = len(name) > 1 and name[0].isalpha() and name[1] == ":"
    if name.startswith(("/", "\\")) or drive or ".." in parts:
        return "points outside the archive"
    mode = info.external_attr >> 16  # Unix mode, when the zip was made on Unix; else 0
    if stat.S_ISLNK(mode):
        return "is a symbolic link"
    if stat.S_IFMT(mode) and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        return "is a device file or pipe"
    return None


def _store_zip(name: str, data: bytes, root: Path, tag: str, budget: Budget,
               progress: Progress | None = None) -> Path:
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, OSError) as exc:
        raise DataError(f"{name}: not a readable .zip file ({exc}); was the upload cut short?") from exc
    with zf:
        infos = zf.infolist()
        count_cap, member_cap = max_members(), max_member_bytes()
        if len(infos) > count_cap:
            raise too_many(name, len(infos), count_cap)
        declared = 0
        for info in infos:
            why = _zip_member_problem(info)
            if why:
                raise DataError(f"archive member {info.filename!r} {why}; refusing to store {name} "
                                "(an archive of images should hold only folders and regular files)")
            if info.file_size > member_cap:
                raise member_too_big(name, info.filename, info.file_size, member_cap)
            declared += info.file_size
        if declared > budget.cap:  # what the headers say is enough to refuse; what they hide is counted below
            raise too_big(name, budget.cap)
        kept = [(info, parts) for info, parts in ((i, _member_parts(i)) for i in infos) if parts is not None]
        if not any(not info.is_dir() for info, _ in kept):
            raise DataError(f"{name}: the archive holds no files; zip the folder that holds your class folders "
                            f"({LAYOUT_EXAMPLE}) and upload that zip")
        out = root / f"{_safe_stem(name)}-{tag}"
        if not out.exists():
            tmp = _fresh_part_dir(out)
            tick = counting(progress, len(kept), f"unpacking {name}")
            try:
                packed = []
                for done, (info, parts) in enumerate(kept, 1):
                    tick(done)
                    target = tmp.joinpath(*parts)
                    if info.is_dir():
                        target.mkdir(parents=True, exist_ok=True)
                        continue
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with zf.open(info) as src, open(target, "wb") as dst:
                        copy_counted(src, dst, budget, member_cap=member_cap, member=info.filename)
                    if target.name.lower().endswith((".gz", ".tgz")):
                        packed.append(target)
                for f in packed:  # the readers decompress these later: their bytes count too
                    _count_gzip(f, budget, progress)
            except (zipfile.BadZipFile, OSError, EOFError) as exc:
                shutil.rmtree(tmp, ignore_errors=True)
                raise DataError(f"{name}: could not unpack ({exc}); the upload may be damaged") from exc
            except BaseException:  # a limit passed (or the server stopping): nothing half-written stays
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            tmp.replace(out)
    return _descend(out)


def _count_gzip(path: Path, budget: Budget, progress: Progress | None = None) -> None:
    """Decompress the .gz file ``path`` (a member of an upload: MNIST's idx files, a
    cifar-10-python.tar.gz, train.tar.gz) without keeping the output, counting its bytes
    against ``budget``: what a reader will decompress from it later is that much. One that is
    not a readable gzip file is left for its reader to report."""
    if progress is not None:
        progress(1.0, f"checking what {path.name} unpacks to")
    try:
        with gzip.open(path, "rb") as src:
            copy_counted(src, None, budget)
    except (OSError, EOFError, zlib.error):
        return


def _member_parts(info: zipfile.ZipInfo) -> list[str] | None:
    """The path parts a zip member is unpacked to, or None for what is not unpacked (macOS
    resource forks, empty names)."""
    parts = [p for p in PurePosixPath(info.filename.replace("\\", "/")).parts if p not in ("", ".")]
    if not parts or parts[0] == "__MACOSX" or parts[-1].startswith("._"):
        return None
    return parts


# A folder holding one of these is a torchvision root: it opens there, not below.
_TORCHVISION_FOLDERS = ("MNIST", "FashionMNIST", "cifar-10-batches-py")


def _descend(folder: Path) -> Path:
    """A zip of ``mydata/cat/..., mydata/dog/...`` opens at ``mydata``: go down while a folder
    holds exactly one folder and no files, unless that folder holds images itself (a single
    class folder, for the reader to name as such), is ``masks`` or is a torchvision set's."""
    while True:
        entries = [e for e in folder.iterdir() if not e.name.startswith(".")]
        if len(entries) != 1 or not entries[0].is_dir() or entries[0].name in ("masks", *_TORCHVISION_FOLDERS):
            return folder
        if any(f.is_file() and _is_image_name(f.name) for f in entries[0].iterdir()):
            return folder
        folder = entries[0]


def _store_npy(files: Sequence[tuple[str, bytes]], root: Path, tag: str) -> Path:
    stems = [_safe_stem(name) for name, _ in files]
    if len(set(stems)) != len(stems):
        raise DataError("Two uploaded .npy files have the same class name; give each class one file.")
    for (name, data), stem in zip(files, stems):
        check_npy_header(io.BytesIO(data), len(data), name)  # pickles and headers claiming more than is there
        try:
            arr = np.load(io.BytesIO(data), allow_pickle=False, mmap_mode=None)
        except ValueError as exc:
            raise DataError(f"{name}: not a readable .npy file ({exc}); save the array with np.save") from exc
        except (OSError, EOFError, MemoryError) as exc:
            raise DataError(f"{name}: not a readable .npy file ({type(exc).__name__}: {exc})") from exc
        if arr.dtype.kind not in "uif" or arr.ndim not in (2, 3):
            raise DataError(f"{name}: expected Quick Draw bitmaps (N x 784 or N x 28 x 28 numbers), "
                            f"got {arr.dtype} of shape {arr.shape}")
    out = root / f"quickdraw-{tag}"
    if not out.exists():
        tmp = _fresh_part_dir(out)
        for (_, data), stem in zip(files, stems):
            (tmp / f"{stem}.npy").write_bytes(data)
        tmp.replace(out)
    return out
