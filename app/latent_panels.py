"""The Latent space page's panels: the update settings, the map with its selection, the drag
canvas, the move list and the result window. They draw and hand back what was pressed; the
page (and the study's latent condition, for the canvas) turns that into moves."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

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
    map_figure,
    object_centre,
    result_figure,
    selected_ids,
)
from app.widgets import metric_delta, pct, to_pil
from core.feedback.latent.loss import VARIANTS, Move, MoveList, candidates
from core.feedback.latent.workflow import LatentView, Progress, UpdateSettings, moved_counts
from core.session.workbench import Workbench

# plotly's own zoom and pan are left out: Streamlit redraws the chart from scratch after every
# move, which would undo them; the page's zoom is kept instead
MAP_CONFIG = {"modeBarButtonsToRemove": ["zoom2d", "pan2d", "zoomIn2d", "zoomOut2d", "autoScale2d", "resetScale2d"],
              "scrollZoom": False}


def plural(n: int, word: str = "") -> str:
    """``"s"`` unless ``n`` is 1 (after ``word``, when given)."""
    return word + ("s" if n != 1 else "")


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


def update_settings(wb: Workbench, view: LatentView, branch) -> UpdateSettings:
    """The "Update settings" expander (fine-tune parameters, the loss variant, and how well
    the projection branch fits), as the settings an Update runs with."""
    with st.expander("Update settings", expanded=False):
        c1, c2, c3, c4, c5 = st.columns(5)
        d = UpdateSettings()
        epochs = c1.number_input("Epochs", 1, 3, d.train.epochs, key="lat-epochs",
                                 help="The paper fine-tunes for 1-3 epochs.")
        lr = c2.number_input("Learning rate", 0.001, 0.5, d.train.lr, format="%.3f", key="lat-lr")
        momentum = c3.number_input("Momentum", 0.0, 0.99, d.train.momentum, key="lat-momentum")
        w_cls = c4.number_input("w_cls", 0.0, 1.0, d.w_cls, key="lat-wcls", help="Weight of the classification loss.")
        w_dis = c5.number_input("w_dis", 0.0, 10.0, d.w_dis, key="lat-wdis",
                                help="Weight of the distance loss on moved points.")
        variant = st.radio("Variant", list(VARIANTS), horizontal=True, key="lat-variant",
                           help="lifted (default): no labels; the 2D distance to the target plus a pull of the "
                                "features toward the mean features of the points around the target. paper: only the "
                                "2D distance; labels are not used. implied-label: also cross-entropy toward the class "
                                "whose region each point was moved into.")
        evr = branch.explained_variance_ratio.tolist()
        st.caption(f"Projection branch fidelity on the pool split: R² = {view.r2:.3f} against its PCA targets. "
                   f"The two axes show {100 * sum(evr):.0f}% of the feature variance "
                   f"({100 * evr[0]:.0f}% + {100 * evr[1]:.0f}%).")
    train = replace(d.train, epochs=int(epochs), lr=float(lr), momentum=float(momentum),
                    device=wb.settings.get("device", "cpu"))
    return UpdateSettings(train, w_cls=float(w_cls), w_dis=float(w_dis), variant=variant)


@dataclass
class Shown:
    """Which points the map draws (view indices): all mistakes, then others up to the count
    asked for, and every moved one; ``highlight``: the candidates, when they are shown."""

    shown: np.ndarray
    wrong: np.ndarray
    moved: list[int]
    highlight: np.ndarray | None


def map_controls(view: LatentView, drawn: MoveList) -> tuple[str, Shown]:
    """The tool, "Points shown" and "Show candidates" row, and the points it picks."""
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
    return tool, Shown(shown, wrong_idx, moved_idx, highlight)


def stale_panel(moves: MoveList, view: LatentView, busy: bool) -> tuple[bool, bool]:
    """The warning about moves made on another version, with its (Keep, Discard) buttons."""
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
    return keep, drop


def map_chart(view: LatentView, classes: list[str], drawn: MoveList, points: Shown, tool: str, *,
              key: str, zoom: dict | None) -> tuple[list[int], bool]:
    """The selectable map (in the page's zoom) and, when zoomed, "Show all points": the ids
    selected on it and whether that button was pressed."""
    fig = map_figure(view, classes, drawn, points.shown, highlight=points.highlight,
                     dragmode="lasso" if tool == "lasso" else "select", ranges=zoom)
    with st.container(key="lat-map"):  # (the key tests and styles know it by)
        event = st.plotly_chart(fig, key=key, on_select="rerun", selection_mode=("points", "box", "lasso"),
                                width="stretch", config=MAP_CONFIG)
    zoom_out = bool(zoom) and st.button("Show all points", key="lat-zoom-out", icon=":material/zoom_out_map:",
                                        help="Back to the whole projection.")
    return selected_ids(event), zoom_out


@dataclass
class SelectionAsk:
    """What was pressed under a selection: zoom to it, move it to ``target``'s centroid, or
    move it by (``dx``, ``dy``)."""

    sel_i: list[int]
    zoom_in: bool = False
    to_centroid: bool = False
    target: str = ""
    by_offset: bool = False
    dx: float = 0.0
    dy: float = 0.0


def selection_panel(wb: Workbench, view: LatentView, selected: list[int], *, locked: bool) -> SelectionAsk | None:
    """The selected points (count, thumbnails) and what to do with them; ``locked``: the
    move buttons are off (a job runs, or moves of another version wait). None: no selection."""
    classes = wb.data.classes
    with st.container(key="lat-selection"):
        if not selected:
            st.caption("Box- or lasso-select points (switch the tool above), then move them to a class centroid "
                       "or by an offset, or zoom to them. Double-click the chart to clear the selection.")
            return None
        idx = view.index_of()
        ask = SelectionAsk([idx[e] for e in selected if e in idx])
        n_wrong = int(view.wrong[ask.sel_i].sum())
        # one row that wraps: the button keeps its whole label (a quarter-width column cut it
        # to "Zoom t…"), and on a narrow page it moves below the count
        with st.container(horizontal=True, vertical_alignment="center", key="lat-selection-head"):
            st.markdown(f"**{len(selected)} selected**, {n_wrong} misclassified.", width="content")
            ask.zoom_in = st.button("Zoom to selection", key="lat-zoom-in", icon=":material/zoom_in:", width="content",
                                    help="Show only this part of the projection; the zoom stays while you move points.")
        # rows that wrap (not fixed columns): labels and captions stay whole on a narrow page
        with st.container(horizontal=True, gap="small", key="lat-selection-images"):
            for i in ask.sel_i[:16]:
                st.image(to_pil(wb.data.images[int(view.ids[i])]), width=48,
                         caption=f"{classes[view.labels[i]]}→{classes[view.preds[i]]}")
        with st.container(horizontal=True, vertical_alignment="bottom", key="lat-centroid-row"):
            ask.target = st.selectbox("Target class", classes, key="lat-target-class", width=200,
                                      index=int(np.bincount(view.labels[ask.sel_i]).argmax()))
            ask.to_centroid = st.button("Move to its centroid", key="lat-move-centroid", type="primary",
                                        disabled=locked, width="content")
        with st.container(horizontal=True, vertical_alignment="bottom", key="lat-offset-row"):
            ask.dx = st.number_input("dx", value=0.0, step=0.25, key="lat-dx", width=120)
            ask.dy = st.number_input("dy", value=0.0, step=0.25, key="lat-dy", width=120)
            ask.by_offset = st.button("Move by offset", key="lat-move-offset",
                                      disabled=locked or (ask.dx == 0 and ask.dy == 0), width="content")
    return ask


def drag_points(view: LatentView, points: Shown) -> list[int]:
    """The "Draggable points" choice: up to 40 of the mistakes, the candidates or the moved."""
    which = st.radio("Draggable points", ["misclassified", "candidates", "moved"], horizontal=True, key="lat-drag-set")
    pool = {"misclassified": list(points.wrong), "moved": points.moved,
            "candidates": list(points.highlight) if points.highlight is not None else list(points.shown[candidates(
                view.coords[points.shown], view.probs[points.shown], view.labels[points.shown])["uncertain"]])}[which]
    return [int(i) for i in pool][:40]


def drag_canvas(view: LatentView, moves: MoveList, shown: np.ndarray, drag_idx: list[int], *, container: str,
                key: str, on_change: Callable[[], None], before: Callable[[], None] | None = None,
                ) -> tuple[CanvasFrame, list[tuple[float, float]]]:
    """The drag canvas: the map as a picture, the ``drag_idx`` points as circles to drag;
    ``on_change`` reads the drops. Returns the frame and the circles' starting centres (px);
    ``before`` draws what goes above the canvas."""
    frame = CanvasFrame.around(view.coords[shown])
    drawing = draggable_drawing(view, frame, moves, drag_idx)
    start_px = [object_centre(o) for o in drawing["objects"]]
    if before is not None:
        before()
    # a fixed-size drawing: shrunk to fit a column narrower than it (half a 1000 px window cut it)
    st.html(f"<style>{canvas_fit_css(container, frame.width)}</style>")
    with st.container(key=container):
        st_canvas(background_image=canvas_background(view, frame, moves, set(drag_idx)), initial_drawing=drawing,
                  drawing_mode="point", width=frame.width, height=frame.height, point_display_radius=0,
                  stroke_width=1, key=key, on_change=on_change, update_streamlit=True)
    return frame, start_px


def moves_table(moves: MoveList, view: LatentView, classes: list[str], stale: bool) -> None:
    """The count of moves and, when there are any, their table."""
    st.markdown(f"**Moves: {len(moves)}**")
    if moves.moves:
        idx = view.index_of()
        st.dataframe(pd.DataFrame([{
            "image": e, "true": classes[view.labels[idx[e]]] if e in idx else "?",
            "predicted": classes[view.preds[idx[e]]] if e in idx else "?",
            ("from (on v%d)" % moves.version if stale else "from"): f"({m.source[0]:.2f}, {m.source[1]:.2f})",
            "to": f"({m.target[0]:.2f}, {m.target[1]:.2f})",
        } for e, m in moves.moves.items()]), hide_index=True, width="stretch", height=min(35 * (len(moves) + 1) + 3, 250))


def move_buttons(moves: MoveList, *, busy: bool, stale: bool, start_version: int) -> dict[str, bool]:
    """Undo, Redo, Clear, Update and Reset in one row: which was pressed."""
    with st.container(horizontal=True, key="lat-move-buttons"):  # wraps on a narrow page, labels stay whole
        return {
            "undo": st.button("Undo", key="lat-undo", disabled=busy or not moves.undo_stack),
            "redo": st.button("Redo", key="lat-redo", disabled=busy or not moves.redo_stack),
            "clear": st.button("Clear", key="lat-clear", disabled=busy or stale or not moves.moves),
            "update": st.button("Update", key="lat-update", type="primary", disabled=busy or stale or not moves.moves,
                                help=f"Keep or discard the moves made on v{moves.version} first." if stale else None),
            "reset": st.button(f"Reset to v{start_version}", key="lat-reset", disabled=busy,
                               help=f"Back to v{start_version}, the model version this page started from; "
                                    "clears the moves and the result."),
        }


def applied_moves_note(last: dict, start_version: int) -> None:
    """Why Undo cannot take back the moves the last Update applied, and what can."""
    # the moves an Update applied are that version's history: Undo never brings them back
    # onto the new projection (their coordinates are the old one's)
    back = f"restore v{last['version_before']} in Home's version table" if "version_before" in last \
        else "restore the version before it in Home's version table"
    n_applied = len(last.get("moved", []))
    st.caption(f"**Undo** takes back only moves not yet applied. The last Update's {n_applied} "
               f"move{' is' if n_applied == 1 else 's are'} part of v{last['version']} now; to take that "
               f"update back, {back} "
               f"(or **Reset** to v{start_version}).")


def outcome(row: dict) -> str:
    """A moved image's fate in words: a mistake fixed or not, a right one kept or broken."""
    if row["pred_before"] != row["true"]:
        return "✓ fixed" if row["pred_after"] == row["true"] else "✗ still wrong"
    return "still right" if row["pred_after"] == row["true"] else "✗ now wrong"


def result_window(result: dict | None, current_version: int, view: LatentView, before_view: LatentView | None,
                  classes: list[str]) -> None:
    """The last Update's result on the current version: its map with old -> new lines, its
    metrics and its moved images; a note instead when it was made on another version."""
    with st.container(key="lat-result"):
        if result and result.get("version") != current_version:
            st.caption(f"The last Update made v{result.get('version')}; the current version is v{current_version} "
                       "(restored or trained since), so its result is not drawn on this projection.")
            result = None
        if not result:
            st.info("Press **Update** after moving points: the fine-tuned model's projection appears here, with a line "
                    "from each moved point's old to its new position.")
            return
        shown_moves = MoveList({int(e): Move(int(e), tuple(result["before_coords"][str(e)]), tuple(t))
                                for e, t in result["targets"].items()})
        if before_view is None:  # after a refresh: rebuild the old positions from the saved summary
            before_view = view
        fig = result_figure(before_view, view, classes, shown_moves) if before_view is not view else \
            map_figure(view, classes, shown_moves, np.arange(len(view.ids)), dragmode="pan", uirevision="result")
        st.plotly_chart(fig, key="lat-result-chart", width="stretch")
        result_numbers(result, classes)


def result_numbers(result: dict, classes: list[str]) -> None:
    """The result's metrics, what they leave out, the moved images' table and the per-class
    change of test accuracy."""
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
        st.caption(f"Not counted: {n} moved image{plural(n)} the model already got right "
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
