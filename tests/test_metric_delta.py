"""Metric deltas (issue 29): a change that rounds to 0.0 at the shown precision gets no arrow and
a neutral colour, whatever its sign, and every ``st.metric`` delta on the pages goes through the
one helper that says so (app.widgets.metric_delta)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from app.shortcut_widgets import points_delta
from app.widgets import metric_delta

ROOT = Path(__file__).resolve().parents[1]
NEUTRAL = {"delta_color": "off", "delta_arrow": "off"}


@pytest.mark.parametrize("change", [0.04, -0.04, 0.0, -0.0])
def test_a_change_that_rounds_to_zero_has_no_arrow_and_no_colour(change):
    assert metric_delta(change) == {"delta": "±0.0 pts", **NEUTRAL}


@pytest.mark.parametrize("change, text", [(1.2, "+1.2 pts"), (-1.2, "-1.2 pts")])
def test_a_visible_change_keeps_its_sign_arrow_and_colour(change, text):
    out = metric_delta(change)
    assert out == {"delta": text}  # Streamlit's default colours: green up, red down


def test_precision_unit_suffix_and_lower_is_better():
    assert metric_delta(0.004, decimals=2) == {"delta": "±0.00 pts", **NEUTRAL}
    assert metric_delta(0.006, decimals=2)["delta"] == "+0.01 pts"
    assert metric_delta(-0.4, unit="%", decimals=0, suffix=" vs 1.00 s before") == \
        {"delta": "±0% vs 1.00 s before", **NEUTRAL}
    assert metric_delta(-30, unit="%", decimals=0, lower_is_better=True) == {"delta": "-30%", "delta_color": "inverse"}
    assert metric_delta(None) == {} and metric_delta(float("nan")) == {}


def test_points_delta_goes_through_the_helper():
    assert points_delta(0.2004, 0.2, " vs 20.0% plain") == {"delta": "±0.0 pts vs 20.0% plain", **NEUTRAL}
    assert points_delta(0.1996, 0.2) == {"delta": "±0.0 pts", **NEUTRAL}
    assert points_delta(0.212, 0.2)["delta"] == "+1.2 pts"
    assert points_delta(0.2, None) == {}


def _metric_calls():
    for folder in ("app", "pages"):
        for path in sorted((ROOT / folder).glob("*.py")):
            tree = ast.parse(path.read_text(), filename=str(path))
            for node in ast.walk(tree):
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "metric":
                    yield path.relative_to(ROOT), node


def test_every_metric_delta_on_the_pages_goes_through_the_helper():
    """A third positional argument or a ``delta=`` keyword is a delta the helper never saw
    (a "+0.0 pts" with a green arrow); the only way in is ``**metric_delta(...)`` or
    ``**points_delta(...)`` (or a local function or variable holding one of them, as the freezing
    page's ``saving_summary`` does)."""
    calls = list(_metric_calls())
    assert len(calls) >= 8  # the pages' metrics were found at all
    bad = []
    for path, node in calls:
        if len(node.args) > 2 or any(k.arg in ("delta", "delta_color", "delta_arrow") for k in node.keywords):
            bad.append(f"{path}:{node.lineno}")
    assert not bad, f"metric deltas not made by app.widgets.metric_delta: {bad}"
    spread = [k.value for _, node in calls for k in node.keywords if k.arg is None]
    assert spread and all(isinstance(v, (ast.Call, ast.Name)) for v in spread)  # a Name: a helper's result
