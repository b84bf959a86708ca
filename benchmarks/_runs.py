"""Which code a benchmark's figure depends on, so that a run of every benchmark can span commits.

A figure depends on the product (``core/``, ``app/``, ``pages/``, ``requirements.txt``,
``.streamlit/``), on the shared helpers (``benchmarks/_common.py``), on the benchmark's own
script and on what that script imports from ``benchmarks/`` (``monitor_overhead.py`` imports
``engine_overhead.py``), plus the files a script loads by path (``attention_page_run.py``
drives the page with the browser tests' harness). It does not depend on another benchmark's
script, on ``run_all.py`` (which only runs the commands one after another) or on
``report.py`` (which only formats the JSON files). :func:`benchmark_code` hashes exactly
those files as committed at one commit: two commits with the same hash for a benchmark
measure the same thing, so a fix to one benchmark's driver reruns that benchmark alone,
while any change to the product reruns them all.

Used by ``run_all.py --resume`` (what to run again) and by ``report.py`` (whether the files of
a folder are one run). Not imported by any benchmark, so changing it changes no figure.
"""
from __future__ import annotations

import ast
import hashlib
import shlex
import subprocess
from functools import lru_cache
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
PRODUCT_PATHS = ("core", "app", "pages", "requirements.txt", ".streamlit", "benchmarks/_common.py")
# files a benchmark loads by path rather than by import
LOADS = {"attention_page_run.py": ("tests/browser/conftest.py", "tests/browser/browser_helpers.py")}


def script_of(command: str) -> str | None:
    """The benchmark script a command runs (``python benchmarks/x.py ...`` -> ``x.py``)."""
    return next((Path(a).name for a in shlex.split(command) if a.endswith(".py") and "benchmarks/" in a), None)


def latest_tries(record: dict) -> dict[str, dict]:
    """Each benchmark's latest entry in a run's ``run.json`` record (a resumed run keeps earlier tries)."""
    return {r["name"]: r for r in record.get("runs", [])}


def _git(*cmd: str, root: Path = ROOT) -> str | None:
    try:
        done = subprocess.run(["git", *cmd], cwd=root, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def local_imports(source: str, known: set[str]) -> set[str]:
    """Names among ``known`` (the ``benchmarks/`` modules) that ``source`` imports, anywhere in it."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
    return names & known


@lru_cache(maxsize=256)
def code_paths(script: str, commit: str = "HEAD", root: Path = ROOT) -> tuple[str, ...]:
    """The repository paths ``benchmarks/<script>``'s figures depend on at ``commit``."""
    listing = _git("ls-tree", "--name-only", commit, "benchmarks/", root=root) or ""
    known = {Path(f).stem for f in listing.split() if f.endswith(".py")}
    seen: set[str] = set()
    todo = [Path(script).name]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        source = _git("show", f"{commit}:benchmarks/{name}", root=root)
        if source is None:
            continue
        try:
            todo += [f"{m}.py" for m in local_imports(source, known)]
        except SyntaxError:
            pass
    extra = [p for name in seen for p in LOADS.get(name, ())]
    return tuple(sorted(set(PRODUCT_PATHS) | {f"benchmarks/{n}" for n in seen} | set(extra)))


@lru_cache(maxsize=256)
def benchmark_code(script: str, commit: str = "HEAD", root: Path = ROOT) -> str | None:
    """A hash of the committed files ``script``'s figures depend on at ``commit`` (None when
    git or the commit is not there)."""
    tree = _git("ls-tree", commit, "--", *code_paths(script, commit, root), root=root)
    if not tree:
        return None
    return hashlib.sha1(tree.encode()).hexdigest()


def dirty_code(script: str, commit: str, dirty_paths: list[str], root: Path = ROOT) -> list[str]:
    """Among the uncommitted paths a benchmark recorded (``git_dirty_paths``), those its figures
    depend on: a run's own log, modified in ``results/`` while the next benchmark measures,
    is not one."""
    deps = code_paths(script, commit, root)
    return [p for p in dirty_paths if any(p == d or p.startswith(d.rstrip("/") + "/") for d in deps)]


def product_code(commit: str = "HEAD", root: Path = ROOT) -> str | None:
    """A hash of what every benchmark depends on (the product and the shared helpers): the name
    of a run's folder, since a change there means a new run."""
    tree = _git("ls-tree", commit, "--", *PRODUCT_PATHS, root=root)
    return hashlib.sha1(tree.encode()).hexdigest() if tree else None


def commit_time(commit: str, root: Path = ROOT) -> int | None:
    out = _git("show", "-s", "--format=%ct", commit, root=root)
    return int(out.strip()) if out and out.strip().isdigit() else None


def changed_paths(script: str, then: str, now: str = "HEAD", root: Path = ROOT) -> list[str]:
    """The files among ``script``'s dependencies that differ between the two commits."""
    paths = sorted(set(code_paths(script, then, root)) | set(code_paths(script, now, root)))
    out = _git("diff", "--name-only", then, now, "--", *paths, root=root)
    return out.split() if out else []
