"""What the Layer freezing page says about the saving (app.monitor_widgets.saving_summary) and
how its time-per-epoch chart shows what is compared (app.monitor_plots.epoch_time_figure)."""
from __future__ import annotations

from app.monitor_plots import epoch_time_figure
from app.monitor_widgets import epoch_list, saving_summary
from core.monitor.live import freeze_saving


def _epochs(times, frozen_from):
    return [{"epoch": i, "epoch_time": t, "frozen": ("conv1",) if i >= frozen_from else (), "val_acc": 0.5,
             "train_acc": 0.5, "lr": 0.1} for i, t in enumerate(times)]


def test_summary_gives_medians_spread_and_counts_and_names_what_was_left_out():
    value, delta, text = saving_summary(freeze_saving(_epochs([9.5, 2.2, 2.3, 2.25, 1.9, 1.40, 1.35, 1.38], 4)))
    assert value == "1.38 s"
    assert delta["delta"] == "-39% vs 2.25 s before" and delta["delta_color"] == "inverse"
    assert "2.25 s before (nothing frozen; epochs 2-4, n = 3, middle half 2.23-2.27 s, range 2.20-2.30 s)" in text
    assert "1.38 s after (conv1 frozen; epochs 6-8, n = 3" in text
    assert "Left out: epochs 1, 5 (the first epoch of each phase" in text
    assert "9.5" not in value + delta["delta"]


def test_summary_says_too_few_epochs_instead_of_a_percentage():
    value, delta, text = saving_summary(freeze_saving(_epochs([9.5, 2.2, 1.9, 1.40, 1.35], 2)))
    assert delta["delta"] == "too few epochs to tell" and delta["delta_color"] == "off"
    assert "%" not in delta["delta"]
    assert "(nothing frozen; epoch 2, n = 1)" in text and "No saving shown: too few epochs to tell" in text


def test_epoch_chart_separates_compared_and_left_out_epochs():
    epochs = _epochs([9.5, 2.2, 2.3, 2.25, 1.9, 1.40, 1.35, 1.38], 4)
    fig = epoch_time_figure(epochs, freeze_saving(epochs))
    bars = {t.name: list(t.x) for t in fig.data if t.type == "bar"}
    # one bar width for all: plotly sizes a trace's bars by its own x gaps (epochs 1 and 5: 3.2 wide)
    assert {t.width for t in fig.data if t.type == "bar"} == {0.8}
    assert bars == {"before: nothing frozen (3 epochs)": [2, 3, 4], "after: conv1 frozen (3 epochs)": [6, 7, 8],
                    "left out (warm-up, a change in it, or between changes)": [1, 5]}
    medians = sorted(s.y0 for s in fig.layout.shapes if s.type == "line" and s.y0 == s.y1)
    assert medians == [1.38, 2.25]


def test_epoch_list_joins_runs():
    assert epoch_list((0, 1, 2, 5, 7, 8)) == "1-3, 6, 8-9" and epoch_list(()) == ""
