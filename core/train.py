"""Train a base model headless and write a checkpoint the app can open.

    python -m core.train --data digits --model seed-cnn --out runs/digits

Without --epochs, --batch-size, --lr or --keep-best/--no-keep-best it trains with the settings the app's
base models use for that dataset (core.session.base_models.base_config), so the checkpoint is the one the
app would train.

Data-parallel on several processes or GPUs with PyTorch's own launcher (DistributedDataParallel;
NCCL with one GPU per process, gloo on CPUs); ``--batch-size`` is then the global batch, and only
rank 0 prints, evaluates and writes:

    torchrun --standalone --nproc-per-node=2 -m core.train --data digits --model seed-cnn --out runs/digits
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from pathlib import Path

import torch

from core.session.base_models import base_config, base_meta, config_meta
from core.data import DataError, ImageDataset, load_dataset
from core.engine import PRECISIONS, Callback, EpochInfo, TrainConfig
from core.models import list_models, save_checkpoint
from core.session.workbench import base_key, train_base_model, version_metrics


class _StepLosses(Callback):
    """The loss of the first ``keep`` steps (the global batch's under torchrun), for metrics.json."""

    def __init__(self, keep: int = 200) -> None:
        self.keep, self.losses = keep, []

    def on_step(self, info) -> None:
        if len(self.losses) < self.keep:
            self.losses.append(info.loss)


def init_distributed(device: str | None) -> tuple[int, int, str | None]:
    """Join the process group torchrun set up (``WORLD_SIZE`` > 1 in the environment): NCCL with
    the GPU ``LOCAL_RANK`` when CUDA is there and not refused by ``device``, else gloo on the
    CPU. Returns (rank, world size, the device this process trains on); (0, 1, ``device``)
    without torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world < 2:
        return 0, 1, device
    import torch.distributed as dist

    cuda = torch.cuda.is_available() and (device is None or device.startswith("cuda"))
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    elif device is None or device == "auto":
        device = "cpu"
    dist.init_process_group("nccl" if cuda else "gloo")
    return dist.get_rank(), dist.get_world_size(), device


class _Printer(Callback):
    def on_epoch(self, info: EpochInfo) -> None:
        val = "" if info.val_acc is None else f"  val acc {100 * info.val_acc:.2f}%"
        print(f"epoch {info.epoch + 1}: loss {info.train_loss:.4f}  train acc {100 * info.train_acc:.2f}%{val}"
              f"  ({info.epoch_time:.1f}s)", flush=True)


def parser() -> argparse.ArgumentParser:
    """The command line of ``python -m core.train``."""
    ap = argparse.ArgumentParser(prog="python -m core.train", description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="digits", help="built-in name or a folder (see python -m core.data describe)")
    ap.add_argument("--model", default="seed-cnn", choices=list_models())
    # None: the app's base-model setting for this dataset (core.session.base_models.base_config)
    ap.add_argument("--epochs", type=int, default=None, help="default: the app's base-model setting (10)")
    ap.add_argument("--batch-size", type=int, default=None, help="default: the app's base-model setting (64)")
    ap.add_argument("--lr", type=float, default=None,
                    help="default: the app's base-model setting (0.02; 0.005 for colour/shortcut sets)")
    ap.add_argument("--keep-best", action=argparse.BooleanOptionalAction, default=None,
                    help="put back the best validation epoch's weights when the last is far worse (default: on)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default=None, help="cpu, cuda or mps (default: best available)")
    ap.add_argument("--precision", choices=list(PRECISIONS), default="fp32",
                    help="bf16: mixed precision (torch.autocast with bfloat16), meant for CUDA GPUs")
    ap.add_argument("--compile", action="store_true",
                    help="torch.compile the training forward pass (off by default: see benchmarks/compile_speed.py)")
    ap.add_argument("--limit-per-class", type=int, default=None)
    ap.add_argument("--out", required=True, help="folder for the checkpoint and a metrics.json")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    rank, world, device = init_distributed(args.device)
    try:
        return _train(args, rank, world, device)
    finally:
        if world > 1:
            import torch.distributed as dist

            dist.destroy_process_group()


def train_config(args: argparse.Namespace, data: ImageDataset, device: str | None = None) -> TrainConfig:
    """The run's settings: the flags given, the rest from the app's base-model settings for
    ``args.data`` (:func:`core.session.base_models.base_config`)."""
    base = base_config(args.data, data, seed=args.seed)
    given = {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "keep_best": args.keep_best}
    return dataclasses.replace(base, **{k: v for k, v in given.items() if v is not None}, device=device,
                               precision=args.precision, compile=args.compile)


def _train(args: argparse.Namespace, rank: int, world: int, device: str | None) -> int:
    steps = _StepLosses()
    try:
        data = load_dataset(args.data, seed=args.seed, limit_per_class=args.limit_per_class)
        config = train_config(args, data, device)
        model, result = train_base_model(data, args.model, config=config, callbacks=[steps] + [_Printer()] * (rank == 0),
                                         distributed=world > 1)
    except (DataError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if rank != 0:  # every process holds the same weights; one writes them
        return 0
    if result.rolled_back or result.restored_best:
        print(f"warning: {result.message}", file=sys.stderr)
    out = Path(args.out).expanduser()
    # the app names a folder source by its resolved path; use the same key so it finds this model
    source = str(Path(args.data).expanduser().resolve()) if Path(args.data).expanduser().exists() else args.data
    path = out / f"{base_key(source, args.model, args.seed)}.pt"
    metrics = version_metrics(model, data)
    extra = {"message": result.message} if result.restored_best else {}
    save_checkpoint(model, path, data.classes, base_meta(args.data, data, metrics, epochs=config.epochs,
                                                         config=config_meta(config), **extra))
    (out / "metrics.json").write_text(json.dumps({"checkpoint": str(path), **metrics, "config": config_meta(config),
                                                  "best_epoch": result.best_epoch,
                                                  "restored_best": result.restored_best, "processes": world,
                                                  "precision": args.precision, "compiled": args.compile,
                                                  "first_step_losses": steps.losses}, indent=2))
    print(f"test accuracy {100 * metrics.get('test_acc', float('nan')):.2f}%  -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
