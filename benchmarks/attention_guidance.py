"""Attention guidance (seed 001) with a simulated user: does clicking fix a biased model?

    python benchmarks/attention_guidance.py --data biased-digits:../shared/data/mnist --rho 0.997 \\
        --budget 256 --rounds 4 --samplers random,entropy,margin,kcenter,gmm --seeds 3 [--quick] [--json PATH]

For each seed: a base model (seed-cnn) is trained on the biased training split. Then, per
sampler, in each of ``--rounds`` rounds the sampler picks ``budget / rounds`` pool images the
model has not been shown yet; the simulated user (``core.attention_workspace``) clicks the
centroid of each image's object mask (positive) and each superpixel outside the object whose
mean attention is above the image's mean (negative, at most 5 per image), from the Grad-CAM
the page shows (true class); the model is fine-tuned on all images annotated so far with
``w_c`` x CE + ``w_g`` x the attention loss. The baseline gets the same information and
compute: CE alone on the same images with their labels, the same steps, from the same base,
at its own learning rate (``BASELINE_LR``, tuned for it on the same seeds as ours: at ours' lr it
collapsed to one class, which flattered the comparison).

Measured on the test split (bias-conflicting for a biased set: background colour independent
of the class), on ``test_aligned`` when present, and the share of Grad-CAM mass inside the
object masks on the test split. Nothing measured is trained on: the base model trains on
``train``, fine-tunes use ``pool`` images only.

``--data`` may be any ImageFolder tree with a ``masks/`` mirror (``test/`` is its test split);
``--rho`` then does not apply. The fine-tune defaults were chosen on seeds 100-102 (see
TUNED_ON); the figures are reported on seeds 0, 1, 2 (``--seed-base``).
"""
from __future__ import annotations

import argparse
import copy
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from _common import mean_sd, machine, print_table, seeds_record, write_json  # noqa: I001
from core.attention_workspace import (
    AttentionAnnotation,
    FineTuneSettings,
    annotate_like_a_person,
    bias_report,
    fine_tune,
    select_candidates,
    without_masks,
)
from core.data import DataError, load_dataset
from core.engine import TrainConfig, fit
from core.models import build_model, model_from_checkpoint, save_checkpoint

SAMPLER_NAMES = ("random", "entropy", "margin", "kcenter", "gmm")
TUNED_ON = [100, 101, 102]
TUNED = ("fine-tune lr 0.03 and 30 epochs per round, chosen on seed 100 with the random sampler among lr 0.01/0.02/"
         "0.03/0.05/0.1 and 20-40 epochs (w_g/w_c are the paper's 0.75/0.25; lr 0.05 with w_c 0.1 or 40 epochs "
         "collapsed the classifier), on a base model trained at lr 0.01; the reported base models train at lr 0.005 "
         "(0.02 diverged on seed 100 and 0.01 on seed 0). The baseline's own lr 0.001 (BASELINE_LR), chosen on seeds "
         "100-102 with the entropy sampler among 0.001/0.003/0.01 (baseline 26.8/25.6/18.8 %); ours at 0.003 on the "
         "same seeds 27.5 % against 28.5 % at 0.03, so ours keeps 0.03")
BASE = TrainConfig(epochs=3, lr=0.005, batch_size=64)
TUNED_FINE_TUNE = {"epochs": 30, "lr": 0.03}  # the page keeps the paper's lr 0.01 and 20 epochs as its defaults
# The CE-only baseline's own lr, tuned like ours (same epochs and steps). At ours' lr 0.03 it
# collapsed (run-81df14cd, seeds 0-2: 6 of 12 rounds diverged, bias-aligned accuracy ~20 %), which
# flattered "points over the baseline". Chosen on seeds 100-102 with the entropy sampler among
# 0.001 / 0.003 / 0.01 by the baseline's bias-conflicting accuracy: 26.8 / 25.6 / 18.8 % (ours at
# 0.03 on the same images: 28.5 %; ours at 0.003: 27.5 %, so ours keeps 0.03).
BASELINE_LR = 0.001
TARGET_POINTS = 15.0


def source_of(data: str, rho: float | None) -> str:
    """``--data`` with ``--rho`` folded into a biased-digits source string."""
    if rho is None:
        return data
    if not data.startswith("biased-digits"):
        print(f"note: --rho applies to biased-digits sources only; ignored for {data}")
        return data
    return f"{data.split('?')[0]}?rho={rho}"


def base_model(data, seed: int, cache: Path | None, source: str, config: TrainConfig):
    """The base model of a seed, trained on the (biased) training split, cached on disk."""
    c, h, _ = data.image_shape
    key = f"{''.join(ch if ch.isalnum() else '-' for ch in source)[-80:]}__e{config.epochs}_lr{config.lr:g}__s{seed}.pt"
    if cache is not None and (cache / key).is_file():
        return model_from_checkpoint(cache / key)
    model = build_model("seed-cnn", c, h, data.num_classes, seed=seed)
    result = fit(model, data.split("train"), None, config=replace(config, seed=seed))
    if result.status != "done":  # a rolled-back base is the untrained network: nothing to measure
        raise SystemExit(f"seed {seed}: the base model did not train ({result.message}); lower --base-lr")
    if cache is not None:
        save_checkpoint(model, cache / key, data.classes, {"source": source, "seed": seed})
    return model


def annotate_oracle(data, ids) -> list:
    """The most a negative annotation can say: the mask's centroid as the positive point and
    EVERY pixel off the object as the negative region (a diagnostic upper bound for the click
    loss, ``--user oracle``; no person clicks this much)."""
    out = []
    for i in map(int, ids):
        mask = data.masks[i, 0].numpy() > 0
        ys, xs = np.nonzero(mask)
        pos = [(float(xs.mean() + 0.5), float(ys.mean() + 0.5))] if len(xs) else []
        out.append(AttentionAnnotation.from_masks(i, int(data.labels[i]), positives=pos, negative=~mask,
                                                  operations=len(pos) + 1))
    return out


def run_sampler(base, data, sampler: str, args, settings: FineTuneSettings, seed: int,
                base_settings: FineTuneSettings | None = None) -> dict:
    """One sampler's rounds for ours and the same-information baseline (CE alone on the same
    images, same steps; ``base_settings``: its own fine-tune settings, e.g. its own lr)."""
    base_settings = base_settings or settings
    ours, baseline = copy.deepcopy(base), copy.deepcopy(base)
    annotated = []
    per_round = args.budget // args.rounds
    unmasked = without_masks(data).tolist()  # the simulated user needs the object's mask
    ends, base_ends = [], []  # how each round's fine-tune ended (a diverged one is rolled back, and counted)
    t0 = time.perf_counter()
    for r in range(args.rounds):
        ids = select_candidates(ours, data, sampler, per_round, seed=seed * 1000 + r,
                                exclude=[a.example_id for a in annotated] + unmasked)
        annotated += (annotate_oracle(data, ids) if args.user == "oracle"
                      else annotate_like_a_person(ours, data, ids, target=settings.target))
        ends.append(fine_tune(ours, data, annotated, replace(settings, seed=seed * 1000 + r)).status)
        base_ends.append(fine_tune(baseline, data, annotated, replace(base_settings, seed=seed * 1000 + r),
                                   guidance=False).status)
    after, base_after = bias_report(ours, data), bias_report(baseline, data)
    return {
        "acc_after": after["test_acc"], "aligned_acc_after": after["aligned_acc"],
        "attention_in_mask_after": after["attention_in_mask"],
        "baseline_acc_after": base_after["test_acc"], "baseline_aligned_acc_after": base_after["aligned_acc"],
        "baseline_attention_in_mask_after": base_after["attention_in_mask"],
        "images": len(annotated), "clicks_per_image": float(np.mean([a.operations for a in annotated])),
        "bias_conflicting_picked": _conflicting_share(data, [a.example_id for a in annotated]),
        "seconds": time.perf_counter() - t0,
        "rounds_diverged": ends.count("diverged"), "baseline_rounds_diverged": base_ends.count("diverged"),
    }


def _conflicting_share(data, ids) -> float | None:
    """Share of the annotated images whose background does not match their class (biased sets)."""
    try:
        from core.data.biased import background_colours
    except ImportError:  # pragma: no cover
        return None
    if data.masks is None or data.images.shape[1] != 3 or "test_aligned" not in data.splits:
        return None
    idx = torch.as_tensor(np.asarray(ids, dtype=np.int64))
    sub = copy.copy(data)
    sub.images, sub.masks = data.images[idx], data.masks[idx]
    colours = background_colours(sub)
    return float((colours != data.labels[idx].numpy()).mean())


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="biased-digits:../shared/data/mnist")
    ap.add_argument("--rho", type=float, default=None)
    ap.add_argument("--budget", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--samplers", default=",".join(SAMPLER_NAMES))
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--seed-base", type=int, default=0, help="first seed (figures: 0; tuning: 100)")
    ap.add_argument("--epochs", type=int, default=TUNED_FINE_TUNE["epochs"], help="fine-tune epochs per round")
    ap.add_argument("--lr", type=float, default=TUNED_FINE_TUNE["lr"])
    ap.add_argument("--baseline-lr", type=float, default=BASELINE_LR,
                    help="the CE-only baseline's fine-tune lr, tuned for it apart from ours; same epochs and steps")
    ap.add_argument("--w-g", type=float, default=FineTuneSettings.w_g, help="weight of the attention loss (paper 0.75)")
    ap.add_argument("--w-c", type=float, default=FineTuneSettings.w_c, help="weight of CE in our fine-tune (paper 0.25)")
    ap.add_argument("--user", choices=("clicks", "oracle"), default="clicks",
                    help="clicks: the simulated person (the figures); oracle: a diagnostic upper bound whose negative "
                         "region is every pixel off the object")
    ap.add_argument("--gradcam-layer", default=None,
                    help="a diagnostic: the conv layer whose Grad-CAM the user sees, the loss guides and the attention "
                         "figures measure (default: the model's own, conv4 for seed-cnn)")
    ap.add_argument("--batch-size", type=int, default=FineTuneSettings.batch_size)
    ap.add_argument("--base-epochs", type=int, default=BASE.epochs)
    ap.add_argument("--base-lr", type=float, default=BASE.lr)
    ap.add_argument("--limit-per-class", type=int, default=None, help="keep the first N images per class")
    ap.add_argument("--cache", default=None, help="folder for base models, reused across runs")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--quick", action="store_true", help="a smoke test: small data, one seed, 2 rounds, 2 samplers")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.budget, args.rounds, args.seeds, args.epochs = 8, 2, 1, 2
        args.limit_per_class = args.limit_per_class or 40
        args.base_epochs = 1
        args.samplers = ",".join(s for s in args.samplers.split(",") if s in ("random", "gmm")) or "random"
    samplers = [s for s in args.samplers.split(",") if s]
    unknown = [s for s in samplers if s not in SAMPLER_NAMES]
    if unknown:
        raise SystemExit(f"unknown samplers {unknown}; choose from {', '.join(SAMPLER_NAMES)}")
    source = source_of(args.data, args.rho)
    settings = FineTuneSettings(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, w_g=args.w_g, w_c=args.w_c)
    base_settings = replace(settings, lr=args.baseline_lr)
    base_cfg = replace(BASE, epochs=args.base_epochs, lr=args.base_lr)
    cache = Path(args.cache) if args.cache else None
    seeds = list(range(args.seed_base, args.seed_base + args.seeds))
    t_start = time.perf_counter()
    per_seed = []
    for seed in seeds:
        try:
            data = load_dataset(source, seed=seed, limit_per_class=args.limit_per_class)
        except DataError as exc:
            raise SystemExit(f"cannot load {source}: {exc}") from exc
        if data.masks is None:
            raise SystemExit(f"{source} has no object masks; the simulated user needs them (an ImageFolder tree "
                             "with a masks/ mirror, or biased-digits)")
        base = base_model(data, seed, cache, f"{source}|{args.limit_per_class}", base_cfg)
        if args.gradcam_layer:  # this instance only (copies keep it); the class default is untouched
            if args.gradcam_layer not in dict(base.named_modules()):
                raise SystemExit(f"--gradcam-layer {args.gradcam_layer}: seed-cnn has no such layer")
            base.gradcam_layer = args.gradcam_layer
        before = bias_report(base, data)
        row = {"seed": seed, "before": before, "per_sampler": {}}
        for name in samplers:
            row["per_sampler"][name] = run_sampler(base, data, name, args, settings, seed, base_settings)
            r = row["per_sampler"][name]
            print(f"seed {seed} {name:8s} conflicting {before['test_acc']:.1f} -> ours {r['acc_after']:.1f}, "
                  f"baseline {r['baseline_acc_after']:.1f}; in-mask {before['attention_in_mask']:.1f} -> "
                  f"{r['attention_in_mask_after']:.1f} ({r['seconds']:.0f}s)", flush=True)
        per_seed.append(row)
    summary = summarize(per_seed, samplers)
    payload = {
        "name": "attention_guidance", "data": source, "quick": bool(args.quick),
        "conflicting_acc_before": mean_sd([s["before"]["test_acc"] for s in per_seed])[0],
        "conflicting_acc_before_sd": mean_sd([s["before"]["test_acc"] for s in per_seed])[1],
        "aligned_acc_before": mean_sd([s["before"]["aligned_acc"] for s in per_seed])[0],
        "attention_in_mask_before": mean_sd([s["before"]["attention_in_mask"] for s in per_seed])[0],
        **summary,
        "target_points": TARGET_POINTS,
        "per_seed": per_seed,
        "params": {"budget": args.budget, "rounds": args.rounds, "samplers": samplers, "fine_tune": asdict(settings),
                   "baseline_fine_tune": asdict(base_settings),
                   "base": asdict(base_cfg), "limit_per_class": args.limit_per_class, "model": "seed-cnn",
                   "user": args.user, "gradcam_layer": args.gradcam_layer,
                   "simulated_user": "positive: mask centroid; negatives: superpixels with < 5% of their pixels on the "
                                     "mask and mean attention above the image mean, at most 5, most attended first"},
        "seeds": seeds_record(seeds, TUNED_ON if args.seed_base != TUNED_ON[0] else None, TUNED),
        "seconds": time.perf_counter() - t_start,
        "machine": machine(),
    }
    rows = [{"sampler": n, **{k: payload["per_sampler"][n][k] for k in ("acc_after", "acc_after_sd", "baseline_acc_after",
                                                                            "gain_over_baseline", "attention_in_mask_after",
                                                                            "clicks_per_image")}} for n in samplers]
    print(f"bias-conflicting accuracy before: {payload['conflicting_acc_before']:.2f}; "
          f"attention in mask before: {payload['attention_in_mask_before']:.1f}%")
    print_table(rows, list(rows[0]))
    print(f"best sampler: {payload['best_sampler']}, {payload['best_gain_over_baseline']:+.2f} points over the "
          f"same-information baseline (target +{TARGET_POINTS:g}); {payload['seconds']:.0f} s")
    write_json(args.json, payload)
    return payload


def summarize(per_seed: list[dict], samplers: list[str]) -> dict:
    out: dict = {"per_sampler": {}}
    for name in samplers:
        rows = [s["per_sampler"][name] for s in per_seed]

        def ms(key: str) -> tuple:
            return mean_sd([r[key] for r in rows])

        acc, acc_sd = ms("acc_after")
        base, base_sd = ms("baseline_acc_after")
        gains = [r["acc_after"] - r["baseline_acc_after"] for r in rows]
        out["per_sampler"][name] = {
            "acc_after": acc, "acc_after_sd": acc_sd, "aligned_acc_after": ms("aligned_acc_after")[0],
            "attention_in_mask_before": mean_sd([s["before"]["attention_in_mask"] for s in per_seed])[0],
            "attention_in_mask_after": ms("attention_in_mask_after")[0],
            "baseline_acc_after": base, "baseline_acc_after_sd": base_sd,
            "baseline_aligned_acc_after": ms("baseline_aligned_acc_after")[0],
            "baseline_attention_in_mask_after": ms("baseline_attention_in_mask_after")[0],
            "gain_over_baseline": mean_sd(gains)[0], "gain_over_baseline_sd": mean_sd(gains)[1],
            "clicks_per_image": ms("clicks_per_image")[0], "images": rows[0]["images"],
            "bias_conflicting_picked": ms("bias_conflicting_picked")[0],
        }
    best = max(samplers, key=lambda n: out["per_sampler"][n]["acc_after"])
    out["best_sampler"] = best
    out["baseline_acc_after"] = out["per_sampler"][best]["baseline_acc_after"]
    out["best_gain_over_baseline"] = out["per_sampler"][best]["gain_over_baseline"]
    out["ranking"] = sorted(samplers, key=lambda n: -out["per_sampler"][n]["acc_after"])
    out["target_met"] = out["best_gain_over_baseline"] is not None and out["best_gain_over_baseline"] >= TARGET_POINTS
    return out


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
