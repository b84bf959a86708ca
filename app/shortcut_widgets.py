"""The shortcut meter on the pages: accuracy with the backgrounds swapped against plain
accuracy, per version (core/shortcut.py measures it, version_metrics stores it)."""
from __future__ import annotations

from typing import Any

import streamlit as st

from core.data import ImageDataset
from core.shortcut import meter_split, shortcut_meter
from core.session.workbench import SHORTCUT_ROWS, Workbench

from app.widgets import metric_delta

HELP = ("Shortcut meter: accuracy on test images whose background (everything outside the object mask) is swapped "
        "with the background of a test image of another class, against plain accuracy on the same images. A model "
        "that reads the class off the background (a shortcut) loses accuracy under the swap; one that looks at the "
        "object does not.")


def shortcut_help(data: ImageDataset) -> str:
    """The meter's help text, naming the split it runs on."""
    split = meter_split(data)
    where = ("the bias-aligned test copies (on the bias-conflicting test split the background names no class)"
             if split == "test_aligned" else "the test images that have a mask")
    return f"{HELP} Measured on {where}."


@st.cache_resource(show_spinner=False, max_entries=32)
def _measured(wb_id: str, number: int, checkpoint: str, _data: ImageDataset) -> dict[str, Any] | None:
    """The meter of a version made before versions carried it, computed once per server on a
    fresh copy of its checkpoint (so no shared model changes mode)."""
    from core.models import model_from_checkpoint

    meter = shortcut_meter(model_from_checkpoint(checkpoint), _data, max_rows=SHORTCUT_ROWS)
    return None if meter is None else {"plain": meter["plain_acc"] / 100, "swapped": meter["swapped_acc"] / 100,
                                       "rows": meter["rows"]}


def version_shortcut(wb: Workbench, number: int) -> dict[str, Any] | None:
    """``{"plain", "swapped", "rows"}`` (fractions) of version ``number``: from its metrics, or
    computed on the fly for an older version; None when the data has no object masks."""
    if wb.data.masks is None or not wb.data.rows_with_mask().any():
        return None
    record = wb.version(number)
    m = record.metrics or {}
    if m.get("shortcut_swapped_acc") is not None and m.get("shortcut_plain_acc") is not None:
        return {"plain": m["shortcut_plain_acc"], "swapped": m["shortcut_swapped_acc"], "rows": m.get("shortcut_rows")}
    return _measured(wb.id, number, str(record.checkpoint), wb.data)


def points_delta(after: float, before: float | None, suffix: str = "") -> dict[str, Any]:
    """``st.metric`` keyword arguments for a change in percentage points (inputs are fractions),
    with ``suffix`` after it: none without ``before``; grey and without an arrow when it rounds
    to 0.0 (see :func:`app.widgets.metric_delta`)."""
    return metric_delta(None if before is None else 100 * (after - before), suffix=suffix)


def shortcut_line(s: dict[str, Any], data: ImageDataset | None = None) -> str:
    """"accuracy with backgrounds swapped X% vs Y% plain" (and on how many images, given ``data``)."""
    text = f"accuracy with backgrounds swapped **{100 * s['swapped']:.1f}%** vs {100 * s['plain']:.1f}% plain"
    if data is not None and s.get("rows"):
        what = "bias-aligned test images" if meter_split(data) == "test_aligned" else "test images with a mask"
        text += f" on {s['rows']} {what}"
    return text


def shortcut_compare(wb: Workbench, before_v: int, after_v: int, *, key: str) -> None:
    """One row: the meter of ``after_v`` (metric with its change from ``before_v``) and a
    caption with both versions' numbers. Draws nothing when the data has no masks."""
    after = version_shortcut(wb, after_v)
    if after is None:
        return
    same = before_v == after_v
    before = None if same else version_shortcut(wb, before_v)
    with st.container(key=key):
        c1, c2 = st.columns([1, 2], vertical_alignment="center")
        c1.metric("Backgrounds swapped", f"{100 * after['swapped']:.1f}%",
                  **points_delta(after["swapped"], None if before is None else before["swapped"]),
                  help=shortcut_help(wb.data))
        text = f"Shortcut meter, v{after_v}: {shortcut_line(after)}"
        if before is not None:
            text += f"; v{before_v}: {shortcut_line(before)}"
        c2.caption(text + ".")
