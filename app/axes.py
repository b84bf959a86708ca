"""Plotly axis settings shared by the app's figures (no Streamlit)."""
from __future__ import annotations

import numpy as np


def percent_axis(values, *, min_span: float = 1.0, max_ticks: int = 6) -> dict:
    """Axis settings for percentages whose tick labels are distinct at their precision.

    Plotly's automatic ticks on values a few hundredths apart are 20, 20.05, 20.1; with a
    short format they read "20, 20.1, 20.1". Here the range spans at least ``min_span``
    points around the values (plus a margin), the step is the largest round number (1, 2 or 5
    times a power of ten) giving 3 to ``max_ticks`` ticks, and the format has as many
    decimals as the step needs."""
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=float)
    lo, hi = (float(v.min()), float(v.max())) if len(v) else (0.0, 100.0)
    if hi - lo < min_span:
        mid = (lo + hi) / 2
        lo, hi = mid - min_span / 2, mid + min_span / 2
    margin = 0.08 * (hi - lo)
    # the widened window stays inside 0-100 % (but for its margin) when the values do
    shift = max(0.0, min(lo, 100.0 - (hi - lo))) - lo if len(v) and v.min() >= 0 and v.max() <= 100 else 0.0
    lo, hi = lo + shift - margin, hi + shift + margin
    exp = int(np.floor(np.log10(hi - lo)))
    steps = sorted((m * 10.0 ** e for e in range(exp - 2, exp + 1) for m in (1, 2, 5)), reverse=True)

    def ticks(step: float) -> int:
        return int(np.floor(hi / step + 1e-9) - np.ceil(lo / step - 1e-9)) + 1

    step = next((s for s in steps if 3 <= ticks(s) <= max_ticks), steps[-1])  # the largest round step with 3+ ticks
    decimals = next(d for d in range(12) if abs(round(step, d) - step) < 1e-9 * step)  # 0.2 -> 1, 0.05 -> 2, 5 -> 0
    return {"range": [lo, hi], "tickmode": "linear", "tick0": 0.0, "dtick": step, "tickformat": f".{decimals}f"}
