"""core.train under torchrun (issue 15): two CPU processes with gloo on 127.0.0.1 train as one
process does with the same global batch, and the checkpoint rank 0 writes opens in the app."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from apptest_helpers import new_app, no_exceptions, workbench_of

from core.engine import shard
from core.models import model_from_checkpoint

ROOT = Path(__file__).resolve().parents[1]
# digits, 40 images per class: 240 training images, batches of 32 (the last of 16), 8 steps an epoch
ARGS = ["--data", "digits", "--model", "seed-cnn", "--epochs", "1", "--limit-per-class", "40", "--lr", "0.01"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def test_a_shard_is_every_world_th_index_padded_like_distributed_sampler():
    idx = torch.arange(10, 17)  # 7 indices over 2 ranks: padded with the first one
    parts = [shard(idx, r, 2) for r in range(2)]
    assert parts[0].tolist() == [10, 12, 14, 16] and parts[1].tolist() == [11, 13, 15, 10]
    assert sorted(torch.cat([shard(torch.arange(8), r, 4) for r in range(4)]).tolist()) == list(range(8))


def test_each_process_trains_on_its_shard_of_every_global_batch(tmp_path):
    """In the loop: this process's forward passes see its half of each global batch (a world of 2,
    of which this process is rank 1; the all-reduce runs in a one-process gloo group)."""
    import torch.distributed as dist

    from core.engine import DataParallel, EpochSettings, TrainConfig, make_optimizer, train_one_epoch
    from core.models import build_model

    model = build_model("seed-cnn", 1, 28, 10, seed=0)
    seen: list[torch.Tensor] = []

    class Recorder(torch.nn.Module):  # stands in for DistributedDataParallel: records, then forwards
        def forward(self, x):
            seen.append(x)
            return model(x)

    images, labels = torch.randn(70, 1, 28, 28), torch.randint(0, 10, (70,))
    config = TrainConfig(batch_size=32, lr=0.01)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        run = EpochSettings(config=config, optimizer=make_optimizer(model, config),
                            generator=torch.Generator().manual_seed(0), device=torch.device("cpu"),
                            parallel=DataParallel(1, 2, Recorder()))
        loss, acc, steps, _ = train_one_epoch(model, images, labels, run, epoch=0)
    finally:
        dist.destroy_process_group()
    order = torch.randperm(70, generator=torch.Generator().manual_seed(0)).split(32)  # the global batches
    assert steps == 3 and [len(x) for x in seen] == [16, 16, 3]  # 32, 32 and 6: half of each
    for x, batch in zip(seen, order):
        assert torch.equal(x, images[batch[1::2]])  # rank 1: every second index from position 1


def _train(out: Path, batch: int, processes: int = 1) -> dict:
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}", "-m"]
                if processes > 1 else [sys.executable, "-m"])
    proc = subprocess.run([*launcher, "core.train", *ARGS, "--batch-size", str(batch), "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=180, env=ENV)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert proc.stdout.count("epoch 1:") == 1  # only rank 0 prints
    return json.loads((out / "metrics.json").read_text())


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    return {"ddp": _train(tmp / "ddp", 32, processes=2), "single": _train(tmp / "single", 32),
            "half_batch": _train(tmp / "half", 16)}


@pytest.mark.slow
def test_two_gloo_processes_follow_the_single_process_loss_curve(runs):
    ddp, single = runs["ddp"], runs["single"]
    assert ddp["processes"] == 2 and single["processes"] == 1
    a, b = np.array(ddp["first_step_losses"]), np.array(single["first_step_losses"])
    assert len(a) == len(b) == 8  # the same number of global steps
    # Same global batch: the same curve to float noise (measured: <= 6e-7 over the first 7 steps; beyond
    # that the noise grows, as it does between any two runs whose sums are added in another order).
    assert np.abs(a[:6] - b[:6]).max() < 1e-4, (a, b)
    # The comparison can tell a wrong batch apart: each process's half batch alone drifts at once.
    c = np.array(runs["half_batch"]["first_step_losses"])
    assert np.abs(c[1:3] - b[1:3]).max() > 1e-3, (c, b)


@pytest.mark.slow  # its `runs` fixture trains two gloo processes (~12 s)
def test_the_checkpoint_of_the_distributed_run_opens_in_the_app(runs, tmp_path):
    ckpt = Path(runs["ddp"]["checkpoint"])
    ws = tmp_path / "workspace"
    (ws / "base").mkdir(parents=True)
    shutil.copy2(ckpt, ws / "base" / ckpt.name)  # digits__seed-cnn__s0.pt: the app's default base model
    at = new_app(ws, timeout=120).run()
    no_exceptions(at)
    wb = workbench_of(at)
    assert wb.current_version == 0 and wb.arch == "seed-cnn"
    saved = model_from_checkpoint(ckpt).state_dict()
    assert all(torch.equal(v.cpu(), saved[k]) for k, v in wb.model.state_dict().items())
