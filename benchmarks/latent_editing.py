"""Latent editing (seed 000) with a simulated user, against the equal-compute baseline.

The simulated user moves the k most confidently wrong pool examples to the workspace
centroid of their true class (ground truth the model never saw in training). The model is
then fine-tuned with the latent loss (variant "paper": moves only; "implied-label": plus CE
toward the class the point was moved into; "lifted": moves only, plus an L2 toward the mean
features of the points around each target). Baseline: the same fine-tune with CE only.
Also times Update against the same fine-tune written as a bare PyTorch loop.

    python benchmarks/latent_editing.py --data ../shared/data/quickdraw --moves 30 --epochs 2 --seeds 3 --json out.json
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from _common import interleaved, machine, print_table, write_json  # noqa: I001
from core.data import load_dataset
from core.engine import TrainConfig, evaluate, fine_tune, fit, predict
from core.feedback.latent import PAPER_WEIGHTS, VARIANTS, LatentMoveLoss, class_centroids, implied_labels, lift_targets
from core.models import build_model, model_from_checkpoint, save_checkpoint
from core.projection import fit_projection, projection_r2


KEYS = {"paper": "paper", "implied-label": "implied", "lifted": "lifted"}


def base_model(data, seed: int, epochs: int, cache: Path | None, tag: str):
    """Train (or load from ``cache``) the base seed-cnn for this data and seed."""
    path = cache / f"{tag}_s{seed}_e{epochs}.pt" if cache else None
    if path is not None and path.is_file():
        return model_from_checkpoint(path)
    model = build_model("seed-cnn", *data.image_shape[:2], data.num_classes, seed=seed)
    fit(model, data.split("train"), data.split("val"), config=TrainConfig(epochs=epochs, lr=0.02, seed=seed))
    if path is not None:
        save_checkpoint(model, path, data.classes)
    return model


def simulated_user(model, branch, data, k: int):
    """The k most confidently misclassified pool examples, each with the centroid of its true
    class in the workspace as target. Returns (pool indices, targets, pool coords, pool preds)."""
    px, py = data.split("pool")
    ev = evaluate(model, px, py)
    coords = branch.project(model, px)
    wrong = np.where(ev.preds != ev.labels)[0]
    pick = wrong[np.argsort(-ev.probs.max(1)[wrong], kind="stable")][:k]
    cent = class_centroids(coords, ev.labels, ev.preds, data.num_classes)
    return pick, cent[ev.labels[pick]].astype(np.float32), coords, ev.preds


def bare_latent_fine_tune(model, data, branch, images, targets, epochs, seed, w_cls, w_dis, lr, momentum, batch_size=64):
    """The same fine-tune as Update, written by hand: CE on the batch + w_dis * mean L2 of the
    moved examples' projections to their targets, SGD with momentum."""
    x_all, y_all = data.split("train")
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=5e-4)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(x_all), generator=gen).split(batch_size):
            opt.zero_grad(set_to_none=True)
            out = model(x_all[idx])
            loss = w_cls * F.cross_entropy(out, y_all[idx])
            proj = branch(model.features(images))
            loss = loss + w_dis * ((proj - targets).pow(2).sum(1) + 1e-8).sqrt().mean()
            loss.backward()
            opt.step()
            loss.item()
    return model


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="digits")
    ap.add_argument("--moves", type=int, default=30)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0, help="first seed")
    ap.add_argument("--variant", choices=[*VARIANTS, "all"], default="all")
    ap.add_argument("--base-epochs", type=int, default=4)
    ap.add_argument("--limit-per-class", type=int, default=None)
    ap.add_argument("--w-cls", type=float, default=PAPER_WEIGHTS["cls"])
    ap.add_argument("--w-dis", type=float, default=PAPER_WEIGHTS["latent"])
    ap.add_argument("--lr", type=float, default=0.04)
    ap.add_argument("--momentum", type=float, default=0.9)
    ap.add_argument("--speed-pairs", type=int, default=3, help="interleaved pairs for the speed ratio (0: skip)")
    ap.add_argument("--cache", default=None, help="folder to keep base models between runs")
    ap.add_argument("--quick", action="store_true", help="tiny run for CI: digits, 1 seed, 1 epoch")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    if args.quick:
        args.seeds, args.epochs, args.base_epochs, args.speed_pairs = 1, 1, 3, 0
    variants = list(VARIANTS) if args.variant == "all" else [args.variant]
    cache = Path(args.cache) if args.cache else None
    if cache:
        cache.mkdir(parents=True, exist_ok=True)
    tag = "".join(c if c.isalnum() else "-" for c in args.data)[-40:] + (f"_l{args.limit_per_class}" if args.limit_per_class else "")
    cfg = TrainConfig(epochs=args.epochs, lr=args.lr, momentum=args.momentum)
    weights = {"cls": args.w_cls, "latent": args.w_dis}
    per_seed = []
    speed = None
    for seed in range(args.seed, args.seed + args.seeds):
        t0 = time.perf_counter()
        data = load_dataset(args.data, seed=seed, limit_per_class=args.limit_per_class)
        model = base_model(data, seed, args.base_epochs, cache, tag)
        _, train_f = predict(model, data.split("train")[0][:5000], with_features=True)
        branch = fit_projection(train_f.numpy(), seed=seed)
        _, pool_f = predict(model, data.split("pool")[0], with_features=True)
        pick, targets, coords, preds = simulated_user(model, branch, data, args.moves)
        px, py = data.split("pool")
        moved_x, moved_y = px[pick], py[pick]
        test = data.split("test")
        row = {"seed": seed, "moved": int(len(pick)), "r2_pool": projection_r2(branch, pool_f.numpy()),
               "test_acc_before": 100 * evaluate(model, *test).accuracy,
               "moved_fixed_before": 100 * evaluate(model, moved_x, moved_y).accuracy}
        c = dataclass_replace(cfg, seed=seed)
        for variant in variants:
            tuned = copy.deepcopy(model)
            implied = torch.as_tensor(implied_labels(targets, coords, preds)) if variant == "implied-label" else None
            lifted = torch.as_tensor(lift_targets(targets, coords, pool_f.numpy())) if variant == "lifted" else None
            loss = LatentMoveLoss(branch, moved_x, torch.as_tensor(targets), implied, feature_targets=lifted)
            fine_tune(tuned, data, {"latent": loss}, weights, epochs=args.epochs, config=c)
            key = KEYS[variant]
            row[f"{key}_moved_fixed_fraction"] = 100 * evaluate(tuned, moved_x, moved_y).accuracy
            row[f"{key}_test_acc_after"] = 100 * evaluate(tuned, *test).accuracy
            after = branch.project(tuned, moved_x)
            row[f"{key}_mean_dist_before"] = float(np.linalg.norm(coords[pick] - targets, axis=1).mean())
            row[f"{key}_mean_dist_after"] = float(np.linalg.norm(after - targets, axis=1).mean())
        base = copy.deepcopy(model)
        fine_tune(base, data, None, {"cls": 1.0}, epochs=args.epochs, config=c)
        row["baseline_moved_fixed_fraction"] = 100 * evaluate(base, moved_x, moved_y).accuracy
        row["baseline_test_acc_after"] = 100 * evaluate(base, *test).accuracy
        row["seconds"] = time.perf_counter() - t0
        per_seed.append(row)
        print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)
        if speed is None and args.speed_pairs > 0:
            tgt = torch.as_tensor(targets)

            def ours():
                fine_tune(copy.deepcopy(model), data, {"latent": LatentMoveLoss(branch, moved_x, tgt)}, weights,
                          epochs=args.epochs, config=c)

            def ref():
                bare_latent_fine_tune(copy.deepcopy(model), data, branch, moved_x, tgt, args.epochs, seed,
                                      args.w_cls, args.w_dis, args.lr, args.momentum)

            speed = interleaved(ours, ref, pairs=args.speed_pairs, warmup=0)

    def mean(key):
        vals = [r[key] for r in per_seed if key in r]
        return statistics.fmean(vals) if vals else None

    def std(key):
        vals = [r[key] for r in per_seed if key in r]
        return statistics.pstdev(vals) if len(vals) > 1 else 0.0

    main_key = KEYS[variants[0]]
    result = {
        "name": "latent_editing",
        "headline_variant": variants[0],  # the top-level moved_fixed_fraction / test_acc_after are this variant's
        "moved_fixed_fraction": mean(f"{main_key}_moved_fixed_fraction"),
        "test_acc_before": mean("test_acc_before"),
        "test_acc_after": mean(f"{main_key}_test_acc_after"),
        "baseline_moved_fixed_fraction": mean("baseline_moved_fixed_fraction"),
        "baseline_test_acc_after": mean("baseline_test_acc_after"),
        "variants": {v: {"moved_fixed_fraction": mean(f"{k}_moved_fixed_fraction"),
                         "moved_fixed_fraction_std": std(f"{k}_moved_fixed_fraction"),
                         "test_acc_after": mean(f"{k}_test_acc_after"),
                         "test_acc_after_std": std(f"{k}_test_acc_after")}
                     for v, k in KEYS.items() if v in variants},
        "r2_pool": mean("r2_pool"),
        "per_seed": per_seed,
        "speed": None if speed is None else {"ours_s": speed["ours_s"], "reference_s": speed["reference_s"],
                                             "ratio": speed["ratio"], "target": 1.15},
        "params": {k: v for k, v in vars(args).items() if k != "json"} | {"variants_run": variants, **machine()},
    }
    rows = [{"variant": v, "moved fixed %": result["variants"][v]["moved_fixed_fraction"],
             "test before %": result["test_acc_before"], "test after %": result["variants"][v]["test_acc_after"]}
            for v in variants]
    rows.append({"variant": "baseline (CE only)", "moved fixed %": result["baseline_moved_fixed_fraction"],
                 "test before %": result["test_acc_before"], "test after %": result["baseline_test_acc_after"]})
    print_table(rows, ["variant", "moved fixed %", "test before %", "test after %"])
    if speed is not None:
        print(f"Update vs bare loop (same fine-tune): ours {speed['ours_s']:.2f}s, bare {speed['reference_s']:.2f}s, "
              f"ratio {speed['ratio']:.3f} (target <= 1.15)")
    write_json(args.json, result)
    return result


def dataclass_replace(cfg, **kw):
    import dataclasses

    return dataclasses.replace(cfg, **kw)


if __name__ == "__main__":
    main()
