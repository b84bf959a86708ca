"""Engine overhead: core.engine.fit against a bare hand-written PyTorch loop.

Same model, data, batch size, seed and thread count (by default the server's for one training
job, ``core.session.jobs.compute_plan``, as in monitor_overhead.py: ``_common.set_torch_threads``;
recorded as ``params.torch_threads``); interleaved repeats of one epoch each.
Entries: ``engine`` (no statistics), ``engine_stats`` (per-layer and per-filter statistics on
every step), ``frozen`` (seed-cnn with conv1-2 frozen, against a bare loop with the same
layers frozen).

    python benchmarks/engine_overhead.py [--data digits] [--pairs 7] [--threads N] [--device cpu|cuda] [--json PATH]

On CUDA the images stay in host memory and each batch is copied to the GPU, in both loops (as
the engine does); the times are absolute seconds on the GPU named in the provenance, next to
the ratios. ``--device cuda`` on a machine without CUDA says so and exits 0.
"""
from __future__ import annotations

import argparse
import copy

import torch
import torch.nn.functional as F

from _common import (add_threads_argument, device_or_exit, device_params, interleaved, machine, print_table,  # noqa: I001
                     seeds_record, set_torch_threads, sync, write_json)
from core.data import load_dataset
from core.engine import TrainConfig, apply_freeze, fit
from core.models import build_model
from core.monitor.stats import LayerStats


def bare_epoch(model, images, labels, batch_size: int, seed: int, lr: float, frozen: tuple[str, ...] = (),
               device: str = "cpu") -> None:
    """What a user would write by hand: shuffle, forward, CE, backward, SGD step, log loss."""
    for g in frozen:
        for p in model.group_parameters(g):
            p.requires_grad_(False)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr, momentum=0.9, weight_decay=5e-4)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    total, correct = 0.0, 0
    for idx in torch.randperm(len(images), generator=gen).split(batch_size):
        x, y = images[idx].to(device, non_blocking=True), labels[idx].to(device, non_blocking=True)
        opt.zero_grad(set_to_none=True)
        out = model(x)
        loss = F.cross_entropy(out, y)
        loss.backward()
        opt.step()
        total += loss.item() * len(y)
        correct += int((out.argmax(1) == y).sum())


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="digits")
    ap.add_argument("--model", default="seed-cnn")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--pairs", type=int, default=7)
    ap.add_argument("--repeat", type=int, default=2, help="epochs per timed run")
    ap.add_argument("--seed", type=int, default=100)
    add_threads_argument(ap)
    ap.add_argument("--quick", action="store_true", help="small run for CI")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (on a machine without it: says so, exits 0)")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    device = device_or_exit(args.device)
    threads = set_torch_threads(args.threads)
    if args.quick:
        args.pairs, args.repeat = 3, 1

    data = load_dataset(args.data, seed=args.seed)
    images, labels = data.split("train")
    c, h, _ = data.image_shape
    base = build_model(args.model, c, h, data.num_classes, seed=args.seed)
    lr = 0.01
    cfg = TrainConfig(epochs=args.repeat, batch_size=args.batch_size, lr=lr, seed=args.seed, device=device)
    first_two = tuple(list(base.layer_groups)[:2])

    def ours(stats: bool = False, frozen: tuple[str, ...] = ()):
        def run():
            m = copy.deepcopy(base)
            apply_freeze(m, frozen)
            if stats:
                with LayerStats(m) as st:
                    fit(m, (images, labels), None, config=cfg, callbacks=[st])
            else:
                fit(m, (images, labels), None, config=cfg)
            sync(device)
        return run

    def ref(frozen: tuple[str, ...] = ()):
        def run():
            m = copy.deepcopy(base).to(device)
            for e in range(args.repeat):
                bare_epoch(m, images, labels, args.batch_size, args.seed + e, lr, frozen, device)
            sync(device)
        return run

    prov = machine(device)
    rows = []
    for name, a, b, target in [
        ("engine", ours(), ref(), 1.05),
        ("engine_stats", ours(stats=True), ref(), 1.10),
        ("frozen", ours(frozen=first_two), ref(first_two), 1.05),
    ]:
        r = interleaved(a, b, pairs=args.pairs)
        rows.append({
            "name": name, "ours_s": r["ours_s"], "reference_s": r["reference_s"], "ratio": r["ratio"],
            "target": target, "pass": r["ratio"] <= target, "quick": args.quick,
            "seeds": seeds_record([args.seed], [], "nothing (a timing)"),
            "params": {"data": args.data, "model": args.model, "batch_size": args.batch_size, **device_params(device),
                       "gpu": prov.get("cuda"),
                       "train_images": len(images), "epochs_per_run": args.repeat, "pairs": args.pairs,
                       "torch_threads": threads,
                       "frozen": list(first_two) if name == "frozen" else [],
                       "ours_all": r["ours_all"], "reference_all": r["reference_all"]},
            "provenance": prov,
        })
    print_table(rows, ["name", "ours_s", "reference_s", "target", "pass", "ratio"])
    write_json(args.json, rows)
    return rows


if __name__ == "__main__":
    main()
