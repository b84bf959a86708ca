"""Shared helpers for the benchmarks: interleaved timing, provenance of a run (machine, git
state, seeds), mean and sd over seeds, JSON output."""
from __future__ import annotations

import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as `python benchmarks/x.py` from anywhere
    sys.path.insert(0, str(ROOT))


# What a figure depends on: two commits with the same trees here measure the same code (a later
# commit that changed only tests or the README), so a run of every benchmark may span them.
MEASURED_PATHS = ("core", "app", "pages", "benchmarks", "requirements.txt", ".streamlit")


def git_state() -> dict:
    """The commit the benchmark ran on, and whether the working tree differed from it (with
    the paths that did, so a reader can tell whether they touch what was measured);
    ``git_code``: a hash of the committed trees of :data:`MEASURED_PATHS`."""
    def git(*cmd: str) -> str:
        return subprocess.run(["git", *cmd], cwd=ROOT, capture_output=True, text=True, timeout=20,
                              check=True).stdout

    try:
        commit = git("rev-parse", "HEAD").strip()
        changed = [line[3:] for line in git("status", "--porcelain", "--untracked-files=no").splitlines() if line]
        code = hashlib.sha1(git("ls-tree", "HEAD", "--", *MEASURED_PATHS).encode()).hexdigest()
    except (OSError, subprocess.SubprocessError):
        return {"git_commit": None, "git_dirty": None, "git_dirty_paths": [], "git_code": None}
    return {"git_commit": commit, "git_dirty": bool(changed), "git_dirty_paths": changed[:50], "git_code": code}


def machine(device: str | None = None) -> dict:
    """Provenance of a run: git commit (and whether the tree was dirty), Python and torch
    versions, torch threads, CPU count and the device the benchmark ran on (``device``; by
    default the one ``core.engine.pick_device`` would choose), with the GPU's name on CUDA."""
    if device is None:
        from core.engine import pick_device

        device = str(pick_device(None))
    return {
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": device,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        **git_state(),
    }


def add_threads_argument(ap) -> None:
    """``--threads``: the torch thread count of a speed benchmark (see :func:`set_torch_threads`)."""
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads on both sides (default: what the server gives a training job on this "
                         "machine, core.session.jobs.compute_plan: 1 on 2 cores, one core being left for the server)")


def set_torch_threads(requested: int | None = None) -> int:
    """Set and return the torch thread count a speed benchmark measures with: ``requested``,
    else the one default every speed benchmark shares, the threads the server gives one
    training job on this machine (``core.session.jobs.compute_plan``). Record it with the figures."""
    from core.session.jobs import compute_plan

    threads = int(requested or compute_plan()[1])
    if threads < 1:
        raise SystemExit(f"--threads must be at least 1, got {threads}")
    torch.set_num_threads(threads)
    return threads


def device_or_exit(name: str) -> str:
    """The device a benchmark's ``--device`` asks for, when this machine has it. A CUDA (or
    MPS) device that is not there is not an error of the benchmark: it says so and the process
    exits 0 without writing a result, so a CPU-only CI can call the GPU command."""
    from core.engine import available_devices

    name = name.lower()
    have = available_devices()
    if name.split(":")[0] not in ("cpu", "cuda", "mps"):  # a typo is an error, not a missing GPU
        print(f"--device {name}: not a device (cpu, cuda, cuda:N or mps)", file=sys.stderr)
        raise SystemExit(2)
    if name != "cpu" and name.split(":")[0] not in have:
        print(f"--device {name}: this machine has no such device (available: {', '.join(have)}); nothing measured.")
        raise SystemExit(0)
    return name


def device_params(device: str, note: str | None = None) -> dict:
    """What a speed benchmark records in ``params`` about where it ran: ``device``, on CUDA the
    GPU's name (``device_name``: absolute times mean little without it) and ``device_note``
    (what stayed on the CPU whatever ``--device`` said) when there is one."""
    out: dict = {"device": device}
    if device.startswith("cuda"):
        out["device_name"] = torch.cuda.get_device_name(torch.device(device))
    if note:
        out["device_note"] = note
    return out


def sync(device: str) -> None:
    """Wait for the device's queued work (CUDA runs asynchronously): a timing ends here."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()


ANCHOR_IMG_PER_S = 1260.0  # docs/platform-notes.md: seed CNN, batch 64, bare loop, 2 cores, torch 2.15


def speed_anchor(seconds: float = 2.0) -> dict:
    """How fast this machine is right now, for reading absolute timings (a latency, a start
    time) that no ratio can normalise: the images/s of the seed CNN's bare training loop
    (batch 64) over ``seconds``, next to the figure the platform notes give for these
    machines. Shared machines slow down when a neighbour is busy; a start time measured at
    half the anchor speed is not comparable to one measured at full speed."""
    from core.models import build_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = build_model("seed-cnn", 1, 28, 10)
        x, y = torch.randn(64, 1, 28, 28), torch.randint(0, 10, (64,))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)

    def step() -> None:
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    for _ in range(3):
        step()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        step()
        n += 64
    rate = n / (time.perf_counter() - t0)
    return {"seed_cnn_img_per_s": round(rate, 1), "anchor_img_per_s": ANCHOR_IMG_PER_S,
            "speed_vs_anchor": round(rate / ANCHOR_IMG_PER_S, 3)}


def seeds_record(reported_on: list[int], tuned_on: list[int] | None, tuned: str) -> dict:
    """Which seeds served which purpose (the honesty rule "tune apart"): ``tuned`` says what
    was chosen on ``tuned_on``; the figures are on ``reported_on``."""
    overlap = sorted(set(reported_on) & set(tuned_on or []))
    return {"reported_on": list(reported_on), "tuned_on": list(tuned_on or []), "tuned": tuned,
            "overlap": overlap}


def mean_sd(values) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (n - 1; 0.0 for a single value; None for none).
    NaNs (a figure undefined on a seed) are left out."""
    vals = [float(v) for v in values if v is not None and v == v]
    if not vals:
        return None, None
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)


def interleaved(ours: Callable[[], None], reference: Callable[[], None], *, pairs: int = 5, warmup: int = 1) -> dict:
    """Run ``ours`` and ``reference`` alternately (A B A B ...) after ``warmup`` pairs.
    Returns medians of each and the median of the pair-wise ratios."""
    for _ in range(warmup):
        ours()
        reference()
    a, b = [], []
    for i in range(pairs):
        # alternate which goes first, so neither side always runs on a warmer cache
        first, second = (ours, reference) if i % 2 == 0 else (reference, ours)
        t0 = time.perf_counter(); first(); t1 = time.perf_counter(); second(); t2 = time.perf_counter()
        (a.append(t1 - t0), b.append(t2 - t1)) if i % 2 == 0 else (b.append(t1 - t0), a.append(t2 - t1))
    ratios = [x / y for x, y in zip(a, b)]
    return {
        "ours_s": statistics.median(a),
        "reference_s": statistics.median(b),
        "ratio": statistics.median(ratios),
        "ours_all": a,
        "reference_all": b,
    }


def interleaved_many(runs: dict[str, Callable[[], None]], *, rounds: int = 5, warmup: int = 1) -> dict:
    """Run every callable of ``runs`` once per round, in an order that rotates from round to
    round (A B C, B C A, C A B, ...), after ``warmup`` rounds. Returns per name the median
    time and all times, and per pair (name, other) the median of the round-wise ratios
    ``ratio[name][other]``."""
    names = list(runs)
    for _ in range(warmup):
        for n in names:
            runs[n]()
    times: dict[str, list[float]] = {n: [] for n in names}
    for i in range(rounds):
        k = i % len(names)
        for n in names[k:] + names[:k]:
            t0 = time.perf_counter()
            runs[n]()
            times[n].append(time.perf_counter() - t0)
    ratio = {a: {b: statistics.median([x / y for x, y in zip(times[a], times[b])]) for b in names if b != a}
             for a in names}
    return {"median_s": {n: statistics.median(t) for n, t in times.items()}, "all_s": times, "ratio": ratio}


def write_json(path: str | None, payload) -> None:
    """Write ``payload`` (a dict, or a list of row dicts) as JSON; every dict that has no
    ``provenance`` gets :func:`machine`'s."""
    if path:
        prov = None
        for row in payload if isinstance(payload, list) else [payload]:
            if isinstance(row, dict) and "provenance" not in row:
                prov = prov or machine()
                row["provenance"] = prov
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(payload, indent=2, default=_plain))


def _plain(o):
    """numpy scalars and arrays as plain JSON values."""
    if hasattr(o, "tolist"):
        return o.tolist()
    if hasattr(o, "item"):
        return o.item()
    raise TypeError(f"Object of type {type(o).__name__} is not JSON serializable")


def print_table(rows: list[dict], keys: list[str]) -> None:
    widths = [max(len(k), *(len(_fmt(r.get(k))) for r in rows)) for k in keys]
    print("  ".join(k.ljust(w) for k, w in zip(keys, widths)))
    for r in rows:
        print("  ".join(_fmt(r.get(k)).ljust(w) for k, w in zip(keys, widths)))


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def pair_figures(labels, before, after, pairs) -> dict:
    """Held-out figures for confused class pairs on examples nobody trained on.

    The set: examples whose true class and prediction *before* both lie in one of ``pairs``
    (each a pair of class indices), i.e. the right ones of those classes and the mistakes
    between the two classes of a pair. Returned: ``n``, ``acc_before`` and ``acc_after`` (%),
    ``wrong_before``, ``fixed`` (wrong before, right after), ``fixed_fraction`` (%, NaN when
    none was wrong), ``right_before`` and ``broken`` (right before, wrong after)."""
    import numpy as np

    labels, before, after = (np.asarray(a).reshape(-1) for a in (labels, before, after))
    mask = np.zeros(len(labels), dtype=bool)
    for a, b in pairs:
        mask |= np.isin(labels, (a, b)) & np.isin(before, (a, b))
    y, b0, b1 = labels[mask], before[mask], after[mask]
    right_b, right_a = b0 == y, b1 == y
    n, wrong = int(mask.sum()), int((~right_b).sum())
    fixed = int((~right_b & right_a).sum())
    return {
        "n": n,
        "acc_before": float(100.0 * right_b.mean()) if n else float("nan"),
        "acc_after": float(100.0 * right_a.mean()) if n else float("nan"),
        "wrong_before": wrong,
        "fixed": fixed,
        "fixed_fraction": 100.0 * fixed / wrong if wrong else float("nan"),
        "right_before": int(right_b.sum()),
        "broken": int((right_b & ~right_a).sum()),
    }


def summarize(per_seed: list[dict], keys: list[str]) -> dict:
    """{key: {"mean", "sd", "values"}} over the seeds' rows (sample sd; see :func:`mean_sd`)."""
    out = {}
    for k in keys:
        vals = [r[k] for r in per_seed if k in r]
        m, s = mean_sd(vals)
        out[k] = {"mean": m, "sd": s, "values": vals}
    return out


def paired(per_seed: list[dict], ours: str, baseline: str) -> dict:
    """Per-seed difference ``ours - baseline``: mean, sd, and on how many seeds ours was
    higher. "Beats" in the results table means higher on every seed."""
    diffs = [r[ours] - r[baseline] for r in per_seed if ours in r and baseline in r]
    m, s = mean_sd(diffs)
    better = sum(d > 0 for d in diffs)
    return {"mean": m, "sd": s, "higher_on": better, "seeds": len(diffs),
            "beats": bool(diffs) and better == len(diffs)}
