"""One attention annotation component, for the Attention page and the study's attention condition:
an image with its Grad-CAM and superpixels to click on (left: look here, right: ignore) or to draw
a polygon around, Undo / Redo / Clear, and CONFIRM, which hands the caller the annotation to save.

The draft (an image's marks before CONFIRM) is a dict: ``pos`` (x, y) points, ``neg`` superpixel
ids, ``undo`` and ``redo`` stacks of (pos, neg), and ``ops``, the draft's **gesture count**: each
click applied and each Clear (a change a person made to the marks; Undo and Redo step back through
them and are not counted). In polygon mode an annotation's ``operations`` is the polygon's
vertices. In click mode it is what the view's ``operations`` names: "gestures" (that count; the
Attention page) or "marks" (the points and regions the annotation keeps; the study, whose own
gesture count comes from its event log and whose annotations.csv reports this as ``marks``).
A caller that logs gestures (the study) gets each one through ``on_gesture`` before the draft changes.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import streamlit as st
import torch
from PIL import Image
from streamlit_drawable_canvas import st_canvas

from app.attention_widgets import polygon_from_canvas, render, scale_for
from app.click_image import click_image, events_after
from core.feedback.attention.loss import AttentionAnnotation

IMAGE_PX = 384  # the annotated picture's larger side, in screen pixels
Gesture = Callable[[str, "dict[str, Any] | None"], None]


def new_draft() -> dict:
    """An image's empty draft (see the module's docstring)."""
    return {"pos": [], "neg": [], "undo": [], "redo": [], "ops": 0}


def change(d: dict, pos: list, neg: list) -> None:
    """One gesture on the draft ``d``: the marks become ``pos``/``neg``, undoable, and counted."""
    d["undo"].append((list(d["pos"]), list(d["neg"])))
    d["redo"].clear()
    d["pos"], d["neg"] = pos, neg
    d["ops"] = d.get("ops", 0) + 1


def draft_summary(d: dict) -> str:
    """'2 points to look at, 1 region to ignore'."""
    p, n = len(d["pos"]), len(d["neg"])
    return f"{p} point{'s' if p != 1 else ''} to look at, {n} region{'s' if n != 1 else ''} to ignore"


def cached_picture(name: str, key: tuple, draw: Callable[[], Image.Image]) -> Image.Image:
    """A rendered picture kept in the session's ``name`` cache per state (version, image, marks,
    opacity...): idle reruns reuse it instead of drawing and encoding it again. Bounded to the last 64."""
    cache = st.session_state.setdefault(name, {})
    if key not in cache:
        if len(cache) >= 64:
            cache.pop(next(iter(cache)))
        cache[key] = draw()
    return cache[key]


@dataclass(frozen=True)
class AnnotationView:
    """What :func:`annotate` draws for one image, and where its state lives.

    ``prefix`` names the widgets (``{prefix}-undo``, ``-redo``, ``-clear``, ``-confirm``, the
    ``-draft`` caption, ``-mode-switch``); ``item_prefix`` the image's own state
    (``{item_prefix}-img-{id}`` the click image, ``-poly-{id}`` the canvas, ``-seen-{id}`` the last
    event applied, ``-poly-points-{id}`` the closed polygon). ``draft`` returns the image's draft
    (read again in callbacks). ``buttons``: the row under the image, by name ("undo", "redo",
    "clear", "confirm"); "" leaves a column for the caller. ``mode_switch``: the 'Left click marks'
    switch and its x hotkey. ``picture_key``: the picture's state apart from the marks, to cache it.
    ``operations``: what a click-mode annotation's ``operations`` counts, "gestures" or "marks"
    (see the module's docstring)."""

    prefix: str
    item_prefix: str
    example_id: int
    image: torch.Tensor
    cam: np.ndarray
    segments: np.ndarray
    label: int
    draft: Callable[[], dict]
    mode: str = "click"
    opacity: float = 0.45
    picture_key: tuple = ()
    on_gesture: Gesture | None = None
    mode_switch: bool = False
    polygon_hint: str | None = None
    caption: Callable[[dict], str] = draft_summary
    buttons: Sequence[str] = ("undo", "redo", "clear", "confirm")
    confirm_label: str = "CONFIRM"
    operations: str = "gestures"

    def key(self, name: str) -> str:
        """This image's state key ``name`` (img, poly, seen, poly-points)."""
        return f"{self.item_prefix}-{name}-{self.example_id}"

    def log(self, kind: str, payload: dict[str, Any] | None = None) -> None:
        """Hand the gesture ``kind`` to ``on_gesture`` (when there is one)."""
        if self.on_gesture is not None:
            self.on_gesture(kind, payload)


@dataclass
class Annotated:
    """What :func:`annotate` gives back: the annotation CONFIRM made (None until pressed; the
    caller saves it), and the button row's columns named "" in ``buttons``, for the caller."""

    annotation: AttentionAnnotation | None
    spare: list = field(default_factory=list)


def take_events(view: AnnotationView) -> None:
    """Apply the events the image component sent (clicks and, with a mode switch, its hotkey)
    that are not applied yet, in order, each once (by its ``n``), each click logged before the
    draft changes. The component's callback calls this before the script body, so a click whose
    rerun a quicker next click interrupts is applied all the same (every event carries the ones
    not acknowledged yet); the body calls it again (AppTest runs no callbacks), finding nothing new."""
    ss, seen = st.session_state, view.key("seen")
    for ev in events_after(ss.get(view.key("img")), ss.get(seen) or 0):
        ss[seen] = max(ss.get(seen) or 0, ev["n"])
        if ev["kind"] == "toggle":
            if view.mode_switch:
                negative = not ss.get(f"{view.prefix}-negative-mode", False)
                ss[f"{view.prefix}-negative-mode"] = negative
                ss[f"{view.prefix}-mode-switch"] = "ignore" if negative else "look here"  # shows the hotkey's mode
            continue
        h, w = view.segments.shape
        x, y = min(max(float(ev["x"]), 0.0), w - 1e-3), min(max(float(ev["y"]), 0.0), h - 1e-3)
        negative = int(ev.get("button", 0)) == 2 or (view.mode_switch and ss.get(f"{view.prefix}-negative-mode", False))
        view.log("click", {"x": x, "y": y, "button": "right" if negative else "left"})
        d = view.draft()
        if negative:
            seg = int(view.segments[int(y), int(x)])
            change(d, list(d["pos"]), [s for s in d["neg"] if s != seg] if seg in d["neg"] else d["neg"] + [seg])
        else:
            change(d, d["pos"] + [(x, y)], list(d["neg"]))


def take_polygon(view: AnnotationView) -> list[tuple[float, float]]:
    """The closed polygon the canvas sent, in image pixels, kept once it changes (each vertex and
    the closing click logged first: the canvas sends nothing before the polygon closes, so each
    vertex says it was timed at the close). The canvas's callback and the body both call it."""
    ss, points_key = st.session_state, view.key("poly-points")
    value = ss.get(view.key("poly"))
    points = polygon_from_canvas(value, scale_for(view.segments.shape, IMAGE_PX))
    if points and points != ss.get(points_key):
        for p in points:
            view.log("polygon_point", {"x": p[0], "y": p[1], "timed_at_close": True})
        view.log("polygon_close", {"vertices": len(points)})
        ss[points_key] = points
    elif not points and value is not None:  # the polygon was deleted on the canvas: nothing to confirm
        ss.pop(points_key, None)
    return ss.get(points_key) or []


def _polygon_canvas(view: AnnotationView) -> None:
    if view.polygon_hint:
        st.caption(view.polygon_hint)
    else:
        st.space("small")  # the canvas's toolbar sits above it and would cover the line above
    bg = render(view.image, view.cam, size=IMAGE_PX, opacity=view.opacity, segments=view.segments)
    st_canvas(background_image=bg, drawing_mode="polygon", width=bg.width, height=bg.height, stroke_width=2,
              stroke_color="#2563eb", fill_color="rgba(37, 99, 235, 0.15)", key=view.key("poly"),
              update_streamlit=True, on_change=lambda: take_polygon(view))


def _click_picture(view: AnnotationView, d: dict) -> None:
    ss = st.session_state
    if view.mode_switch:
        switch = f"{view.prefix}-mode-switch"
        ss.setdefault(switch, "ignore" if ss.get(f"{view.prefix}-negative-mode") else "look here")
        mode = st.segmented_control(
            "Left click marks", ["look here", "ignore"], key=switch,
            help="Right click always marks 'ignore'. On a touch screen or keyboard use this switch; with the "
                 "pointer over the image, the x key toggles it.")
        ss[f"{view.prefix}-negative-mode"] = mode == "ignore"
    negative = np.isin(view.segments, d["neg"]) if d["neg"] else None
    picture = cached_picture(
        f"{view.prefix}-pictures", ("work", *view.picture_key, tuple(d["pos"]), tuple(d["neg"])),
        lambda: render(view.image, view.cam, size=IMAGE_PX, opacity=view.opacity, segments=view.segments,
                       positives=d["pos"], negative=negative))
    h, w = view.segments.shape
    click_image(picture, key=view.key("img"), width=picture.width, source_size=(w, h), queued=True,
                on_click=lambda: take_events(view), ack=ss.get(view.key("seen")) or 0)
    with st.container(key=f"{view.prefix}-draft"):
        st.caption(view.caption(d))


def _step_back(view: AnnotationView, d: dict, kind: str) -> None:
    """Undo or Redo: the draft's marks step back (or forward) one gesture."""
    view.log(kind)
    src, dst = (d["undo"], d["redo"]) if kind == "undo" else (d["redo"], d["undo"])
    dst.append((list(d["pos"]), list(d["neg"])))
    d["pos"], d["neg"] = src.pop()
    st.rerun()


def _annotation(view: AnnotationView, d: dict, points: list) -> AttentionAnnotation:
    shape = tuple(view.segments.shape)
    if view.mode == "polygon":
        return AttentionAnnotation(view.example_id, view.label, shape, polygon=tuple(points), mode="polygon",
                                   operations=len(points))
    return AttentionAnnotation.from_masks(view.example_id, view.label, positives=d["pos"],
                                          negative=np.isin(view.segments, d["neg"]),
                                          operations=(len(d["pos"]) + len(d["neg"]) if view.operations == "marks"
                                                      else d.get("ops", 0)))


def annotate(view: AnnotationView) -> Annotated:
    """Draw the image to annotate (click image or polygon canvas) and the button row; the
    annotation when CONFIRM was pressed (the caller saves it, then reruns)."""
    polygon = view.mode == "polygon"
    if polygon:
        _polygon_canvas(view)
        points = take_polygon(view)
    else:
        take_events(view)
        points = []
        _click_picture(view, view.draft())
    d = view.draft()
    out = Annotated(None)
    for name, col in zip(view.buttons, st.columns(len(view.buttons))):
        if name in ("undo", "redo"):
            if col.button(name.capitalize(), key=f"{view.prefix}-{name}", disabled=not d[name], width="stretch"):
                _step_back(view, d, name)
        elif name == "clear":
            if col.button("Clear", key=f"{view.prefix}-clear", disabled=not (d["pos"] or d["neg"]), width="stretch"):
                view.log("clear")
                change(d, [], [])
                st.rerun()
        elif name == "confirm":
            ready = len(points) >= 3 if polygon else bool(d["pos"] or d["neg"])
            if col.button(view.confirm_label, type="primary", key=f"{view.prefix}-confirm", disabled=not ready,
                          width="stretch"):
                out.annotation = _annotation(view, d, points)
        else:
            out.spare.append(col)
    return out
