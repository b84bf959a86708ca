"""Figures of the training-monitor and layer-freezing pages (plotly, no Streamlit)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from app.axes import percent_axis
from app.colors import class_color
from core.monitor.live import FreezeSaving, freeze_changes

# colours of the loss terms' series (classes are coloured by app.colors, the same on every page)
SERIES = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#ca8a04", "#db2777", "#4b5563", "#65a30d"]
MARKER = "#dc2626"  # lines where freezing changed
MAX_POINTS = 400  # per trace: the browser redraws these charts on every poll


def _thin(n: int) -> np.ndarray:
    return np.unique(np.linspace(0, n - 1, min(n, MAX_POINTS)).astype(int))


def _change_label(before: tuple[str, ...], after: tuple[str, ...]) -> str:
    froze = [g for g in after if g not in before]
    thawed = [g for g in before if g not in after]
    parts = ([f"froze {', '.join(froze)}"] if froze else []) + ([f"unfroze {', '.join(thawed)}"] if thawed else [])
    return "; ".join(parts) or "freezing changed"


def tag_levels(xs: list[float], span: float, *, min_gap: float = 0.05, levels: int = 3) -> list[int]:
    """A row (0 = top) for the number tag on each marker line at ``xs`` (ascending): a tag
    closer than ``min_gap`` of the axis ``span`` to the one before goes one row lower (cycling
    over ``levels`` rows), so tags of changes close together do not cover each other."""
    out: list[int] = []
    for i, x in enumerate(xs):
        if i and span > 0 and (x - xs[i - 1]) / span < min_gap:
            out.append((out[-1] + 1) % levels)
        else:
            out.append(0)
    return out


def add_markers(fig: go.Figure, markers: list[tuple[float, str]], *, span: float, row: int | None = None,
                col: int | None = None) -> None:
    """A dotted line at each marker's x, a numbered tag on it at the top of the plot area
    (white box, so the line never crosses text), and the label in the legend as
    "<number>: <label>". Labels no longer sit beside the lines, where the next line or the
    data ran through them."""
    where = {"row": row, "col": col} if row is not None else {}
    rows = tag_levels([x for x, _ in markers], span)
    for k, ((x, label), level) in enumerate(zip(markers, rows), start=1):
        fig.add_vline(x=x, line_dash="dot", line_color=MARKER, **where)
        fig.add_annotation(x=x, y=1 - 0.11 * level, yref="y domain" if where else "paper", yanchor="top", text=f"<b>{k}</b>",
                           showarrow=False, font=dict(color=MARKER, size=11), bgcolor="white", bordercolor=MARKER,
                           borderwidth=1, borderpad=1, xanchor="center", **where)
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="lines", name=f"{k}: {label}", legendgroup="freezing",
                                 line=dict(color=MARKER, dash="dot", width=2), hoverinfo="skip"), **where)


def integer_epoch_axis(fig: go.Figure, n_epochs: int, **where) -> None:
    """Epoch axes: whole-number ticks only (no 1.5, 2.5), at most about ten of them."""
    fig.update_xaxes(tickmode="linear", tick0=1, dtick=max(1, -(-n_epochs // 10)), tickformat="d", **where)


def step_freeze_markers(view: dict) -> list[tuple[int, str]]:
    """(step, label) of each freezing change during the job (the initial set is no change)."""
    events = view.get("freeze_events", [])
    return [(step + 1, _change_label(tuple(a), tuple(b))) for (_, a), (step, b) in zip(events, events[1:])]


def add_loss_and_accuracy(fig: go.Figure, view: dict, *, loss_at: tuple[int, int], acc_at: tuple[int, int]) -> None:
    """Batch loss per step (raw and smoothed, thinned) and train / val accuracy per epoch of a
    job's view, into the given subplot cells."""
    steps = view["steps"]
    if steps:
        s = np.array([x[0] for x in steps]) + 1
        loss = np.array([x[1] for x in steps])
        smooth = pd.Series(loss).ewm(alpha=0.1).mean().to_numpy()
        keep = _thin(len(s))
        fig.add_trace(go.Scatter(x=s[keep], y=loss[keep], mode="lines", name="loss", line=dict(color="#cbd5e1", width=1)), *loss_at)
        mode = "lines+markers" if len(s) < 10 else "lines"  # a line of one point draws nothing
        fig.add_trace(go.Scatter(x=s[keep], y=smooth[keep], mode=mode, name="loss (smoothed)", line=dict(color="#2563eb")), *loss_at)
        # each extra loss term (a feedback kind's) as its own series, where it was non-zero
        names = sorted({k for x in steps if len(x) > 3 and x[3] for k in x[3]})
        for j, name in enumerate(names):
            vals = np.array([(x[3] or {}).get(name, np.nan) if len(x) > 3 else np.nan for x in steps], dtype=float)
            if np.nanmax(np.abs(np.nan_to_num(vals))) > 0:
                fig.add_trace(go.Scatter(x=s[keep], y=vals[keep], mode="lines", name=f"{name} term",
                                         line=dict(color=SERIES[(j + 1) % len(SERIES)], width=1.5)), *loss_at)
    epochs = view["epochs"]
    if epochs:
        e = [x["epoch"] + 1 for x in epochs]
        fig.add_trace(go.Scatter(x=e, y=[100 * x["train_acc"] for x in epochs], mode="lines+markers", name="train acc"), *acc_at)
        if epochs[0]["val_acc"] is not None:
            fig.add_trace(go.Scatter(x=e, y=[100 * x["val_acc"] for x in epochs], mode="lines+markers", name="val acc"), *acc_at)


def live_figure(view: dict) -> go.Figure:
    """Batch loss (raw and smoothed) per step, train/val accuracy, time and learning rate per
    epoch; dotted lines where freezing changed."""
    fig = make_subplots(rows=2, cols=2, subplot_titles=("Batch loss", "Accuracy per epoch", "Time per epoch",
                                                         "Learning rate"), vertical_spacing=0.24)
    add_loss_and_accuracy(fig, view, loss_at=(1, 1), acc_at=(1, 2))
    markers = step_freeze_markers(view)
    if markers:
        add_markers(fig, [(step, f"step {step}, {label}") for step, label in markers],
                    span=max(len(view["steps"]), markers[-1][0], 1), row=1, col=1)
    epochs = view["epochs"]
    if epochs:
        e = [x["epoch"] + 1 for x in epochs]
        fig.add_trace(go.Bar(x=e, y=[x["epoch_time"] for x in epochs], name="s / epoch", marker_color="#94a3b8"), 2, 1)
        lrs = [x["lr"] for x in epochs]
        fig.add_trace(go.Scatter(x=e, y=lrs, mode="lines+markers", name="lr"), 2, 2)
        # from 0 to a little above the largest rate: a constant rate is a flat line, not -1..1
        fig.update_yaxes(range=[0, 1.15 * max(max(lrs), 1e-12)], tickformat=".3~g", row=2, col=2)
        for epoch, before, after in freeze_changes(epochs):
            fig.add_vline(x=epoch + 0.5, line_dash="dot", line_color=MARKER, row=2, col=1)
        for row, col in ((1, 2), (2, 1), (2, 2)):
            integer_epoch_axis(fig, len(epochs), row=row, col=col)
    fig.update_xaxes(title_text="step", row=1, col=1)
    for col in (1, 2):
        fig.update_xaxes(title_text="epoch", row=2, col=col)
    fig.update_xaxes(title_text="epoch", row=1, col=2)
    accuracies = [100 * x[k] for x in view["epochs"] for k in ("train_acc", "val_acc") if x.get(k) is not None]
    fig.update_yaxes(title_text="%", **(percent_axis(accuracies) if accuracies else {}), row=1, col=2)
    fig.update_yaxes(title_text="s", row=2, col=1)
    fig.update_layout(height=520, margin=dict(l=10, r=10, t=40, b=10), legend=dict(orientation="h", y=-0.12))
    return fig


def epoch_time_figure(epochs: list[dict], saving: FreezeSaving | None = None) -> go.Figure:
    """Time per epoch (bars) with validation accuracy (line, right axis) and a numbered
    marker at each epoch where the frozen layers changed (labels in the legend).

    With ``saving`` (see :func:`core.monitor.live.freeze_saving`) the bars say what is
    compared: the epochs before the change and after it in two blues, each side's median as
    a line over its epochs with its interquartile range as a band, and the epochs left out
    (the first of each phase: warm-up, or the change happened during it; the phases between
    the first and the last change) hatched grey."""
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    if epochs:
        e = [x["epoch"] + 1 for x in epochs]
        t = {x["epoch"]: x["epoch_time"] for x in epochs}
        hover = "epoch %{x}: %{y:.2f}s<extra>%{fullData.name}</extra>"
        if saving is None:
            colors = ["#60a5fa" if not x.get("frozen") else "#1e40af" for x in epochs]
            fig.add_trace(go.Bar(x=e, y=[x["epoch_time"] for x in epochs], name="time per epoch (s)", marker_color=colors,
                                 hovertemplate=hover), secondary_y=False)
        else:
            sides = [("before", saving.before, saving.frozen_before, "#60a5fa"),
                     ("after", saving.after, saving.frozen_after, "#1e40af")]
            for side, spread, frozen, color in sides:
                what = ", ".join(frozen) + " frozen" if frozen else "nothing frozen"
                fig.add_trace(go.Bar(x=[i + 1 for i in spread.epochs], y=[t[i] for i in spread.epochs],
                                     name=f"{side}: {what} ({spread.n} epoch{'s' if spread.n != 1 else ''})",
                                     marker_color=color, width=0.8, hovertemplate=hover), secondary_y=False)
                if spread.n:
                    x0, x1 = min(spread.epochs) + 0.5, max(spread.epochs) + 1.5
                    fig.add_shape(type="rect", x0=x0, x1=x1, y0=spread.q1, y1=spread.q3, fillcolor=color, opacity=0.18,
                                  line_width=0, layer="above", secondary_y=False)
                    fig.add_shape(type="line", x0=x0, x1=x1, y0=spread.median, y1=spread.median,
                                  line=dict(color="#0f172a", width=2), layer="above", secondary_y=False)
            if saving.left_out:
                fig.add_trace(go.Bar(x=[i + 1 for i in saving.left_out], y=[t[i] for i in saving.left_out],
                                     name="left out (warm-up, a change in it, or between changes)", marker_color="#cbd5e1",
                                     marker_pattern_shape="/", width=0.8, hovertemplate=hover), secondary_y=False)
            fig.add_trace(go.Scatter(x=[None], y=[None], mode="lines", name="median (band: middle half)",
                                     line=dict(color="#0f172a", width=2), hoverinfo="skip"), secondary_y=False)
        if epochs[0]["val_acc"] is not None:
            fig.add_trace(go.Scatter(x=e, y=[100 * x["val_acc"] for x in epochs], mode="lines+markers",
                                     name="validation accuracy (%)", line=dict(color="#16a34a")), secondary_y=True)
        changes = freeze_changes(epochs)
        add_markers(fig, [(epoch + 0.5, f"in epoch {epoch + 1}: {_change_label(before, after)}")
                          for epoch, before, after in changes], span=len(epochs))
        integer_epoch_axis(fig, len(epochs))
    fig.update_xaxes(title_text="epoch" if saving is not None else "epoch (dark bars: some layers frozen)")
    fig.update_yaxes(title_text="seconds", secondary_y=False, rangemode="tozero")
    val = [100 * x["val_acc"] for x in epochs if x.get("val_acc") is not None]
    fig.update_yaxes(title_text="val accuracy (%)", **(percent_axis(val) if val else {}), secondary_y=True)
    fig.update_layout(height=360, margin=dict(l=10, r=10, t=20, b=10), barmode="overlay",
                      legend=dict(orientation="h", y=-0.22, yanchor="top"))
    return fig


def layer_bars_figure(activation: dict[str, np.ndarray], grad_norm: dict[str, np.ndarray]) -> go.Figure:
    """One row per layer: per-filter mean |activation| (left) and gradient norm (right)."""
    names = list(activation)
    fig = make_subplots(rows=len(names), cols=2, column_titles=["mean |activation| per filter", "gradient norm per filter"],
                        row_titles=names, vertical_spacing=max(0.01, 0.25 / max(len(names), 1)), horizontal_spacing=0.06)
    for r, name in enumerate(names, start=1):
        a, g = activation[name], grad_norm.get(name, np.zeros_like(activation[name]))
        fig.add_trace(go.Bar(y=a, marker_color="#2563eb", hovertemplate=f"{name} filter %{{x}}: %{{y:.3g}}<extra></extra>"), r, 1)
        fig.add_trace(go.Bar(y=g, marker_color="#ea580c", hovertemplate=f"{name} filter %{{x}}: %{{y:.3g}}<extra></extra>"), r, 2)
    fig.update_layout(height=max(260, 95 * len(names)), showlegend=False, margin=dict(l=10, r=60, t=30, b=10), bargap=0.05)
    fig.update_xaxes(showticklabels=False)
    fig.for_each_annotation(lambda a: a.update(font=dict(size=11)))
    return fig


def grad_heatmap_figure(steps: list[int], names: list[str], values: np.ndarray) -> go.Figure:
    """Layer-by-step heatmap of gradient norms (log10), thinned to at most MAX_POINTS steps."""
    fig = go.Figure()
    if values.size:
        keep = _thin(values.shape[1])
        z = np.log10(np.maximum(values[:, keep], 1e-12))
        fig.add_trace(go.Heatmap(z=z, x=np.asarray(steps)[keep] + 1, y=names, colorscale="Viridis",
                                 colorbar=dict(title="log10 |g|"),
                                 hovertemplate="%{y}, step %{x}: 10^%{z:.2f}<extra></extra>"))
    fig.update_layout(height=60 + 28 * len(names), margin=dict(l=10, r=10, t=10, b=10), xaxis_title="step",
                      yaxis=dict(autorange="reversed"))
    return fig


def embedding_figure(coords: np.ndarray, trails: np.ndarray | None, labels: np.ndarray | None, preds: np.ndarray | None,
                     classes: list[str] | None, ids: np.ndarray, *, title: str, dragmode: str = "lasso") -> go.Figure:
    """Points coloured by label (mistakes drawn as x), each with a grey trail over its last
    positions; example/filter ids ride in customdata for the selection. A class has the
    colour it has on every page (:mod:`app.colors`); filters are one colour."""
    fig = go.Figure()
    if trails is not None and trails.shape[1] > 1:
        xs = np.concatenate([np.append(t[:, 0], np.nan) for t in trails])
        ys = np.concatenate([np.append(t[:, 1], np.nan) for t in trails])
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", line=dict(color="rgba(100,116,139,0.35)", width=1),
                                 hoverinfo="skip", showlegend=False, name="trails"))
    groups = np.zeros(len(coords), int) if labels is None else labels
    for c in np.unique(groups):
        m = groups == c
        name = classes[int(c)] if classes is not None else "filters"
        wrong = (preds[m] != labels[m]) if (preds is not None and labels is not None) else np.zeros(m.sum(), bool)
        text = ([f"id {int(i)}<br>label {classes[int(l)]}<br>predicted {classes[int(p)]}"
                 for i, l, p in zip(ids[m], labels[m], preds[m])] if preds is not None and classes is not None
                else [f"filter {int(i)}" for i in ids[m]])
        fig.add_trace(go.Scatter(
            x=coords[m, 0], y=coords[m, 1], mode="markers", name=name, customdata=ids[m].tolist(), text=text,
            hovertemplate="%{text}<extra></extra>",
            marker=dict(color=class_color(int(c)) if classes is not None else SERIES[0], size=[9 if w else 6 for w in wrong],
                        symbol=["x" if w else "circle" for w in wrong], line=dict(width=0)),
        ))
    fig.update_layout(title=title, height=520, margin=dict(l=10, r=10, t=40, b=10), dragmode=dragmode,
                      legend=dict(title="true class" if classes is not None else None),
                      xaxis=dict(showticklabels=False), yaxis=dict(showticklabels=False, scaleanchor="x"))
    return fig
