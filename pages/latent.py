"""Latent space (seed 000): move points in a 2D projection of the features (the map); Update
fine-tunes the model toward the moves. The panels are drawn by :mod:`app.latent_panels`; this
page reads the session and turns what is pressed or dragged into moves, saved before shown."""
from __future__ import annotations

import streamlit as st

from app.latent_panels import (applied_moves_note, drag_canvas, drag_points, map_chart, map_controls, move_buttons,
                               moves_table, plural, result_window, selection_panel, stale_panel, update_settings,
                               with_progress)
from app.latent_plots import dropped_moves, zoom_to
from app.page_session import current_job, open_page
from app.state import notice
from app.widgets import IDLE_POLL_S, live_job
from core.feedback.latent.loss import Move, MoveList
from core.feedback.latent.workflow import (PENDING_KEY, RESULT_KEY, centroid_targets, discard, finish_update,
                                           heldout_metrics, keep_on, latent_view, load_moves, load_or_fit_projection,
                                           pending_update, save_moves, start_update)
from core.session.jobs import JobBusy
from core.session.store import VersionRecord
from core.models import CheckpointError

wb, fresh = open_page("lat")
ss = st.session_state
classes = wb.data.classes

st.title("Latent space")
# ---------------------------------------------------------------- state of this page
if fresh:  # first visit, or another workbench: load from disk
    ss["lat-start-version"] = wb.current_version
    ss["lat-chart-n"] = 0
view = ss.get("lat-view")
if "lat-branch" not in ss or view is None or view.version != wb.current_version:
    def fit_branch(progress) -> None:
        ss["lat-branch"] = load_or_fit_projection(wb, progress=progress)

    def project_pool(progress) -> None:
        ss["lat-view"] = latent_view(wb, ss["lat-branch"], progress)

    with_progress(f"Preparing the latent space of v{wb.current_version}",
                  ([] if "lat-branch" in ss else [("projection branch", fit_branch)]) + [("pool split", project_pool)])
    view = ss["lat-view"]
branch = ss["lat-branch"]
if len(view.ids) == 0:
    st.warning(f"The dataset {wb.data.name} has no pool split to show (it is too small); open a larger dataset.")
    st.stop()
job, busy = current_job(wb)
# an Update that made its version is written up before the moves are read: the applied moves
# leave the list, and the version it made is not "another version" for the ones left
pending = wb.get_state(PENDING_KEY)
if pending is not None and not busy and job is not None and job.kind == "latent":
    if isinstance(job.result, VersionRecord) and job.result.number == wb.current_version \
            and wb.current_version != pending["version_before"]:
        if view.version != wb.current_version:  # the version came after this run's view
            def project_new(progress) -> None:
                ss["lat-view"] = latent_view(wb, branch, progress)

            with_progress(f"Projecting v{wb.current_version}", [("pool split", project_new)])
            view = ss["lat-view"]
        finish_update(wb, pending, view)
        ss["lat-chart-n"] += 1
        st.rerun()
    elif job.status in ("failed", "diverged", "stopped"):
        wb.put_state(PENDING_KEY, None)  # no version: the moves stay for another try
moves = ss["lat-moves"] = load_moves(wb, view.version)  # from the store on every run: other tabs may have moved points
# moves made on another version (restored or trained in another tab, or on Home): their sources
# are that version's positions, so they are neither drawn nor applied here until the person
# keeps them on this version or discards them
stale = moves.made_on_other_than(view.version)
drawn = MoveList() if stale else moves


@st.fragment(run_every=IDLE_POLL_S)
def watch_version() -> None:
    """Another tab or Home may make another version current while this tab is idle (a
    restore starts no job, so nothing else tells this tab): the page is drawn again for it."""
    if wb.current_version != ss["lat-view"].version:
        st.rerun(scope="app")


watch_version()


def persist(message: str | None = None) -> None:
    """The move list and its undo history go to the store before the page shows them."""
    save_moves(wb, moves)
    if message:
        notice(message, "success")


def consume_selection() -> None:
    """The selection just acted on is remembered and ignored until the user selects
    something else (the chart keeps one key for the visit)."""
    ss["lat-consumed"] = ss.get("lat-last-selection")


def edit_moves(operation) -> None:
    """Undo, redo or clear: change the list, save it, drop the chart's selection, redraw."""
    operation()
    persist()
    consume_selection()
    st.rerun()


def chart_key() -> str:
    """The map chart's key: a new one after a change the chart must not keep a selection over."""
    return f"lat-chart-{ss['lat-chart-n']}"


def move_to(example_ids: list[int], targets: list[tuple[float, float]]) -> None:
    """Move the points to the targets on the version shown, save, and say so."""
    idx = view.index_of()
    try:
        moves.add([Move(int(e), tuple(map(float, view.coords[idx[int(e)]])), t) for e, t in zip(example_ids, targets)],
                  on=view.version)
    except ValueError as exc:  # the list holds moves of another version: the page asks first
        notice(f"Not moved: {exc}", "warning")
        return
    persist(f"Moved {len(example_ids)} {plural(len(example_ids), 'point')}.")
    consume_selection()


def on_drag() -> None:
    """Canvas callback: circles whose centre moved by more than 2 px become moves."""
    raw = (ss.get("lat-canvas-" + ss.get("lat-canvas-tag", "")) or {}).get("drawing", {}).get("raw") or {}
    ids, targets = dropped_moves(raw, view.ids, ss["lat-drag-idx"], ss["lat-drag-px"], ss["lat-frame"])
    if ids:
        move_to(ids, targets)


def redraw_chart() -> None:
    """A new chart (without the old selection), drawn at once."""
    ss["lat-chart-n"] += 1
    st.rerun()


# ---------------------------------------------------------------- layout
st.caption("Pool examples in a 2D projection of the model's features (colour = predicted class, marker = true class, "
           "outlined = misclassified). Move points to where they belong, then press **Update**: the model is fine-tuned "
           "so that its projection follows (Wei et al., seed 000).")
settings = update_settings(wb, view, branch)

left, right = st.columns(2)
with left:
    st.subheader("Modification window")
    tool, points = map_controls(view, drawn)
    if stale:
        keep, drop = stale_panel(moves, view, busy)
        if keep:
            n_kept = keep_on(moves, view)
            persist(f"Kept {n_kept} {plural(n_kept, 'move')} on v{view.version}, from the points' places "
                    "on it (Undo takes this back).")
            redraw_chart()
        if drop:
            n_stale = len(moves)
            discard(moves, view.version)
            persist(f"Discarded {n_stale} {plural(n_stale, 'move')} made on an earlier version "
                    "(Undo brings them back).")
            redraw_chart()

    tab_select, tab_drag = st.tabs(["Select and move", "Drag a point"], key="lat-tabs")
    with tab_select:
        selected, zoom_out = map_chart(view, classes, drawn, points, tool, key=chart_key(), zoom=ss.get("lat-zoom"))
        if zoom_out:
            ss["lat-zoom"] = None
            st.rerun()
        ss["lat-last-selection"] = tuple(selected)
        if selected and tuple(selected) == ss.get("lat-consumed"):
            selected = []  # already moved (or undone): wait for a new selection
        ask = selection_panel(wb, view, selected, locked=busy or stale)
        if ask is not None and ask.zoom_in:
            ss["lat-zoom"] = zoom_to(view.coords[ask.sel_i])
            consume_selection()
            st.rerun()
        if ask is not None and ask.to_centroid and not stale:
            try:
                move_to(selected, centroid_targets(view, selected, classes.index(ask.target), seed=len(moves)))
            except ValueError as exc:  # no point of that class on the map
                notice(f"Not moved: {exc}.", "warning")
            st.rerun()
        if ask is not None and ask.by_offset and not stale:
            idx = view.index_of()
            move_to(selected, [(float(view.coords[idx[e], 0] + ask.dx), float(view.coords[idx[e], 1] + ask.dy))
                               for e in selected])
            st.rerun()

    with tab_drag:
        drag_idx = drag_points(view, points)
        if stale:
            st.caption("Keep or discard the moves made on the earlier version (above) before dragging points.")
        else:
            ss["lat-drag-idx"] = drag_idx
            ss["lat-canvas-tag"] = f"{view.version}-{ss['lat-drag-set']}-{len(moves.undo_stack)}"
            ss["lat-frame"], ss["lat-drag-px"] = drag_canvas(
                view, drawn, points.shown, drag_idx, container="lat-canvas", key="lat-canvas-" + ss["lat-canvas-tag"],
                on_change=on_drag, before=lambda: st.caption(
                    "Turn on **Edit** in the canvas toolbar, then drag a circle to where it belongs; each drop is "
                    "recorded as a move. Dots are the other points (colour = predicted class)."))

    with st.container(key="lat-moves"):
        moves_table(moves, view, classes, stale)
        pressed = move_buttons(moves, busy=busy, stale=stale, start_version=ss["lat-start-version"])
        for name, operation in (("undo", moves.undo), ("redo", moves.redo), ("clear", moves.clear)):
            if pressed[name]:
                edit_moves(operation)
        if pressed["update"] and not stale:  # a click sent before the page knew of the other version does nothing
            ss["lat-last-before"] = view
            pending = pending_update(view, moves, heldout_metrics(wb), wb.current_version)
            try:
                wb.put_state(PENDING_KEY, pending)  # on disk first: any tab can write the result
                start_update(wb, branch, moves, view, settings)
            except (JobBusy, ValueError) as exc:
                wb.put_state(PENDING_KEY, None)
                st.error(f"Not started: {exc}")
            else:
                st.rerun()
        last = wb.get_state(RESULT_KEY)
        if not moves.undo_stack and last and last.get("version") == wb.current_version:
            applied_moves_note(last, ss["lat-start-version"])
        if pressed["reset"]:
            start = ss["lat-start-version"]
            try:
                wb.restore(start)
            except (CheckpointError, KeyError, OSError) as exc:
                st.error(f"Could not go back to v{start}: {exc}. The current model and the moves are unchanged.")
            else:
                moves.reset_history(on=start)  # no Undo back to moves made on the model just left
                save_moves(wb, moves, **{RESULT_KEY: None})
                notice(f"Reset to v{start}.", "success")
                redraw_chart()

with right:
    st.subheader("Result window")
    live_job(wb, key="lat", kinds=("latent",))
    result_window(wb.get_state(RESULT_KEY), wb.current_version, view, ss.get("lat-last-before"), classes)
