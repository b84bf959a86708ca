"""Training-monitor overhead: core.engine.fit with the monitor attached against a bare loop.

"Ours" is what the training-monitor page runs: ``fit`` with :class:`core.monitor.LayerStats`
(per-filter mean |activation| and gradient norm on every step) and
:class:`core.monitor.SettleTracker` (once per epoch) as callbacks, while a second thread
plays the page: every ``--poll`` seconds it calls ``snapshot()``, ``grad_history()`` and
``table()``, as a fragment with ``run_every`` does. The reference is a bare hand-written
PyTorch loop (``bare_epoch`` from ``engine_overhead.py``). Same model, data, batch size,
seed and thread count; interleaved pairs of ``--epochs`` epochs each, medians.

    python benchmarks/monitor_overhead.py [--data digits] [--model seed-cnn] [--pairs 9] [--json PATH]
"""
from __future__ import annotations

import argparse
import copy
import threading

import torch

from _common import interleaved, machine, print_table, write_json  # noqa: I001
from engine_overhead import bare_epoch
from core.data import load_dataset
from core.engine import TrainConfig, fit
from core.models import build_model
from core.monitor import LayerStats, SettleTracker

TARGET = 1.10


class PagePoller:
    """A thread that reads the monitor every ``period`` seconds, as the page does."""

    def __init__(self, stats: LayerStats, tracker: SettleTracker, period: float) -> None:
        self.stats, self.tracker, self.period = stats, tracker, period
        self.polls = 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._done.wait(self.period):
            self.stats.snapshot()
            self.stats.grad_history()
            self.tracker.table()
            self.polls += 1

    def __enter__(self) -> "PagePoller":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._thread.join()


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="digits")
    ap.add_argument("--model", default="seed-cnn")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--pairs", type=int, default=9)
    ap.add_argument("--epochs", type=int, default=2, help="epochs per timed run")
    ap.add_argument("--poll", type=float, default=0.8, help="seconds between the page's reads")
    ap.add_argument("--limit-per-class", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads on both sides (default: torch's; 1 is steadier on a busy machine)")
    ap.add_argument("--quick", action="store_true", help="small run for CI")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.pairs, args.epochs = 3, 1

    data = load_dataset(args.data, seed=args.seed, limit_per_class=args.limit_per_class)
    images, labels = data.split("train")
    c, h, _ = data.image_shape
    base = build_model(args.model, c, h, data.num_classes, seed=args.seed)
    lr = 0.01
    cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=lr, seed=args.seed, device="cpu")
    polls: list[int] = []

    def ours() -> None:
        m = copy.deepcopy(base)
        tracker = SettleTracker(m)
        with LayerStats(m) as stats, PagePoller(stats, tracker, args.poll) as poller:
            fit(m, (images, labels), None, config=cfg, callbacks=[stats, tracker])
        polls.append(poller.polls)

    def reference() -> None:
        m = copy.deepcopy(base)
        for e in range(args.epochs):
            bare_epoch(m, images, labels, args.batch_size, args.seed + e, lr)

    r = interleaved(ours, reference, pairs=args.pairs)
    row = {
        "name": "monitor_overhead", "ours_s": r["ours_s"], "reference_s": r["reference_s"],
        "ratio": r["ratio"], "target": TARGET, "pass": r["ratio"] <= TARGET,
        "params": {
            "data": args.data, "model": args.model, "batch_size": args.batch_size,
            "train_images": len(images), "epochs_per_run": args.epochs, "pairs": args.pairs,
            "poll_s": args.poll, "polls_per_run": sorted(polls), "seed": args.seed,
            "callbacks": ["LayerStats", "SettleTracker"],
            "ours_all": r["ours_all"], "reference_all": r["reference_all"], **machine(),
        },
    }
    print_table([row], ["name", "ours_s", "reference_s", "target", "pass"])
    write_json(args.json, row)
    print(f"ratio {row['ratio']:.3f} (target <= {TARGET})")
    return row


if __name__ == "__main__":
    main()
