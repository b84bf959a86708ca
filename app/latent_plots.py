"""Figures of the latent map (the 2D view of the features): the plotly scatter (select, lasso),
the PNG the drag canvas draws on, and the result window with old -> new lines."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import plotly.graph_objects as go
from PIL import Image, ImageDraw

from app.colors import class_color
from core.feedback.latent.loss import MoveList
from core.feedback.latent.workflow import LatentView

SYMBOLS = ["circle", "square", "diamond", "cross", "x", "triangle-up", "triangle-down", "pentagon", "hexagon", "star",
           "triangle-left", "triangle-right", "hourglass", "bowtie", "circle-cross", "square-x", "diamond-wide", "octagon",
           "star-square", "hexagram"]


def colour(c: int) -> str:
    return class_color(c)  # one class-to-colour map across the app (app/colors.py)


def add_encoding_legend(fig: go.Figure, classes: list[str], *, present_pred: list[int], present_true: list[int]) -> None:
    """One legend entry per class, drawn in the class's colour AND shape, under the title
    "colour = predicted, shape = true" (colour c always means predicted c, shape c always
    means true c), plus one for the outline of mistakes. A click on a class hides the points
    predicted as it. (A trace's own legend entry showed its first point's shape, which
    suggested shapes belonged to the predicted class.)"""
    for j, c in enumerate(sorted(set(present_pred) | set(present_true))):
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name=classes[c], legendgroup=f"pred-{c}",
                                 legendgrouptitle_text="class: colour = predicted, shape = true" if j == 0 else None,
                                 marker=dict(color=colour(c), symbol=SYMBOLS[c % len(SYMBOLS)], size=9)))
    fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name="misclassified (larger, outlined)",
                             legendgroup="wrong", hoverinfo="skip",
                             marker=dict(color="#e5e7eb", size=12, line=dict(color="#111827", width=1.5))))


def map_figure(view: LatentView, classes: list[str], moves: MoveList, shown: np.ndarray, *,
               highlight: np.ndarray | None = None, dragmode: str = "lasso", title: str = "",
               uirevision: str = "latent", ranges: dict[str, list[float]] | None = None) -> go.Figure:
    """Scatter of the pool points ``shown`` (indices into the view): colour = predicted class,
    marker = true class, mistakes larger with a dark outline, moved points drawn at their
    target with a line from where they were. ``customdata`` carries the example id."""
    fig = go.Figure()
    idx_of = view.index_of()
    moved_idx = {idx_of[e] for e in moves.moves if e in idx_of}
    coords = view.coords.copy()
    for e, m in moves.moves.items():
        if e in idx_of:
            coords[idx_of[e]] = m.target
    shown_set = np.asarray(shown)
    for c in range(len(classes)):
        sel = shown_set[view.preds[shown_set] == c]
        if len(sel) == 0:
            continue
        wrong = view.wrong[sel]
        fig.add_trace(go.Scatter(
            x=coords[sel, 0].tolist(), y=coords[sel, 1].tolist(), mode="markers", name=f"pred {classes[c]}",
            legendgroup=f"pred-{c}", showlegend=False,  # the legend's own entries below say what encodes what
            customdata=view.ids[sel].tolist(),
            text=[f"id {view.ids[i]}<br>true {classes[view.labels[i]]}<br>pred {classes[view.preds[i]]} "
                  f"({100 * view.probs[i].max():.0f}%)" + ("<br><b>moved</b>" if i in moved_idx else "") for i in sel],
            hovertemplate="%{text}<extra></extra>",
            marker=dict(color=colour(c), symbol=[SYMBOLS[view.labels[i] % len(SYMBOLS)] for i in sel],
                        size=[12 if w else 7 for w in wrong], opacity=0.85,
                        line=dict(color=["#111827" if w else "rgba(0,0,0,0)" for w in wrong], width=1.5)),
        ))
    add_encoding_legend(fig, classes, present_pred=sorted(set(view.preds[shown_set].tolist())),
                        present_true=sorted(set(view.labels[shown_set].tolist())))
    if moves.moves:
        xs, ys = [], []
        for e, m in moves.moves.items():
            xs += [m.source[0], m.target[0], None]
            ys += [m.source[1], m.target[1], None]
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", name="moves", hoverinfo="skip",
                                 line=dict(color="#111827", width=1, dash="dot")))
    if highlight is not None and len(highlight):
        fig.add_trace(go.Scatter(x=coords[highlight, 0].tolist(), y=coords[highlight, 1].tolist(), mode="markers",
                                 name="candidates", hoverinfo="skip",
                                 marker=dict(size=18, color="rgba(0,0,0,0)", line=dict(color="#f59e0b", width=2.5))))
    fig.update_layout(height=520, margin=dict(l=10, r=10, t=40 if title else 10, b=10), dragmode=dragmode,
                      title=title or None, uirevision=uirevision,
                      legend=dict(orientation="h", y=-0.1, yanchor="top", font=dict(size=11)),
                      xaxis=dict(showgrid=False, zeroline=False), yaxis=dict(showgrid=False, zeroline=False))
    if ranges:  # the page's own zoom (see zoom_to): kept across reruns, unlike plotly's
        fig.update_xaxes(range=list(ranges["x"]))
        fig.update_yaxes(range=list(ranges["y"]))
    return fig


def selected_ids(event) -> list[int]:
    """The example ids of the points a plotly chart's selection ``event`` holds, sorted."""
    points = (event or {}).get("selection", {}).get("points", []) if event else []
    return sorted({int(p["customdata"][0] if isinstance(p.get("customdata"), list) else p["customdata"])
                   for p in points if p.get("customdata") is not None})


def zoom_to(coords: np.ndarray, margin: float = 0.1) -> dict[str, list[float]]:
    """Axis ranges around ``coords`` (n, 2) with a ``margin`` share of their extent on each
    side (at least a small absolute one, so one point is not a zero-width view).

    Streamlit remounts a plotly chart whenever its figure changes (the figure is part of the
    element's identity), which resets plotly's own zoom on every move; ranges the page keeps
    and puts in the figure survive."""
    lo, hi = coords.min(0), coords.max(0)
    pad = np.maximum((hi - lo) * margin, 0.05)
    return {"x": [float(lo[0] - pad[0]), float(hi[0] + pad[0])], "y": [float(lo[1] - pad[1]), float(hi[1] + pad[1])]}


def result_figure(before: LatentView, after: LatentView, classes: list[str], moves: MoveList) -> go.Figure:
    """The new projection, with a line from each moved point's old to its new position and
    a cross at its target."""
    fig = map_figure(after, classes, MoveList(), np.arange(len(after.ids)), dragmode="pan", uirevision="result")
    ib, ia = before.index_of(), after.index_of()
    xs, ys, tx, ty = [], [], [], []
    for e, m in moves.moves.items():
        if e in ib and e in ia:
            xs += [before.coords[ib[e], 0], after.coords[ia[e], 0], None]
            ys += [before.coords[ib[e], 1], after.coords[ia[e], 1], None]
            tx.append(m.target[0])
            ty.append(m.target[1])
    fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", name="old → new", line=dict(color="#111827", width=1.5)))
    fig.add_trace(go.Scatter(x=tx, y=ty, mode="markers", name="targets",
                             marker=dict(symbol="x-thin", size=10, line=dict(color="#dc2626", width=2))))
    return fig


@dataclass
class CanvasFrame:
    """Maps coordinates on the map to canvas pixels and back for the drag canvas."""

    width: int
    height: int
    x0: float
    x1: float
    y0: float
    y1: float
    pad: int = 20

    @classmethod
    def around(cls, coords: np.ndarray, width: int = 460, height: int = 380) -> "CanvasFrame":
        lo, hi = coords.min(0), coords.max(0)
        span = np.maximum(hi - lo, 1e-6)
        lo, hi = lo - 0.05 * span, hi + 0.05 * span
        return cls(width, height, float(lo[0]), float(hi[0]), float(lo[1]), float(hi[1]))

    def to_px(self, xy: np.ndarray) -> np.ndarray:
        xy = np.atleast_2d(xy)
        px = self.pad + (xy[:, 0] - self.x0) / (self.x1 - self.x0) * (self.width - 2 * self.pad)
        py = self.pad + (self.y1 - xy[:, 1]) / (self.y1 - self.y0) * (self.height - 2 * self.pad)
        return np.stack([px, py], 1)

    def to_xy(self, px: float, py: float) -> tuple[float, float]:
        x = self.x0 + (px - self.pad) / (self.width - 2 * self.pad) * (self.x1 - self.x0)
        y = self.y1 - (py - self.pad) / (self.height - 2 * self.pad) * (self.y1 - self.y0)
        return float(x), float(y)


def canvas_fit_css(container_key: str, width: int, smallest: float = 0.4) -> str:
    """CSS that shrinks the drag canvas (a fixed ``width`` px drawing in the container
    ``.st-key-<container_key>``) to fit a narrower column: a container query per 5 % step
    sets CSS ``zoom`` on the component, so layout, toolbar and pointer (fabric scales by the
    drawn size) all follow, and the coordinates the canvas reports stay in canvas pixels.
    A column at least ``width`` wide keeps the canvas at full size."""
    host = f".st-key-{container_key} [data-testid=stBidiComponentIsolated]"
    rules = [f".st-key-{container_key} {{ container-type: inline-size; }}"]
    steps = int(round((1 - smallest) / 0.05))
    for i in range(1, steps + 1):  # widest query first: the tightest one that matches comes last and wins
        k = 1 - 0.05 * i
        rules.append(f"@container (max-width: {int(width * (k + 0.05)) - 1}px) {{ {host} {{ zoom: {k:.2f}; }} }}")
    return "\n".join(rules)


def canvas_background(view: LatentView, frame: CanvasFrame, moves: MoveList, skip: set[int]) -> Image.Image:
    """The map as a picture: every pool point as a dot in its predicted class's colour
    (mistakes outlined), moved points at their targets; ``skip`` (view indices) are left out
    because the canvas draws them as draggable circles."""
    img = Image.new("RGB", (frame.width, frame.height), "white")
    draw = ImageDraw.Draw(img)
    idx_of = view.index_of()
    coords = view.coords.copy()
    for e, m in moves.moves.items():
        if e in idx_of:
            coords[idx_of[e]] = m.target
    px = frame.to_px(coords)
    for i, (x, y) in enumerate(px):
        if i in skip:
            continue
        r = 4 if view.wrong[i] else 2.5
        draw.ellipse([x - r, y - r, x + r, y + r], fill=colour(int(view.preds[i])),
                     outline="#111827" if view.wrong[i] else None)
    return img


def draggable_drawing(view: LatentView, frame: CanvasFrame, moves: MoveList, indices: list[int]) -> dict:
    """Fabric.js objects for the canvas: one circle per draggable point, centred on it."""
    objects = []
    for i in indices:
        e = int(view.ids[i])
        xy = np.array(moves.moves[e].target) if e in moves.moves else view.coords[i]
        (cx, cy), = frame.to_px(xy)
        objects.append({
            "type": "Circle", "originX": "center", "originY": "center", "left": float(cx), "top": float(cy),
            "radius": 7, "fill": colour(int(view.preds[i])), "stroke": "#111827", "strokeWidth": 2,
            "hasControls": False, "lockScalingX": True, "lockScalingY": True, "lockRotation": True,
        })
    return {"version": "6.0.0", "objects": objects}


def object_centre(obj: dict) -> tuple[float, float]:
    """Centre of a fabric circle in canvas pixels, whatever its origin."""
    r = float(obj.get("radius", 0)) * float(obj.get("scaleX", 1))
    sw = float(obj.get("strokeWidth", 0))
    left, top = float(obj["left"]), float(obj["top"])
    ox = {"left": r + sw / 2, "center": 0.0, "right": -(r + sw / 2)}.get(obj.get("originX", "left"), 0.0)
    oy = {"top": r + sw / 2, "center": 0.0, "bottom": -(r + sw / 2)}.get(obj.get("originY", "top"), 0.0)
    return left + ox, top + oy


def dropped_moves(raw: dict, ids_shown, drag_idx, start_px, frame) -> tuple[list[int], list[tuple[float, float]]]:
    """The points a drag canvas's ``raw`` drawing moved: circles whose centre is more than
    2 px from where it started, as (example ids, targets in the projection's coordinates)."""
    objs = [o for o in (raw or {}).get("objects", []) if str(o.get("type", "")).lower() == "circle"]
    ids, targets = [], []
    for obj, i, (sx, sy) in zip(objs, drag_idx, start_px):
        cx, cy = object_centre(obj)
        if abs(cx - sx) > 2 or abs(cy - sy) > 2:
            ids.append(int(ids_shown[i]))
            targets.append(frame.to_xy(cx, cy))
    return ids, targets
