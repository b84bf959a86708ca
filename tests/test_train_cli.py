"""python -m core.train writes a checkpoint the app can open."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from core.models import model_from_checkpoint

ROOT = Path(__file__).resolve().parents[1]


def test_train_cli_writes_loadable_checkpoint(tmp_path):
    out = tmp_path / "base"
    proc = subprocess.run(
        [sys.executable, "-m", "core.train", "--data", "digits", "--model", "seed-cnn", "--epochs", "1",
         "--limit-per-class", "40", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "epoch 1:" in proc.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    model = model_from_checkpoint(metrics["checkpoint"])
    assert model.info.arch == "seed-cnn" and model.info.num_classes == 10
    assert 0.0 <= metrics["test_acc"] <= 1.0
    assert metrics["precision"] == "fp32" and metrics["compiled"] is False  # both options off by default


def test_train_cli_bf16_is_recorded_and_an_unknown_precision_refused(tmp_path):
    out = tmp_path / "base"
    args = [sys.executable, "-m", "core.train", "--data", "digits", "--model", "seed-cnn", "--epochs", "1",
            "--limit-per-class", "20", "--out", str(out)]
    proc = subprocess.run(args + ["--precision", "bf16"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["precision"] == "bf16" and model_from_checkpoint(metrics["checkpoint"]).info.arch == "seed-cnn"
    assert all(loss == loss for loss in metrics["first_step_losses"])  # finite, not NaN
    bad = subprocess.run(args + ["--precision", "fp16"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "invalid choice: 'fp16'" in bad.stderr


def test_train_cli_bad_source_is_one_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "core.train", "--data", str(tmp_path / "nope"), "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("error:") and "Traceback" not in proc.stderr
