"""Every benchmark in one run, at one commit, then the results table.

    python benchmarks/run_all.py [--out DIR] [--only NAME ...] [--skip NAME ...] [--dry-run] [--allow-dirty]

Runs each command of ``report.COMMANDS`` (the README's commands) one after another, with its
JSON file and log in DIR (default ``bench-results/run-<commit>``), then writes DIR's table with
``report.py``. This is the "one run" the README's table should come from: every file then
names the same commit. The full run takes several hours on a 2-core machine (the attention
and grid simulated users are the longest); run it with nothing else on the machine, since
the speed figures are measured as it goes. ``run.json`` in DIR records each command, its exit
status, start and duration. A failed benchmark is recorded and the run goes on.

Refuses a dirty work tree unless ``--allow-dirty``: a figure must come from committed code.
"""
from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, git_state  # noqa: E402
from report import COMMANDS  # noqa: E402

# Speed figures first (they need the quiet machine most), then the long effect runs.
ORDER = ["monitor_overhead", "engine_overhead", "streamed_tsne", "gradcam_speed", "grid_penalty_cost",
         "latent_update_speed", "app_latency", "attention_page_run", "freezing", "long_session", "study_load",
         "select_retrain", "latent_editing", "grid_feedback", "attention_guidance"]


def planned(out: Path, only: list[str] | None = None, skip: list[str] | None = None) -> list[tuple[str, list[str]]]:
    """(name, argv) of every benchmark to run, writing into ``out`` instead of bench-results/."""
    names = [n for n in ORDER if n in COMMANDS] + [n for n in COMMANDS if n not in ORDER]
    unknown = [n for n in (only or []) + (skip or []) if n not in COMMANDS]
    if unknown:
        raise SystemExit(f"unknown benchmark(s): {', '.join(unknown)}; known: {', '.join(names)}")
    names = [n for n in names if (not only or n in only) and n not in (skip or [])]
    plan = []
    for name in names:
        argv = shlex.split(COMMANDS[name])
        # JSON files and the base-model cache go into ``out``: a model cached by an older commit is not reused
        argv = [str(out / a.removeprefix("bench-results/")) if a.startswith("bench-results/") else a for a in argv]
        if argv[0] == "python":
            argv[0] = sys.executable
        plan.append((name, argv))
    return plan


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", help="folder for the JSON files and logs (default bench-results/run-<commit>)")
    ap.add_argument("--only", nargs="+", help="run only these benchmarks")
    ap.add_argument("--skip", nargs="+", help="leave these out")
    ap.add_argument("--dry-run", action="store_true", help="print the commands and exit")
    ap.add_argument("--allow-dirty", action="store_true", help="run on uncommitted changes (the files say so)")
    args = ap.parse_args(argv)

    git = git_state()
    out = Path(args.out) if args.out else ROOT / "bench-results" / f"run-{(git.get('git_commit') or 'nogit')[:8]}"
    plan = planned(out, args.only, args.skip)
    if args.dry_run:
        for name, cmd in plan:
            print(f"{name}: {shlex.join(cmd)}")
        return 0
    if git.get("git_dirty") and not args.allow_dirty:
        print(f"the work tree has uncommitted changes ({', '.join(git.get('git_dirty_paths', [])[:5])}); "
              "commit them, or pass --allow-dirty", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    record = {"git": git, "started": time.strftime("%Y-%m-%d %H:%M:%S"), "runs": []}
    for name, cmd in plan:
        t0 = time.perf_counter()
        started = time.strftime("%Y-%m-%d %H:%M:%S")
        print(f"[{started}] {name}: {shlex.join(cmd)}", flush=True)
        with open(out / f"{name}.log", "w") as log:
            rc = subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT).returncode
        took = time.perf_counter() - t0
        print(f"  exit {rc} after {took / 60:.1f} min", flush=True)
        record["runs"].append({"name": name, "command": shlex.join(cmd), "exit": rc, "started": started,
                               "seconds": round(took, 1)})
        (out / "run.json").write_text(json.dumps(record, indent=2))
    report = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "report.py"), str(out)], cwd=ROOT,
                            capture_output=True, text=True)
    (out / "results.md").write_text(report.stdout)
    print(report.stdout)
    failed = [r["name"] for r in record["runs"] if r["exit"] != 0]
    if failed:
        print(f"failed: {', '.join(failed)} (see their logs in {out})", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
