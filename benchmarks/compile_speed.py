"""torch.compile and bf16 mixed precision on the zoo's models: do they pay on this machine?

Issue 15 asks for both as options of the training engine (``TrainConfig.compile``,
``TrainConfig.precision``; ``python -m core.train --compile --precision bf16``), on by default
only where they speed up the zoo's models. This measures a training step as the engine takes
it (forward, cross-entropy, backward, SGD with momentum) on each model:

- ``compile_<model>``: a ``torch.compile``d model / the same model eager, both in float32.
  The one-off compile time is reported apart (``compile_s``), not in the ratio.
- ``bf16_<model>``: eager under ``torch.autocast(dtype=torch.bfloat16)`` / eager float32.

bf16 autocast is meant for CUDA GPUs; on a CPU it is measured only when asked
(``--options compile,bf16``): there it was 10-17x slower than float32 on seed-cnn and vgg6, and
resnet18 in bf16 takes longer than the rest of the run together.

Interleaved repeats of ``--steps`` steps each, on random images of the model's usual input
(seed-cnn 1x28x28 as the digits, vgg6 and resnet18 3x32x32 as CIFAR-10; a timing needs no
real data). A ratio below 1 is a speed-up. No target: the figures decide the defaults.

    python benchmarks/compile_speed.py [--models seed-cnn,vgg6,resnet18] [--options compile,bf16] [--device cpu|cuda] [--json PATH]
"""
from __future__ import annotations

import argparse
import copy
import time

import torch
import torch.nn.functional as F

from _common import device_or_exit, device_params, interleaved, machine, print_table, seeds_record, sync, write_json  # noqa: I001
from core.engine import autocast_for
from core.models import build_model

SHAPES = {"seed-cnn": (1, 28), "vgg6": (3, 32), "resnet18": (3, 32)}


def stepper(model, forward, x, y, device: torch.device, precision: str):
    """``steps`` training steps of ``model`` through ``forward`` (the model or its compiled form)."""
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)

    def run(steps: int) -> None:
        model.train()
        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            with autocast_for(precision, device):
                loss = F.cross_entropy(forward(x), y)
            loss.backward()
            opt.step()
        sync(str(device))
    return run


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="seed-cnn,vgg6,resnet18")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=10, help="training steps per timed run")
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu", help="cpu or cuda (on a machine without it: says so, exits 0)")
    ap.add_argument("--options", default=None,
                    help="what to time, of compile,bf16 (default: both on CUDA, compile alone on a CPU)")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    device_name = device_or_exit(args.device)
    device = torch.device(device_name)
    options = (args.options or ("compile,bf16" if device.type == "cuda" else "compile")).split(",")
    if not options or set(options) - {"compile", "bf16"}:
        ap.error(f"--options: a comma-separated list of compile and bf16, got {args.options!r}")
    rows = []
    for name in args.models.split(","):
        channels, side = SHAPES[name]
        gen = torch.Generator().manual_seed(args.seed)
        x = torch.rand(args.batch_size, channels, side, side, generator=gen).to(device)
        y = torch.randint(0, 10, (args.batch_size,), generator=gen).to(device)
        base = build_model(name, channels, side, 10, seed=args.seed).to(device)

        eager_model = copy.deepcopy(base)
        eager = stepper(eager_model, eager_model, x, y, device, "fp32")
        eager(1)
        common = {"model": name, "input": [channels, side, side], "batch_size": args.batch_size,
                  "steps_per_run": args.steps, "pairs": args.pairs, **device_params(device_name)}
        done = len(rows)
        if "compile" in options:
            compiled_model = copy.deepcopy(base)
            compiled = stepper(compiled_model, torch.compile(compiled_model), x, y, device, "fp32")
            t0 = time.perf_counter()
            compiled(1)  # the compile happens here (forward and backward graphs)
            compile_s = time.perf_counter() - t0
            r = interleaved(lambda: compiled(args.steps), lambda: eager(args.steps), pairs=args.pairs)
            rows.append({"name": f"compile_{name}", "ours_s": r["ours_s"], "reference_s": r["reference_s"],
                         "ratio": r["ratio"], "target": None, "pass": None,
                         "seeds": seeds_record([args.seed], [], "nothing (a timing)"),
                         "params": {**common, "ours": "torch.compile (default mode), float32",
                                    "reference": "eager, float32", "compile_s": compile_s,
                                    "ours_all": r["ours_all"], "reference_all": r["reference_all"]}})
        if "bf16" in options:
            bf16_model = copy.deepcopy(base)
            bf16 = stepper(bf16_model, bf16_model, x, y, device, "bf16")
            r = interleaved(lambda: bf16(args.steps), lambda: eager(args.steps), pairs=args.pairs)
            rows.append({"name": f"bf16_{name}", "ours_s": r["ours_s"], "reference_s": r["reference_s"],
                         "ratio": r["ratio"], "target": None, "pass": None,
                         "seeds": seeds_record([args.seed], [], "nothing (a timing)"),
                         "params": {**common, "ours": "eager, torch.autocast bfloat16", "reference": "eager, float32",
                                    "ours_all": r["ours_all"], "reference_all": r["reference_all"]}})
        print(f"{name}: " + ", ".join(f"{row['name'].split('_')[0]} {row['ratio']:.3f}" for row in rows[done:])
              + (f" (compile time {compile_s:.1f} s)" if "compile" in options else ""), flush=True)
        for row in rows[done:]:
            row["provenance"] = machine(device_name)
        write_json(args.json, rows)  # after each model: resnet18 in bf16 on a CPU takes minutes
    print_table(rows, ["name", "ours_s", "reference_s", "ratio"])
    write_json(args.json, rows)
    return rows


if __name__ == "__main__":
    main()
