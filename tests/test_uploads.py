"""Uploaded datasets: a .zip / .tar.gz ImageFolder or Quick Draw .npy files are validated,
stored under data/uploads and open like a typed path; bad uploads are refused with a
one-line reason and leave nothing behind."""
from __future__ import annotations

import io
import pickle
import stat
import zipfile

import numpy as np
import pytest
from PIL import Image
from support import tgz_of

from core.data import load_dataset
from core.data.spec import DataError
from core.data.uploads import UPLOADS_DIR, discard_upload, store_upload


def _png(value: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((12, 12), value, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _tree(prefix: str = "") -> dict[str, bytes]:
    return {f"{prefix}{cls}/{i}.png": _png(40 * c + i) for c, cls in enumerate(["cat", "dog"]) for i in range(6)}


def _zip(members: dict[str, bytes], links: dict[str, str] | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
        for name, target in (links or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, target)
    return buf.getvalue()


def _npy(arr) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=True)
    return buf.getvalue()


@pytest.mark.parametrize("prefix", ["", "mydata/"])
def test_zip_image_folder_is_unpacked_and_opens(tmp_path, prefix):
    path = store_upload([("pets.zip", _zip(_tree(prefix)))], tmp_path)
    assert path.is_dir() and (tmp_path / UPLOADS_DIR) in path.parents
    ds = load_dataset(str(path))
    assert ds.classes == ["cat", "dog"] and ds.card.total == 12
    assert store_upload([("pets.zip", _zip(_tree(prefix)))], tmp_path) == path  # same upload: stored once


def test_tar_gz_is_kept_and_opens(tmp_path):
    path = store_upload([("pets.tar.gz", tgz_of(_tree()))], tmp_path)
    assert path.is_file() and path.name.endswith(".tar.gz")
    assert load_dataset(str(path)).classes == ["cat", "dog"]


def test_quickdraw_npy_files_are_stored_as_a_folder(tmp_path):
    g = np.random.default_rng(0)
    files = [(f"{c}.npy", _npy((g.random((30, 784)) * 255).astype(np.uint8))) for c in ("cat", "sun")]
    path = store_upload(files, tmp_path)
    assert sorted(p.name for p in path.iterdir()) == ["cat.npy", "sun.npy"]
    assert load_dataset(str(path)).classes == ["cat", "sun"]


@pytest.mark.parametrize("files, words", [
    ([], "Nothing was uploaded"),
    ([("notes.txt", b"hi")], "not a .zip, .tar.gz or .npy"),
    ([("a.zip", b"x"), ("b.npy", b"y")], "not a mix"),
    ([("evil.zip", _zip({"../../escape.png": _png(1)}))], "points outside"),
    ([("evil.zip", _zip({"/etc/x.png": _png(1)}))], "points outside"),
    ([("link.zip", _zip(_tree(), links={"cat/l.png": "/etc/passwd"}))], "symbolic link"),
    ([("evil.tar.gz", tgz_of({"../x.png": _png(1)}))], "points outside"),
    ([("cut.tar.gz", tgz_of(_tree())[:200])], "truncated"),
    ([("cut.zip", _zip(_tree())[:100])], "not a readable .zip"),
    ([("pickle.npy", _npy(np.array([{"a": 1}], dtype=object)))], "pickle"),
    ([("text.npy", _npy(np.array(["a", "b"])))], "expected Quick Draw bitmaps"),
])
def test_bad_uploads_are_refused_and_leave_nothing(tmp_path, files, words):
    with pytest.raises(DataError, match=words):
        store_upload(files, tmp_path)
    uploads = tmp_path / UPLOADS_DIR
    assert not uploads.exists() or not any(uploads.iterdir())
    assert not (tmp_path.parent / "escape.png").exists()


def test_zip_bomb_is_refused_before_unpacking(tmp_path):
    big = _zip({"cat/a.png": b"\0" * 3_000_000, "dog/b.png": b"\0" * 3_000_000})
    assert len(big) < 3_000_000  # it compresses well: only the declared sizes give it away
    with pytest.raises(DataError, match="unpacks to more than"):
        store_upload([("bomb.zip", big)], tmp_path, max_unpacked_bytes=5_000_000)
    assert not any((tmp_path / UPLOADS_DIR).iterdir())


def test_pickled_object_never_runs(tmp_path):
    class Boom:
        def __reduce__(self):
            return (print, ("pwned",))

    payload = io.BytesIO()
    np.save(payload, np.array([Boom()], dtype=object), allow_pickle=True)
    assert b"pwned" in payload.getvalue() or pickle.dumps(Boom())
    with pytest.raises(DataError, match="pickle"):
        store_upload([("boom.npy", payload.getvalue())], tmp_path)


def test_discard_removes_only_uploads(tmp_path):
    path = store_upload([("pets.zip", _zip(_tree("inner/")))], tmp_path)
    assert path.name == "inner"
    discard_upload(path, tmp_path)
    assert not any((tmp_path / UPLOADS_DIR).iterdir())
    outside = tmp_path / "keep.txt"
    outside.write_text("x")
    discard_upload(outside, tmp_path)
    assert outside.exists()
