"""An image that reports left and right clicks (Streamlit custom components v2, inline JS).

Neither ``st.image`` nor the existing click components deliver right clicks (streamlit-image-
coordinates and the drawable canvas's point mode report the left button only), and the
attention page needs both: left = "look here", right = "ignore this region". The component
shows a PNG given as a data URL, and sends each click as a trigger value
``{"x", "y", "button", "n"}`` with x, y in the image's own pixels (not the displayed size),
``button`` 0 (left) or 2 (right), and ``n`` a number no earlier event had, so two identical
clicks are two events (pages drop an event whose ``n`` they have seen: it is a rerun's
replay). ``n`` grows from the clock, not from a count kept on the element: Streamlit can mount
the component afresh after a rerun, and a count that restarted at 1 there made the page drop
the next click as seen.
Pressing ``x`` while the pointer is over the image sends ``{"toggle": true}`` instead, for the
positive/negative mode switch that touch screens and keyboards use.

A trigger value is one event, and Streamlit keeps only the newest of a component's trigger
values when two requests meet before the script reaches a yield point (two clicks while a
rerun computes), so with ``queued=True`` every event also carries ``queue``: all of this
image's events (clicks and toggles, in order) that the page has not acknowledged, kept in the
browser's window across remounts. The page passes ``ack`` (the highest ``n`` it applied) on
the next draw, and :func:`events_after` gives the events it has not applied yet: a click that
a newer one overtook still reaches the page with the newer one.
"""
from __future__ import annotations

import base64
import io
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import streamlit as st
from PIL import Image

_CSS = """
.sb-click-wrap { position: relative; display: inline-block; line-height: 0; outline: none; }
.sb-click-wrap img { image-rendering: pixelated; cursor: crosshair; border-radius: 4px;
                     box-shadow: 0 0 0 1px rgba(0,0,0,.15); user-select: none; -webkit-user-drag: none; }
.sb-click-wrap:focus img { box-shadow: 0 0 0 2px var(--st-primary-color, #2563eb); }
"""

_JS = """
// window-wide, not module-wide: the module can be evaluated again when Streamlit mounts afresh
const G = (window.__steerboardClickImage = window.__steerboardClickImage || { last: 0, queues: {} });
const nextN = () => (G.last = Math.max(G.last + 1, Date.now()));  // unique even when the element is new
export default function(component) {
  const { data, setTriggerValue, parentElement } = component;
  let wrap = parentElement.querySelector('.sb-click-wrap');
  if (!wrap) {
    wrap = document.createElement('div');
    wrap.className = 'sb-click-wrap';
    wrap.tabIndex = 0;
    const img = document.createElement('img');
    img.draggable = false;
    img.alt = 'annotation workspace';
    wrap.appendChild(img);
    parentElement.appendChild(wrap);
  }
  const img = wrap.querySelector('img');
  img.src = data.src;
  img.style.width = data.width + 'px';
  img.dataset.w = data.w;
  img.dataset.h = data.h;
  const queue = data.queue || null;  // this image's unacknowledged events are sent with every event
  if (queue) {
    const acked = Number(data.ack || 0);
    G.queues[queue] = (G.queues[queue] || []).filter((e) => e.n > acked);
  }
  const emit = (name, ev) => {
    if (queue) {
      const q = (G.queues[queue] = G.queues[queue] || []);
      q.push({ kind: name, ...ev });
      ev = { ...ev, queue: q.slice(-256) };
    }
    wrap.dataset.n = ev.n;
    setTriggerValue(name, ev);
  };
  const send = (e, button) => {
    e.preventDefault();
    const r = img.getBoundingClientRect();
    const fx = (e.clientX - r.left) / r.width, fy = (e.clientY - r.top) / r.height;
    if (fx < 0 || fy < 0 || fx > 1 || fy > 1) return;
    emit('click', { x: fx * Number(img.dataset.w), y: fy * Number(img.dataset.h), button: button, n: nextN() });
  };
  img.onclick = (e) => send(e, 0);
  img.oncontextmenu = (e) => send(e, 2);
  img.onauxclick = (e) => { if (e.button === 1) e.preventDefault(); };
  img.onmouseenter = () => wrap.focus({ preventScroll: true });
  wrap.onkeydown = (e) => {
    if (e.key === 'x' || e.key === 'X') { e.preventDefault(); emit(queue ? 'click' : 'toggle', { toggle: true, n: nextN() }); }
  };
}
"""

_COMPONENT = st.components.v2.component("steerboard_click_image", css=_CSS, js=_JS)


def png_data_url(image: Image.Image | np.ndarray) -> str:
    """A PNG data URL of an RGB image (PIL or uint8 HxWx3)."""
    pil = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image, dtype=np.uint8))
    buf = io.BytesIO()
    pil.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def click_image(image: Image.Image | np.ndarray, *, key: str, width: int = 384, source_size: tuple[int, int] | None = None,
                on_click: Callable[[], None] | None = None, queued: bool = False, ack: int = 0) -> Any:
    """Show ``image`` ``width`` px wide and return the component's result: ``.click`` is the
    click of this rerun (or None) with x, y in ``source_size`` pixels (w, h; default the
    image's own size), ``.toggle`` a press of the mode hotkey. ``on_click`` runs on either
    (Streamlit calls it before the script body, so a rerun that a newer event interrupts has
    applied it already). ``queued``: every event carries the events not yet acknowledged
    (``ack``: the highest ``n`` the page applied; read them with :func:`events_after`), and the
    hotkey arrives as a ``.click`` event with ``toggle`` set."""
    pil = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image, dtype=np.uint8))
    w, h = source_size or pil.size
    callback = on_click or (lambda: None)
    data = {"src": _encoded(pil), "width": int(width), "w": int(w), "h": int(h)}
    if queued:
        data.update(queue=str(key), ack=int(ack))
    return _COMPONENT(data=data, key=key, on_click_change=callback, on_toggle_change=callback)


def _field(value: Any, name: str) -> Any:
    if value is None:
        return None
    return value.get(name) if isinstance(value, Mapping) else getattr(value, name, None)


def events_after(value: Any, after: float) -> list[dict]:
    """The events in a click component's value (its session-state entry or its result) whose
    ``n`` is above ``after``, oldest first, each a dict with ``kind`` ("click" or "toggle"),
    ``n`` and, for a click, ``x``, ``y`` and ``button``. Reads a queued value (every
    unacknowledged event) and a plain one (the last ``click`` and ``toggle``) alike."""
    found: dict[float, dict] = {}
    for name in ("click", "toggle"):
        ev = _field(value, name)
        if not isinstance(ev, Mapping) or ev.get("n") is None:
            continue
        queue = ev.get("queue")
        items = list(queue) if isinstance(queue, (list, tuple)) else []
        items.append({"kind": name, **{k: v for k, v in ev.items() if k != "queue"}})
        for item in items:
            if not isinstance(item, Mapping) or item.get("n") is None:
                continue
            n = float(item["n"])
            if n > after:
                kind = "toggle" if item.get("toggle") or item.get("kind") == "toggle" else "click"
                found[n] = {**{k: v for k, v in item.items() if k != "queue"}, "kind": kind, "n": item["n"]}
    return [found[n] for n in sorted(found)]


_ENCODED: dict[int, tuple[Image.Image, str]] = {}


def _encoded(pil: Image.Image) -> str:
    """The data URL of ``pil``, encoded once per image object (the page caches its pictures,
    so an idle rerun passes the same object again). Bounded to 32 entries; process-wide, but
    keyed and checked by object identity, so sessions never see each other's pictures."""
    hit = _ENCODED.get(id(pil))
    if hit is not None and hit[0] is pil:
        return hit[1]
    if len(_ENCODED) >= 32:
        _ENCODED.pop(next(iter(_ENCODED)))
    url = png_data_url(pil)
    _ENCODED[id(pil)] = (pil, url)
    return url
