"""Locator helpers shared by the browser tests.

While Streamlit reruns, it can keep two copies of a keyed container in the DOM for a moment:
the previous one marked ``data-stale="true"``, or (seen in CI) two live-looking copies while
an element moves in the tree. A plain ``expect(page.locator(sel)).to_contain_text(...)`` then
fails in strict mode. These helpers wait until *some* copy shows the text instead.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

try:  # the test modules import Page and expect from here, so they load without playwright
    from playwright.sync_api import Locator, Page, expect
except ImportError:  # the conftest fixtures skip the tests (and fail on CI)
    Locator = Page = object
    expect = None


ROOT = Path(__file__).resolve().parents[2]
# One torch/OpenMP thread in the processes the tests start. On a 2-core machine shared with
# Chromium, torch's default of 2 OpenMP threads thrashes whenever another process runs:
# measured here, the CLI pre-training took 27 s instead of 12 s, and a 2-epoch run in the app
# with the page watching took 14-20 s instead of 9-11 s. Override with STEERBOARD_TEST_THREADS
# (empty: leave torch's default).
TEST_THREADS = os.environ.get("STEERBOARD_TEST_THREADS", "1")


def thread_env() -> dict:
    return {"OMP_NUM_THREADS": TEST_THREADS, "MKL_NUM_THREADS": TEST_THREADS} if TEST_THREADS else {}


def live(selector: str) -> str:
    """``selector`` restricted to copies that Streamlit has not marked stale."""
    return f'{selector}:not([data-stale="true"])'


def with_text(page: Page, selector: str, text: str | re.Pattern) -> Locator:
    """The first live element matching ``selector`` whose text contains ``text``."""
    return page.locator(live(selector)).filter(has_text=text).first


def expect_text(page: Page, selector: str, text: str | re.Pattern, timeout: int) -> None:
    """Wait until a live element matching ``selector`` contains ``text``. On a timeout the
    failure says what the live copies of ``selector`` showed instead (the aria snapshot
    playwright prints is cut off in CI logs before it reaches the element)."""
    try:
        expect(with_text(page, selector, text)).to_be_visible(timeout=timeout)
    except AssertionError as exc:
        shown = [t.strip()[:400] for t in page.locator(live(selector)).all_inner_texts()]
        raise AssertionError(f"{selector} never showed {text!r}; it shows {shown or 'nothing (not on the page)'}"
                             ) from exc


def wait_idle(page: Page, timeout: int = 30_000) -> None:
    """Wait until no script run of the page is in progress (Streamlit marks the app root),
    so that a click is not sent while a polling fragment or a rerun replaces the element."""
    page.wait_for_selector('[data-testid="stApp"][data-test-script-state="notRunning"]', timeout=timeout)


# ----------------------------------------------------------------------------- the Attention page's demo
# The simulated user's round on the Attention page, shared by tests/browser/test_attention_demo_browser.py
# and benchmarks/attention_page_run.py (which loads this file by path).
ATT_IMG = ".st-key-att-annotate .sb-click-wrap img"


def set_page_number(page: Page, label: str, value: int, panel: str = ".st-key-att-params",
                    timeout: int = 90_000) -> None:
    """Type ``value`` into a number input of the page's parameter panel and wait until the
    rerun shows it (a value typed while the previous change's rerun redraws the panel can be
    lost, and for a moment two live copies of the panel can be in the DOM)."""
    for attempt in range(3):  # typed again when a rerun swallowed it
        wait_idle(page, timeout)
        expect(page.locator(live(panel))).to_have_count(1, timeout=timeout)
        box = page.locator(live(panel)).get_by_label(label, exact=True)
        box.fill(str(value))
        box.press("Tab")
        wait_idle(page, timeout)
        try:
            expect(page.locator(live(panel)).get_by_label(label, exact=True)).to_have_value(
                str(value), timeout=10_000 if attempt < 2 else timeout)
            return
        except AssertionError:
            if attempt == 2:
                raise


def inner_pixel(segments, s: int) -> tuple[float, float]:
    """(x, y) of a pixel of superpixel ``s`` as far inside it as possible (the most eroded
    pixels, the one nearest their centroid), in pixel-centre coordinates: a click there
    cannot land on a neighbour after the image is scaled on screen."""
    import numpy as np

    mask = np.asarray(segments) == s
    inner = mask
    while True:
        m = inner
        shrunk = m.copy()
        shrunk[1:] &= m[:-1]
        shrunk[:-1] &= m[1:]
        shrunk[:, 1:] &= m[:, :-1]
        shrunk[:, :-1] &= m[:, 1:]
        shrunk[0], shrunk[-1], shrunk[:, 0], shrunk[:, -1] = False, False, False, False
        if not shrunk.any():
            break
        inner = shrunk
    ys, xs = np.nonzero(inner)
    j = int(np.argmin((ys - ys.mean()) ** 2 + (xs - xs.mean()) ** 2))
    return float(xs[j]) + 0.5, float(ys[j]) + 0.5


def run_attention_demo(page: Page, url: str, workspace, source: str, *, images: int | None = None,
                       epochs: int | None = None, timeout: int = 90_000, finetune_timeout: int = 300_000) -> dict:
    """Drive the Attention page as the simulated user, on a page of a fresh browser context.

    Opens ``url``/attention (a new workbench on the default data), presses the page's "Open ..."
    button for the bundled shortcut set ``source`` (``biased-digits``, ``decoy-digits``, ...; its
    base model must be in ``workspace``/base), sets "Candidates per round" and "Epochs" when
    given (otherwise the page's defaults hold), presses START, makes for each candidate the
    clicks of :func:`core.feedback.attention.workflow.simulated_annotation` (left: the mask's centroid;
    right: each attended superpixel outside the object, from the base model's Grad-CAM the page
    shows), confirms, presses NEXT after each screenful, then FINE-TUNE, and opens test mode.

    Returns {"source", "wb", "seconds" (START to the new version), "images", "clicks",
    "annotations_as_intended" (stored annotations equal to the clicks meant), "mismatches" (the
    others: what was meant and what was stored), "version",
    "page_numbers", "library_numbers" (``bias_report`` of the new version, same order),
    "numbers_equal", "before", "after" (bias-conflicting test accuracy of v0 and of the new
    version, percent), "feedback" (the new version's feedback: settings, seed, config)}.
    """
    import sys
    import time
    from pathlib import Path as _Path
    from urllib.parse import parse_qs, urlparse

    import numpy as np

    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from core.feedback.attention.workflow import PageSettings, annotations_of, bias_report, simulated_annotation
    from core.explain import gradcam
    from core.explain.superpixels import superpixels
    from core.models import model_from_checkpoint
    from core.session.store import Store
    from core.session.workbench import Workbench

    defaults = PageSettings()
    page.set_default_timeout(timeout)
    page.goto(f"{url}/attention")
    suffix = source.split("-")[0]  # app/widgets.py SHORTCUT_OFFERS: att-open-biased, -decoy, -texture
    page.locator(live(f".st-key-att-open-{suffix}")).get_by_role("button").click()
    expect(page.get_by_text(re.compile(rf"Started workbench \w+ on {re.escape(source)}")).first).to_be_visible()
    page.wait_for_url(re.compile(r"[?&]wb=[0-9a-f]{12}"))
    wb_id = parse_qs(urlparse(page.url).query)["wb"][0]
    n = int(images or defaults.per_round)
    if n != defaults.per_round:
        set_page_number(page, "Candidates per round", n, timeout=timeout)
    if epochs is not None:
        set_page_number(page, "Epochs", int(epochs), timeout=timeout)
    wait_idle(page, timeout)

    store = Store(_Path(workspace))
    wb = Workbench.open(store, wb_id)
    data = wb.data
    v0 = model_from_checkpoint(store.versions(wb_id)[0].checkpoint).eval()
    per_page = int(wb.settings.get("attention", {}).get("per_page", defaults.per_page))
    t0 = time.perf_counter()
    page.get_by_role("button", name="START", exact=True).click()
    expect_text(page, ".st-key-att-grid", f"0 of {n} confirmed", timeout)
    clicks, meant = 0, {}
    for k in range(n):
        deadline = time.monotonic() + timeout / 1000
        while True:  # the workspace moves on to the next unconfirmed image after CONFIRM
            wait_idle(page, timeout)
            expect(page.locator(live(ATT_IMG))).to_have_count(1, timeout=timeout)
            title = page.locator(live(".st-key-att-annotate")).first.inner_text()
            found = re.search(r"Image (\d+)", title)
            if found and int(found.group(1)) not in meant:
                break
            if time.monotonic() > deadline:
                raise AssertionError(f"the workspace still shows an annotated image: {title[:200]!r}")
            page.wait_for_timeout(250)
        example = int(found.group(1))
        x = data.images[example]
        cam = gradcam(v0, x[None], data.labels[example:example + 1]).cams[0].numpy()
        seg = superpixels(x)
        ann = simulated_annotation(example, int(data.labels[example]), x, data.masks[example, 0].numpy(), cam,
                                   segments=seg)
        meant[example] = ann
        h, w = x.shape[-2:]
        targets = [(px, py, "left") for px, py in ann.positives]
        targets += [(*inner_pixel(seg, s), "right") for s in np.unique(seg[ann.negative_mask()])]
        for px, py, button in targets:
            img = page.locator(live(ATT_IMG)).first
            box = img.bounding_box()
            src = img.get_attribute("src")
            img.click(position={"x": px / w * box["width"], "y": py / h * box["height"]}, button=button)
            clicks += 1
            # every click redraws the picture: wait for it, so that the next click is not sent
            # while this one's rerun runs (the component would deliver only the later one)
            # (polled through the locator: the component's element is in a shadow root)
            redraw_by = time.monotonic() + timeout / 1000
            while page.locator(live(ATT_IMG)).first.get_attribute("src") == src:
                if time.monotonic() > redraw_by:
                    raise AssertionError(f"the picture did not change after the {button} click at ({px:.1f}, {py:.1f}) "
                                         f"on image {example} (the page dropped it: clicks meant {targets})")
                page.wait_for_timeout(100)
            wait_idle(page, timeout)
        expect(page.locator(live(".st-key-att-undo")).locator("button").first).to_be_enabled()
        page.locator(live(".st-key-att-confirm")).locator("button").first.click()
        expect_text(page, ".st-key-att-grid", f"{k + 1} of {n} confirmed", timeout)
        if (k + 1) % per_page == 0 and k + 1 < n:
            page.get_by_role("button", name="NEXT", exact=True).click()
            page.wait_for_timeout(500)
            wait_idle(page, timeout)
    wait_idle(page, timeout)
    page.locator(live(".st-key-att-finetune")).locator("button").first.click()
    expect_text(page, ".st-key-att-status", re.compile(r"Finished: version v1\b"), finetune_timeout)
    seconds = time.perf_counter() - t0

    stored = {a.example_id: a for a in annotations_of(Workbench.open(store, wb_id))}
    mismatches = []
    for i, a in meant.items():
        got = stored.get(i)
        same = (got is not None and np.array_equal(got.negative_mask(), a.negative_mask())
                and len(got.positives) == len(a.positives)
                and all(abs(p - q) <= 1.0 for s, t in zip(got.positives, a.positives) for p, q in zip(s, t)))
        if not same:
            mismatches.append({"example": i, "meant_positives": [list(q) for q in a.positives],
                               "stored_positives": None if got is None else [list(q) for q in got.positives],
                               "meant_negative_px": int(a.negative_mask().sum()),
                               "stored_negative_px": None if got is None else int(got.negative_mask().sum()),
                               "negative_px_differing": None if got is None else
                               int((got.negative_mask() != a.negative_mask()).sum())})
    as_intended = len(meant) - len(mismatches)
    wait_idle(page, timeout)
    page.locator(live(".st-key-att-test-mode")).locator("label").first.click()
    expect_text(page, ".st-key-att-test", "v1", timeout)
    metrics = page.locator(live(".st-key-att-test")).first
    expect(metrics.locator('[data-testid="stMetricValue"]').first).to_be_visible()
    shown = [float(re.search(r"(-?\d+(?:\.\d+)?)%", t).group(1))
             for t in metrics.locator('[data-testid="stMetricValue"]').all_inner_texts()[:3]]
    version = store.versions(wb_id)[-1]
    lib = bias_report(model_from_checkpoint(version.checkpoint).eval(), data)
    expected = [lib[k] for k in ("test_acc", "aligned_acc", "attention_in_mask") if lib[k] is not None]
    return {"source": source, "wb": wb_id, "seconds": seconds, "images": n, "clicks": clicks,
            "annotations_as_intended": as_intended, "mismatches": mismatches, "version": version.number,
            "page_numbers": shown, "library_numbers": [round(v, 1) for v in expected],
            "numbers_equal": [f"{v:.1f}" for v in shown] == [f"{v:.1f}" for v in expected],
            "before": bias_report(v0, data)["test_acc"], "after": lib["test_acc"], "feedback": version.feedback}
