"""Shared helpers for the benchmarks: interleaved timing, the machine, JSON output."""
from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as `python benchmarks/x.py` from anywhere
    sys.path.insert(0, str(ROOT))


def machine() -> dict:
    """CPU count, torch threads and device, reported beside absolute times."""
    return {
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
    }


def interleaved(ours: Callable[[], None], reference: Callable[[], None], *, pairs: int = 5, warmup: int = 1) -> dict:
    """Run ``ours`` and ``reference`` alternately (A B A B ...) after ``warmup`` pairs.
    Returns medians of each and the median of the pair-wise ratios."""
    for _ in range(warmup):
        ours()
        reference()
    a, b = [], []
    for i in range(pairs):
        # alternate which goes first, so neither side always runs on a warmer cache
        first, second = (ours, reference) if i % 2 == 0 else (reference, ours)
        t0 = time.perf_counter(); first(); t1 = time.perf_counter(); second(); t2 = time.perf_counter()
        (a.append(t1 - t0), b.append(t2 - t1)) if i % 2 == 0 else (b.append(t1 - t0), a.append(t2 - t1))
    ratios = [x / y for x, y in zip(a, b)]
    return {
        "ours_s": statistics.median(a),
        "reference_s": statistics.median(b),
        "ratio": statistics.median(ratios),
        "ours_all": a,
        "reference_all": b,
    }


def write_json(path: str | None, payload) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(payload, indent=2))


def print_table(rows: list[dict], keys: list[str]) -> None:
    widths = [max(len(k), *(len(_fmt(r.get(k))) for r in rows)) for k in keys]
    print("  ".join(k.ljust(w) for k, w in zip(keys, widths)))
    for r in rows:
        print("  ".join(_fmt(r.get(k)).ljust(w) for k, w in zip(keys, widths)))


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)
