"""Training-monitor overhead: core.engine.fit with everything the monitor page attaches,
against a bare loop.

"Ours" is what the training-monitor page runs: ``fit`` with the callbacks of
:func:`core.monitor.live.monitors_for` (what the page passes to ``start_training``):
:class:`core.monitor.stats.LayerStats` (per-filter mean |activation| and gradient norm on every
step), :class:`core.monitor.stats.SettleTracker` (once per epoch) and
:class:`core.monitor.live.ActivationProbe` on the page's sample (``PROBE_SAMPLE`` pool
images drawn as ``app.monitor_widgets.probe_sample`` draws them; the whole pool when it is
smaller), with its default schedule (adaptive, at most ``PROBE_BUDGET`` of the step time),
while a second thread plays the page: every ``--poll`` seconds (``app.widgets.POLL_S``) it
reads ``snapshot()``, ``grad_history()``, the settle ``table()`` and the probe's ``latest()``
and ``pace()``, as the page's fragment does. Not included: the page's own drawing on the
Streamlit thread (the t-SNE of the Embedding view is timed by ``streamed_tsne.py``).

The reference is a bare hand-written PyTorch loop (``bare_epoch`` from
``engine_overhead.py``). Same model, data, batch size, seed and thread count (by default the
server's for one training job, ``core.session.jobs.compute_plan``, the default of engine_overhead.py
too: ``_common.set_torch_threads``; recorded as ``params.torch_threads``); interleaved
pairs of ``--epochs`` epochs each (default 10, the page's default run), medians.

    python benchmarks/monitor_overhead.py [--data digits] [--model seed-cnn] [--pairs 9] [--device cpu|cuda]
                                          [--json PATH]

``--device cuda``: both loops train on the GPU, the images staying in host memory and each
batch copied there (as the engine does); the probe's sample goes to the GPU as the page's
does; each timed run ends with a CUDA sync. The times are absolute seconds on the GPU named in
the JSON, next to the ratio. On a machine without the device it says so and exits 0.
"""
from __future__ import annotations

import argparse
import copy
import threading

import torch

from _common import (add_threads_argument, device_or_exit, device_params, interleaved, machine, print_table,  # noqa: I001
                     seeds_record, set_torch_threads, sync, write_json)
from engine_overhead import bare_epoch
from core.data import load_dataset
from core.engine import TrainConfig, fit
from core.monitor.live import PROBE_BUDGET, PROBE_EVERY, PROBE_SAMPLE, Monitors, monitors_for
from core.models import build_model

TARGET = 1.10


class PagePoller:
    """A thread that reads the monitors every ``period`` seconds, as the page does."""

    def __init__(self, mons: Monitors, period: float) -> None:
        self.mons, self.period = mons, period
        self.polls = 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._done.wait(self.period):
            self.mons.stats.snapshot()
            self.mons.stats.grad_history()
            self.mons.settle.table()
            if self.mons.probe is not None:
                self.mons.probe.latest()
                self.mons.probe.pace()
            self.polls += 1

    def __enter__(self) -> "PagePoller":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._thread.join()


def page_sample(data, n: int = PROBE_SAMPLE, seed: int = 0) -> torch.Tensor:
    """The pool images the page's probe follows (as ``app.monitor_widgets.probe_sample``)."""
    images, _ = data.split("pool")
    g = torch.Generator().manual_seed(seed)
    return images[torch.randperm(len(images), generator=g)[: int(n)]]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="digits")
    ap.add_argument("--model", default="seed-cnn")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--pairs", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=10,
                    help="epochs per timed run (10: the page's default run; the probe's first snapshot, at step 0, "
                         "is a fixed cost per run that a shorter run pays a larger share of)")
    ap.add_argument("--poll", type=float, default=0.8, help="seconds between the page's reads (app.widgets.POLL_S)")
    ap.add_argument("--probe-n", type=int, default=PROBE_SAMPLE, help="images the probe follows (the page's PROBE_N)")
    ap.add_argument("--probe-budget", default=str(PROBE_BUDGET),
                    help="the probe's share of step time; 'none' for the old fixed schedule (every 25 steps and "
                         "each epoch end)")
    ap.add_argument("--limit-per-class", type=int, default=None)
    ap.add_argument("--seed", type=int, default=100)
    add_threads_argument(ap)
    ap.add_argument("--quick", action="store_true", help="small run for CI")
    ap.add_argument("--device", default="cpu", help="cpu or cuda, both loops (on a machine without it: says so, exits 0)")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    device = device_or_exit(args.device)
    threads = set_torch_threads(args.threads)
    if args.quick:
        args.pairs, args.epochs = 3, 1
    budget = None if args.probe_budget.lower() == "none" else float(args.probe_budget)
    prov = machine(device)

    data = load_dataset(args.data, seed=args.seed, limit_per_class=args.limit_per_class)
    images, labels = data.split("train")
    sample = page_sample(data, args.probe_n)
    c, h, _ = data.image_shape
    base = build_model(args.model, c, h, data.num_classes, seed=args.seed)
    lr = 0.01
    cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=lr, seed=args.seed, device=device)
    polls: list[int] = []
    paces: list[dict | None] = []

    def ours() -> None:
        m = copy.deepcopy(base)
        callbacks = monitors_for(m, sample, budget=budget)
        mons = Monitors.of(callbacks)
        try:
            with PagePoller(mons, args.poll) as poller:
                fit(m, (images, labels), None, config=cfg, callbacks=callbacks)
                sync(device)
        finally:
            mons.stats.close()
        polls.append(poller.polls)
        paces.append(mons.probe.pace())

    def reference() -> None:
        m = copy.deepcopy(base).to(device)
        for e in range(args.epochs):
            bare_epoch(m, images, labels, args.batch_size, args.seed + e, lr, device=device)
        sync(device)

    r = interleaved(ours, reference, pairs=args.pairs)
    timed = [p for p in paces[-args.pairs:] if p]
    row = {
        "name": "monitor_overhead", "ours_s": r["ours_s"], "reference_s": r["reference_s"],
        "ratio": r["ratio"], "target": TARGET, "pass": r["ratio"] <= TARGET, "quick": args.quick,
        "probe": {"images": len(sample), "every_min": PROBE_EVERY, "budget": budget,
                  "probes_per_run": [p["probes"] for p in timed],
                  "interval_steps": [p["interval"] for p in timed],
                  "share": [p["share"] for p in timed],
                  "probe_s": [p["probe_s"] for p in timed]},
        "seeds": seeds_record([args.seed], [], "nothing (a timing; the probe budget is a design choice, not tuned)"),
        "params": {
            "data": args.data, "model": args.model, "batch_size": args.batch_size, **device_params(device),
            "train_images": len(images), "epochs_per_run": args.epochs, "pairs": args.pairs,
            "poll_s": args.poll, "polls_per_run": sorted(polls), "seed": args.seed, "torch_threads": threads,
            "callbacks": ["LayerStats", "SettleTracker", "ActivationProbe"], "reader_thread": True,
            "ours_all": r["ours_all"], "reference_all": r["reference_all"],
        },
        "provenance": prov,
    }
    print_table([row], ["name", "ours_s", "reference_s", "target", "pass"])
    shares = [f"{x:.3f}" for x in row["probe"]["share"] if x is not None]
    print(f"probe: {len(sample)} images, {row['probe']['probes_per_run']} probes per run, interval "
          f"{row['probe']['interval_steps']} steps, share of step time {shares} (budget {budget})")
    write_json(args.json, row)
    print(f"ratio {row['ratio']:.3f} (target <= {TARGET})")
    return row


if __name__ == "__main__":
    main()
