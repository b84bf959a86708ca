"""Train a base model headless and write a checkpoint the app can open.

    python -m core.train --data digits --model seed-cnn --epochs 8 --out runs/digits
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from core.base_models import base_meta
from core.data import DataError, load_dataset
from core.engine import Callback, EpochInfo, TrainConfig
from core.models import list_models, save_checkpoint
from core.workbench import base_key, train_base_model, version_metrics


class _Printer(Callback):
    def on_epoch(self, info: EpochInfo) -> None:
        val = "" if info.val_acc is None else f"  val acc {100 * info.val_acc:.2f}%"
        print(f"epoch {info.epoch + 1}: loss {info.train_loss:.4f}  train acc {100 * info.train_acc:.2f}%{val}"
              f"  ({info.epoch_time:.1f}s)", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m core.train", description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="digits", help="built-in name or a folder (see python -m core.data describe)")
    ap.add_argument("--model", default="seed-cnn", choices=list_models())
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default=None, help="cpu, cuda or mps (default: best available)")
    ap.add_argument("--limit-per-class", type=int, default=None)
    ap.add_argument("--out", required=True, help="folder for the checkpoint and a metrics.json")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    try:
        data = load_dataset(args.data, seed=args.seed, limit_per_class=args.limit_per_class)
        config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed, device=args.device)
        model, result = train_base_model(data, args.model, config=config, callbacks=[_Printer()])
    except (DataError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if result.rolled_back:
        print(f"warning: {result.message}", file=sys.stderr)
    out = Path(args.out).expanduser()
    # the app names a folder source by its resolved path; use the same key so it finds this model
    source = str(Path(args.data).expanduser().resolve()) if Path(args.data).expanduser().exists() else args.data
    path = out / f"{base_key(source, args.model, args.seed)}.pt"
    metrics = version_metrics(model, data)
    save_checkpoint(model, path, data.classes, base_meta(args.data, data, metrics, epochs=args.epochs))
    (out / "metrics.json").write_text(json.dumps({"checkpoint": str(path), **metrics}, indent=2))
    print(f"test accuracy {100 * metrics.get('test_acc', float('nan')):.2f}%  -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
