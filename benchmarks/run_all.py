"""Every benchmark in one run, at one commit, then the results table.

    python benchmarks/run_all.py [--out DIR] [--resume] [--commit] [--only NAME ...] [--skip NAME ...] [--dry-run] [--allow-dirty]

Runs each command of ``report.COMMANDS`` (the README's commands) one after another, with its
JSON file and log in DIR (default ``results/run-<code>``, named by the product code below), then writes DIR's table with
``report.py``. ``results/`` is tracked by git (only the base-model cache in it is ignored), and
``--commit`` commits DIR after each benchmark: a working copy that does not outlive the session
(a CI runner, a lent machine) keeps what finished, and the README's table can name the files it
came from. This is the "one run" the README's table should come from: every figure then
comes from the same state of the code it depends on. The full run takes several hours on a 2-core machine (the attention
and grid simulated users are the longest); run it with nothing else on the machine, since
the speed figures are measured as it goes. ``run.json`` in DIR records each command, its exit
status, start and duration. A failed benchmark is recorded and the run goes on.

The full run is longer than a working session here, so it can be resumed: ``--resume``
continues the run in DIR, skipping each benchmark that already finished there with exit 0
and wrote its JSON file, as long as the code its figures depend on is the same now
(``_runs.benchmark_code``: the product, ``core/``, ``app/``, ``pages/``, ``requirements.txt``
and ``.streamlit/``, the shared ``_common.py``, and the benchmark's own script with what it
imports or loads). A benchmark whose code changed runs again, and says why; a change to the
product changes every benchmark's code, and the run's folder (named by ``_runs.product_code``)
with it: a new run.

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
from _runs import benchmark_code, changed_paths, latest_tries, product_code, script_of  # noqa: E402
from report import COMMANDS  # noqa: E402

# Speed figures first (they need the quiet machine most), then the long effect runs.
ORDER = ["monitor_overhead", "engine_overhead", "streamed_tsne", "gradcam_speed", "grid_penalty_cost",
         "latent_update_speed", "app_latency", "attention_page_run", "freezing", "long_session", "study_load",
         "select_retrain", "latent_editing", "grid_feedback", "attention_guidance", "attention_guidance_decoy",
         "attention_guidance_texture", "grid_feedback_decoy", "grid_feedback_texture"]


def shown_folder(out: Path) -> Path:
    """The run folder as the commands and the table's header name it: an absolute path inside the
    repository becomes relative to it, so that another checkout can resume and regenerate the run."""
    return out.resolve().relative_to(ROOT) if out.is_absolute() and out.resolve().is_relative_to(ROOT) else out


def planned(out: Path, only: list[str] | None = None, skip: list[str] | None = None) -> list[tuple[str, list[str]]]:
    """(name, argv) of every benchmark to run, writing into ``out`` instead of bench-results/
    (relative to the repository when ``out`` is inside it, so that another checkout resumes it)."""
    names = [n for n in ORDER if n in COMMANDS] + [n for n in COMMANDS if n not in ORDER]
    unknown = [n for n in (only or []) + (skip or []) if n not in COMMANDS]
    if unknown:
        raise SystemExit(f"unknown benchmark(s): {', '.join(unknown)}; known: {', '.join(names)}")
    names = [n for n in names if (not only or n in only) and n not in (skip or [])]
    out = shown_folder(out)
    plan = []
    for name in names:
        argv = shlex.split(COMMANDS[name])
        # JSON files and the base-model cache go into ``out``: a model cached by an older commit is not reused
        argv = [str(out / a.removeprefix("bench-results/")) if a.startswith("bench-results/") else a for a in argv]
        if argv[0] == "python":
            argv[0] = sys.executable
        plan.append((name, argv))
    return plan


def resumed(out: Path, git: dict) -> tuple[dict, set[str]]:
    """The run recorded in ``out``/run.json and the benchmarks it finished (exit 0, JSON file
    present) with the same code as now (:func:`_runs.benchmark_code` at the commit it ran on
    and at HEAD). SystemExit when there is no run there."""
    path = out / "run.json"
    if not path.exists():
        raise SystemExit(f"--resume: no run in {out} (no run.json); start one without --resume")
    record = json.loads(path.read_text())
    done = set()
    for run in latest_tries(record).values():  # an earlier try of a benchmark that ran again says nothing
        outs = [a for a in shlex.split(run["command"]) if a.endswith(".json")]
        script = script_of(run["command"])
        then = run.get("git_commit") or record.get("git", {}).get("git_commit")
        code = benchmark_code(script, then) if script and then else None
        same = code is not None and code == benchmark_code(script, "HEAD")
        if run["exit"] == 0 and all((ROOT / a).exists() for a in outs) and same:
            done.add(run["name"])
        else:
            if run["exit"] == 0 and not same:
                what = changed_paths(script, then) if script and then else []
                print(f"{run['name']}: its code changed since {str(then)[:10]} "
                      f"({', '.join(what) or 'that commit is not in this repository'}): runs again", flush=True)
    record.setdefault("resumed", []).append({"at": time.strftime("%Y-%m-%d %H:%M:%S"), "git_commit": git.get("git_commit")})
    return record, done


def commit_results(out: Path, message: str, root: Path = ROOT) -> bool:
    """Commit ``out`` (what git does not ignore in it) and nothing else; False, with a warning,
    when git cannot (no repository, ``out`` outside it, a lock held by another git command)."""
    try:
        rel = out.resolve().relative_to(root.resolve())
        for cmd in (["git", "add", "--", str(rel)], ["git", "commit", "--quiet", "-m", message, "--", str(rel)]):
            done = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=60)
            if done.returncode != 0:
                raise RuntimeError(f"{shlex.join(cmd)}: {(done.stderr or done.stdout).strip()}")
    except (ValueError, OSError, RuntimeError, subprocess.SubprocessError) as exc:
        print(f"  not committed: {exc}", file=sys.stderr, flush=True)
        return False
    return True


def failed_runs(record: dict) -> list[str]:
    """The benchmarks of a run whose latest try failed (a resumed run keeps the earlier tries)."""
    return [name for name, r in latest_tries(record).items() if r["exit"] != 0]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", help="folder for the JSON files and logs (default results/run-<code>)")
    ap.add_argument("--commit", action="store_true",
                    help="commit the folder after each benchmark (only the folder: nothing else staged is taken)")
    ap.add_argument("--only", nargs="+", help="run only these benchmarks")
    ap.add_argument("--skip", nargs="+", help="leave these out")
    ap.add_argument("--resume", action="store_true",
                    help="continue the run in DIR: skip what finished there (only if the measured code is the same)")
    ap.add_argument("--dry-run", action="store_true", help="print the commands and exit")
    ap.add_argument("--allow-dirty", action="store_true", help="run on uncommitted changes (the files say so)")
    args = ap.parse_args(argv)

    git = git_state()
    # named by the measured code, so that a later commit with the same code resumes in the same folder
    out = Path(args.out) if args.out else ROOT / "results" / f"run-{(product_code() or 'nogit')[:8]}"
    plan = planned(out, args.only, args.skip)
    if args.dry_run:
        for name, cmd in plan:
            print(f"{name}: {shlex.join(cmd)}")
        return 0
    if git.get("git_dirty") and not args.allow_dirty:
        print(f"the work tree has uncommitted changes ({', '.join(git.get('git_dirty_paths', [])[:5])}); "
              "commit them, or pass --allow-dirty", file=sys.stderr)
        return 2
    record = {"git": git, "started": time.strftime("%Y-%m-%d %H:%M:%S"), "runs": []}
    if args.resume:
        record, done = resumed(out, git)
        plan = [(name, cmd) for name, cmd in plan if name not in done]
        print(f"resuming {out}: {len(done)} done ({', '.join(sorted(done)) or 'none'}), {len(plan)} to run", flush=True)
    elif (out / "run.json").exists():
        print(f"{out} already holds a run: pass --resume to continue it, or --out for a new folder", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    for name, cmd in plan:
        t0 = time.perf_counter()
        started = time.strftime("%Y-%m-%d %H:%M:%S")
        print(f"[{started}] {name}: {shlex.join(cmd)}", flush=True)
        with open(out / f"{name}.log", "w") as log:
            rc = subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT).returncode
        took = time.perf_counter() - t0
        print(f"  exit {rc} after {took / 60:.1f} min", flush=True)
        record["runs"].append({"name": name, "command": shlex.join(cmd), "exit": rc, "started": started,
                               "seconds": round(took, 1), "git_commit": git.get("git_commit"),
                               "benchmark_code": benchmark_code(script_of(shlex.join(cmd)) or "", "HEAD")})
        (out / "run.json").write_text(json.dumps(record, indent=2))
        if args.commit:
            commit_results(out, f"results: {name} (exit {rc}, {took / 60:.1f} min) in {out.name}, measured at "
                                f"{(git.get('git_commit') or '?')[:10]}")
    report = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "report.py"), str(shown_folder(out))], cwd=ROOT,
                            capture_output=True, text=True)
    (out / "results.md").write_text(report.stdout)
    print(report.stdout)
    if args.commit:
        commit_results(out, f"results: the table of {out.name}")
    failed = failed_runs(record)
    if failed:
        print(f"failed: {', '.join(failed)} (see their logs in {out})", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
