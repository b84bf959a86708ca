"""Study load: participants annotating and fine-tuning at once on one server (issue 14).

One Streamlit server, one Chromium with a browser context per participant (8 by default), a
two-condition attention study (click vs polygon, counterbalanced) on the digits base model.
Each participant, started a few seconds after the previous one, opens their link, annotates
the images of their first condition and confirms each, presses Continue to fine-tune (the
server trains one job at a time on 2 cores; the others queue and show their place), and stops
at the questionnaire that follows. In the middle of it (once confirmed annotations exist and a
fine-tune runs or waits), the server is killed with SIGKILL and started again on the same
port and workspace; every participant reloads their link and goes on from where the page
resumes them.

Figures (one record ``study_load``):

- ``p95_busy_s``: 95th percentile of page response time while a training job ran (read from
  the workspace's database every 0.5 s), over every timed gesture: a click on the image until
  Confirm is enabled, a polygon's closing click until Confirm is enabled, Confirm until the next
  image (or "This part is done") is shown, Continue until the fine-tune's progress (or the
  questionnaire) is shown, Start until the first image is shown. Waits are polled every 50 ms
  in the page. Also all gestures, and per gesture kind.
- ``peak_rss_mb``: the server's peak resident memory (all processes of its group, sampled
  every 0.25 s), before and after the restart.
- Checks, each pass or fail: every participant reached the questionnaire; no annotation
  acknowledged before the kill was missing from the database right after it, nor when the
  page resumed; each participant's workbench holds exactly their own confirmed images (the
  items of their own round) and a fine-tuned version, and no two participants share a
  workbench; a queue place was shown to participants whose fine-tune waited.

No target is set by the issue for the response time ("stays responsive"); it is reported as
measured, with the machine's speed against the platform notes' anchor.

    python benchmarks/study_load.py [--participants 8] [--budget 2] [--json PATH]

Needs Playwright and Debian's chromium, as the browser tests do.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from _common import ROOT, machine, print_table, seeds_record, speed_anchor, write_json  # noqa: I001
from app_latency import BASE_NAME, CHROMIUM_ARGS, pretrain_base
from streamlit_server import StreamlitServer  # noqa: I001  (on sys.path: app_latency puts it there)

ACTION_TIMEOUT_S = 120.0  # one gesture's effect; far above any figure, it only catches a hang
RUN_TIMEOUT_S = 1500.0


# ----------------------------------------------------------------------------- the server
# StreamlitServer (tests/browser/streamlit_server.py): the one harness, shared with the browser tests


class Sampler(threading.Thread):
    """Every 0.25 s: the server's memory; every 0.5 s: how many training jobs run or wait (database)."""

    def __init__(self, server: StreamlitServer) -> None:
        super().__init__(daemon=True)
        self.server, self.stop_flag = server, threading.Event()
        self.peak = {"before_kill": 0.0, "after_restart": 0.0}
        self.phase = "before_kill"
        self.jobs_running = 0
        self.busy_seconds = 0.0

    def run(self) -> None:
        db_path = self.server.workspace / "steerboard.db"  # core.session.store.Store.db_path
        k, last = 0, time.monotonic()
        while not self.stop_flag.wait(0.25):
            now = time.monotonic()
            if self.jobs_running:
                self.busy_seconds += now - last
            last = now
            self.peak[self.phase] = max(self.peak[self.phase], self.server.rss_mb())
            k += 1
            if k % 2 or not db_path.exists():
                continue
            try:
                with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=5) as db:
                    self.jobs_running = db.execute(  # a queued job waits for one that runs
                        "SELECT count(*) FROM jobs WHERE status IN ('queued', 'running', 'paused')").fetchone()[0]
            except sqlite3.Error:
                pass


# ----------------------------------------------------------------------------- participants
class Restarted(Exception):
    """The server was killed while a participant waited: reload the link and go on."""


@dataclass
class Shared:
    sampler: Sampler
    up: asyncio.Event
    generation: int = 0
    timings: list[dict] = field(default_factory=list)


@dataclass
class Participant:
    number: int
    token: str
    order: list[str]
    budget: int
    acked: int = 0  # confirmations whose effect (the next image) this participant saw
    acked_at_kill: int | None = None
    resumed_from: list[int] = field(default_factory=list)  # "image k" shown after each reload
    queue_places: list[int] = field(default_factory=list)
    finished: bool = False
    error: str | None = None


PRESENT_JS = """([sel, text]) => Array.from(document.querySelectorAll(sel)).some(
    e => e.getAttribute('data-stale') !== 'true' && (text === null || e.textContent.includes(text)))"""
ENABLED = '.st-key-study-confirm:not([data-stale="true"]) button:not([disabled])'
IDLE_JS = "() => document.querySelector('[data-testid=\"stApp\"]')?.getAttribute('data-test-script-state') === 'notRunning'"


async def wait_js(page, shared: Shared, gen: int, js: str, arg, timeout: float = ACTION_TIMEOUT_S) -> None:
    """Wait (polled every 50 ms in the page) for ``js(arg)`` to hold, in 2 s slices so that a
    server kill is noticed."""
    deadline = time.monotonic() + timeout
    while True:
        if shared.generation != gen:
            raise Restarted()
        try:
            await page.wait_for_function(js, arg=arg, polling=50, timeout=2000)
            return
        except Exception as exc:  # playwright's TimeoutError, or a navigation during the wait
            if shared.generation != gen:
                raise Restarted() from exc
            if time.monotonic() > deadline:
                raise TimeoutError(f"{arg} not shown after {timeout:.0f}s") from exc


async def timed(page, shared: Shared, gen: int, p: Participant, kind: str, act, js: str, arg) -> float:
    """Do ``act`` and time it until ``js(arg)`` holds; recorded with whether a job ran."""
    busy_before = shared.sampler.jobs_running > 0
    t0 = time.perf_counter()
    await act()
    await wait_js(page, shared, gen, js, arg)
    dt = time.perf_counter() - t0
    shared.timings.append({"participant": p.number, "kind": kind, "s": dt,
                           "busy": busy_before or shared.sampler.jobs_running > 0})
    return dt


async def state_of(page, shared: Shared, gen: int) -> str:
    js = """() => {
      const live = sel => Array.from(document.querySelectorAll(sel)).filter(e => e.getAttribute('data-stale') !== 'true');
      const text = document.querySelector('[data-testid="stMain"]')?.textContent || '';
      if (live('.st-key-study-fine-tune').length) return 'tune';
      if (live('.st-key-study-questionnaire').length) return 'questionnaire';
      if (text.includes('This part is done')) return 'done';
      if (live('.st-key-study-task').length && text.includes('This image shows')) return 'image';
      if (live('.st-key-study-start').length) return 'welcome';
      return '';
    }"""
    deadline = time.monotonic() + ACTION_TIMEOUT_S
    while True:
        if shared.generation != gen:
            raise Restarted()
        try:
            s = await page.evaluate(js)
        except Exception as exc:
            if shared.generation != gen:
                raise Restarted() from exc
            s = ""
        if s:
            return s
        if time.monotonic() > deadline:
            raise TimeoutError("the participant page showed none of its known states")
        await asyncio.sleep(0.2)


async def image_number(page) -> int:
    text = await page.locator('.st-key-study-progress:not([data-stale="true"])').first.inner_text()
    m = re.search(r"image (\d+) of (\d+)", text)
    return int(m.group(1)) if m else 0


async def annotate_one(page, shared: Shared, gen: int, p: Participant) -> None:
    # as a person does, act on a page that has finished drawing: a click on an image that a rerun is
    # replacing is lost (the component mounts anew for each image)
    await wait_js(page, shared, gen, IDLE_JS, None)
    k = await image_number(page)
    mode = p.order[0]
    if mode == "click":
        img = page.locator('.st-key-study-task:not([data-stale="true"]) .sb-click-wrap img').first
        await img.wait_for(state="visible")  # the click component draws its image in a shadow root
        box = await img.bounding_box()
        await timed(page, shared, gen, p, "click", lambda: img.click(
            position={"x": box["width"] * 0.5, "y": box["height"] * 0.5}), PRESENT_JS, [ENABLED, None])
    else:
        canvas = page.locator('.st-key-study-task:not([data-stale="true"]) canvas').last
        await canvas.wait_for(state="visible")
        await page.wait_for_timeout(1500)  # fabric.js binds its handlers after the canvas shows
        box = await canvas.bounding_box()
        points = [(0.3, 0.3), (0.7, 0.3), (0.7, 0.7), (0.3, 0.7)]
        for x, y in points:
            await canvas.click(position={"x": box["width"] * x, "y": box["height"] * y})
            await page.wait_for_timeout(400)  # a person's pace: faster clicks merge into a double click
        await timed(page, shared, gen, p, "polygon_close", lambda: canvas.click(
            position={"x": box["width"] * 0.3, "y": box["height"] * 0.3}), PRESENT_JS, [ENABLED, None])
    nxt = f"image {k + 1} of" if k < p.budget else None
    js = PRESENT_JS if nxt else "() => (document.querySelector('[data-testid=\"stMain\"]')?.textContent || '')" \
                                ".includes('This part is done')"
    await timed(page, shared, gen, p, "confirm", lambda: page.locator(ENABLED).first.click(), js,
                [".st-key-study-progress", nxt] if nxt else None)
    p.acked = k


async def run_participant(context, url: str, shared: Shared, p: Participant, delay: float,
                          shots: Path | None = None) -> None:
    page = await context.new_page()
    page.set_default_timeout(ACTION_TIMEOUT_S * 1000)
    await asyncio.sleep(delay)
    link = f"{url}/?study={p.token}"
    reload = False
    while not p.finished:
        await shared.up.wait()
        gen = shared.generation
        try:
            await page.goto(link)
            state = await state_of(page, shared, gen)
            if reload and state == "image":
                p.resumed_from.append(await image_number(page))
            reload = False
            while True:
                state = await state_of(page, shared, gen)
                if state == "welcome":
                    await timed(page, shared, gen, p, "start",
                                lambda: page.locator(".st-key-study-start button").first.click(),
                                PRESENT_JS, [".st-key-study-progress", "image 1 of"])
                elif state == "image":
                    await annotate_one(page, shared, gen, p)
                elif state == "done":
                    js = ("() => Array.from(document.querySelectorAll('.st-key-study-fine-tune, "
                          ".st-key-study-questionnaire')).some(e => e.getAttribute('data-stale') !== 'true')")
                    await timed(page, shared, gen, p, "continue",
                                lambda: page.locator(".st-key-study-finish button").first.click(), js, None)
                elif state == "tune":
                    # read at once, not through a waiting locator: the fine-tune may end and its
                    # element go between state_of and this read (a participant once waited 120 s
                    # on a vanished element while the page showed the questionnaire)
                    try:
                        text = await page.evaluate(
                            "() => Array.from(document.querySelectorAll('.st-key-study-fine-tune'))"
                            ".filter(e => e.getAttribute('data-stale') !== 'true').map(e => e.innerText).join(' ')")
                    except Exception as exc:  # a rerun or navigation in between: look again
                        if shared.generation != gen:
                            raise Restarted() from exc
                        text = ""
                    m = re.search(r"place (\d+) in the queue", text)
                    if m:
                        p.queue_places.append(int(m.group(1)))
                    await asyncio.sleep(1.0)
                elif state == "questionnaire":
                    p.finished = True
                    break
        except Restarted:
            reload = True
            continue
        except Exception as exc:  # a real failure of this participant: reported, the others go on
            if shared.generation != gen:
                reload = True
                continue
            p.error = f"{exc.__class__.__name__}: {str(exc).splitlines()[0][:300]}"
            try:  # what the page showed, for the report
                main = await page.locator('[data-testid="stMain"]').first.inner_text(timeout=5000)
                p.error += f" | page: {' '.join(main.split())[:600]}"
                if shots is not None:
                    await page.screenshot(path=str(shots / f"participant-{p.number}.png"), full_page=True)
            except Exception:
                pass
            return


def stored_annotations(workspace: Path, studies_token_wb: dict[str, str]) -> dict[str, list[int]]:
    """Example ids of the attention annotations on each participant's first-condition workbench."""
    from core.session.store import Store

    store = Store(workspace)
    return {tok: sorted(a.example_id for a in store.annotations(wb, "attention")) if wb else []
            for tok, wb in studies_token_wb.items()}


async def kill_and_restart(server: StreamlitServer, shared: Shared, people: list[Participant], workbenches, after: int,
                           report: dict) -> None:
    """Once ``after`` confirmations were acknowledged and a training job runs: SIGKILL, check
    the database holds every acknowledged annotation, restart on the same port."""
    while True:
        if all(p.finished or p.error for p in people):
            report["skipped"] = "every participant finished before the kill condition held"
            return
        if sum(p.acked for p in people) >= after and shared.sampler.jobs_running > 0:
            break
        await asyncio.sleep(0.2)
    for p in people:
        p.acked_at_kill = p.acked
    shared.up.clear()
    shared.generation += 1
    t0 = time.perf_counter()
    server.kill()
    shared.sampler.phase = "after_restart"
    wbs = workbenches()
    stored = stored_annotations(server.workspace, wbs)
    report["acked_at_kill"] = {p.number: p.acked_at_kill for p in people}
    report["stored_at_kill"] = {p.number: len(stored[p.token]) for p in people}
    report["lost_at_kill"] = {p.number: max(0, p.acked_at_kill - len(stored[p.token])) for p in people}
    await asyncio.to_thread(server.start, 60)  # waits until healthy, off the event loop
    report["restart_s"] = round(time.perf_counter() - t0, 2)
    shared.up.set()


# ----------------------------------------------------------------------------- the run
def make_study(workspace: Path, participants: int, budget: int, epochs: int) -> tuple[str, list]:
    from core.session.store import Store
    from core.study.store import StudyStore

    design = {"task": "attention", "dataset": "digits", "arch": "seed-cnn",
              "conditions": [{"name": "click", "settings": {"mode": "click", "sampler": "random", "epochs": epochs},
                              "budget": budget},
                             {"name": "polygon", "settings": {"mode": "polygon", "sampler": "random",
                                                              "epochs": epochs}, "budget": budget}],
              "questionnaires": {"after_each": ["sus"], "final": []}}
    studies = StudyStore(Store(workspace))
    study_id, _ = studies.create_study("load test", design, participants=participants)
    return study_id, studies.participants(study_id)


def percentile(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q * (len(xs) - 1))))]


def summary(timings: list[dict]) -> dict:
    out = {}
    for label, rows in (("busy", [t for t in timings if t["busy"]]), ("all", timings)):
        s = [t["s"] for t in rows]
        out[label] = {"n": len(s), "p50_s": percentile(s, 0.5), "p95_s": percentile(s, 0.95),
                      "max_s": max(s) if s else None}
    out["by_kind"] = {}
    for kind in sorted({t["kind"] for t in timings}):
        s = [t["s"] for t in timings if t["kind"] == kind]
        b = [t["s"] for t in timings if t["kind"] == kind and t["busy"]]
        out["by_kind"][kind] = {"n": len(s), "median_s": statistics.median(s), "p95_s": percentile(s, 0.95),
                                "busy_n": len(b), "busy_p95_s": percentile(b, 0.95)}
    return out


async def drive(server: StreamlitServer, sampler: Sampler, people: list[Participant], workbenches, stagger: float,
                kill_after: int, headless: bool = True, shots: Path | None = None) -> dict:
    from playwright.async_api import async_playwright

    exe = "/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else shutil.which("chromium")
    if exe is None:
        raise SystemExit("study_load needs Debian's chromium (apt-get install chromium)")
    shared = Shared(sampler, asyncio.Event())
    shared.up.set()
    report: dict = {}
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=exe, headless=headless, args=CHROMIUM_ARGS)
        contexts = [await browser.new_context(viewport={"width": 1200, "height": 900}) for _ in people]
        tasks = [run_participant(c, server.url, shared, p, i * stagger, shots) for i, (c, p) in enumerate(zip(contexts, people))]
        killer = kill_and_restart(server, shared, people, workbenches, kill_after, report) if kill_after else None
        await asyncio.wait_for(asyncio.gather(*tasks, *([killer] if killer else [])), RUN_TIMEOUT_S)
        await browser.close()
    report["timings"] = shared.timings
    return report


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--participants", type=int, default=8)
    ap.add_argument("--budget", type=int, default=2, help="images per condition")
    ap.add_argument("--epochs", type=int, default=1, help="fine-tune epochs per condition")
    ap.add_argument("--stagger", type=float, default=6.0, help="seconds between participants' starts")
    ap.add_argument("--kill-after", type=int, default=6,
                    help="SIGKILL once this many confirmations were acknowledged and a job runs (0: no kill)")
    ap.add_argument("--base-epochs", type=int, default=3)
    ap.add_argument("--headed", action="store_true")
    ap.add_argument("--keep", help="keep the workspace and server log in this folder")
    ap.add_argument("--json")
    args = ap.parse_args(argv)

    speed_before = speed_anchor()
    tmp_ctx = tempfile.TemporaryDirectory(prefix="steerboard-study-load-")
    tmp = Path(args.keep) if args.keep else Path(tmp_ctx.name)
    tmp.mkdir(parents=True, exist_ok=True)
    ws = tmp / "workspace"
    base = pretrain_base(tmp / "pretrain", args.base_epochs)
    (ws / "base").mkdir(parents=True, exist_ok=True)
    shutil.copy2(base, ws / "base" / BASE_NAME)
    study_id, parts = make_study(ws, args.participants, args.budget, args.epochs)
    people = [Participant(p.number, p.token, p.conditions, args.budget) for p in parts]

    from core.session.store import Store
    from core.study.store import StudyStore

    def workbenches() -> dict[str, str | None]:
        studies = StudyStore(Store(ws))
        return {p.token: (p.progress.get("workbenches") or {}).get(p.conditions[0]) for p in studies.participants(study_id)}

    server = StreamlitServer(ws, log_path=tmp / "server.log").start(60)
    sampler = Sampler(server)
    sampler.start()
    t0 = time.perf_counter()
    try:
        report = asyncio.run(drive(server, sampler, people, workbenches, args.stagger, args.kill_after,
                                   headless=not args.headed, shots=tmp if args.keep else None))
    finally:
        sampler.stop_flag.set()
        sampler.join(timeout=5)
        if server.proc.poll() is None:
            server.kill()
    wall = time.perf_counter() - t0

    # ---- checks, from the database once the server is down
    studies = StudyStore(Store(ws))
    wbs = workbenches()
    stored = stored_annotations(ws, wbs)
    store = Store(ws)
    isolation = {}
    for p in people:
        wb = wbs[p.token]
        rounds = [e for e in studies.events(study_id, p.token) if e.kind == "confirm"]
        own = sorted({int(e.item) for e in rounds if e.condition == p.order[0] and e.item is not None})
        versions = [v.number for v in store.versions(wb)] if wb else []
        isolation[p.number] = {"workbench": wb, "stored": stored[p.token], "confirmed_by_them": own,
                               "versions": versions,
                               "ok": bool(wb) and stored[p.token] == own and len(own) == args.budget
                               and max(versions, default=0) >= 1}
    shared_wbs = len({w for w in wbs.values() if w}) != len([w for w in wbs.values() if w])
    lost_resume = {p.number: p.acked_at_kill is not None and any(k < (p.acked_at_kill or 0) + 1 for k in p.resumed_from)
                   for p in people}
    s = summary(report["timings"])
    log_text = (tmp / "server.log").read_text(errors="replace")
    checks = {
        "all_finished": all(p.finished for p in people),
        "no_server_exception": "Uncaught app execution" not in log_text and "Traceback" not in log_text,
        "nothing_lost_at_kill": "lost_at_kill" in report and not any(report["lost_at_kill"].values()),
        "nothing_lost_on_resume": not any(lost_resume.values()),
        "own_data_only": all(v["ok"] for v in isolation.values()) and not shared_wbs,
        "queue_place_shown": any(p.queue_places for p in people),
    }
    rec = {
        "name": "study_load",
        "p95_busy_s": s["busy"]["p95_s"], "p95_all_s": s["all"]["p95_s"],
        "peak_rss_mb": round(max(sampler.peak.values()), 1),
        "checks": checks, "pass": all(checks.values()),
        "timing": s,
        "params": {"participants": args.participants, "budget": args.budget, "epochs": args.epochs,
                   "stagger_s": args.stagger, "kill_after": args.kill_after, "wall_s": round(wall, 1),
                   "busy_s": round(sampler.busy_seconds, 1),
                   "peak_rss_mb": {k: round(v, 1) for k, v in sampler.peak.items()},
                   "kill": {k: v for k, v in report.items() if k != "timings"},
                   "participants_detail": [{"number": p.number, "order": p.order, "acked_at_kill": p.acked_at_kill,
                                            "resumed_at_image": p.resumed_from, "queue_places_seen":
                                            sorted(set(p.queue_places)), "finished": p.finished, "error": p.error}
                                           for p in people],
                   "isolation": isolation,
                   "machine_speed": {"before": speed_before, "after": speed_anchor()},
                   "server": "1 Streamlit process; training jobs at once and threads from core.session.jobs.compute_plan",
                   "browser": "chromium (headless), one context per participant",
                   **machine()},
        "seeds": seeds_record([], [], "nothing (a load test)"),
        "provenance": machine(),
    }
    print_table([{"name": f"{k}", "value": v} for k, v in [
        ("p95 response while a job ran (s)", s["busy"]["p95_s"]), ("p95 response, all (s)", s["all"]["p95_s"]),
        ("gestures timed (busy / all)", f"{s['busy']['n']} / {s['all']['n']}"),
        ("peak server RSS (MB)", rec["peak_rss_mb"]), *checks.items()]], ["name", "value"])
    for p in people:
        if p.error:
            print(f"participant {p.number}: {p.error}")
    print(f"server log: {tmp / 'server.log'}" if args.keep else "")
    write_json(args.json, rec)
    if not args.keep:
        tmp_ctx.cleanup()
    return rec


if __name__ == "__main__":
    main()
