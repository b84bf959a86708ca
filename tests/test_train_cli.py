"""python -m core.train writes a checkpoint the app can open."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from core.models import model_from_checkpoint

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_train_cli_bad_source_is_one_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "core.train", "--data", str(tmp_path / "nope"), "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("error:") and "Traceback" not in proc.stderr


def test_train_cli_defaults_are_the_app_base_settings():
    """No training flags: exactly the settings the app's base models use for that dataset."""
    from core.session.base_models import base_config
    from core.data import load_dataset
    from core.train import parser, train_config

    for source in ("biased-digits", "digits"):
        data = load_dataset(source)
        args = parser().parse_args(["--data", source, "--out", "unused"])
        assert train_config(args, data) == base_config(source, data)
    args = parser().parse_args(["--data", "biased-digits", "--out", "x", "--epochs", "2", "--lr", "0.1",
                                "--no-keep-best", "--seed", "4"])
    cfg = train_config(args, load_dataset("biased-digits"))
    assert (cfg.epochs, cfg.lr, cfg.keep_best, cfg.seed, cfg.batch_size) == (2, 0.1, False, 4, 64)


@pytest.mark.slow
def test_train_cli_biased_digits_run_records_its_base_settings(tmp_path):
    out = tmp_path / "base"
    proc = subprocess.run(
        [sys.executable, "-m", "core.train", "--data", "biased-digits", "--epochs", "1", "--limit-per-class", "10",
         "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["config"] == {"epochs": 1, "batch_size": 64, "lr": 0.005, "seed": 0, "keep_best": True}
    assert metrics["best_epoch"] == 1 and metrics["restored_best"] is False
    from core.models import read_checkpoint

    meta = read_checkpoint(metrics["checkpoint"])["meta"]
    assert meta["config"]["lr"] == 0.005 and meta["epochs"] == 1 and "message" not in meta


def test_train_cli_warns_and_records_when_it_kept_the_best_epoch(tmp_path, monkeypatch, capsys):
    import torch

    import core.train as train
    from core.engine import Callback, fit
    from core.models import build_model, read_checkpoint
    from support import make_tiny_dataset

    class Collapse(Callback):  # zero every weight after epoch 2: the last epochs are at chance
        def __init__(self, model):
            self.model = model

        def on_epoch(self, info):
            if info.epoch == 1:
                with torch.no_grad():
                    for p in self.model.parameters():
                        p.zero_()

    def collapsing(data, arch, *, config, callbacks, distributed):
        model = build_model(arch, 1, 16, data.num_classes, seed=config.seed)
        model.to("cpu")
        result = fit(model, data.split("train"), data.split("val"), config=config,
                     callbacks=[*callbacks, Collapse(model)])
        return model.cpu(), result

    monkeypatch.setattr(train, "load_dataset", lambda *a, **k: make_tiny_dataset())
    monkeypatch.setattr(train, "train_base_model", collapsing)
    assert train.main(["--data", "tiny", "--epochs", "4", "--lr", "0.05", "--batch-size", "16", "--device", "cpu",
                       "--out", str(tmp_path)]) == 0
    err = capsys.readouterr().err
    assert err.startswith("warning: validation accuracy fell from") and "kept epoch" in err
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["restored_best"] is True and metrics["val_acc"] > 0.9
    assert "kept epoch" in read_checkpoint(metrics["checkpoint"])["meta"]["message"]
