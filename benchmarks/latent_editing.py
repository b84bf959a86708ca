"""Latent editing (seed 000) with a simulated user, against a same-information baseline and a
same-compute baseline, scored on held-out test examples.

The simulated user moves the k most confidently wrong pool examples to the workspace
centroid of their true class (ground truth a person has: they know what each drawing
shows). The model is then fine-tuned for ``--epochs`` epochs of the train split with the
latent loss, in each variant ("paper": moves only; "implied-label": plus CE toward the class
the point was moved into; "lifted": moves only, plus an L2 toward the mean features of the
points around each target). Two baselines, same fine-tune, same steps, same optimiser:

- ``ce_moved`` (same information): CE on the train batch plus CE on the same moved examples
  with their TRUE labels, weighted like the latent term (``--w-dis``). The simulated user's
  choice of where to move a point uses its true label, so this baseline gets the labels.
- ``ce_only`` (same compute, no feedback): CE on the train batch only.

Headline (held out): accuracy on the TEST examples of the confused class pairs of the moves
(for each moved example, the pair {true class, predicted class}; the test examples whose
true class and prediction before the fine-tune both lie in one of those pairs), before and
after, with how many of its mistakes were fixed and how many right ones broke. None of these
examples was moved or trained on. Secondary: "moved fixed (fit)", the share of the moved
examples themselves predicted right after (our variants and ``ce_moved`` trained on them);
test accuracy on the whole test split. Mean and sd over the seeds.

Also times Update against the same fine-tune written as a bare PyTorch loop (``--speed-only``
does just that, for a quiet machine).

``--device cuda`` trains everything on the GPU (base model, fine-tunes, baselines; base models
cached apart from the CPU's); in the timing both fine-tunes run there, each batch copied from
host memory as the engine does, each timed run ending with a CUDA sync, and the JSON keeps the
absolute seconds next to the ratio, with the GPU's name. The projection branch's fit (PCA) is
numpy on the CPU, untimed. On a machine without the device it says so and exits 0.

    python benchmarks/latent_editing.py --data ../shared/data/quickdraw --moves 30 --epochs 2 --seeds 3 --json out.json
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from _common import (device_or_exit, device_params, interleaved, machine, pair_figures, paired,  # noqa: I001
                     print_table, seeds_record, summarize, sync, write_json)
from core.data import load_dataset
from core.engine import TrainConfig, evaluate, fine_tune, fit, predict
from core.feedback.latent.loss import PAPER_WEIGHTS, VARIANTS, LatentMoveLoss, class_centroids, implied_labels, lift_targets
from core.feedback.selection.loss import SelectedExamplesLoss
from core.models import build_model, model_from_checkpoint, save_checkpoint
from core.feedback.latent.projection import fit_projection, projection_r2


KEYS = {"lifted": "lifted", "paper": "paper", "implied-label": "implied"}
BASELINES = {"ce_moved": "CE on the moved examples with their true labels (same information, same steps)",
             "ce_only": "CE only (no feedback, same steps)"}
FIGURES = ["heldout_acc_after", "heldout_fixed", "heldout_broken", "moved_fixed", "test_acc_after"]
# What was chosen on which seeds (README history, commits 867888d and b7d447c): the "lifted"
# variant as the default and the implied-label weight 0.25, on Quick Draw (and digits) runs
# with seeds 0-2. The loss weights, lr and momentum are the paper's.
TUNED_ON = [0, 1, 2]
TUNED = "default variant 'lifted' and implied-label CE weight 0.25, chosen on Quick Draw and digits seeds 0-2"


def base_model(data, seed: int, epochs: int, cache: Path | None, tag: str, device: str = "cpu"):
    """Train (or load from ``cache``) the base seed-cnn for this data and seed, on ``device``."""
    path = cache / f"{tag}_s{seed}_e{epochs}.pt" if cache else None
    if path is not None and path.is_file():
        return model_from_checkpoint(path)
    model = build_model("seed-cnn", *data.image_shape[:2], data.num_classes, seed=seed)
    fit(model, data.split("train"), data.split("val"),
        config=TrainConfig(epochs=epochs, lr=0.02, seed=seed, device=device))
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


def moved_pairs(labels: np.ndarray, preds: np.ndarray) -> list[tuple[int, int]]:
    """The confused class pairs {true, predicted} of the moved examples, sorted."""
    return sorted({(int(min(a, b)), int(max(a, b))) for a, b in zip(labels, preds)})


def bare_latent_fine_tune(model, data, branch, images, targets, epochs, seed, w_cls, w_dis, lr, momentum,
                          batch_size=64, device: str = "cpu"):
    """The same fine-tune as Update, written by hand: CE on the batch + w_dis * mean L2 of the
    moved examples' projections to their targets, SGD with momentum. On ``device`` (the model
    is moved there): each batch is copied from host memory, as the engine does; the moved
    examples and their targets once, as a hand-written loop would."""
    x_all, y_all = data.split("train")
    model, branch = model.to(device), branch.to(device)
    images, targets = images.to(device), targets.to(device)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=5e-4)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(x_all), generator=gen).split(batch_size):
            opt.zero_grad(set_to_none=True)
            x, y = x_all[idx].to(device, non_blocking=True), y_all[idx].to(device, non_blocking=True)
            out = model(x)
            loss = w_cls * F.cross_entropy(out, y)
            proj = branch(model.features(images))
            loss = loss + w_dis * ((proj - targets).pow(2).sum(1) + 1e-8).sqrt().mean()
            loss.backward()
            opt.step()
            loss.item()
    return model


def score(tuned, before_model_preds: dict, data, moved_x, moved_y, pairs) -> dict:
    """The figures of one fine-tuned model (see the module docstring)."""
    tx, ty = data.split("test")
    ev = evaluate(tuned, tx, ty)
    held = pair_figures(ty.numpy(), before_model_preds["test"], ev.preds, pairs)
    return {
        "heldout_acc_after": held["acc_after"],
        "heldout_fixed": held["fixed"],
        "heldout_broken": held["broken"],
        "moved_fixed": 100 * evaluate(tuned, moved_x, moved_y).accuracy,
        "test_acc_after": 100 * ev.accuracy,
    }


def run_seed(args, seed: int, variants: list[str], cache: Path | None, tag: str) -> tuple[dict, dict]:
    t0 = time.perf_counter()
    data = load_dataset(args.data, seed=seed, limit_per_class=args.limit_per_class)
    model = base_model(data, seed, args.base_epochs, cache, tag, args.device)
    _, train_f = predict(model, data.split("train")[0][:5000], with_features=True)
    branch = fit_projection(train_f.numpy(), seed=seed)
    _, pool_f = predict(model, data.split("pool")[0], with_features=True)
    pick, targets, coords, preds = simulated_user(model, branch, data, args.moves)
    px, py = data.split("pool")
    moved_x, moved_y = px[pick], py[pick]
    pairs = moved_pairs(py[pick].numpy(), preds[pick])
    tx, ty = data.split("test")
    ev_test = evaluate(model, tx, ty)
    held0 = pair_figures(ty.numpy(), ev_test.preds, ev_test.preds, pairs)
    row = {"seed": seed, "moved": int(len(pick)), "pairs": [[data.classes[a], data.classes[b]] for a, b in pairs],
           "heldout_n": held0["n"], "heldout_wrong_before": held0["wrong_before"],
           "heldout_acc_before": held0["acc_before"], "r2_pool": projection_r2(branch, pool_f.numpy()),
           "test_acc_before": 100 * ev_test.accuracy,
           "moved_fixed_before": 100 * evaluate(model, moved_x, moved_y).accuracy}
    before = {"test": ev_test.preds}
    c = dataclasses.replace(TrainConfig(epochs=args.epochs, lr=args.lr, momentum=args.momentum), seed=seed,
                            device=args.device)
    weights = {"cls": args.w_cls, "latent": args.w_dis}
    for variant in variants:
        tuned = copy.deepcopy(model)
        implied = torch.as_tensor(implied_labels(targets, coords, preds)) if variant == "implied-label" else None
        lifted = torch.as_tensor(lift_targets(targets, coords, pool_f.numpy())) if variant == "lifted" else None
        loss = LatentMoveLoss(branch, moved_x, torch.as_tensor(targets), implied, feature_targets=lifted)
        fine_tune(tuned, data, {"latent": loss}, weights, epochs=args.epochs, config=c)
        key = KEYS[variant]
        row.update({f"{key}_{k}": v for k, v in score(tuned, before, data, moved_x, moved_y, pairs).items()})
        after = branch.project(tuned, moved_x)
        row[f"{key}_mean_dist_before"] = float(np.linalg.norm(coords[pick] - targets, axis=1).mean())
        row[f"{key}_mean_dist_after"] = float(np.linalg.norm(after - targets, axis=1).mean())
    # same information: every step, CE on all the moved examples with their true labels
    same_info = copy.deepcopy(model)
    moved_ce = SelectedExamplesLoss(moved_x, moved_y, per_batch=len(moved_x), seed=seed)
    fine_tune(same_info, data, {"moved_ce": moved_ce}, {"cls": args.w_cls, "moved_ce": args.w_dis},
              epochs=args.epochs, config=c)
    row.update({f"ce_moved_{k}": v for k, v in score(same_info, before, data, moved_x, moved_y, pairs).items()})
    ce_only = copy.deepcopy(model)
    fine_tune(ce_only, data, None, {"cls": 1.0}, epochs=args.epochs, config=c)
    row.update({f"ce_only_{k}": v for k, v in score(ce_only, before, data, moved_x, moved_y, pairs).items()})
    row["seconds"] = time.perf_counter() - t0
    ctx = {"data": data, "model": model, "branch": branch, "moved_x": moved_x, "targets": targets, "config": c,
           "weights": weights}
    return row, ctx


def time_update(args, ctx: dict, seed: int) -> dict:
    """Update (``fine_tune`` with the paper's latent term) vs the same fine-tune in a bare loop."""
    data, branch = ctx["data"], ctx["branch"]
    model = ctx["model"].to(args.device)  # both sides copy the same start, already on the device
    moved_x, c, weights = ctx["moved_x"], ctx["config"], ctx["weights"]
    tgt = torch.as_tensor(ctx["targets"])

    def ours():
        fine_tune(copy.deepcopy(model), data, {"latent": LatentMoveLoss(branch, moved_x, tgt)}, weights,
                  epochs=args.epochs, config=c)
        sync(args.device)

    def ref():
        bare_latent_fine_tune(copy.deepcopy(model), data, branch, moved_x, tgt, args.epochs, seed,
                              args.w_cls, args.w_dis, args.lr, args.momentum, device=args.device)
        sync(args.device)

    r = interleaved(ours, ref, pairs=args.speed_pairs, warmup=1)
    return {"ours_s": r["ours_s"], "reference_s": r["reference_s"], "ratio": r["ratio"], "target": 1.15,
            "pass": r["ratio"] <= 1.15, "ours_all": r["ours_all"], "reference_all": r["reference_all"]}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="digits")
    ap.add_argument("--moves", type=int, default=30)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--seed", type=int, default=100,
                    help=f"first seed (default 100: the defaults were chosen on seeds {TUNED_ON})")
    ap.add_argument("--variant", choices=[*VARIANTS, "all"], default="all")
    ap.add_argument("--base-epochs", type=int, default=4)
    ap.add_argument("--limit-per-class", type=int, default=None)
    ap.add_argument("--w-cls", type=float, default=PAPER_WEIGHTS["cls"])
    ap.add_argument("--w-dis", type=float, default=PAPER_WEIGHTS["latent"],
                    help="weight of the latent term, and of the moved-example CE of the same-information baseline")
    ap.add_argument("--lr", type=float, default=0.04)
    ap.add_argument("--momentum", type=float, default=0.9)
    ap.add_argument("--speed-pairs", type=int, default=0,
                    help="interleaved pairs for the Update / bare-loop ratio on the first seed (0: skip; "
                         "a timing, so run it on a quiet machine, e.g. with --speed-only)")
    ap.add_argument("--speed-only", action="store_true",
                    help="only the Update / bare-loop timing (first seed, paper variant; default 5 pairs)")
    ap.add_argument("--cache", default=None, help="folder to keep base models between runs")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--quick", action="store_true", help="tiny run for CI: digits, 1 seed, 1 epoch")
    ap.add_argument("--device", default="cpu",
                    help="cpu or cuda: where every model trains, both sides of the timing included (on a machine "
                         "without it: says so, exits 0)")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    args.device = device_or_exit(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.seeds, args.epochs, args.base_epochs = 1, 1, 3
        args.speed_pairs = min(args.speed_pairs, 2) if args.speed_pairs else 0
    if args.speed_only and not args.speed_pairs:
        args.speed_pairs = 2 if args.quick else 5
    prov = machine(args.device)
    variants = list(VARIANTS) if args.variant == "all" else [args.variant]
    cache = Path(args.cache) if args.cache else None
    if cache:
        cache.mkdir(parents=True, exist_ok=True)
    tag = "".join(c if c.isalnum() else "-" for c in args.data)[-40:] + (f"_l{args.limit_per_class}" if args.limit_per_class else "")
    if args.device != "cpu":  # a base model trained on a GPU differs in its last bits: not the CPU's cache entry
        tag += "_" + args.device.replace(":", "")
    seeds = list(range(args.seed, args.seed + (1 if args.speed_only else args.seeds)))
    params = ({k: v for k, v in vars(args).items() if k != "json"} | {"variants_run": variants, "baselines": BASELINES}
              | device_params(args.device))

    if args.speed_only:
        data = load_dataset(args.data, seed=seeds[0], limit_per_class=args.limit_per_class)
        model = base_model(data, seeds[0], args.base_epochs, cache, tag, args.device)
        _, train_f = predict(model, data.split("train")[0][:5000], with_features=True)
        branch = fit_projection(train_f.numpy(), seed=seeds[0])
        pick, targets, _, _ = simulated_user(model, branch, data, args.moves)
        c = dataclasses.replace(TrainConfig(epochs=args.epochs, lr=args.lr, momentum=args.momentum), seed=seeds[0],
                                device=args.device)
        ctx = {"data": data, "model": model, "branch": branch, "moved_x": data.split("pool")[0][pick],
               "targets": targets, "config": c, "weights": {"cls": args.w_cls, "latent": args.w_dis}}
        speed = time_update(args, ctx, seeds[0])
        result = {"name": "latent_update_speed",
                  **{k: speed[k] for k in ("ours_s", "reference_s", "ratio", "target", "pass")},
                  "quick": args.quick, "params": params | {"ours_all": speed["ours_all"],
                                                           "reference_all": speed["reference_all"],
                                                           "train_images": len(data.split("train")[0])},
                  "seeds": seeds_record(seeds, [], "nothing (a timing)"), "provenance": prov}
        print(f"Update vs bare loop (same fine-tune): ours {speed['ours_s']:.2f}s, bare {speed['reference_s']:.2f}s, "
              f"ratio {speed['ratio']:.3f} (target <= 1.15)")
        write_json(args.json, result)
        return result

    per_seed = []
    speed = None
    for seed in seeds:
        row, ctx = run_seed(args, seed, variants, cache, tag)
        per_seed.append(row)
        print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)
        if speed is None and args.speed_pairs > 0:
            speed = time_update(args, ctx, seed)

    runs = [KEYS[v] for v in variants] + list(BASELINES)
    shared = summarize(per_seed, ["heldout_acc_before", "heldout_n", "heldout_wrong_before", "test_acc_before",
                                  "moved_fixed_before", "r2_pool"])
    figures = {run: summarize(per_seed, [f"{run}_{f}" for f in FIGURES]) for run in runs}
    figures = {run: {f: figures[run][f"{run}_{f}"] for f in FIGURES} for run in runs}
    headline_key = KEYS[variants[0]]
    comparisons = {KEYS[v]: {b: paired(per_seed, f"{KEYS[v]}_heldout_acc_after", f"{b}_heldout_acc_after")
                             for b in BASELINES} for v in variants}
    result = {
        "name": "latent_editing",
        "headline": {"figure": "heldout_acc_after", "variant": variants[0], "key": headline_key,
                     "what": "accuracy (%) on the test examples of the moved examples' confused class pairs "
                             "(true class and prediction before both in a pair); none was moved or trained on"},
        "before": shared,
        "runs": figures,
        "comparisons": comparisons,
        "baselines": BASELINES,
        "variant_keys": KEYS,
        "per_seed": per_seed,
        "speed": None if speed is None else {k: speed[k] for k in ("ours_s", "reference_s", "ratio", "target", "pass")},
        "quick": args.quick,
        "seeds": seeds_record(seeds, TUNED_ON, TUNED),
        "params": params,
        "provenance": prov,
    }

    def ms(d):
        return f"{d['mean']:.2f} ± {d['sd']:.2f}" if d["mean"] is not None else "-"

    rows = [{"run": run, "held-out acc after %": ms(figures[run]["heldout_acc_after"]),
             "held-out fixed": ms(figures[run]["heldout_fixed"]), "held-out broken": ms(figures[run]["heldout_broken"]),
             "moved fixed (fit) %": ms(figures[run]["moved_fixed"]), "test after %": ms(figures[run]["test_acc_after"])}
            for run in runs]
    print_table(rows, ["run", "held-out acc after %", "held-out fixed", "held-out broken", "moved fixed (fit) %",
                       "test after %"])
    print(f"held-out set: {ms(shared['heldout_n'])} test examples of the moved pairs, "
          f"{ms(shared['heldout_wrong_before'])} wrong before; accuracy before {ms(shared['heldout_acc_before'])} %; "
          f"test accuracy before {ms(shared['test_acc_before'])} %")
    for v in variants:
        for b in BASELINES:
            p = comparisons[KEYS[v]][b]
            print(f"{v} - {b} (held-out acc after): {p['mean']:+.2f} ± {p['sd']:.2f} points, "
                  f"higher on {p['higher_on']}/{p['seeds']} seeds")
    if speed is not None:
        print(f"Update vs bare loop (same fine-tune): ours {speed['ours_s']:.2f}s, bare {speed['reference_s']:.2f}s, "
              f"ratio {speed['ratio']:.3f} (target <= 1.15)")
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
