"""Write a loaded dataset as an ImageFolder tree with a masks/ mirror, the layout
:func:`core.data.load_dataset` reads back: ``OUT/train/<class>/<id>.png`` (train, val and pool
rows), ``OUT/test/<class>/<id>.png``, and ``OUT/masks/train/...``, ``OUT/masks/test/...``."""
from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .folders import MASKS_DIR
from .spec import DataError, ImageDataset

TRAIN_SPLITS = ("train", "val", "pool")  # a reloaded tree carves these again from train/


@dataclass(frozen=True)
class ExportSummary:
    """What :func:`export_image_folder` wrote."""

    out: Path
    train: int
    test: int
    masks: int
    left_out: dict[str, int]  # splits with no place in an ImageFolder tree (e.g. test_aligned) -> rows

    def describe(self) -> str:
        """One line for the command line."""
        line = f"wrote {self.train} train and {self.test} test images, {self.masks} masks, to {self.out}"
        if self.left_out:
            line += "; left out " + ", ".join(f"{name} ({n} rows)" for name, n in self.left_out.items())
        return line


def export_image_folder(ds: ImageDataset, out: str | Path) -> ExportSummary:
    """Write ``ds`` under ``out`` (which must not exist or be empty) as PNGs named by row id.

    Rows without a mask get no mask file, so loading the tree flags them again. Ids are
    zero-padded to one width so that a reload, which orders images by class and file name,
    keeps the original order within each class. The tree is written to a temporary folder
    beside ``out`` and renamed into place, so a failed export leaves nothing half-written.
    """
    out = Path(out).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(f"{out}: already exists and is not an empty folder; expected a new folder to export into")
    for cls in ds.classes:
        if not cls or cls.startswith(".") or any(c in cls for c in '/\\:\0') or cls == MASKS_DIR:
            raise DataError(f"{ds.name}: class name {cls!r} cannot be a folder name; expected plain names")
    parts = {"train": _rows(ds, TRAIN_SPLITS), "test": _rows(ds, ("test",))}
    left_out = {name: len(idx) for name, idx in ds.splits.items() if name not in (*TRAIN_SPLITS, "test")}
    width = len(str(max(len(ds.images) - 1, 0)))
    has_mask = ds.rows_with_mask()
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".partial"))
    n_masks = 0
    try:
        for part, rows in parts.items():
            for cls in ds.classes:
                (staging / part / cls).mkdir(parents=True, exist_ok=True)
            for row in rows:
                rel = Path(part, ds.classes[int(ds.labels[row])], f"{row:0{width}d}.png")
                _image(ds.images[row]).save(staging / rel)
                if ds.masks is not None and has_mask[row]:
                    mask_path = staging / MASKS_DIR / rel
                    mask_path.parent.mkdir(parents=True, exist_ok=True)
                    Image.fromarray((ds.masks[row, 0].numpy() > 0.5).astype(np.uint8) * 255).save(mask_path)
                    n_masks += 1
        if out.exists():
            out.rmdir()  # empty, checked above
        os.replace(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return ExportSummary(out, len(parts["train"]), len(parts["test"]), n_masks, left_out)


def _rows(ds: ImageDataset, splits: tuple[str, ...]) -> np.ndarray:
    chosen = [ds.splits[s] for s in splits if s in ds.splits]
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, np.int64)


def _image(image: torch.Tensor) -> Image.Image:
    """Float (C, H, W) in [0, 1] -> an 8-bit grey or RGB PIL image (rounded, as a reload divides by 255)."""
    pixels = image.clamp(0, 1).mul(255).round().to(torch.uint8).numpy()
    return Image.fromarray(pixels[0] if pixels.shape[0] == 1 else pixels.transpose(1, 2, 0))
