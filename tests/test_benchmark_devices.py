"""Speed benchmarks take ``--device``; asked for a GPU on a machine without one, they say so
and exit 0 without writing a result (so a CPU-only CI can run the GPU command)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: the benchmark would run")
def test_engine_overhead_on_cuda_without_a_gpu_says_so_and_exits_0(tmp_path):
    out = tmp_path / "engine.json"
    proc = subprocess.run([sys.executable, "benchmarks/engine_overhead.py", "--device", "cuda", "--json", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "--device cuda: this machine has no such device (available: cpu" in proc.stdout
    assert not out.exists()  # nothing measured, nothing written over an earlier result


def test_a_misspelt_device_is_an_error_not_a_missing_gpu():
    proc = subprocess.run([sys.executable, "benchmarks/engine_overhead.py", "--device", "cdua"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--device cdua: not a device" in proc.stderr
