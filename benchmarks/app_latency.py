"""App latency: idle reruns of each page, and time from `streamlit run` to a rendered Home.

Entries (times in seconds; ``target`` is the largest passing time):

- ``idle_rerun_<page>``: median wall time of ``AppTest.run()`` on a page with nothing new to
  compute (after a first run that loads everything), on a cached base model. Target 0.2 s.
- ``first_paint``: from opening the app's URL in Chromium (the server just reported healthy;
  its first script run has not finished) to the app's first text on screen (the start shell,
  the base-model progress or Home); median over the cached starts. Target 1 s.
- ``cached_start``: from launching ``streamlit run app/main.py`` to a usable Home in Chromium
  (``.st-key-home-metrics`` showing an accuracy, the per-class and confusion charts drawn, and no
  widget left as a loading skeleton),
  with the base model cached in the workspace as a first start leaves it (one untimed start
  first; each timed start copies its ``base/`` folder into a fresh workspace, so each makes a new
  workbench); median over fresh server processes. Target 5 s.
- ``first_start`` (with ``--first-start``): the same on an EMPTY workspace, where the server
  trains the default base model in the background first; median over ``--starts`` fresh
  empty workspaces. Target 45 s.

    python benchmarks/app_latency.py [--reruns 20] [--starts 3] [--first-start] [--quick] [--json PATH]

The browser parts need Playwright and Debian's chromium (as the browser tests do); without
them they are left out with a note.
"""
from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import ROOT, machine, print_table, seeds_record, speed_anchor, write_json  # noqa: I001

sys.path.insert(0, str(ROOT / "tests" / "browser"))  # the one server harness, shared with the browser tests
from streamlit_server import StreamlitServer  # noqa: E402

ENTRY = ROOT / "app" / "main.py"
BASE_NAME = "digits__seed-cnn__s0.pt"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
ACCURACY = re.compile(r"\d+\.\d%")

# Pages to time: (entry name, page file relative to the entry script as st.navigation sees it).
# Add a page here when it is added to app/main.py's PAGES.
PAGES = [
    ("home", "../pages/home.py"),
    ("latent", "../pages/latent.py"),
    ("monitor", "../pages/monitor.py"),
    ("freezing", "../pages/freezing.py"),
    ("attention", "../pages/attention.py"),
    ("workbenches", "../pages/workbenches.py"),
    ("grid", "../pages/grid.py"),
    ("study_admin", "../pages/study_admin.py"),
]
ADMIN_PASSWORD = "latency-benchmark"  # set for the AppTest server only


def _study_with_results(at) -> None:
    """Study admin's heaviest idle state: logged in, a study of 8 participants x 2 conditions x 16
    annotated images (events as the participant page logs them) with its questionnaires, its
    participants, results, box plot and tests drawn."""
    from app.state import get_store
    from core.study.design import CONFIRM, SHOW, sus_score
    from core.study.store import StudyStore

    studies = StudyStore(get_store())
    design = {"task": "attention", "dataset": "digits", "conditions": [
        {"name": "click", "settings": {"mode": "click"}, "budget": 16},
        {"name": "polygon", "settings": {"mode": "polygon"}, "budget": 16}]}
    study_id, tokens = studies.create_study("latency", design, participants=8)
    rng = random.Random(0)
    for token in tokens:
        for condition in ("click", "polygon"):
            t = 1000.0
            for item in range(16):
                studies.log(token, condition, SHOW, str(item), t=t)
                for _ in range(rng.randint(1, 6)):
                    t += rng.uniform(0.5, 2.0)
                    studies.log(token, condition, "click", str(item), {"x": 1, "y": 1}, t=t)
                studies.log(token, condition, CONFIRM, str(item), t=t + 0.5)
                t += 1
            answers = [rng.randint(1, 5) for _ in range(10)]
            studies.save_answers(token, condition, "sus", answers, sus_score(answers))
    at.text_input(key="study-password").input(ADMIN_PASSWORD)
    at.button[0].click().run()
    at.session_state["sa-study"] = study_id


def _attention_round(at) -> None:
    """The Attention page's heaviest idle state: biased digits opened, a round of 64
    candidates open with its thumbnails and the 384 px workspace."""
    at.button(key="att-open-biased").click().run()
    deadline = time.time() + 120
    while not any(b.key == "att-start" for b in at.button) and time.time() < deadline:
        time.sleep(0.5)
        at.run()
    at.button(key="att-start").click().run()


def _grid_review(at) -> None:
    """The Grid feedback page's heaviest idle state: a run on biased digits waiting at its first
    epoch end with 10 mistakes, their saliency maps and the 320 px grid shown."""
    if not any(b.key == "grid-start-btn" for b in at.button):
        raise RuntimeError("the Grid feedback page shows no start button")
    if any(b.key == "grid-open-biased" for b in at.button):  # the attention setup did not run first
        at.button(key="grid-open-biased").click().run()
        deadline = time.time() + 120
        while "biased" not in str(at.session_state) and time.time() < deadline:
            time.sleep(0.5)
            at.run()
    at.number_input(key="grid-p-epochs").set_value(2).run()
    at.button(key="grid-start-btn").click().run()
    deadline = time.time() + 180
    while not any(b.key == "grid-continue" for b in at.button) and time.time() < deadline:
        time.sleep(0.5)
        at.run()
    if not any(b.key == "grid-continue" for b in at.button):
        raise RuntimeError("the run did not pause for a review within 180 s")


SETUP = {"attention": _attention_round, "grid": _grid_review, "study_admin": _study_with_results}  # pages measured in a state reached by gestures first

TARGETS = {"idle_rerun": 0.2, "first_paint": 1.0, "cached_start": 5.0, "first_start": 45.0}


# ----------------------------------------------------------------------------- helpers
def pretrain_base(workspace: Path, epochs: int, *, data: str = "digits", lr: str | None = None) -> Path:
    """A cached base model in ``workspace/base`` via the CLI (as a user would pre-train one)."""
    out = workspace / "base"
    cmd = [sys.executable, "-m", "core.train", "--data", data, "--model", "seed-cnn",
           "--epochs", str(epochs), "--out", str(out)] + (["--lr", lr] if lr else [])
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}")
    path = out / f"{data}__seed-cnn__s0.pt"
    if not path.is_file():
        raise SystemExit(f"core.train did not write {path}")
    return path


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def load() -> dict:
    """The 1/5/15-minute load averages: these machines are shared, say how busy it was."""
    try:
        return {"loadavg": [round(x, 2) for x in os.getloadavg()]}
    except OSError:
        return {}


# ----------------------------------------------------------------------------- (a) AppTest
def idle_reruns(workspace: Path, reruns: int) -> list[dict]:
    """Median wall time of an idle rerun of each page in PAGES, through AppTest."""
    os.environ["STEERBOARD_WORKSPACE"] = str(workspace)
    os.environ["STEERBOARD_ADMIN_PASSWORD"] = ADMIN_PASSWORD
    from streamlit.testing.v1 import AppTest

    rows = []
    at = AppTest.from_file(str(ENTRY), default_timeout=60)  # relative paths resolve against this file
    t0 = time.perf_counter()
    at.run()
    first_s = time.perf_counter() - t0
    if len(at.exception) or not any(m.label == "Test accuracy" for m in at.metric):
        raise SystemExit(f"the first run did not show Home (is the base model cached?): "
                         f"{[e.value for e in at.exception]}")
    for name, page in PAGES:
        target = TARGETS["idle_rerun"]
        params = {"page": page, "reruns": reruns, "first_app_run_s": first_s, "via": "streamlit.testing AppTest"}
        try:
            at.switch_page(page)
            t0 = time.perf_counter()
            at.run()  # warm-up: the page's own first run computes what it caches
            params["first_page_run_s"] = time.perf_counter() - t0
            _check(at, f"the first run of {page}")
            if name in SETUP:
                SETUP[name](at)
                at.run()
                _check(at, f"the setup of {page}")
                params["state"] = SETUP[name].__doc__.split(":")[-1].strip().rstrip(".")
            times = []
            for _ in range(reruns):
                t0 = time.perf_counter()
                at.run()
                times.append(time.perf_counter() - t0)
            _check(at, f"the reruns of {page}")
            params["title"] = at.title[0].value if len(at.title) else None  # which page ran
        except Exception as exc:  # one broken page must not hide the others' figures
            print(f"error: idle_rerun_{name}: {exc}")
            rows.append({"name": f"idle_rerun_{name}", "ours_s": None, "target": target, "pass": False,
                         "params": {**params, "error": f"{exc.__class__.__name__}: {exc}", **machine(), **load()}})
            continue
        ours = median(times)
        rows.append({
            "name": f"idle_rerun_{name}", "ours_s": ours, "target": target, "pass": ours <= target,
            "params": {**params, "all_s": times, "min_s": min(times), "max_s": max(times), **machine(), **load()},
        })
    rows.append(participant_rerun(reruns))
    return rows


def participant_rerun(reruns: int) -> dict:
    """Idle rerun of participant mode (``?study=<token>``) in its heaviest state: a click
    condition's 384 px workspace with its Grad-CAM, after the study's first image is shown."""
    from streamlit.testing.v1 import AppTest

    from app.state import get_store
    from core.study.store import StudyStore

    target = TARGETS["idle_rerun"]
    params = {"page": "participant mode (?study=<token>)", "reruns": reruns, "via": "streamlit.testing AppTest",
              "state": "a click condition's workspace, first image shown"}
    try:
        design = {"task": "attention", "dataset": "digits", "conditions": [
            {"name": "click", "settings": {"mode": "click"}, "budget": 16},
            {"name": "polygon", "settings": {"mode": "polygon"}, "budget": 16}]}
        _, tokens = StudyStore(get_store()).create_study("latency participant", design, participants=1)
        at = AppTest.from_file(str(ENTRY), default_timeout=120)
        at.query_params["study"] = tokens[0]
        at.run()
        at.button(key="study-start").click().run()
        at.run()
        _check(at, "participant mode")
        if not any(b.key == "study-confirm" for b in at.button):
            raise RuntimeError("the condition's workspace did not show")
        times = []
        for _ in range(reruns):
            t0 = time.perf_counter()
            at.run()
            times.append(time.perf_counter() - t0)
        _check(at, "the reruns of participant mode")
    except Exception as exc:  # noqa: BLE001  (reported in the row, like the pages above)
        print(f"error: idle_rerun_study_participant: {exc}")
        return {"name": "idle_rerun_study_participant", "ours_s": None, "target": target, "pass": False,
                "params": {**params, "error": f"{exc.__class__.__name__}: {exc}", **machine(), **load()}}
    ours = median(times)
    return {"name": "idle_rerun_study_participant", "ours_s": ours, "target": target, "pass": ours <= target,
            "params": {**params, "all_s": times, "min_s": min(times), "max_s": max(times), **machine(), **load()}}


def _check(at, when: str) -> None:
    if len(at.exception):
        raise RuntimeError(f"the app raised on {when}: {[e.value for e in at.exception]}")


# ----------------------------------------------------------------------------- (b, c) browser
def time_to_home(browser, workspace: Path, log: Path, timeout_s: float) -> dict:
    """Launch a fresh server on ``workspace`` and time it to Home rendered in a new context."""
    ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = ctx.new_page()
    t0 = time.perf_counter()
    server = StreamlitServer(workspace, log_path=log)
    try:
        server.start()
        healthy = time.perf_counter() - t0
        t_goto = time.perf_counter()
        page.goto(server.url, wait_until="commit")
        progress_seen = paint = text_seen = None
        metrics = page.locator(".st-key-home-metrics")
        skeletons = page.locator('[data-testid="stSkeleton"]')
        charts = [page.locator(f".st-key-{key} .js-plotly-plot .main-svg") for key in ("per-class", "confusion")]
        useful = page.locator(".st-key-app-shell, .st-key-base-progress, .st-key-home-metrics")
        deadline = time.perf_counter() + timeout_s
        while True:  # poll: note the first paint of the app, and when the first-start progress page showed
            if paint is None and useful.count() and useful.first.inner_text().strip():
                paint = time.perf_counter() - t_goto
            if progress_seen is None and page.locator(".st-key-base-progress").count():
                progress_seen = time.perf_counter() - t0
            # usable Home: the accuracy text, both charts drawn (plotly.js loaded and run) and no widget still a
            # loading skeleton (Streamlit draws one until the widget's code has arrived), not only the text
            if text_seen is None and metrics.count() and ACCURACY.search(metrics.first.inner_text()):
                text_seen = time.perf_counter() - t0
            if (metrics.count() and ACCURACY.search(metrics.first.inner_text())
                    and all(chart.count() for chart in charts) and not skeletons.count()):
                break
            if time.perf_counter() > deadline:
                raise TimeoutError(f"Home not rendered within {timeout_s}s; see {log}")
            page.wait_for_timeout(50)
        total = time.perf_counter() - t0
        errors = page.locator('[data-testid="stException"]').count()
        return {"total_s": total, "healthy_s": healthy, "render_s": total - healthy, "first_paint_s": paint,
                "progress_page_s": progress_seen, "accuracy_text_s": text_seen, "exceptions": errors}
    finally:
        ctx.close()
        server.stop()


def browser_starts(base: Path, tmp: Path, starts: int, first_start: bool) -> list[dict]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        print(f"note: browser timings left out: playwright not importable ({exc})")
        return []
    exe = "/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else shutil.which("chromium")
    if exe is None:
        print("note: browser timings left out: no chromium binary")
        return []
    rows = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, headless=True, args=CHROMIUM_ARGS)
        try:
            # The state a user has after a first start: the base model and what that start stored beside it
            # (its predictions on the test split). One untimed start makes it; each timed start copies it.
            warm = tmp / "cached-warm"
            (warm / "base").mkdir(parents=True)
            shutil.copy2(base, warm / "base" / BASE_NAME)
            time_to_home(browser, warm, tmp / "cached-warm.log", timeout_s=120)
            runs = []
            for i in range(starts):  # a fresh workspace with the cached base each time
                ws = tmp / f"cached-{i}"
                shutil.copytree(warm / "base", ws / "base")  # copy2 per file: modification times kept
                runs.append(time_to_home(browser, ws, tmp / f"cached-{i}.log", timeout_s=120))
            ours = median([r["total_s"] for r in runs])
            paints = [r["first_paint_s"] for r in runs if r["first_paint_s"] is not None]
            rows.append({
                "name": "first_paint", "ours_s": median(paints) if paints else None, "target": TARGETS["first_paint"],
                "pass": bool(paints) and len(paints) == len(runs) and median(paints) <= TARGETS["first_paint"],
                "params": {"starts": starts, "all_s": [r["first_paint_s"] for r in runs],
                           "from": "page.goto on a server that reports healthy (its first script run not done)",
                           "to": "the app's first text: the start shell, the base-model progress or Home",
                           "browser": "chromium (headless, new context per start)", **machine(), **load()},
            })
            rows.append({
                "name": "cached_start", "ours_s": ours, "target": TARGETS["cached_start"],
                "pass": ours <= TARGETS["cached_start"] and all(r["exceptions"] == 0 for r in runs),
                "params": {"starts": starts, "all_s": [r["total_s"] for r in runs],
                           "healthy_s": median([r["healthy_s"] for r in runs]),
                           "render_s": median([r["render_s"] for r in runs]),
                           "accuracy_text_s": [r["accuracy_text_s"] for r in runs],  # the looser end point
                           "exceptions": sum(r["exceptions"] for r in runs),
                           "from": "Popen(streamlit run)", "to": ".st-key-home-metrics shows an accuracy, the per-class and confusion charts are drawn, and no stSkeleton is left",
                           "browser": "chromium (headless, new context per start)", **machine(), **load()},
            })
            if first_start:
                firsts = []
                for i in range(starts):
                    ws = tmp / f"empty-{i}"
                    ws.mkdir()
                    firsts.append(time_to_home(browser, ws, tmp / f"empty-{i}.log", timeout_s=300))
                ours = median([r["total_s"] for r in firsts])
                rows.append({
                    "name": "first_start", "ours_s": ours, "target": TARGETS["first_start"],
                    "pass": ours <= TARGETS["first_start"] and all(r["exceptions"] == 0 for r in firsts),
                    "params": {"workspace": "empty (base model trained in the background)", "starts": starts,
                               "all_s": [r["total_s"] for r in firsts],
                               "healthy_s": median([r["healthy_s"] for r in firsts]),
                               "progress_page_s": [r["progress_page_s"] for r in firsts],
                               "first_paint_s": [r["first_paint_s"] for r in firsts],
                               "exceptions": sum(r["exceptions"] for r in firsts), **machine(), **load()},
                })
        finally:
            browser.close()
    return rows


# ----------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reruns", type=int, default=20, help="timed idle reruns per page")
    ap.add_argument("--starts", type=int, default=3, help="server starts timed for cached_start")
    ap.add_argument("--base-epochs", type=int, default=3, help="epochs of the pre-trained (cached) base model")
    ap.add_argument("--first-start", action="store_true", help="also time a first start on an empty workspace")
    ap.add_argument("--no-browser", action="store_true", help="only the AppTest reruns")
    ap.add_argument("--quick", action="store_true", help="small run for CI")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    if args.quick:
        args.reruns, args.starts = 5, 1

    speed_before = speed_anchor()  # absolute seconds: say how fast the shared machine was
    with tempfile.TemporaryDirectory(prefix="steerboard-latency-") as tmp_name:
        tmp = Path(tmp_name)
        base = pretrain_base(tmp / "pretrain", args.base_epochs)
        ws = tmp / "apptest"
        (ws / "base").mkdir(parents=True)
        shutil.copy2(base, ws / "base" / BASE_NAME)
        biased = pretrain_base(tmp / "pretrain-biased", args.base_epochs, data="biased-digits", lr="0.01")
        shutil.copy2(biased, ws / "base" / biased.name)
        # The server runs in a separate process from here on: do the browser timings first,
        # so the torch and Streamlit this process loads for AppTest do not compete with it.
        browser_rows = [] if args.no_browser else browser_starts(base, tmp, args.starts, args.first_start)
        rows = idle_reruns(ws, args.reruns) + browser_rows

    speed = {"before": speed_before, "after": speed_anchor()}
    for row in rows:
        row["quick"] = args.quick
        row["seeds"] = seeds_record([], [], "nothing (a timing)")
        row["params"]["machine_speed"] = speed
    print_table(rows, ["name", "ours_s", "target", "pass"])
    print(f"machine speed vs the platform notes' anchor: {speed['before']['speed_vs_anchor']:.2f} before, "
          f"{speed['after']['speed_vs_anchor']:.2f} after (1.0 = the machine the targets were set on)")
    write_json(args.json, rows)
    return rows


if __name__ == "__main__":
    main()
