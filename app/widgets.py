"""Drawing helpers shared by the pages: live training panel, charts, image grids, versions."""
from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st
import torch
from PIL import Image
from plotly.subplots import make_subplots

from core.engine import TrainConfig
from core.jobs import Job, JobBusy
from core.workbench import Workbench

from app.monitor_plots import add_loss_and_accuracy
from app.state import notice


# ----------------------------------------------------------------------------- images
def to_pil(image: torch.Tensor, size: int = 84) -> Image.Image:
    """(C, H, W) in [0, 1] -> PIL image upscaled with NEAREST (small images stay crisp)."""
    arr = (image.clamp(0, 1).mul(255).byte().permute(1, 2, 0).numpy())
    if arr.shape[2] == 1:
        arr = arr[:, :, 0]
    img = Image.fromarray(arr)
    scale = max(1, size // max(img.size))
    return img.resize((img.width * scale, img.height * scale), Image.NEAREST)


def pct(x: float | None) -> str:
    return "–" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{100 * x:.1f}%"


def image_grid(wb: Workbench, ids: np.ndarray, captions: list[str], *, columns: int = 8, key: str = "grid") -> None:
    """Images of ``ids`` in a grid with captions, in a keyed container."""
    with st.container(key=key):
        for start in range(0, len(ids), columns):
            cols = st.columns(columns)
            for col, i, cap in zip(cols, ids[start:start + columns], captions[start:start + columns]):
                col.image(to_pil(wb.data.images[int(i)]), caption=cap, width="stretch")


# ----------------------------------------------------------------------------- charts
def training_figure(view: dict) -> go.Figure:
    """Batch loss (raw and smoothed) per step, and train / validation accuracy per epoch."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("Batch loss", "Accuracy per epoch"))
    add_loss_and_accuracy(fig, view, loss_at=(1, 1), acc_at=(1, 2))
    fig.update_xaxes(title_text="step", row=1, col=1)
    fig.update_xaxes(title_text="epoch", row=1, col=2)
    fig.update_yaxes(title_text="%", row=1, col=2)
    fig.update_layout(height=300, margin=dict(l=10, r=10, t=40, b=10), legend=dict(orientation="h", y=-0.25))
    return fig


def confusion_figure(confusion: np.ndarray, classes: list[str]) -> go.Figure:
    fig = go.Figure(go.Heatmap(z=confusion, x=classes, y=classes, colorscale="Blues", text=confusion,
                               texttemplate="%{text}", hovertemplate="true %{y}, predicted %{x}: %{z}<extra></extra>"))
    fig.update_layout(height=380, margin=dict(l=10, r=10, t=30, b=10), xaxis_title="predicted", yaxis_title="true",
                      yaxis_autorange="reversed", xaxis_type="category", yaxis_type="category")
    return fig


def per_class_figure(per_class: np.ndarray, classes: list[str], overall: float) -> go.Figure:
    fig = go.Figure(go.Bar(x=classes, y=100 * np.nan_to_num(per_class), marker_color="#2563eb",
                           hovertemplate="%{x}: %{y:.1f}%<extra></extra>"))
    fig.add_hline(y=100 * overall, line_dash="dot", annotation_text=f"overall {100 * overall:.1f}%")
    fig.update_layout(height=300, margin=dict(l=10, r=10, t=30, b=10), yaxis_title="accuracy (%)", yaxis_range=[0, 105],
                      xaxis_type="category")
    return fig


# ----------------------------------------------------------------------------- training
def train_panel(wb: Workbench, *, key: str = "train", default_epochs: int = 5,
                start_label: str = "Train", describe: Callable[[TrainConfig], str] | None = None) -> None:
    """Settings, Start/Stop and a live chart of the workbench's training job.

    Training runs in the workbench's background job; a fragment polls it twice a second, and
    one full rerun follows when it ends, so the page shows the new version.
    """
    job = wb.jobs.current
    running = job is not None and job.running
    with st.container(key=f"{key}-panel"):
        with st.form(f"{key}-form", border=False):
            c1, c2, c3, c4 = st.columns([1, 1, 1, 1])
            epochs = c1.number_input("Epochs", 1, 200, default_epochs, key=f"{key}-epochs")
            lr = c2.number_input("Learning rate", 0.0001, 1.0, 0.02, format="%.4f", key=f"{key}-lr")
            batch = c3.selectbox("Batch size", [16, 32, 64, 128, 256], index=2, key=f"{key}-batch")
            c4.write("")
            go_clicked = c4.form_submit_button(start_label, type="primary", disabled=running, width="stretch",
                                               key=f"{key}-start")
        if go_clicked:
            cfg = TrainConfig(epochs=int(epochs), lr=float(lr), batch_size=int(batch), seed=int(time.time()) % 10_000,
                              device=wb.settings.get("device", "cpu"))
            try:
                wb.start_training(cfg, description=describe(cfg) if describe else f"trained {cfg.epochs} epochs (lr {cfg.lr:g})")
            except (JobBusy, ValueError) as exc:
                st.error(str(exc))
            else:
                st.session_state[f"{key}-watching"] = True
                st.rerun()
        live_job(wb, key)


POLL_S = 0.8  # the chart updates more than once a second without keeping a 2-core machine busy
# redrawing it (the browser often shares the machine with the server in demos and tests)


def job_status(job: Job, view: dict, key: str, *, pausable: bool = False) -> None:
    """Progress line with Stop (and Pause/Resume when ``pausable``) while a job runs; the
    outcome when it ended."""
    with st.container(key=f"{key}-status"):
        if view["status"] in ("running", "paused"):
            paused = view["status"] == "paused" or job.control.paused
            epoch = min(len(view["epochs"]) + 1, view.get("total_epochs") or 10**9)
            text = (f"{'Paused' if paused else 'Training'}: step {view['done_steps']} / {view['total_steps']}, epoch {epoch}"
                    + (f", loss {view['steps'][-1][1]:.4f}" if view["steps"] else "") + f" ({view['description']})")
            cols = st.columns([4, 1, 1] if pausable else [4, 1])
            cols[0].progress(view["progress"], text=text)
            if pausable:
                if paused:
                    if cols[1].button("Resume", key=f"{key}-resume", width="stretch"):
                        job.control.resume()
                elif cols[1].button("Pause", key=f"{key}-pause", width="stretch"):
                    job.control.pause()
            if cols[-1].button("Stop", key=f"{key}-stop", width="stretch"):
                job.stop()
                job.control.resume()  # a paused job must wake up to stop
        elif view["status"] == "failed":
            st.error(f"Training failed: {view['error']}. The model is unchanged.")
        elif job.result is not None:
            v = job.result
            st.success(f"{'Stopped' if view['status'] == 'stopped' else 'Finished'}: version v{v.number}, "
                       f"test accuracy {pct(v.metrics.get('test_acc'))} ({view['done_steps']} steps, {view['elapsed']:.1f}s).")


def live_job(wb: Workbench, key: str, draw: Callable[[Job | None, dict | None], None] | None = None, *,
             pausable: bool = False) -> None:
    """A fragment that polls the workbench's current job every POLL_S seconds while it runs:
    its status, then ``draw(job, view)`` (default: the loss and accuracy chart); one full
    rerun when a job this session watches ends."""
    job = wb.jobs.current
    running = job is not None and job.running

    @st.fragment(run_every=POLL_S if running else None)
    def live() -> None:
        job = wb.jobs.current
        view = job.view() if job is not None else None
        if view is not None:
            job_status(job, view, key, pausable=pausable)
        if draw is not None:
            draw(job, view)
        elif view is not None and view["steps"]:
            st.plotly_chart(training_figure(view), key=f"{key}-chart", width="stretch")
        still = view is not None and view["status"] in ("running", "paused")
        if not still and st.session_state.get(f"{key}-watching"):
            st.session_state[f"{key}-watching"] = False
            st.rerun(scope="app")

    live()


# ----------------------------------------------------------------------------- versions
def versions_panel(wb: Workbench, *, key: str = "versions") -> None:
    """Version table with restore, reset to base and checkpoint download."""
    versions = wb.versions()
    rows = [{
        "version": f"v{v.number}",
        "current": "●" if v.number == wb.current_version else "",
        "description": v.description,
        "test acc": pct(v.metrics.get("test_acc")),
        "val acc": pct(v.metrics.get("val_acc")),
        "created": time.strftime("%H:%M:%S", time.localtime(v.created)),
    } for v in versions]
    busy = wb.jobs.current is not None and wb.jobs.current.running
    with st.container(key=key):
        st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")
        numbers = [v.number for v in versions]
        c1, c2, c3, c4 = st.columns([2, 1, 1, 1])
        chosen = c1.selectbox("Version", numbers, index=numbers.index(wb.current_version), format_func=lambda n: f"v{n}",
                              key=f"{key}-pick", label_visibility="collapsed")
        if c2.button("Restore", key=f"{key}-restore", disabled=busy or chosen == wb.current_version, width="stretch"):
            _restore(wb, chosen)
        if c3.button("Reset to base", key=f"{key}-reset", disabled=busy or wb.current_version == 0, width="stretch"):
            _restore(wb, 0)
        c4.download_button("Download", data=lambda: wb.checkpoint_bytes(chosen), file_name=f"steerboard-{wb.id}-v{chosen}.pt",
                           mime="application/octet-stream", key=f"{key}-download", width="stretch", on_click="ignore")
        if busy:
            st.caption("Restoring is disabled while a job runs.")


def _restore(wb: Workbench, number: int) -> None:
    try:
        wb.restore(number)
    except Exception as exc:  # a broken checkpoint file must not lose the current model
        st.error(f"Could not restore v{number}: {exc}. The current model is unchanged.")
        return
    notice(f"Restored v{number}.", "success")
    st.rerun()
