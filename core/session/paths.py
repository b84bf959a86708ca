"""Which folders a user of a shared server may load data from."""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path


class PathNotAllowed(ValueError):
    """A user-typed path lies outside the data roots the server allows."""


def data_roots(workspace: Path, extra: str | None = None) -> list[Path]:
    """The allowed data roots: always the workspace's ``data/`` folder, then each folder in
    ``extra`` (default ``$STEERBOARD_DATA_ROOTS``, ``os.pathsep``-separated), in order,
    without repeats.

    The current directory is a root only when it is listed: a server started from ``$HOME``
    or ``/`` must not let users read whatever lies there.
    """
    raw = extra if extra is not None else os.environ.get("STEERBOARD_DATA_ROOTS", "")
    roots = [(workspace / "data").resolve()]
    for part in raw.split(os.pathsep):
        if part.strip():
            root = Path(part.strip()).expanduser().resolve()
            if root not in roots:
                roots.append(root)
    return roots


def check_user_path(text: str, roots: Sequence[Path]) -> Path:
    """Resolve a typed path (``~`` expanded, relative to the current directory, symlinks and
    ``..`` resolved) and return it if it lies inside one of ``roots``; otherwise raise
    :class:`PathNotAllowed` with a message listing the allowed roots."""
    text = (text or "").strip()
    if not text:
        raise PathNotAllowed("Type the path of a data folder or archive.")
    if "\x00" in text:
        raise PathNotAllowed("That path contains a NUL character.")
    try:
        path = Path(text).expanduser()
    except RuntimeError as e:  # "~someone" for a user that does not exist
        raise PathNotAllowed(f"{text}: {e}; type a full path inside a data folder.") from e
    if not path.is_absolute():
        path = Path.cwd() / path
    resolved = path.resolve()
    for root in roots:
        if resolved == root or resolved.is_relative_to(root):
            return resolved
    allowed = ", ".join(str(r) for r in roots)
    raise PathNotAllowed(f"{text} is outside the folders this server reads data from ({allowed}). "
                         "Copy your data into one of them, or ask the admin to add a root to "
                         f"STEERBOARD_DATA_ROOTS ({os.pathsep}-separated) and restart the server.")
