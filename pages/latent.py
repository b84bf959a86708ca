"""Latent space (seed 000): move points in a 2D projection of the features; Update fine-tunes
the model toward the moves."""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st
from streamlit_drawable_canvas import st_canvas

from app.latent_plots import (
    CanvasFrame,
    canvas_background,
    canvas_fit_css,
    draggable_drawing,
    dropped_moves,
    object_centre,
    result_figure,
    workspace_figure,
    zoom_to,
)
from app.state import current_workbench, notice
from app.widgets import IDLE_POLL_S, live_job, metric_delta, pct, to_pil
from core.feedback.latent.loss import VARIANTS, Move, MoveList, candidates, class_centroids
from core.session.jobs import JobBusy
from core.session.store import VersionRecord
from core.feedback.latent.workflow import (
    PENDING_KEY,
    RESULT_KEY,
    Progress,
    UpdateSettings,
    discard,
    finish_update,
    heldout_metrics,
    keep_on,
    latent_view,
    load_moves,
    load_or_fit_projection,
    moved_counts,
    pending_update,
    save_moves,
    start_update,
)
from core.models import CheckpointError

wb = current_workbench()
ss = st.session_state
classes = wb.data.classes


def with_progress(title: str, steps: list[tuple[str, Callable[[Progress], None]]]) -> None:
    """Run each ``(label, work)`` step, ``work(progress)``, under one status box whose label
    says which step of how many runs and whose bar says what it is doing and how far along
    it is (``progress(step, done, total)`` from core); the box goes away when all are done."""
    holder = st.empty()
    with holder.container():
        with st.status(title, expanded=True) as status:
            bar = st.progress(0.0, text="Starting…")

            def progress(step: str, done: int, total: int) -> None:
                bar.progress(min(1.0, done / total) if total else 1.0,
                             text=f"{step}: {done:,} / {total:,}" if total > 1 else f"{step}…")

            for i, (label, work) in enumerate(steps, 1):
                # expanded again: an update without it clears the field, which collapses the box
                status.update(label=f"{title} (step {i} of {len(steps)}: {label})", expanded=True)
                work(progress)
    holder.empty()


st.title("Latent space")
# ---------------------------------------------------------------- state of this page
if ss.get("lat-wb") != wb.id:  # first visit, or another workbench: load from disk
    for k in [k for k in ss if str(k).startswith("lat-")]:
        del ss[k]
    ss["lat-wb"] = wb.id
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
job = wb.jobs.current
busy = job is not None and job.running
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
moves = ss["lat-moves"] = load_moves(wb)  # from the store on every run: other tabs may have moved points
if moves.version is None and (moves.moves or moves.undo_stack or moves.redo_stack):
    # saved by an older release, without a version: made on the version shown now
    moves.version = view.version
    moves.undo_versions = [view.version if v is None else v for v in moves.undo_versions]
    moves.redo_versions = [view.version if v is None else v for v in moves.redo_versions]
    save_moves(wb, moves)
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


def outcome(row: dict) -> str:
    """A moved image's fate in words: a mistake fixed or not, a right one kept or broken."""
    if row["pred_before"] != row["true"]:
        return "✓ fixed" if row["pred_after"] == row["true"] else "✗ still wrong"
    return "still right" if row["pred_after"] == row["true"] else "✗ now wrong"


def chart_key() -> str:
    return f"lat-chart-{ss['lat-chart-n']}"


def move_to(example_ids: list[int], targets: list[tuple[float, float]]) -> None:
    idx = view.index_of()
    try:
        moves.add([Move(int(e), tuple(map(float, view.coords[idx[int(e)]])), t) for e, t in zip(example_ids, targets)],
                  on=view.version)
    except ValueError as exc:  # the list holds moves of another version: the page asks first
        notice(f"Not moved: {exc}", "warning")
        return
    persist(f"Moved {len(example_ids)} point{'s' if len(example_ids) != 1 else ''}.")
    consume_selection()


def on_drag() -> None:
    """Canvas callback: circles whose centre moved by more than 2 px become moves."""
    raw = (ss.get("lat-canvas-" + ss.get("lat-canvas-tag", "")) or {}).get("drawing", {}).get("raw") or {}
    ids, targets = dropped_moves(raw, view.ids, ss["lat-drag-idx"], ss["lat-drag-px"], ss["lat-frame"])
    if ids:
        move_to(ids, targets)


# ---------------------------------------------------------------- layout
st.caption("Pool examples in a 2D projection of the model's features (colour = predicted class, marker = true class, "
           "outlined = misclassified). Move points to where they belong, then press **Update**: the model is fine-tuned "
           "so that its projection follows (Wei et al., seed 000).")

with st.expander("Update settings", expanded=False):
    c1, c2, c3, c4, c5 = st.columns(5)
    epochs = c1.number_input("Epochs", 1, 3, 2, key="lat-epochs", help="The paper fine-tunes for 1-3 epochs.")
    lr = c2.number_input("Learning rate", 0.001, 0.5, 0.04, format="%.3f", key="lat-lr")
    momentum = c3.number_input("Momentum", 0.0, 0.99, 0.9, key="lat-momentum")
    w_cls = c4.number_input("w_cls", 0.0, 1.0, 0.89, key="lat-wcls", help="Weight of the classification loss.")
    w_dis = c5.number_input("w_dis", 0.0, 10.0, 0.11, key="lat-wdis", help="Weight of the distance loss on moved points.")
    variant = st.radio("Variant", list(VARIANTS), horizontal=True, key="lat-variant",
                       help="lifted (default): no labels; the 2D distance to the target plus a pull of the features "
                            "toward the mean features of the points around the target. paper: only the 2D distance; "
                            "labels are not used. implied-label: also cross-entropy toward the class whose region "
                            "each point was moved into.")
    evr = branch.explained_variance_ratio.tolist()
    st.caption(f"Projection branch fidelity on the pool split: R² = {view.r2:.3f} against its PCA targets. "
               f"The two axes show {100 * sum(evr):.0f}% of the feature variance ({100 * evr[0]:.0f}% + {100 * evr[1]:.0f}%).")

left, right = st.columns(2)
with left:
    st.subheader("Modification window")
    # a row that wraps instead of three fixed columns: at half the page width a third of it
    # cut "Show candidates" to "Show candi…"
    with st.container(horizontal=True, vertical_alignment="bottom", key="lat-controls"):
        tool = st.radio("Tool", ["lasso", "box"], horizontal=True, key="lat-tool", width="content")
        n_pool = len(view.ids)
        n_show = st.number_input("Points shown", min(50, n_pool), n_pool, min(800, n_pool), step=50, key="lat-nshow",
                                 width=140)
        show_cand = st.toggle("Show candidates", key="lat-cand", width="content",
                              help="Least sure (smallest top-2 margin) and points inside another class's region.")
    rng = np.random.default_rng(0)
    wrong_idx = np.where(view.wrong)[0]
    others = np.setdiff1d(np.arange(len(view.ids)), wrong_idx)
    shown = np.concatenate([wrong_idx, rng.permutation(others)[: max(0, int(n_show) - len(wrong_idx))]])
    moved_idx = [view.index_of()[e] for e in drawn.moves if e in view.index_of()]
    shown = np.union1d(shown, moved_idx).astype(int)
    cand = candidates(view.coords[shown], view.probs[shown], view.labels[shown]) if show_cand else None
    highlight = shown[np.union1d(cand["uncertain"], cand["foreign"]).astype(int)] if cand else None

    if stale:
        with st.container(key="lat-stale"):
            n_stale = len(moves)
            st.warning(f"**{n_stale} move{'s were' if n_stale != 1 else ' was'} made on v{moves.version}; the model is "
                       f"now v{view.version}.** Keep or discard {'them' if n_stale != 1 else 'it'} before **Update**.",
                       icon=":material/history:")
            with st.container(horizontal=True, key="lat-stale-buttons"):
                keep = st.button(f"Keep on v{view.version}", key="lat-stale-keep", type="primary", disabled=busy,
                                 help=f"Each move then starts from its point's place on v{view.version}; its target "
                                      "stays. One Undo step.")
                drop = st.button("Discard", key="lat-stale-discard", disabled=busy,
                                 help="Undo brings them back (still made on the old version).")
        if keep:
            n_kept = keep_on(moves, view)
            persist(f"Kept {n_kept} move{'s' if n_kept != 1 else ''} on v{view.version}, from the points' places "
                    "on it (Undo takes this back).")
            ss["lat-chart-n"] += 1
            st.rerun()
        if drop:
            discard(moves, view.version)
            persist(f"Discarded {n_stale} move{'s' if n_stale != 1 else ''} made on an earlier version "
                    "(Undo brings them back).")
            ss["lat-chart-n"] += 1
            st.rerun()

    tab_select, tab_drag = st.tabs(["Select and move", "Drag a point"], key="lat-tabs")
    with tab_select:
        fig = workspace_figure(view, classes, drawn, shown, highlight=highlight, dragmode="lasso" if tool == "lasso" else "select",
                               ranges=ss.get("lat-zoom"))
        with st.container(key="lat-workspace"):
            # plotly's own zoom and pan are left out: Streamlit redraws the chart from scratch after
            # every move, which would undo them; the page's zoom (below) is kept instead
            event = st.plotly_chart(fig, key=chart_key(), on_select="rerun", selection_mode=("points", "box", "lasso"),
                                    width="stretch", config={"modeBarButtonsToRemove": [
                                        "zoom2d", "pan2d", "zoomIn2d", "zoomOut2d", "autoScale2d", "resetScale2d"],
                                        "scrollZoom": False})
        if ss.get("lat-zoom") and st.button("Show all points", key="lat-zoom-out", icon=":material/zoom_out_map:",
                                           help="Back to the whole projection."):
            ss["lat-zoom"] = None
            st.rerun()
        points = (event or {}).get("selection", {}).get("points", []) if event else []
        selected = sorted({int(p["customdata"][0] if isinstance(p.get("customdata"), list) else p["customdata"])
                           for p in points if p.get("customdata") is not None})
        ss["lat-last-selection"] = tuple(selected)
        if selected and tuple(selected) == ss.get("lat-consumed"):
            selected = []  # already moved (or undone): wait for a new selection
        idx = view.index_of()
        with st.container(key="lat-selection"):
            if not selected:
                st.caption("Box- or lasso-select points (switch the tool above), then move them to a class centroid "
                           "or by an offset, or zoom to them. Double-click the chart to clear the selection.")
            else:
                sel_i = [idx[e] for e in selected if e in idx]
                n_wrong = int(view.wrong[sel_i].sum())
                # one row that wraps: the button keeps its whole label (a quarter-width column cut it
                # to "Zoom t…"), and on a narrow page it moves below the count
                with st.container(horizontal=True, vertical_alignment="center", key="lat-selection-head"):
                    st.markdown(f"**{len(selected)} selected**, {n_wrong} misclassified.", width="content")
                    zoom_in = st.button("Zoom to selection", key="lat-zoom-in", icon=":material/zoom_in:",
                                        width="content",
                                        help="Show only this part of the projection; the zoom stays while you move points.")
                if zoom_in:
                    ss["lat-zoom"] = zoom_to(view.coords[sel_i])
                    consume_selection()
                    st.rerun()
                # rows that wrap (not fixed columns): labels and captions stay whole on a narrow page
                with st.container(horizontal=True, gap="small", key="lat-selection-images"):
                    for i in sel_i[:16]:
                        st.image(to_pil(wb.data.images[int(view.ids[i])]), width=48,
                                 caption=f"{classes[view.labels[i]]}→{classes[view.preds[i]]}")
                with st.container(horizontal=True, vertical_alignment="bottom", key="lat-centroid-row"):
                    target_cls = st.selectbox("Target class", classes, key="lat-target-class", width=200,
                                              index=int(np.bincount(view.labels[sel_i]).argmax()))
                    to_centroid = st.button("Move to its centroid", key="lat-move-centroid", type="primary",
                                            disabled=busy or stale, width="content")
                cent = class_centroids(view.coords, view.labels, view.preds, len(classes))
                if to_centroid and not stale:
                    t = tuple(map(float, cent[classes.index(target_cls)]))
                    # a small deterministic spread keeps moved points from landing on one pixel
                    jitter = np.random.default_rng(len(moves)).normal(0, 0.05, (len(selected), 2))
                    move_to(selected, [(t[0] + dx, t[1] + dy) for dx, dy in jitter])
                    st.rerun()
                with st.container(horizontal=True, vertical_alignment="bottom", key="lat-offset-row"):
                    dx = st.number_input("dx", value=0.0, step=0.25, key="lat-dx", width=120)
                    dy = st.number_input("dy", value=0.0, step=0.25, key="lat-dy", width=120)
                    by_offset = st.button("Move by offset", key="lat-move-offset", disabled=busy or stale or (dx == 0 and dy == 0),
                                          width="content")
                if by_offset and not stale:
                    move_to(selected, [(float(view.coords[idx[e], 0] + dx), float(view.coords[idx[e], 1] + dy)) for e in selected])
                    st.rerun()

    with tab_drag:
        which = st.radio("Draggable points", ["misclassified", "candidates", "moved"], horizontal=True, key="lat-drag-set")
        pool = {"misclassified": list(wrong_idx), "moved": moved_idx,
                "candidates": list(highlight) if highlight is not None else list(shown[candidates(
                    view.coords[shown], view.probs[shown], view.labels[shown])["uncertain"]])}[which]
        drag_idx = [int(i) for i in pool][:40]
        if stale:
            st.caption("Keep or discard the moves made on the earlier version (above) before dragging points.")
        else:
            frame = CanvasFrame.around(view.coords[shown])
            drawing = draggable_drawing(view, frame, drawn, drag_idx)
            ss["lat-frame"], ss["lat-drag-idx"] = frame, drag_idx
            ss["lat-drag-px"] = [object_centre(o) for o in drawing["objects"]]
            ss["lat-canvas-tag"] = f"{view.version}-{which}-{len(moves.undo_stack)}"
            st.caption("Turn on **Edit** in the canvas toolbar, then drag a circle to where it belongs; each drop is recorded "
                       "as a move. Dots are the other points (colour = predicted class).")
            # a fixed-size drawing: shrunk to fit a column narrower than it (half a 1000 px window cut it)
            st.html(f"<style>{canvas_fit_css('lat-canvas', frame.width)}</style>")
            with st.container(key="lat-canvas"):
                st_canvas(background_image=canvas_background(view, frame, drawn, set(drag_idx)), initial_drawing=drawing,
                          drawing_mode="point", width=frame.width, height=frame.height, point_display_radius=0,
                          stroke_width=1, key="lat-canvas-" + ss["lat-canvas-tag"], on_change=on_drag, update_streamlit=True)

    with st.container(key="lat-moves"):
        st.markdown(f"**Moves: {len(moves)}**")
        if moves.moves:
            idx = view.index_of()
            st.dataframe(pd.DataFrame([{
                "image": e, "true": classes[view.labels[idx[e]]] if e in idx else "?",
                "predicted": classes[view.preds[idx[e]]] if e in idx else "?",
                ("from (on v%d)" % moves.version if stale else "from"): f"({m.source[0]:.2f}, {m.source[1]:.2f})",
                "to": f"({m.target[0]:.2f}, {m.target[1]:.2f})",
            } for e, m in moves.moves.items()]), hide_index=True, width="stretch", height=min(35 * (len(moves) + 1) + 3, 250))
        with st.container(horizontal=True, key="lat-move-buttons"):  # wraps on a narrow page, labels stay whole
            undo = st.button("Undo", key="lat-undo", disabled=busy or not moves.undo_stack)
            redo = st.button("Redo", key="lat-redo", disabled=busy or not moves.redo_stack)
            clear = st.button("Clear", key="lat-clear", disabled=busy or stale or not moves.moves)
            update = st.button("Update", key="lat-update", type="primary", disabled=busy or stale or not moves.moves,
                               help=f"Keep or discard the moves made on v{moves.version} first." if stale else None)
            reset = st.button(f"Reset to v{ss['lat-start-version']}", key="lat-reset", disabled=busy,
                              help=f"Back to v{ss['lat-start-version']}, the model version this page started from; "
                                   "clears the moves and the result.")
        if undo:
            edit_moves(moves.undo)
        if redo:
            edit_moves(moves.redo)
        if clear:
            edit_moves(moves.clear)
        if update and not stale:  # a click sent before the page knew of the other version does nothing
            settings = UpdateSettings(epochs=int(epochs), lr=float(lr), momentum=float(momentum), w_cls=float(w_cls),
                                      w_dis=float(w_dis), variant=variant, device=wb.settings.get("device", "cpu"))
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
            # the moves an Update applied are that version's history: Undo never brings them back
            # onto the new projection (their coordinates are the old one's)
            back = f"restore v{last['version_before']} in Home's version table" if "version_before" in last \
                else "restore the version before it in Home's version table"
            n_applied = len(last.get("moved", []))
            st.caption(f"**Undo** takes back only moves not yet applied. The last Update's {n_applied} "
                       f"move{' is' if n_applied == 1 else 's are'} part of v{last['version']} now; to take that "
                       f"update back, {back} "
                       f"(or **Reset** to v{ss['lat-start-version']}).")
        if reset:
            try:
                wb.restore(ss["lat-start-version"])
            except (CheckpointError, KeyError, OSError) as exc:
                st.error(f"Could not go back to v{ss['lat-start-version']}: {exc}. The current model and the moves are "
                         "unchanged.")
            else:
                moves.reset_history(on=ss["lat-start-version"])  # no Undo back to moves made on the model just left
                save_moves(wb, moves, **{RESULT_KEY: None})
                notice(f"Reset to v{ss['lat-start-version']}.", "success")
                ss["lat-chart-n"] += 1
                st.rerun()

with right:
    st.subheader("Result window")
    live_job(wb, key="lat", kinds=("latent",))
    result = wb.get_state(RESULT_KEY)
    with st.container(key="lat-result"):
        if result and result.get("version") != wb.current_version:
            st.caption(f"The last Update made v{result.get('version')}; the current version is v{wb.current_version} "
                       "(restored or trained since), so its result is not drawn on this projection.")
            result = None
        if not result:
            st.info("Press **Update** after moving points: the fine-tuned model's projection appears here, with a line "
                    "from each moved point's old to its new position.")
        else:
            shown_moves = MoveList({int(e): Move(int(e), tuple(result["before_coords"][str(e)]), tuple(t))
                                    for e, t in result["targets"].items()})
            before_view = ss.get("lat-last-before")
            if before_view is None:  # after a refresh: rebuild the old positions from the saved summary
                before_view = view
            fig = result_figure(before_view, view, classes, shown_moves) if before_view is not view else \
                workspace_figure(view, classes, shown_moves, np.arange(len(view.ids)), dragmode="pan", uirevision="result")
            st.plotly_chart(fig, key="lat-result-chart", width="stretch")
            counts = moved_counts(result["moved"])  # from the rows: results saved by older releases count alike
            # metrics of their own width in a row that wraps: a third of the column cut the labels off
            with st.container(horizontal=True, gap="medium", key="lat-result-metrics"):
                st.metric("Test accuracy", pct(result["test_acc_after"]), width="content",
                          **metric_delta(100 * (result["test_acc_after"] - result["test_acc_before"]), decimals=2))
                st.metric("Moved mistakes now right", width="content",
                          value=f"{counts['mistakes_fixed']} / {counts['mistakes']}" if counts["mistakes"] else "–",
                          help="Of the moved images the model got wrong before this Update, how many it gets right "
                               "now. Moved images it already got right are not counted here.")
                st.metric("Version", f"v{result['version']}", width="content")
            kept = counts["right_before"] - counts["right_broken"]
            if not counts["mistakes"]:
                st.caption(f"None of the {counts['moved_total']} moved images was misclassified before this Update: the "
                           f"model already got them right; {kept} still right, {counts['right_broken']} wrong now.")
            elif counts["right_before"]:
                n = counts["right_before"]
                st.caption(f"Not counted: {n} moved image{'s' if n != 1 else ''} the model already got right "
                           f"({kept} still right, {counts['right_broken']} wrong now).")
            st.dataframe(pd.DataFrame([{
                "image": r["example_id"], "true": classes[r["true"]], "before": classes[r["pred_before"]],
                "after": classes[r["pred_after"]], "outcome": outcome(r),
                "distance to target": f"{r['dist_before']:.2f} → {r['dist_after']:.2f}",
            } for r in result["moved"]]), hide_index=True, width="stretch",
                height=min(35 * (len(result["moved"]) + 1) + 3, 250))  # no empty rows below a short list
            if result["per_class_change"]:
                # the title as text above the chart: plotly cuts a long title off on a narrow page
                st.markdown("**Per-class test accuracy change (points)**")
                st.plotly_chart(go.Figure(go.Bar(x=classes, y=[100 * (v or 0) for v in result["per_class_change"]],
                                                 marker_color="#2563eb")).update_layout(
                    height=200, margin=dict(l=10, r=10, t=10, b=10), xaxis_type="category"),
                    key="lat-per-class", width="stretch")
