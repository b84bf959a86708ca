"""The accuracy axis of the training result chart (Home, Grid feedback) has distinct tick
labels even when the accuracies differ by hundredths of a point (issue 29: it read
"20.1, 20.1, 20")."""
from __future__ import annotations

import numpy as np
import pytest

from app.widgets import percent_axis, training_figure


def tick_labels(axis) -> list[str]:
    """The labels plotly draws on a linear-tick axis: every tick0 + k * dtick inside the range,
    in the axis's d3 fixed-point format (".Nf" is Python's "{:.Nf}")."""
    assert axis.tickmode == "linear" and axis.range is not None and axis.dtick and axis.tickformat
    fmt = axis.tickformat
    assert fmt.startswith(".") and fmt.endswith("f"), fmt
    lo, hi = axis.range
    first = np.ceil((lo - axis.tick0) / axis.dtick - 1e-9)
    ticks = [axis.tick0 + k * axis.dtick for k in np.arange(first, first + 1000)]
    return [f"{t:{fmt}}" for t in ticks if t <= hi + 1e-9]


def _view(train, val):
    return {"steps": [(i, 1.0 / (i + 1), 0.5, None) for i in range(20)],
            "epochs": [{"epoch": i, "train_acc": t, "val_acc": v, "steps": 10} for i, (t, v) in enumerate(zip(train, val))],
            "freeze_events": []}


def test_accuracies_a_twentieth_of_a_point_apart_get_distinct_ticks():
    fig = training_figure(_view([0.2000, 0.2005], [0.2003, 0.2001]))
    labels = tick_labels(fig.layout.yaxis2)
    assert len(labels) >= 3 and len(set(labels)) == len(labels), labels
    lo, hi = fig.layout.yaxis2.range
    assert lo < 20.0 and hi > 20.05 and hi - lo >= 1.0  # every value inside, a minimum span


@pytest.mark.parametrize("values", [[20.0, 20.05], [99.9, 100.0], [50.0], [10.0, 95.0], [33.3, 33.35, 34.1],
                                    [0.0, 0.04]])
def test_percent_axis_ticks_are_distinct_and_cover_the_values(values):
    axis = percent_axis(values)

    class Axis:
        tickmode, range, tick0, dtick, tickformat = (axis["tickmode"], axis["range"], axis["tick0"], axis["dtick"],
                                                     axis["tickformat"])

    labels = tick_labels(Axis)
    assert 3 <= len(labels) <= 7 and len(set(labels)) == len(labels), labels
    assert axis["range"][0] < min(values) and axis["range"][1] > max(values)


def test_the_monitor_figures_accuracy_axes_get_distinct_ticks():
    """The Training monitor's live figure and the Layer freezing page's epoch-time figure used
    tickformat ".3~g" on their accuracy axes too."""
    from app.monitor_plots import epoch_time_figure, live_figure

    view = _view([0.2000, 0.2005], [0.2003, 0.2001])
    for e in view["epochs"]:
        e.update(lr=0.01, epoch_time=1.0, frozen=[])
    labels = tick_labels(live_figure(view).layout.yaxis2)
    assert len(labels) >= 3 and len(set(labels)) == len(labels), labels
    fig = epoch_time_figure(view["epochs"])
    right = [a for a in (fig.layout[k] for k in fig.layout if k.startswith("yaxis")) if a.title.text == "val accuracy (%)"]
    labels = tick_labels(right[0])
    assert len(labels) >= 3 and len(set(labels)) == len(labels), labels
