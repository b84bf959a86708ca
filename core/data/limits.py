"""Resource limits on user data: how much an archive may unpack to, how many members it may
hold, how big one member may be and how large a side images keep.

Each limit has a default and an environment variable that sets it (read on every call, so a
test or a server can change it without a restart):

- ``STEERBOARD_MAX_UNPACKED_BYTES`` (default 1 GiB): the bytes an upload or archive may unpack
  to, summed over every layer (a .zip, the .gz files inside it, a .tar.gz's stream);
- ``STEERBOARD_MAX_MEMBERS`` (default 200,000): the files and folders an archive may hold;
- ``STEERBOARD_MAX_MEMBER_BYTES`` (default 64 MiB): the size of one archive member or image
  file, and of one image once decoded (width x height x channels), since each is read whole;
- ``STEERBOARD_MAX_DECODED_BYTES`` (default 1 GiB): the decoded images of one dataset
  (uint8, after scaling down; the float32 tensor the models read is four times that);
- ``STEERBOARD_MAX_IMAGE_SIDE`` (default 256): larger images are scaled down so that their
  longer side is at most this (rounded down to a multiple of 4), and no model is built for a
  larger side.

Sizes accept a plain number of bytes or a number with a unit: ``2GiB``, ``512MB``, ``1.5G``.
"""
from __future__ import annotations

import os
import re
from typing import BinaryIO

from .spec import DataError

UNPACKED_ENV = "STEERBOARD_MAX_UNPACKED_BYTES"
MEMBERS_ENV = "STEERBOARD_MAX_MEMBERS"
MEMBER_BYTES_ENV = "STEERBOARD_MAX_MEMBER_BYTES"
SIDE_ENV = "STEERBOARD_MAX_IMAGE_SIDE"
DECODED_ENV = "STEERBOARD_MAX_DECODED_BYTES"

DEFAULT_MAX_UNPACKED_BYTES = 2**30
DEFAULT_MAX_MEMBERS = 200_000
DEFAULT_MAX_MEMBER_BYTES = 64 * 2**20
DEFAULT_MAX_IMAGE_SIDE = 256
DEFAULT_MAX_DECODED_BYTES = 2**30
_SMALLEST_SIDE = 16  # MIN_SIDE of the readers: a cap below it would not leave a usable image

_UNITS = {"": 1, "b": 1, "k": 2**10, "kb": 10**3, "kib": 2**10, "m": 2**20, "mb": 10**6, "mib": 2**20,
          "g": 2**30, "gb": 10**9, "gib": 2**30, "t": 2**40, "tb": 10**12, "tib": 2**40}
_SIZE = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?)\s*([a-zA-Z]*)\s*$")


def _env_size(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip().replace("_", "").replace(",", "")
    if not raw:
        return default
    m = _SIZE.match(raw)
    unit = m.group(2).lower() if m else ""
    if not m or unit not in _UNITS or float(m.group(1)) * _UNITS[unit] < 1:
        raise DataError(f"{name}={os.environ[name]!r}: expected a positive size such as 2GiB, 512MB or 1000000")
    return int(float(m.group(1)) * _UNITS[unit])


def max_unpacked_bytes() -> int:
    """The bytes one upload or archive may unpack to, over all its layers ($STEERBOARD_MAX_UNPACKED_BYTES)."""
    return _env_size(UNPACKED_ENV, DEFAULT_MAX_UNPACKED_BYTES)


def max_members() -> int:
    """The members (files and folders) one archive may hold ($STEERBOARD_MAX_MEMBERS)."""
    return _env_size(MEMBERS_ENV, DEFAULT_MAX_MEMBERS)


def max_member_bytes() -> int:
    """The bytes of one archive member or image file, read whole, and of one decoded image
    ($STEERBOARD_MAX_MEMBER_BYTES)."""
    return _env_size(MEMBER_BYTES_ENV, DEFAULT_MAX_MEMBER_BYTES)


def max_decoded_bytes() -> int:
    """The bytes one dataset's decoded uint8 images may take ($STEERBOARD_MAX_DECODED_BYTES)."""
    return _env_size(DECODED_ENV, DEFAULT_MAX_DECODED_BYTES)


def max_image_side() -> int:
    """The longest side images keep and models are built for ($STEERBOARD_MAX_IMAGE_SIDE,
    rounded down to a multiple of 4, at least 16)."""
    side = _env_size(SIDE_ENV, DEFAULT_MAX_IMAGE_SIDE)
    return max(_SMALLEST_SIDE, side // 4 * 4)


def size_text(n: int) -> str:
    """Bytes for a message, in binary units: "1.0 GiB", "64.0 MiB", "900 bytes"."""
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:,.1f} {unit}"
    return f"{n:,} bytes"


def too_big(what: str, cap: int) -> DataError:
    """The one-line refusal of an archive that unpacks to more than ``cap`` bytes."""
    return DataError(f"{what} unpacks to more than {size_text(cap)} (the cap); unpack fewer images, "
                     f"or set {UNPACKED_ENV} higher")


def too_many(what: str, count: int, cap: int) -> DataError:
    """The one-line refusal of an archive with more than ``cap`` members."""
    return DataError(f"{what} holds {count:,} members or more, more than {cap:,} (the cap); pack fewer files, "
                     f"or set {MEMBERS_ENV} higher")


def member_too_big(what: str, member: str, size: int | None, cap: int) -> DataError:
    """The one-line refusal of an archive member (or file) bigger than ``cap`` bytes."""
    told = f"is {size_text(size)}" if size is not None else "is bigger than that"
    return DataError(f"{what}: {member!r} {told}, more than {size_text(cap)} (the cap on one file, which is read "
                     f"whole); remove it, or set {MEMBER_BYTES_ENV} higher")


class Budget:
    """Bytes left to unpack from one upload or archive, shared by all its layers: ``take(n)``
    before writing ``n`` more bytes raises the refusal once the total would pass the cap."""

    def __init__(self, what: str, cap: int | None = None) -> None:
        self.what = what
        self.cap = max_unpacked_bytes() if cap is None else int(cap)
        self.used = 0

    def take(self, n: int) -> None:
        self.used += n
        if self.used > self.cap:
            raise too_big(self.what, self.cap)


def copy_counted(src: BinaryIO, dst: BinaryIO | None, budget: Budget, *, member_cap: int | None = None,
                 member: str = "", chunk: int = 1 << 20) -> int:
    """Copy ``src`` to ``dst`` (or only read it, with ``dst`` None) in chunks of at most
    ``chunk`` bytes, counting what is read (decompressed) against ``budget`` and, when given,
    ``member_cap``; raises before writing a chunk that would pass either. Returns the bytes copied."""
    done = 0
    while True:
        block = src.read(chunk)
        if not block:
            return done
        done += len(block)
        if member_cap is not None and done > member_cap:
            raise member_too_big(budget.what, member, None, member_cap)
        budget.take(len(block))
        if dst is not None:
            dst.write(block)


class DecodedBudget:
    """Bytes of decoded images left for one dataset: ``take(n)`` after decoding an image of
    ``n`` bytes raises the refusal once the total passes max_decoded_bytes(), so decoding
    stops there rather than after every image is in memory."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.cap = max_decoded_bytes()
        self.used = 0

    def take(self, n: int) -> None:
        self.used += n
        if self.used > self.cap:
            raise DataError(f"{self.what}: the images take more than {size_text(self.cap)} once decoded (the cap); "
                            f"open fewer (a limit per class) or smaller images, or set {DECODED_ENV} higher")
