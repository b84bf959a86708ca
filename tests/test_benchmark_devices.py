"""Speed benchmarks take ``--device``; asked for a GPU on a machine without one, they say so
and exit 0 without writing a result (so a CPU-only CI can run the GPU command). The device is
checked before any data is read or model trained, so each of these runs takes seconds."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

# Every speed benchmark, with the arguments that select its timing (the others time by default).
SPEED = [
    ("engine_overhead", []),
    ("gradcam_speed", []),
    ("sampler_speed", []),
    ("monitor_overhead", []),
    ("freezing", []),
    ("latent_editing", ["--speed-only"]),
    ("grid_feedback", ["--speed-only"]),
    ("streamed_tsne", []),
    ("compile_speed", []),
]
IDS = [name for name, _ in SPEED]


def bench(name: str, *args: str) -> tuple[subprocess.CompletedProcess, float]:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, f"benchmarks/{name}.py", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    return proc, time.perf_counter() - t0


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: the benchmark would run")
@pytest.mark.parametrize(("name", "extra"), SPEED, ids=IDS)
def test_on_cuda_without_a_gpu_says_so_and_exits_0(tmp_path, name, extra):
    out = tmp_path / f"{name}.json"
    proc, seconds = bench(name, *extra, "--device", "cuda", "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "--device cuda: this machine has no such device (available: cpu" in proc.stdout
    assert not out.exists()  # nothing measured, nothing written over an earlier result
    assert seconds < 60, f"{name} took {seconds:.0f} s: the device is checked after something expensive"


@pytest.mark.slow
@pytest.mark.parametrize(("name", "extra"), SPEED, ids=IDS)
def test_a_misspelt_device_is_an_error_not_a_missing_gpu(tmp_path, name, extra):
    out = tmp_path / f"{name}.json"
    proc, seconds = bench(name, *extra, "--device", "cdua", "--json", str(out))
    assert proc.returncode == 2 and "--device cdua: not a device" in proc.stderr, proc.stderr
    assert not out.exists() and seconds < 60


# The two cheapest benchmarks at their smallest sizes (a few seconds each): the JSON says where
# they ran. Both record every row's device; sampler_speed also says that nothing of it can run on
# a GPU. The others need a dataset and training at their smallest sizes (20-30 s each here), so
# their CPU runs are left to the benchmarks' own --quick smoke runs.
CPU_RUNS = [
    ("gradcam_speed", ["--models", "seed-cnn", "--batch", "4", "--pairs", "1", "--no-pool"]),
    ("sampler_speed", ["--n", "200", "--k", "4", "--rounds", "1"]),
]


@pytest.mark.slow
@pytest.mark.parametrize(("name", "args"), CPU_RUNS, ids=[n for n, _ in CPU_RUNS])
def test_on_the_cpu_the_json_records_the_device(tmp_path, name, args):
    out = tmp_path / f"{name}.json"
    proc, _ = bench(name, *args, "--device", "cpu", "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(out.read_text())
    assert rows and all(r["params"]["device"] == "cpu" and "device_name" not in r["params"] for r in rows)
    assert all(r["provenance"]["device"] == "cpu" and r["ours_s"] > 0 and r["reference_s"] > 0 for r in rows)
    if name == "gradcam_speed":  # the forward pass alone, timed against the same reference: the ratio's floor
        assert all(r["forward_s"] > 0 and r["floor_ratio"] > 0 for r in rows if r["name"].startswith("gradcam_"))
    if name == "sampler_speed":  # numpy / scikit-learn: said plainly, whatever --device was
        assert all("CPU" in r["params"]["device_note"] and r["params"]["timed_on"] == "cpu" for r in rows)


def test_device_params_name_the_gpu_only_on_cuda(monkeypatch):
    spec = importlib.util.spec_from_file_location("bench_common", ROOT / "benchmarks" / "_common.py")
    common = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(common)
    assert common.device_params("cpu") == {"device": "cpu"}
    assert common.device_params("cpu", "t-SNE on the CPU") == {"device": "cpu", "device_note": "t-SNE on the CPU"}
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: f"Test GPU {torch.device(device)}")
    assert common.device_params("cuda:1") == {"device": "cuda:1", "device_name": "Test GPU cuda:1"}


@pytest.mark.slow
def test_compile_speed_refuses_an_unknown_option(tmp_path):
    proc, _ = bench("compile_speed", "--options", "compile,fp8", "--json", str(tmp_path / "c.json"))
    assert proc.returncode == 2 and "--options" in proc.stderr and "fp8" in proc.stderr
    assert not (tmp_path / "c.json").exists()
