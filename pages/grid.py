"""Grid feedback (seed 002, Serrano e Silva et al.): train with a pause at each epoch end,
review the model's uncertain mistakes with saliency maps, mark the grid squares it must not
use, and train on with an input-gradient penalty ("right for the right reasons").

A page of its own rather than a panel of the Training monitor: a review needs large images
(256 px), a saliency method, a clickable grid and its shortcuts, which would crowd out the
monitor's charts; the live loss chart here shows the penalty as its own series."""
from __future__ import annotations

import io
import json
import time
from dataclasses import asdict, replace

import numpy as np
import pandas as pd
import streamlit as st
import torch

from app.attention_widgets import render_grid
from app.click_image import click_image, events_after
from app.shortcut_widgets import shortcut_compare
from app.state import current_workbench, notice
from app.widgets import live_job, metric_delta, offer_biased_digits, pct, start_job, training_figure
from core.engine import predict
from core.explain.saliency import METHODS, saliency_maps
from core.feedback.counterexamples import feedback_line
from core.feedback.grid.loss import square_of
from core.feedback.grid.job import (
    SETTINGS_KEY,
    GridPageSettings,
    continue_training,
    load_pending,
    review_model,
    review_records,
    reviews_of_version,
    save_pending,
    skip_review,
    start_grid_training,
    waiting_epoch,
)
from core.feedback.grid.workflow import REVIEW_SAMPLERS, bias_report, outside_top_marks, review_rows

wb = current_workbench()
ss = st.session_state
data = wb.data
classes = data.classes
settings = GridPageSettings.from_dict(wb.settings.get(SETTINGS_KEY))
job = wb.jobs.current
busy = job is not None and job.running
shape = tuple(data.image_shape[1:])
WORKSPACE_PX = 320
METHOD_LABELS = {"gradient": "input gradient", "smoothgrad": "SmoothGrad", "integrated_gradients": "Integrated Gradients",
                 "deeplift": "DeepLift", "gradcam": "Grad-CAM"}

if ss.get("grid-wb") != wb.id:  # another workbench: view state starts clean
    for k in [k for k in ss if str(k).startswith("grid-")]:
        del ss[k]
    ss["grid-wb"] = wb.id


def save_settings() -> None:
    """A parameter changed: save all of them with the workbench at once."""
    values = {f: ss[f"grid-p-{f}"] for f in asdict(GridPageSettings()) if f"grid-p-{f}" in ss}
    wb.update_settings(**{SETTINGS_KEY: asdict(replace(settings, **values))})


def marks_use(job_now) -> tuple[bool, int | None]:
    """What a grid run does with the marked images: (the penalty on, counterexamples per image
    or None), read from the run's own terms (the page's settings may have changed since)."""
    terms = (job_now.context.get("terms") or {}) if job_now is not None else {}
    cex = terms.get("counterexamples")
    return "grid" in terms, (int(cex.settings.k) if cex is not None else None)


def marks_phrase(penalty: bool, cex_k: int | None) -> str:
    parts = (["the penalty"] if penalty else []) + ([f"{cex_k} counterexamples per image"] if cex_k else [])
    return " and ".join(parts) or "nothing"


def parameter_panel() -> None:
    st.markdown("**Parameters**")
    defaults = asdict(settings)
    defaults["n"] = settings.grid(shape)
    for f, v in defaults.items():
        ss.setdefault(f"grid-p-{f}", v)
    c1, c2 = st.columns(2)
    c1.number_input("Epochs", 2, 200, step=1, key="grid-p-epochs", on_change=save_settings,
                    help="A review after every epoch but the last.")
    c2.number_input("Batch size", 8, 1024, step=8, key="grid-p-batch_size", on_change=save_settings)
    st.number_input("Learning rate", 1e-5, 1.0, step=0.001, format="%.4f", key="grid-p-lr", on_change=save_settings)
    c1, c2 = st.columns(2)
    c1.number_input("Mistakes per review", 1, 100, step=1, key="grid-p-k", on_change=save_settings,
                    help="K: the paper shows 10 uncertain mistakes at each epoch end.")
    c2.number_input("Grid squares per side", 1, min(shape), step=1, key="grid-p-n", on_change=save_settings,
                    help="Default: a square is about 1/7 of the image's side.")
    st.selectbox("Choose mistakes by", list(REVIEW_SAMPLERS), key="grid-p-sampler", on_change=save_settings,
                 help="entropy: the most uncertain first (the paper's); margin: the closest call first; random.")
    st.selectbox("Saliency shown", list(METHODS), format_func=lambda m: METHOD_LABELS.get(m, m), key="grid-p-method",
                 on_change=save_settings, help="What the map over each image shows. The penalty always acts on the "
                 "input gradient (the first method).")
    st.number_input("Penalty's starting share of the loss", 0.01, 100.0, step=0.1, key="grid-p-share",
                    on_change=save_settings,
                    help="lambda is set once, at the first step with reviewed images, so that the penalty equals this "
                         "share of that step's cross-entropy; it stays fixed afterwards. Works across datasets without "
                         "tuning lambda itself.")
    st.slider("Overlay opacity", 0.0, 1.0, step=0.05, key="grid-p-opacity", on_change=save_settings)
    with st.container(key="grid-cex-panel"):
        st.markdown("**What the marks do**")
        st.toggle("Input-gradient penalty", key="grid-p-penalty", on_change=save_settings,
                  help="The paper's: lambda x the squared input gradients inside the marked squares.")
        st.toggle("Counterexamples from the marked squares", key="grid-p-counterexamples", on_change=save_settings,
                  help="For each reviewed image, copies whose marked squares come from other training images, with "
                       "the label kept, trained on with the rest of the run (Teso & Kersting 2019).")
        st.number_input("Counterexamples per image", 1, 64, step=1, key="grid-p-cex_k", on_change=save_settings,
                        disabled=not ss.get("grid-p-counterexamples"),
                        help="k: copies made of each reviewed image that has marks, each with another donor image.")
        if not ss.get("grid-p-penalty") and not ss.get("grid-p-counterexamples"):
            st.warning("Turn on the penalty, the counterexamples or both: with neither, the marks change nothing.")


def start_panel() -> None:
    inherited = reviews_of_version(wb)
    cex_k = int(settings.cex_k) if settings.counterexamples else None
    with st.container(key="grid-start"):
        c1, c2 = st.columns([1, 3])
        clicked = c1.button("Start training with reviews", type="primary", key="grid-start-btn", disabled=busy,
                            width="stretch")
        if busy and job is not None and job.kind == "grid":
            c2.caption("A run with reviews is in progress (from this or another tab): its reviews appear here when it "
                       "pauses, and its progress below.")
        elif not busy:
            c2.caption(f"Trains v{wb.current_version} for {settings.epochs} epochs and pauses after each epoch but the last "
                       f"to show {settings.k} uncertain mistakes. "
                       + (f"Marked images go to {marks_phrase(settings.penalty, cex_k)}; the run starts with "
                          + (f"the {len(inherited)} images reviewed for v{wb.current_version}."
                             if inherited else "no reviewed images.")
                          if settings.penalty or cex_k else "With the penalty and the counterexamples both off, "
                          "marks would change nothing (see the parameters)."))
        if busy and job is not None and job.kind != "grid":
            c2.caption("Another job is running on this workbench; wait for it or stop it first.")
    if clicked:
        start_job(lambda: start_grid_training(wb, settings), key="grid",
                  settings=(float(settings.epochs), float(settings.lr)))


# ---------------------------------------------------------------- the review
def maps_for(pending, method: str) -> tuple[np.ndarray, np.ndarray]:
    """Saliency maps of the review's images (their true class) and the predictions, under the
    model as it was when the job paused; cached per job, epoch and method."""
    cache = ss.setdefault("grid-maps", {})
    key = (pending.job, pending.epoch, method)
    if not pending.ids:
        return np.zeros((0, *shape), np.float32), np.zeros(0, np.int64)
    if key not in cache:
        model = review_model(wb, job, pending.epoch)
        idx = torch.as_tensor(pending.ids, dtype=torch.long)
        try:
            maps = saliency_maps(model, data.images[idx], data.labels[idx], method)
        except ValueError as exc:  # DeepLift on a model torch.fx cannot trace
            st.warning(f"{exc} Showing the input gradient instead.")
            maps = saliency_maps(model, data.images[idx], data.labels[idx], "gradient")
        # shown against the 99th percentile, not the maximum: gradient maps are spiky, and a few
        # extreme pixels would leave the rest of the map too faint to read
        top = np.percentile(maps.reshape(len(maps), -1), 99, axis=1).reshape(-1, 1, 1)
        maps = np.clip(maps / np.maximum(top, 1e-12), 0, 1)
        preds = predict(model, data.images[idx])[0].argmax(1).numpy()
        if len(cache) > 8:
            cache.pop(next(iter(cache)))
        cache[key] = (maps, preds)
    return cache[key]


def picture(i: int, sal: np.ndarray, marked: list[int], n: int, size: int, *, png: bool = False):
    """A rendered review image (or its PNG bytes), kept per state so idle reruns neither draw
    nor encode it again."""
    cache = ss.setdefault("grid-pictures", {})
    key = (i, id(sal), tuple(marked), n, size, settings.opacity, png)
    if key not in cache:
        if len(cache) >= 64:
            cache.pop(next(iter(cache)))
        pil = render_grid(data.images[i], sal, n, marked, size=size, opacity=settings.opacity)
        if png:
            buf = io.BytesIO()
            pil.save(buf, format="PNG")
            cache[key] = buf.getvalue()
        else:
            cache[key] = pil
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


def review_panel(pending) -> None:
    method = ss.get("grid-method") or pending.method
    if method not in METHODS:
        method = "gradient"
    with st.spinner("Computing saliency maps…"):
        maps, preds = maps_for(pending, method)
    pos = {i: k for k, i in enumerate(pending.ids)}
    current = pending.ids[min(max(pending.current, 0), len(pending.ids) - 1)] if pending.ids else None
    with st.container(key="grid-review"):
        st.markdown(f"#### Epoch {pending.epoch + 1} ended: review {len(pending.ids)} uncertain mistake"
                    f"{'s' if len(pending.ids) != 1 else ''}")
        st.caption("Training waits. Mark the squares the model must **not** use for its decision (background, "
                   "colour patches, anything that is not the object): click a square to mark or unmark it. Continue "
                   f"trains on with the marked images ({marks_phrase(*marks_use(job))}); Skip goes on without "
                   "feedback.")
        if not pending.ids:
            st.info("The model makes no mistakes on the training images it has not reviewed yet: nothing to review.")
            if st.button("Continue training", type="primary", key="grid-continue"):
                continue_training(wb, job, pending)
                st.rerun()
            return
        cols = st.columns(min(10, max(1, len(pending.ids))))
        for k, i in enumerate(pending.ids):
            with cols[k % len(cols)]:
                marked = pending.squares(i)
                st.image(picture(i, maps[k], marked, pending.n, 96, png=True), width="stretch")
                if st.button(f"✓ {len(marked)}" if marked else "open", key=f"grid-pick-{i}", width="stretch",
                             type="primary" if i == current else "secondary",
                             help=f"{len(marked)} squares marked" if marked else "No squares marked yet"):
                    pending.current = k
                    save_pending(wb, pending)
                    st.rerun()
        if current is None:
            return
        img_key = f"grid-img-{pending.epoch}-{current}"
        take_click(current, img_key, pending)
        marked = pending.squares(current)
        left, right = st.columns([3, 2], gap="medium")
        with left:
            st.markdown(f"**Image {current}** · true **{classes[int(data.labels[current])]}** · predicted "
                        f"**{classes[int(preds[pos[current]])]}** · {len(marked)} of {pending.n * pending.n} squares "
                        "marked")
            pic = picture(current, maps[pos[current]], marked, pending.n, WORKSPACE_PX)
            click_image(pic, key=img_key, width=pic.width, source_size=(shape[1], shape[0]), queued=True,
                        on_click=lambda: take_click(current, img_key), ack=ss.get("grid-applied", {}).get(img_key, 0))
            st.caption(f"Heat: {METHOD_LABELS[method]} of the true class (where the model's decision is sensitive). "
                       "Hatched red: marked squares.")
        with right:
            st.selectbox("Saliency", list(METHODS), index=list(METHODS).index(method),
                         format_func=lambda m: METHOD_LABELS.get(m, m), key="grid-method")
            c1, c2 = st.columns(2)
            if c1.button("Undo", key="grid-undo", disabled=not pending.undo.get(str(current)), width="stretch"):
                pending.undo_last(current)
                save_pending(wb, pending)
                st.rerun()
            if c2.button("Clear", key="grid-clear", disabled=not marked, width="stretch"):
                pending.set_squares(current, [])
                save_pending(wb, pending)
                st.rerun()
            top = st.slider("Top x% of the saliency", 1, 50, value=int(settings.top_percent), key="grid-top")
            if st.button(f"Mark all squares outside the top {top}%", key="grid-outside-top", width="stretch",
                         help="Marks every square that holds none of the most salient pixels of the map shown "
                              "(not when that would be every square or none: the page says so instead)."):
                rule = outside_top_marks(maps[pos[current]], pending.n, top)
                if rule.message is None:
                    pending.set_squares(current, rule.squares)
                    save_pending(wb, pending)
                    st.rerun()
                with st.container(key="grid-outside-top-warning"):
                    st.warning(rule.message, icon=":material/warning:")
            if st.button("Next image", key="grid-next", width="stretch", disabled=len(pending.ids) < 2):
                pending.current = (pos[current] + 1) % len(pending.ids)
                save_pending(wb, pending)
                st.rerun()
        pending.method = method
        images_marked = sum(1 for i in pending.ids if pending.squares(i))
        c1, c2, c3 = st.columns([2, 1, 2])
        if c1.button(f"Continue: train with {images_marked} marked image{'s' if images_marked != 1 else ''}",
                     type="primary", key="grid-continue", width="stretch"):
            anns = continue_training(wb, job, pending)  # on disk before training resumes
            notice(f"Saved the review: {len(anns)} image{'s' if len(anns) != 1 else ''}, "
                   f"{sum(len(a.squares) for a in anns)} squares. Training goes on.", "success")
            st.rerun()
        if c2.button("Skip", key="grid-skip", width="stretch", help="Resume without feedback for this epoch."):
            skip_review(wb, job, pending)
            notice("Skipped this review; training goes on.", "info")
            st.rerun()
        c3.caption(f"{time.time() - pending.shown_at:.0f} s on this review · {sum(pending.operations.values())} clicks")


def draw_live(job_now, view) -> None:
    """Inside the polling fragment: the chart (loss with the penalty as its own series), the
    penalty's state, and a full rerun when the job starts or stops waiting for a review."""
    waiting = waiting_epoch(job_now)
    if waiting != ss.get("grid-drawn-wait"):
        ss["grid-drawn-wait"] = waiting
        st.rerun(scope="app")
    if view is None or job_now is None or job_now.kind != "grid":
        if view is not None and view["steps"]:
            st.plotly_chart(training_figure(view), key="grid-chart", width="stretch")
        return
    penalty = job_now.context.get("penalty")
    penalty_on, cex_k = marks_use(job_now)
    cex = (job_now.context.get("terms") or {}).get("counterexamples")
    made = f" · counterexamples: **{len(cex)}** ({cex_k} per image)" if cex is not None else ""
    if penalty is not None and not penalty_on:
        st.caption(f"Reviewed images: **{len(penalty)}** (the penalty is off){made}.")
    elif penalty is not None:
        lam = f"{penalty.lam:.3g}" if penalty.lam is not None else "set at the first step with reviews"
        last = (f"; last step: penalty {penalty.last_weighted:.4g}" if penalty.last_weighted is not None else "")
        st.caption(f"Penalty set: **{len(penalty)}** reviewed image{'s' if len(penalty) != 1 else ''} · lambda {lam}"
                   f"{last}{made}. The 'grid term' series is the penalty (already times lambda).")
    if view["steps"]:
        st.plotly_chart(training_figure(view), key="grid-chart", width="stretch")


# ---------------------------------------------------------------- results
@st.cache_data(show_spinner=False, max_entries=32)
def report_of(wb_id: str, number: int, checkpoint: str) -> dict:
    from core.models import model_from_checkpoint

    return bias_report(model_from_checkpoint(checkpoint).eval(), data)


def results_panel() -> None:
    """The current version's reviews (table, downloads) and, for a version made here, its
    effect against the version it started from."""
    records = review_records(wb)
    fb = wb.version(wb.current_version).feedback or {}
    origin = (fb.get("grid") or {}).get("from_version")
    with st.container(key="grid-results"):
        if origin is not None and not busy:
            with st.spinner("Measuring both versions on the test split(s)…"):
                before = report_of(wb.id, origin, wb.version(origin).checkpoint)
                after = report_of(wb.id, wb.current_version, wb.version(wb.current_version).checkpoint)
            biased = after["aligned_acc"] is not None
            st.markdown(f"**v{wb.current_version}** (trained with grid feedback) against **v{origin}** (where it started)")
            c1, c2, c3 = st.columns(3)
            c1.metric("Bias-conflicting test" if biased else "Test accuracy", f"{after['test_acc']:.1f}%",
                      **metric_delta(after["test_acc"] - before["test_acc"]))
            if biased:
                c2.metric("Bias-aligned test", f"{after['aligned_acc']:.1f}%",
                          **metric_delta(after["aligned_acc"] - before["aligned_acc"]))
            if after["gradient_in_mask"] is not None:
                c3.metric("Input gradient on the object", f"{after['gradient_in_mask']:.1f}%",
                          **metric_delta(after["gradient_in_mask"] - before["gradient_in_mask"]),
                          help="Share of the squared input gradient inside the object masks of the test images.")
            shortcut_compare(wb, origin, wb.current_version, key="grid-shortcut")
            if biased:
                st.caption("Bias-conflicting: background colour independent of the class; bias-aligned: the same "
                           "digits on their class's colour. Training from v" f"{origin} without reviews is the fair "
                           "comparison; benchmarks/grid_feedback.py measures it.")
        anns = reviews_of_version(wb)
        if not records and not anns:
            return
        reviewed = sum(len(r.get("ids", [])) for r in records)
        st.caption(f"v{wb.current_version}: {len(records)} review{'s' if len(records) != 1 else ''} in its run, "
                   f"{reviewed} images shown, {len(anns)} in its penalty set (a run started from it begins with them)."
                   + (f" {cex_line}" if (cex_line := feedback_line(fb)) else ""))
        rows = review_rows(anns, classes)
        if rows:
            st.dataframe(pd.DataFrame([{**r, "squares": len(r["squares"])} for r in rows]), hide_index=True,
                         width="stretch", height=min(240, 36 + 35 * len(rows)))
            c1, c2 = st.columns(2)
            c1.download_button("Reviews (CSV)", pd.DataFrame([{**r, "squares": json.dumps(r["squares"])} for r in rows])
                               .to_csv(index=False), file_name=f"grid-{wb.id}-v{wb.current_version}.csv",
                               mime="text/csv", key="grid-dl-csv", on_click="ignore", width="stretch")
            c2.download_button("Reviews with timing (JSON)", json.dumps({"reviews": records, "penalty_set": rows,
                                                                         "counterexamples": fb.get("counterexamples")},
                                                                        indent=1),
                               file_name=f"grid-{wb.id}-v{wb.current_version}.json", mime="application/json",
                               key="grid-dl-json", on_click="ignore", width="stretch")


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
    parameter_panel()

with main:
    start_panel()
    pending = load_pending(wb, job) if job is not None else None
    ss["grid-drawn-wait"] = waiting_epoch(job)
    if pending is not None:
        review_panel(pending)
    live_job(wb, "grid", draw_live, pausable=False)
    results_panel()
    if not busy and job is None and not review_records(wb):
        what = "Bias-conflicting test accuracy" if "test_aligned" in data.splits else "Test accuracy"
        st.caption(f"{what} of v{wb.current_version}: {pct(wb.version(wb.current_version).metrics.get('test_acc'))}.")
