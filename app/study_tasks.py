"""The participant page's latent-editing and grid-feedback conditions (the attention one is in
:mod:`pages.participant`). Each draws the condition's items and turns gestures into calls
on :mod:`core.study.latent` / :mod:`core.study.grid`, which log every gesture before the page
reacts; the drawing reuses the Latent space page's map and canvas (:mod:`app.latent_plots`,
:mod:`app.latent_panels`) and the
Grid feedback page's clickable image (:mod:`app.click_image`, queued clicks acknowledged by
``n``)."""
from __future__ import annotations

import numpy as np
import streamlit as st

from app.attention_widgets import render, render_grid
from app.click_image import click_image, events_after
from app.latent_panels import MAP_CONFIG, drag_canvas
from app.latent_plots import dropped_moves, map_figure, selected_ids
from app.state import get_registry
from app.widgets import canvas_toolbars_visible
from app.study_participant import IMAGE_PX, ss_key
from core.feedback.grid.loss import square_of
from core.study.flow import ParticipantFlow
from core.feedback.grid.workflow import review_maps
from core.study.grid import GridCondition
from core.feedback.latent.workflow import centroid_targets
from core.study.latent import LatentCondition
from core.study.store import StudyError

FINAL = ("done", "failed", "diverged", "stopped")


def default_instructions(cond) -> str:
    """What a latent or grid condition asks, when the design gives no instructions."""
    if isinstance(cond, LatentCondition):
        legend = ("Each dot is an image: its colour is the class the model predicts, its shape the true class, and "
                  "an outline marks a mistake. ")
        if cond.settings.gesture == "drag":
            return (legend + "Turn on **Edit** in the toolbar above the canvas, then drag a circle to where it "
                    "belongs (among the points of its true class): each drop is one move. Press **Done** when "
                    "you have finished; the model then learns from your moves.")
        tool = "a lasso around" if cond.settings.gesture == "lasso" else "a box around"
        return (legend + f"Draw {tool} points that sit among the wrong class, choose the class they belong to and "
                "press **Move to its centroid**: that is one move. Press **Done** when you have finished; the "
                "model then learns from your moves.")
    if cond.settings.marks:
        return ("Each image is one the model gets wrong (or is least sure of); the heat map shows where it looks. "
                "Click the grid squares it must **not** use (background, colour patches: anything that is not the "
                "object); click a square again to unmark it. Then press **Confirm**.")
    return ("Each image is one the model gets wrong (or is least sure of); the heat map shows where it looks. "
            "Look at it, then press **Next**.")


def run(flow: ParticipantFlow, cond, job) -> None:
    """The condition below its instructions: the end of a fine-tune, the items, or the Continue."""
    if job is not None and job.status in FINAL and cond.fine_tune_started():
        cond.finish(expected=flow.index)  # the fine-tuned version (or, when it failed, the model as it was)
        st.rerun()
    if isinstance(cond, LatentCondition):
        latent(flow, cond)
    else:
        grid(flow, cond)


def _start_fine_tune(flow: ParticipantFlow, cond, start) -> None:
    """Fine-tune (a practice round or a condition without items just goes on)."""
    has_items = bool(cond.made() if isinstance(cond, LatentCondition) else cond.confirmed())
    if cond.practice or not has_items:
        cond.finish(expected=flow.index)
        st.rerun()
    try:
        start()
    except (StudyError, ValueError) as exc:  # (a job that cannot start says why; nothing is lost)
        st.error(f"The model could not be updated: {exc}. Press Continue again, or tell the researcher.")
        return
    st.rerun()


def _finished_panel(flow: ParticipantFlow, cond, done: bool, start) -> None:
    interrupted = cond.fine_tune_started()
    st.success("This part is done." if done else "The time for this part is up.")
    if interrupted:
        st.info("The model's update was interrupted (the server restarted). Press Continue to run it again.")
    if st.button("Continue", type="primary", key="study-finish"):
        _start_fine_tune(flow, cond, start)


# ----------------------------------------------------------------------------- latent editing
def _with_progress(title: str, steps) -> None:
    """Run each ``work(progress)`` under one bar that says what core is doing and how far."""
    holder = st.empty()
    with holder.container():
        bar = st.progress(0.0, text=f"{title}…")

        def progress(step: str, done: int, total: int) -> None:
            bar.progress(min(1.0, done / total) if total else 1.0,
                         text=f"{title}: {step} {done:,} / {total:,}" if total > 1 else f"{title}: {step}…")

        for work in steps:
            work(progress)
    holder.empty()


def _latent_map(flow: ParticipantFlow, cond: LatentCondition):
    """The projection and the view of the condition's starting model, computed once per tab."""
    key = ss_key(flow, "lat-view")
    cached = st.session_state.get(key)
    if cached is None or cached[1].version != cond.wb.current_version:
        out = {}
        _with_progress("Preparing the map", [lambda p: out.update(branch=cond.branch(p)),
                                            lambda p: out.update(view=cond.view(out["branch"], p))])
        cached = st.session_state[key] = (out["branch"], out["view"])
    return cached


def latent(flow: ParticipantFlow, cond: LatentCondition) -> None:
    branch, view = _latent_map(flow, cond)
    if len(view.ids) == 0:
        st.error("This dataset has no images to show here. Please tell the researcher; nothing you did was lost.")
        return
    items = cond.items(view)
    made = cond.made()
    item = cond.current_item()
    start = lambda: cond.start_fine_tune(branch, view)  # noqa: E731
    if item is None or flow.condition_finished() or cond.fine_tune_started():  # (started: its job was lost)
        _finished_panel(flow, cond, item is None or cond.fine_tune_started(), start)
        return
    cond.show()  # the first move's clock starts when the map is first drawn (and survives a refresh)
    moves = cond.moves()
    idx = view.index_of()
    shown = np.array(sorted(idx[e] for e in items["shown"] if e in idx), dtype=int)
    classes = cond.wb.data.classes
    with st.container(key="study-latent"):
        st.caption(f"{len(made)} of {cond.budget} moves made · {len(moves)} points moved")
        if cond.settings.gesture == "drag":
            _drag_canvas(flow, cond, view, items, moves, shown)
        else:
            _select_and_move(flow, cond, view, moves, shown, classes, len(made))
    with st.container(key="study-done"):
        if st.button("Done: update the model with my moves", type="primary", key="study-lat-done",
                     disabled=not made, help="Ends this part: the model is fine-tuned toward your moves."):
            _start_fine_tune(flow, cond, start)


def _select_and_move(flow, cond: LatentCondition, view, moves, shown, classes, n_made: int) -> None:
    tool = cond.settings.gesture  # lasso or box
    fig = map_figure(view, classes, moves, shown, dragmode="lasso" if tool == "lasso" else "select")
    chart_key = ss_key(flow, "lat-chart", n_made)  # a new chart after each move: its selection starts empty
    with st.container(key="study-lat-chart"):
        event = st.plotly_chart(fig, key=chart_key, on_select="rerun", selection_mode=(tool,), width="stretch",
                                config=MAP_CONFIG)
    selected = selected_ids(event)
    logged = ss_key(flow, "lat-selected")
    if selected and st.session_state.get(logged) != (chart_key, tuple(selected)):
        cond.select(selected, tool)  # logged before the page shows the selection
        st.session_state[logged] = (chart_key, tuple(selected))
    with st.container(key="study-lat-selection"):
        if not selected:
            st.caption(f"Draw a {tool} around points on the chart to select them.")
            return
        idx = view.index_of()
        sel_i = [idx[e] for e in selected if e in idx]
        st.markdown(f"**{len(selected)} selected**, {int(view.wrong[sel_i].sum())} of them misclassified.")
        with st.container(horizontal=True, vertical_alignment="bottom"):
            target = st.selectbox("They belong to class", classes, key=ss_key(flow, "lat-class", n_made), width=220,
                                  index=int(np.bincount(view.labels[sel_i]).argmax()))
            go = st.button("Move to its centroid", type="primary", key="study-lat-move", width="content")
        if go:
            try:
                cond.move(view, selected, centroid_targets(view, selected, classes.index(target), seed=n_made))
            except ValueError as exc:  # a class with no point on the map, or the moves used up (StudyError)
                st.error(f"Not moved: {exc}.")
                return
            st.rerun()


def _drag_canvas(flow, cond: LatentCondition, view, items, moves, shown) -> None:
    idx = view.index_of()
    drag_idx = [idx[e] for e in items["draggable"] if e in idx]
    canvas_key = ss_key(flow, "lat-canvas", len(cond.made()))  # drawn afresh from the saved moves after each move

    def dropped() -> None:  # the canvas callback: circles whose centre moved by more than 2 px are one move
        raw = (st.session_state.get(canvas_key) or {}).get("drawing", {}).get("raw") or {}
        ids, targets = dropped_moves(raw, view.ids, drag_idx, start_px, frame)
        if ids and cond.current_item() is not None:
            try:
                cond.move(view, ids, targets)  # logged, saved and counted before the page redraws
            except StudyError as exc:
                st.session_state[ss_key(flow, "lat-error")] = str(exc)

    def above() -> None:
        if st.session_state.get(ss_key(flow, "lat-error")):
            st.error(f"Not moved: {st.session_state.pop(ss_key(flow, 'lat-error'))}.")
        canvas_toolbars_visible()  # (the sidebar mounts it on the other pages; participant mode has none)

    frame, start_px = drag_canvas(view, moves, shown, drag_idx, container="study-lat-canvas", key=canvas_key,
                                  on_change=dropped, before=above)
    st.caption("Large circles can be dragged (turn on **Edit** first); small dots are the other images.")


# ----------------------------------------------------------------------------- grid feedback
@st.cache_data(show_spinner=False, max_entries=64)
def _maps(wb_id: str, version: int, ids: tuple[int, ...], method: str):
    wb = get_registry().get(wb_id)
    with wb.lock:
        model = wb.model
    from core.models import for_inference

    shown = review_maps(for_inference(model), wb.data, list(ids), method)  # never switch the shared model's mode
    return shown.maps, shown.predictions


def grid(flow: ParticipantFlow, cond: GridCondition) -> None:
    wb, data = cond.wb, cond.wb.data
    rnd = cond.round()
    current = cond.current()
    if current is None or flow.condition_finished():
        _finished_panel(flow, cond, current is None, cond.start_fine_tune)
        return
    cond.show(current)  # the clock for this image starts at its first showing, and survives a refresh
    ids = [int(i) for i in rnd["ids"]]
    with st.spinner("Computing where the model looks…"):
        maps, preds = _maps(wb.id, wb.current_version, tuple(ids), cond.settings.page.method)
    k = ids.index(current)
    h, w = data.image_shape[1:]
    n = int(rnd["n"])
    s = cond.settings.page
    with st.container(key="study-task"):
        st.markdown(f"Image {k + 1} of {len(ids)}: it shows **{data.classes[int(data.labels[current])]}**; the model "
                    f"says **{data.classes[int(preds[k])]}**.")
        if not cond.settings.marks:
            st.image(render(data.images[current], maps[k], size=IMAGE_PX, opacity=s.opacity), width=IMAGE_PX)
            st.caption("Heat map: where the model's decision is sensitive (input gradient of the true class).")
            if st.button("Next", type="primary", key="study-confirm"):
                cond.confirm(current)  # stored, logged and counted before the next image is drawn
                st.rerun()
            return
        img_key = ss_key(flow, "grid", current)
        _take_clicks(flow, cond, current, img_key, (h, w), n)
        marked = cond.squares(current)
        pic = render_grid(data.images[current], maps[k], n, marked, size=IMAGE_PX, opacity=s.opacity)
        click_image(pic, key=img_key, width=pic.width, source_size=(w, h), queued=True,
                    on_click=lambda: _take_clicks(flow, cond, current, img_key, (h, w), n),
                    ack=st.session_state.get(ss_key(flow, "grid-seen", current)) or 0)
        st.caption(f"{len(marked)} of {n * n} squares marked. Heat map: where the model's decision is sensitive. "
                   "Hatched red: squares it must not use.")
        b1, b2, b3 = st.columns(3)
        if b1.button("Undo", key="study-undo", disabled=not cond.can_undo(current), width="stretch"):
            cond.undo(current)
            st.rerun()
        if b2.button("Clear", key="study-clear", disabled=not marked, width="stretch"):
            cond.clear(current)
            st.rerun()
        if b3.button("Confirm", type="primary", key="study-confirm", width="stretch",
                     help="No square marked is an answer too: the model may use everything in this image."):
            cond.confirm(current)
            st.rerun()


def _take_clicks(flow, cond: GridCondition, current: int, key: str, shape: tuple[int, int], n: int) -> None:
    """Mark or unmark the square under each click the image sent that is not applied yet (by
    its ``n``, each once, in order; logged by the condition before it changes the marks). The
    component's callback calls this before the script body, so a click whose rerun a quicker
    next click interrupts is applied all the same; the body calls it again and finds nothing new."""
    seen = ss_key(flow, "grid-seen", current)
    for ev in events_after(st.session_state.get(key), st.session_state.get(seen) or 0):
        st.session_state[seen] = max(st.session_state.get(seen) or 0, ev["n"])
        if ev["kind"] != "click" or cond.current() != current:
            continue
        cond.toggle(current, square_of(float(ev["y"]), float(ev["x"]), shape, n))
