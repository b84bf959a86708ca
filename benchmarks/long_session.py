"""Long session: 30 minutes of monitored training with the Training monitor open, measuring the
server's memory and the page's rerun time as the job's history grows (issue 8).

One process plays the server: it hosts the workbench registry and a training job with exactly
what the Training monitor page attaches (per-layer statistics, settle tracker, activation
probe on the page's pool sample), and an AppTest of the Training monitor page stands in for
the open tab, rerunning the whole page every ``--poll`` seconds (a full rerun costs more than
the tab's fragment rerun, so the times are an upper bound). Every minute the process's
resident memory is read from /proc; at the start and the end the page's rerun time is the
median of ``--reruns`` reruns.

    python benchmarks/long_session.py [--minutes 30] [--poll 0.8] [--reruns 20] [--json PATH]

Targets: resident memory at the end within +200 MB of its value once training started; the
monitor's rerun median within 0.2 s at the end.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _common import ROOT, machine, print_table, write_json  # noqa: I001

ENTRY = ROOT / "app" / "main.py"
MONITOR = "../pages/monitor.py"
TARGET_MB = 200.0
TARGET_RERUN_S = 0.2


def rss_mb() -> float:
    """Resident memory of this process (VmRSS), in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def rerun_median(at, n: int) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        at.run()
        times.append(time.perf_counter() - t0)
    if len(at.exception):
        raise SystemExit(f"the monitor page raised: {[e.value for e in at.exception]}")
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--poll", type=float, default=0.8, help="seconds between the tab's reruns (the page polls at 0.8 s)")
    ap.add_argument("--reruns", type=int, default=20)
    ap.add_argument("--quick", action="store_true", help="1 minute, 5 reruns: a smoke test")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    at_start = machine()  # the commit whose code this process runs (HEAD may move during 30 minutes)
    if args.quick:
        args.minutes, args.reruns = 1.0, 5

    from app_latency import pretrain_base

    workspace = Path(tempfile.mkdtemp(prefix="steerboard-long-")) / "workspace"
    pretrain_base(workspace, epochs=3)
    os.environ["STEERBOARD_WORKSPACE"] = str(workspace)
    from streamlit.testing.v1 import AppTest

    from app.monitor_widgets import probe_sample
    from app.state import SESSION_KEY, compute_plan, get_registry
    from core.engine import TrainConfig
    from core.session.runs import JobOptions
    from core.monitor.live import PROBE_SAMPLE, monitors_for

    import torch

    torch.set_num_threads(compute_plan()[1])  # as the server sets it
    at = AppTest.from_file(str(ENTRY), default_timeout=120)
    at.run()
    at.switch_page(MONITOR)
    at.run()
    wb = get_registry().get(at.session_state[SESSION_KEY])
    _, sample, _ = probe_sample(wb, PROBE_SAMPLE)
    # what the page's Start does (app.monitor_widgets.training_controls), with more epochs
    # than the page's field allows so that one job spans the whole session
    job = wb.train(TrainConfig(epochs=100_000, lr=0.02, batch_size=64, seed=0),
                   JobOptions("long session (monitored)", attach=lambda m: monitors_for(m, sample)))
    while job.done_steps < 20:
        time.sleep(0.1)
    at.run()  # the page now shows the running job
    rerun_start = rerun_median(at, args.reruns)
    rss_start = rss_mb()
    t_start = time.monotonic()
    samples = [(0.0, rss_start, job.done_steps)]
    next_sample = t_start + 60
    polls = 0
    while time.monotonic() - t_start < args.minutes * 60:
        t0 = time.perf_counter()
        at.run()
        polls += 1
        if time.monotonic() >= next_sample:
            samples.append((time.monotonic() - t_start, rss_mb(), job.done_steps))
            print(f"{samples[-1][0] / 60:5.1f} min  rss {samples[-1][1]:7.1f} MB  step {samples[-1][2]}", flush=True)
            next_sample += 60
        time.sleep(max(0.0, args.poll - (time.perf_counter() - t0)))
    rerun_end = rerun_median(at, args.reruns)
    rss_end = rss_mb()
    steps, history = job.done_steps, len(job.steps)
    job.stop()
    job.wait(60)
    at.run()
    rerun_after = rerun_median(at, args.reruns)  # idle: the finished job's history is still shown
    growth = rss_end - rss_start
    params = {
        "minutes": args.minutes, "poll_s": args.poll, "reruns": args.reruns, "polls": polls, "steps": steps,
        "step_history_points": history, "rss_samples": [{"t_s": round(t, 1), "rss_mb": round(m, 1), "step": s}
                                                        for t, m, s in samples],
        "rss_start_mb": rss_start, "rss_end_mb": rss_end, "rss_max_mb": max(m for _, m, _ in samples + [(0, rss_end, 0)]),
        "via": "AppTest of the Training monitor in the training process (full reruns: an upper bound of the tab's "
               "fragment reruns)", "quick": bool(args.quick),
    }
    rows = [
        {"name": "long_session_memory_growth", "ours_mb": growth, "target_mb": TARGET_MB,
         "pass": growth <= TARGET_MB, "params": params},
        {"name": "long_session_monitor_rerun_start", "ours_s": rerun_start, "target": TARGET_RERUN_S,
         "pass": rerun_start <= TARGET_RERUN_S, "params": {"while": "training, first minute"}},
        {"name": "long_session_monitor_rerun_end", "ours_s": rerun_end, "target": TARGET_RERUN_S,
         "pass": rerun_end <= TARGET_RERUN_S, "params": {"while": f"training, after {args.minutes:g} minutes"}},
        {"name": "long_session_monitor_rerun_idle_after", "ours_s": rerun_after, "target": TARGET_RERUN_S,
         "pass": rerun_after <= TARGET_RERUN_S, "params": {"while": "idle, the finished job still shown"}},
    ]
    print_table([{"name": r["name"], "value": r.get("ours_mb", r.get("ours_s")), "target": r.get("target_mb", r.get("target")),
                  "pass": r["pass"]} for r in rows], ["name", "value", "target", "pass"])
    write_json(args.json, {"name": "long_session", "rows": rows, "machine": machine(), "provenance": at_start})
    return 0


if __name__ == "__main__":
    sys.exit(main())
