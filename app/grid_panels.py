"""The Grid feedback page's panels: its parameters, the start row, the review's pictures and
buttons, the live chart and the results. They draw and hand back what was pressed; the page
turns that into marks and saves them before the next draw."""
from __future__ import annotations

import io
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd
import streamlit as st

from app.attention_widgets import render_grid
from app.click_image import click_image
from app.mark_uses import MarkUses, mark_uses_panel
from app.shortcut_widgets import shortcut_compare
from app.widgets import metric_delta, training_figure
from core.data import ImageDataset
from core.explain.saliency import METHODS
from core.feedback.counterexamples import feedback_line
from core.feedback.grid.job import GridPageSettings, review_records, reviews_of_version, waiting_epoch
from core.feedback.grid.workflow import REVIEW_SAMPLERS, bias_report, outside_top_marks, review_rows
from core.session.workbench import Workbench

IMAGE_PX = 320  # the review's large image, the one to click on
METHOD_LABELS = {"gradient": "input gradient", "smoothgrad": "SmoothGrad", "integrated_gradients": "Integrated Gradients",
                 "deeplift": "DeepLift", "gradcam": "Grad-CAM"}


MARK_USES = MarkUses(
    "grid", "What the marks do", "penalty", "Input-gradient penalty",
    "The paper's: lambda x the squared input gradients inside the marked squares.",
    "Counterexamples from the marked squares",
    "For each reviewed image, copies whose marked squares come from other training images, with the label kept, "
    "trained on with the rest of the run (Teso & Kersting 2019).",
    "k: copies made of each reviewed image that has marks, each with another donor image.",
    "Turn on the penalty, the counterexamples or both: with neither, the marks change nothing.", st.warning)


def plural(n: int) -> str:
    """``"s"`` unless ``n`` is 1."""
    return "s" if n != 1 else ""


def marks_use(job_now) -> tuple[bool, int | None]:
    """What a grid run does with the marked images: (the penalty on, counterexamples per image
    or None), read from the run's own terms (the page's settings may have changed since)."""
    terms = (job_now.context.get("terms") or {}) if job_now is not None else {}
    cex = terms.get("counterexamples")
    return "grid" in terms, (int(cex.settings.k) if cex is not None else None)


def marks_phrase(penalty: bool, cex_k: int | None) -> str:
    """What the marks go to, in words: "the penalty", "k counterexamples per image", both, or "nothing"."""
    parts = (["the penalty"] if penalty else []) + ([f"{cex_k} counterexamples per image"] if cex_k else [])
    return " and ".join(parts) or "nothing"


def parameter_panel(settings: GridPageSettings, shape: tuple[int, int], on_change: Callable[[], None]) -> None:
    """The run's parameters and what the marks do; each change calls ``on_change`` (which saves)."""
    st.markdown("**Parameters**")
    defaults = asdict(settings)
    defaults["n"] = settings.grid(shape)
    for f, v in defaults.items():
        st.session_state.setdefault(f"grid-p-{f}", v)
    c1, c2 = st.columns(2)
    c1.number_input("Epochs", 2, 200, step=1, key="grid-p-epochs", on_change=on_change,
                    help="A review after every epoch but the last.")
    c2.number_input("Batch size", 8, 1024, step=8, key="grid-p-batch_size", on_change=on_change)
    st.number_input("Learning rate", 1e-5, 1.0, step=0.001, format="%.4f", key="grid-p-lr", on_change=on_change)
    c1, c2 = st.columns(2)
    c1.number_input("Mistakes per review", 1, 100, step=1, key="grid-p-k", on_change=on_change,
                    help="K: the paper shows 10 uncertain mistakes at each epoch end.")
    c2.number_input("Grid squares per side", 1, min(shape), step=1, key="grid-p-n", on_change=on_change,
                    help="Default: a square is about 1/7 of the image's side.")
    st.selectbox("Choose mistakes by", list(REVIEW_SAMPLERS), key="grid-p-sampler", on_change=on_change,
                 help="entropy: the most uncertain first (the paper's); margin: the closest call first; random.")
    st.selectbox("Saliency shown", list(METHODS), format_func=lambda m: METHOD_LABELS.get(m, m), key="grid-p-method",
                 on_change=on_change, help="What the map over each image shows. The penalty always acts on the "
                 "input gradient (the first method).")
    st.number_input("Penalty's starting share of the loss", 0.01, 100.0, step=0.1, key="grid-p-share",
                    on_change=on_change,
                    help="lambda is set once, at the first step with reviewed images, so that the penalty equals this "
                         "share of that step's cross-entropy; it stays fixed afterwards. Works across datasets without "
                         "tuning lambda itself.")
    st.slider("Overlay opacity", 0.0, 1.0, step=0.05, key="grid-p-opacity", on_change=on_change)
    mark_uses_panel(MARK_USES, on_change)


def start_panel(wb: Workbench, settings: GridPageSettings, job, busy: bool) -> bool:
    """The start button with what a run would do (or what runs now): whether it was pressed."""
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
    return clicked


# ---------------------------------------------------------------- the review
def picture(data: ImageDataset, i: int, sal: np.ndarray, marked: list[int], n: int, size: int, opacity: float, *,
            png: bool = False):
    """A rendered review image (or its PNG bytes), kept per state so idle reruns neither draw
    nor encode it again."""
    cache = st.session_state.setdefault("grid-pictures", {})
    key = (i, id(sal), tuple(marked), n, size, opacity, png)
    if key not in cache:
        if len(cache) >= 64:
            cache.pop(next(iter(cache)))
        pil = render_grid(data.images[i], sal, n, marked, size=size, opacity=opacity)
        if png:
            buf = io.BytesIO()
            pil.save(buf, format="PNG")
            cache[key] = buf.getvalue()
        else:
            cache[key] = pil
    return cache[key]


def review_head(pending, marks: str) -> None:
    """The review's title and what to do in it; ``marks``: what the marked images go to."""
    st.markdown(f"#### Epoch {pending.epoch + 1} ended: review {len(pending.ids)} uncertain mistake"
                f"{plural(len(pending.ids))}")
    st.caption("Training waits. Mark the squares the model must **not** use for its decision (background, "
               "colour patches, anything that is not the object): click a square to mark or unmark it. Continue "
               f"trains on with the marked images ({marks}); Skip goes on without feedback.")


def thumbnails(data: ImageDataset, pending, maps: np.ndarray, current: int | None, opacity: float) -> int | None:
    """The review's images in a row, each with its button: the position of the one picked, if any."""
    picked = None
    cols = st.columns(min(10, max(1, len(pending.ids))))
    for k, i in enumerate(pending.ids):
        with cols[k % len(cols)]:
            marked = pending.squares(i)
            st.image(picture(data, i, maps[k], marked, pending.n, 96, opacity, png=True), width="stretch")
            if st.button(f"✓ {len(marked)}" if marked else "open", key=f"grid-pick-{i}", width="stretch",
                         type="primary" if i == current else "secondary",
                         help=f"{len(marked)} squares marked" if marked else "No squares marked yet"):
                picked = k
    return picked


def review_image(data: ImageDataset, pending, current: int, sal: np.ndarray, pred: int, method: str, opacity: float,
                 *, key: str, on_click: Callable[[], None]) -> None:
    """The image under review, large, with its grid to click on (queued clicks, acknowledged by ``n``)."""
    marked = pending.squares(current)
    st.markdown(f"**Image {current}** · true **{data.classes[int(data.labels[current])]}** · predicted "
                f"**{data.classes[int(pred)]}** · {len(marked)} of {pending.n * pending.n} squares marked")
    pic = picture(data, current, sal, marked, pending.n, IMAGE_PX, opacity)
    shape = tuple(data.image_shape[1:])
    click_image(pic, key=key, width=pic.width, source_size=(shape[1], shape[0]), queued=True,
                on_click=on_click, ack=st.session_state.get("grid-applied", {}).get(key, 0))
    st.caption(f"Heat: {METHOD_LABELS[method]} of the true class (where the model's decision is sensitive). "
               "Hatched red: marked squares.")


@dataclass
class ReviewAsk:
    """One thing asked for in the review's tool column: "undo", "clear", "set" (``squares``) or "next"."""

    kind: str
    squares: list[int] = field(default_factory=list)


def review_tools(pending, current: int, sal: np.ndarray, method: str, top_percent: float) -> ReviewAsk | None:
    """The saliency method, Undo, Clear, the "outside the top x%" rule and Next image: what was
    pressed (the rule's warning is drawn here when it would mark every square or none)."""
    marked = pending.squares(current)
    st.selectbox("Saliency", list(METHODS), index=list(METHODS).index(method),
                 format_func=lambda m: METHOD_LABELS.get(m, m), key="grid-method")
    c1, c2 = st.columns(2)
    if c1.button("Undo", key="grid-undo", disabled=not pending.undo.get(str(current)), width="stretch"):
        return ReviewAsk("undo")
    if c2.button("Clear", key="grid-clear", disabled=not marked, width="stretch"):
        return ReviewAsk("clear")
    top = st.slider("Top x% of the saliency", 1, 50, value=int(top_percent), key="grid-top")
    if st.button(f"Mark all squares outside the top {top}%", key="grid-outside-top", width="stretch",
                 help="Marks every square that holds none of the most salient pixels of the map shown "
                      "(not when that would be every square or none: the page says so instead)."):
        rule = outside_top_marks(sal, pending.n, top)
        if rule.message is None:
            return ReviewAsk("set", list(rule.squares))
        with st.container(key="grid-outside-top-warning"):
            st.warning(rule.message, icon=":material/warning:")
    if st.button("Next image", key="grid-next", width="stretch", disabled=len(pending.ids) < 2):
        return ReviewAsk("next")
    return None


def review_foot(pending) -> str | None:
    """Continue (with how many marked images), Skip, and the time and clicks spent: "continue",
    "skip" or None."""
    images_marked = sum(1 for i in pending.ids if pending.squares(i))
    c1, c2, c3 = st.columns([2, 1, 2])
    go_on = c1.button(f"Continue: train with {images_marked} marked image{plural(images_marked)}",
                      type="primary", key="grid-continue", width="stretch")
    skip = c2.button("Skip", key="grid-skip", width="stretch", help="Resume without feedback for this epoch.")
    c3.caption(f"{time.time() - pending.shown_at:.0f} s on this review · {sum(pending.operations.values())} clicks")
    return "continue" if go_on else "skip" if skip else None


def draw_live(job_now, view) -> None:
    """Inside the polling fragment: the chart (loss with the penalty as its own series), the
    penalty's state, and a full rerun when the job starts or stops waiting for a review."""
    waiting = waiting_epoch(job_now)
    if waiting != st.session_state.get("grid-drawn-wait"):
        st.session_state["grid-drawn-wait"] = waiting
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
        st.caption(f"Penalty set: **{len(penalty)}** reviewed image{plural(len(penalty))} · lambda {lam}"
                   f"{last}{made}. The 'grid term' series is the penalty (already times lambda).")
    if view["steps"]:
        st.plotly_chart(training_figure(view), key="grid-chart", width="stretch")


# ---------------------------------------------------------------- results
@st.cache_data(show_spinner=False, max_entries=32)
def report_of(wb_id: str, number: int, checkpoint: str, _data: ImageDataset) -> dict:
    """The bias report of a version's checkpoint (a fresh copy: no shared model changes mode)."""
    from core.models import model_from_checkpoint

    return bias_report(model_from_checkpoint(checkpoint).eval(), _data)


def results_panel(wb: Workbench, busy: bool) -> None:
    """The current version's reviews (table, downloads) and, for a version made here, its
    effect against the version it started from."""
    records = review_records(wb)
    fb = wb.version(wb.current_version).feedback or {}
    origin = (fb.get("grid") or {}).get("from_version")
    with st.container(key="grid-results"):
        if origin is not None and not busy:
            effect_panel(wb, origin)
        anns = reviews_of_version(wb)
        if not records and not anns:
            return
        reviewed = sum(len(r.get("ids", [])) for r in records)
        st.caption(f"v{wb.current_version}: {len(records)} review{plural(len(records))} in its run, "
                   f"{reviewed} images shown, {len(anns)} in its penalty set (a run started from it begins with them)."
                   + (f" {cex_line}" if (cex_line := feedback_line(fb)) else ""))
        rows = review_rows(anns, wb.data.classes)
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


def effect_panel(wb: Workbench, origin: int) -> None:
    """The current version against ``origin``, the version its grid run started from: test
    accuracies (bias-conflicting and -aligned, when known), gradient on the object, shortcut meter."""
    with st.spinner("Measuring both versions on the test split(s)…"):
        before = report_of(wb.id, origin, wb.version(origin).checkpoint, wb.data)
        after = report_of(wb.id, wb.current_version, wb.version(wb.current_version).checkpoint, wb.data)
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
