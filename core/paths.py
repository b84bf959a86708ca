"""Which folders a user of a shared server may load data from."""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path


class PathNotAllowed(ValueError):
    """A user-typed path lies outside the data roots the server allows."""


def data_roots(workspace: Path, extra: str | None = None) -> list[Path]:
    """The allowed data roots: ``$STEERBOARD_DATA_ROOTS`` (``os.pathsep``-separated) if set,
    else the workspace's ``data/`` folder and the current directory."""
    raw = extra if extra is not None else os.environ.get("STEERBOARD_DATA_ROOTS")
    if raw:
        return [Path(p).expanduser().resolve() for p in raw.split(os.pathsep) if p.strip()]
    return [(workspace / "data").resolve(), Path.cwd().resolve()]


def check_user_path(text: str, roots: Sequence[Path]) -> Path:
    """Resolve a typed path (``~`` expanded, relative to the current directory, symlinks and
    ``..`` resolved) and return it if it lies inside one of ``roots``; otherwise raise
    :class:`PathNotAllowed` with a message listing the allowed roots."""
    text = (text or "").strip()
    if not text:
        raise PathNotAllowed("Type the path of a data folder or archive.")
    if "\x00" in text:
        raise PathNotAllowed("That path contains a NUL character.")
    path = Path(text).expanduser()
    if not path.is_absolute():
        path = Path.cwd() / path
    resolved = path.resolve()
    for root in roots:
        if resolved == root or resolved.is_relative_to(root):
            return resolved
    allowed = ", ".join(str(r) for r in roots)
    raise PathNotAllowed(f"{text} is outside the folders this server reads data from ({allowed}). "
                         "Copy or link your data into one of them, or ask the admin to add a root "
                         "with STEERBOARD_DATA_ROOTS.")
