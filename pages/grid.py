"""Grid feedback (seed 002, Serrano e Silva et al.): train with a pause at each epoch end,
review the model's uncertain mistakes with saliency maps, mark the grid squares it must not
use, and train on with an input-gradient penalty ("right for the right reasons").

A page of its own rather than a panel of the Training monitor: a review needs large images
(256 px), a saliency method, a clickable grid and its shortcuts, which would crowd out the
monitor's charts; the live loss chart here shows the penalty as its own series. The panels are
drawn by :mod:`app.grid_panels`; this page reads the session and turns clicks into marks,
saved before the page draws them."""
from __future__ import annotations

from dataclasses import asdict, replace

import numpy as np
import streamlit as st

from app.click_image import events_after
from app.grid_panels import (draw_live, marks_phrase, marks_use, parameter_panel, plural, results_panel, review_foot,
                             review_head, review_image, review_tools, start_panel, thumbnails)
from app.page_session import current_job, open_page
from app.state import notice
from app.widgets import live_job, offer_biased_digits, pct, start_job
from core.explain.saliency import METHODS
from core.feedback.grid.loss import square_of
from core.feedback.grid.workflow import review_maps
from core.feedback.grid.job import (SETTINGS_KEY, GridPageSettings, continue_training, load_pending, review_model,
                                    review_records, save_pending, skip_review, start_grid_training, waiting_epoch)

wb, _ = open_page("grid")  # another workbench: view state starts clean
ss = st.session_state
data = wb.data
settings = GridPageSettings.from_dict(wb.settings.get(SETTINGS_KEY))
job, busy = current_job(wb)
shape = tuple(data.image_shape[1:])


def save_settings() -> None:
    """A parameter changed: save all of them with the workbench at once."""
    values = {f: ss[f"grid-p-{f}"] for f in asdict(GridPageSettings()) if f"grid-p-{f}" in ss}
    wb.update_settings(**{SETTINGS_KEY: asdict(replace(settings, **values))})


# ---------------------------------------------------------------- the review
def maps_for(pending, method: str) -> tuple[np.ndarray, np.ndarray]:
    """Saliency maps of the review's images (their true class) and the predictions, under the
    model as it was when the job paused; cached per job, epoch and method."""
    cache = ss.setdefault("grid-maps", {})
    key = (pending.job, pending.epoch, method)
    if key not in cache:
        shown = review_maps(review_model(wb, job, pending.epoch), data, pending.ids, method)
        if shown.fallback:
            st.warning(f"{shown.fallback} Showing the input gradient instead.")
        if len(cache) > 8:
            cache.pop(next(iter(cache)))
        cache[key] = (shown.maps, shown.predictions)
    return cache[key]


def take_click(example_id: int, key: str, pending=None) -> None:
    """Toggle the square under each click the image component sent that is not applied yet
    (by its ``n``, each once, in order), and save the review at once. The component's callback
    calls this before the script body (loading the review from disk), so a click whose rerun a
    quicker next click interrupts is applied all the same, and every event carries those not
    acknowledged yet; the body calls it again (AppTest runs no callbacks), finding nothing new."""
    applied = ss.setdefault("grid-applied", {})
    events = events_after(ss.get(key), applied.get(key, 0))
    if not events:
        return
    if pending is None:
        job_now = wb.jobs.current
        pending = load_pending(wb, job_now) if job_now is not None else None
        if pending is None or key != f"grid-img-{pending.epoch}-{example_id}":
            return  # the review these clicks were for has ended
    for ev in events:
        applied[key] = max(applied.get(key, 0), int(ev["n"]))
        if ev["kind"] == "click":
            pending.toggle(example_id, square_of(float(ev["y"]), float(ev["x"]), shape, pending.n))
    save_pending(wb, pending)


def saved(pending) -> None:
    """The review goes to disk, and the page is drawn again from it."""
    save_pending(wb, pending)
    st.rerun()


def review_panel(pending) -> None:
    """The paused run's review: its images, the one under review with its grid and tools, and
    Continue or Skip. Every mark is saved before the page shows it."""
    method = ss.get("grid-method") or pending.method
    if method not in METHODS:
        method = "gradient"
    with st.spinner("Computing saliency maps…"):
        maps, preds = maps_for(pending, method)
    pos = {i: k for k, i in enumerate(pending.ids)}
    current = pending.ids[min(max(pending.current, 0), len(pending.ids) - 1)] if pending.ids else None
    with st.container(key="grid-review"):
        review_head(pending, marks_phrase(*marks_use(job)))
        if not pending.ids:
            st.info("The model makes no mistakes on the training images it has not reviewed yet: nothing to review.")
            if st.button("Continue training", type="primary", key="grid-continue"):
                continue_training(wb, job, pending)
                st.rerun()
            return
        picked = thumbnails(data, pending, maps, current, settings.opacity)
        if picked is not None:
            pending.current = picked
            saved(pending)
        if current is None:
            return
        img_key = f"grid-img-{pending.epoch}-{current}"
        take_click(current, img_key, pending)
        left, right = st.columns([3, 2], gap="medium")
        with left:
            review_image(data, pending, current, maps[pos[current]], preds[pos[current]], method, settings.opacity,
                         key=img_key, on_click=lambda: take_click(current, img_key))
        with right:
            ask = review_tools(pending, current, maps[pos[current]], method, settings.top_percent)
        if ask is not None:
            if ask.kind == "undo":
                pending.undo_last(current)
            elif ask.kind in ("clear", "set"):
                pending.set_squares(current, ask.squares)
            else:  # next
                pending.current = (pos[current] + 1) % len(pending.ids)
            saved(pending)
        pending.method = method
        end = review_foot(pending)
        if end == "continue":
            anns = continue_training(wb, job, pending)  # on disk before training resumes
            notice(f"Saved the review: {len(anns)} image{plural(len(anns))}, "
                   f"{sum(len(a.squares) for a in anns)} squares. Training goes on.", "success")
            st.rerun()
        if end == "skip":
            skip_review(wb, job, pending)
            notice("Skipped this review; training goes on.", "info")
            st.rerun()


# ---------------------------------------------------------------- the page
st.title("Grid feedback")
st.caption("Train with a pause at each epoch end: look at the model's uncertain mistakes with a saliency map, mark "
           "the grid squares it must not use, and training goes on with a penalty on the input gradients there "
           "(Serrano e Silva et al., seed 002; Ross et al. 2017).")
if "test_aligned" not in data.splits:
    offer_biased_digits(wb, "grid", f"{data.name} has no known bias to measure against: you can review it, but the "
                        "result shows test accuracy only.", busy=busy)

left, main = st.columns([1, 3], gap="large")
with left, st.container(key="grid-params"):
    parameter_panel(settings, shape, save_settings)

with main:
    if start_panel(wb, settings, job, busy):
        start_job(lambda: start_grid_training(wb, settings), key="grid",
                  settings=(float(settings.epochs), float(settings.lr)))
    pending = load_pending(wb, job) if job is not None else None
    ss["grid-drawn-wait"] = waiting_epoch(job)
    if pending is not None:
        review_panel(pending)
    live_job(wb, "grid", draw_live, pausable=False)
    results_panel(wb, busy)
    if not busy and job is None and not review_records(wb):
        what = "Bias-conflicting test accuracy" if "test_aligned" in data.splits else "Test accuracy"
        st.caption(f"{what} of v{wb.current_version}: {pct(wb.version(wb.current_version).metrics.get('test_acc'))}.")
