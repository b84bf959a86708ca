"""Helpers the test modules import by name (``from support import ...``).

They live here and not in ``conftest.py``: ``tests/`` and ``tests/browser/`` both have a
``conftest.py``, and with pytest's default import mode whichever was loaded last owns the name
``conftest`` in ``sys.modules``, so ``from conftest import X`` broke depending on the order of
collection (it did on CI).
"""
from __future__ import annotations

import importlib
import io
import sys
import tarfile
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def benchmark(name: str) -> ModuleType:
    """``benchmarks/<name>.py`` as a module (benchmarks/ is not a package; its scripts import
    ``_common`` as a top-level module, so the folder goes on ``sys.path`` once)."""
    folder = str(ROOT / "benchmarks")
    if folder not in sys.path:
        sys.path.insert(0, folder)
    return importlib.import_module(name)


def make_tiny_dataset(n_per_class: int = 24, classes: int = 4, size: int = 16, channels: int = 1, seed: int = 0):
    """Images whose class is a bright bar in one of ``classes`` positions, plus noise:
    learnable in a few steps, so tests of training run in seconds."""
    from core.data.spec import DatasetCard, ImageDataset

    g = torch.Generator().manual_seed(seed)
    n = n_per_class * classes
    labels = torch.arange(classes).repeat_interleave(n_per_class)
    images = 0.2 * torch.rand(n, channels, size, size, generator=g)
    band = size // classes
    for c in range(classes):
        images[labels == c, :, c * band : (c + 1) * band, :] += 0.7
    images = images.clamp(0, 1)
    masks = torch.zeros(n, 1, size, size)
    for c in range(classes):
        masks[labels == c, :, c * band : (c + 1) * band, :] = 1
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    cuts = [int(n * 0.5), int(n * 0.65), int(n * 0.85)]
    splits = dict(zip(("train", "val", "test", "pool"), np.split(order, cuts)))
    names = [f"c{i}" for i in range(classes)]
    counts = {s: {names[k]: int((labels[idx] == k).sum()) for k in range(classes)} for s, idx in splits.items()}
    card = DatasetCard("tiny", "generated", "n/a", names, (channels, size, size), n, counts)
    return ImageDataset("tiny", images, labels, names, {k: np.sort(v) for k, v in splits.items()}, card, masks)


def shared_data_or_skip(name: str) -> Path:
    """Path to ``../shared/data/<name>``, or skip the test when it is absent."""
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"shared real data not available at {path}")
    return path


def tgz_of(members: dict[str, bytes]) -> bytes:
    """A .tar.gz holding ``members`` (name -> content) as given."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def live_ids(registry) -> list[str]:
    """The ids of the workbenches a registry holds open now."""
    with registry._lock:
        return list(registry._live)


def predict_ids(model, data, ids) -> np.ndarray:
    """Predicted class of each example id (in the order given)."""
    from core.engine import predict

    logits, _ = predict(model, data.images[torch.as_tensor(np.asarray(ids, dtype=np.int64))])
    return logits.argmax(1).numpy()
