"""Freeze markers on the monitor and freezing charts: a numbered tag on each dotted line (a
boxed number centred on the line at the top of the plot) and the label in the legend, so no
line runs through a label and labels of close changes do not cover each other."""
from __future__ import annotations

from app.monitor_plots import epoch_time_figure, live_figure, tag_levels


def _view():
    steps = [(s, 2.0 - s / 400, 0.5, None) for s in range(300)]
    events = [(0, ()), (120, ("conv1",)), (126, ("conv1", "conv2")), (250, ("conv1", "conv2", "fc1"))]
    frozen = lambda end: next((f for s, f in reversed(events) if s <= end), ())  # noqa: E731
    epochs = [{"epoch": e, "epoch_time": 2.0, "frozen": frozen(e * 50 + 49), "val_acc": 0.5, "train_acc": 0.5, "lr": 0.02}
              for e in range(6)]
    return {"steps": steps, "epochs": epochs, "freeze_events": events}


def _tags(fig):
    return [a for a in fig.layout.annotations if a.text and a.text.startswith("<b>")]


def test_live_chart_tags_each_line_and_names_the_change_in_the_legend():
    fig = live_figure(_view())
    tags = _tags(fig)
    assert [t.text for t in tags] == ["<b>1</b>", "<b>2</b>", "<b>3</b>"]
    assert [t.x for t in tags] == [121, 127, 251]
    lines = sorted(s.x0 for s in fig.layout.shapes if s.line.dash == "dot" and s.xref == "x")
    assert lines == [121, 127, 251]
    for t in tags:  # centred on its line, boxed, inside the top of the plot: no text beside a line
        assert t.xanchor == "center" and t.yanchor == "top" and t.bgcolor == "white" and t.showarrow is False
    assert [t.y for t in tags] == [1.0, 0.89, 1.0]  # 1 and 2 are 6 steps apart: 2 goes one row down
    legend = [t.name for t in fig.data if t.legendgroup == "freezing"]
    assert legend == ["1: step 121, froze conv1", "2: step 127, froze conv2", "3: step 251, froze fc1"]
    # no other annotation carries a change's text (the old labels sat beside the lines)
    assert not [a for a in fig.layout.annotations if "froze" in (a.text or "")]


def test_epoch_chart_tags_epoch_changes_the_same_way():
    fig = epoch_time_figure(_view()["epochs"])
    tags = _tags(fig)
    assert [(t.text, t.x) for t in tags] == [("<b>1</b>", 2.5), ("<b>2</b>", 5.5)]
    assert all(t.xanchor == "center" and t.bgcolor == "white" for t in tags)
    assert [t.name for t in fig.data if t.legendgroup == "freezing"] == [
        "1: in epoch 3: froze conv1, conv2", "2: in epoch 6: froze fc1"]


def test_tag_levels_step_down_only_for_close_changes():
    assert tag_levels([0, 100, 200], 1000) == [0, 0, 0]
    assert tag_levels([0, 10, 20, 30, 500], 1000) == [0, 1, 2, 0, 0]
