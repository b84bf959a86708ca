"""Training controls shared by the training-monitor and layer-freezing pages: start a
monitored job, pause/resume/stop it, pause after each epoch, and poll it live."""
from __future__ import annotations

import time
from collections.abc import Callable

import streamlit as st
import torch

from core.engine import TrainConfig
from core.jobs import Job, JobBusy
from core.live_monitor import Monitors, monitors_for
from core.workbench import Workbench

from app.state import notice
from app.widgets import pct

POLL_S = 0.8  # same rate as Home's live panel: live, without keeping 2 cores busy redrawing


def probe_sample(wb: Workbench, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ids, images, labels) of a fixed random sample of the pool split (at most ``n``), in
    random order, so its first k rows are a random sample of k."""
    ids = torch.as_tensor(wb.data.ids("pool"), dtype=torch.long)
    g = torch.Generator().manual_seed(seed)
    pick = torch.randperm(len(ids), generator=g)[: int(n)]
    images, labels = wb.data.split("pool")
    return ids[pick], images[pick], labels[pick]


def current_monitors(wb: Workbench) -> tuple[Job | None, Monitors]:
    """The workbench's latest job (running or not) and the monitors it carries."""
    job = wb.jobs.current
    return job, Monitors.of(job.attached if job is not None else [])


PROBE_N = 1000  # pool examples the activation probe follows during training


def training_controls(wb: Workbench, key: str, *, probe_layer: str | None = None, probe_n: int = PROBE_N,
                      default_epochs: int = 10) -> None:
    """Epochs, learning rate, batch size, "pause at the end of each epoch", and Start. The job
    carries per-layer statistics, settle tracking and an activation probe (see core.live_monitor)."""
    job = wb.jobs.current
    running = job is not None and job.running
    frozen = list(wb.settings.get("frozen", []))
    with st.container(key=f"{key}-panel"):
        with st.form(f"{key}-form", border=False):
            c1, c2, c3, c4 = st.columns(4)
            epochs = c1.number_input("Epochs", 1, 500, default_epochs, key=f"{key}-epochs")
            lr = c2.number_input("Learning rate", 0.0001, 1.0, 0.02, format="%.4f", key=f"{key}-lr")
            batch = c3.selectbox("Batch size", [16, 32, 64, 128, 256], index=2, key=f"{key}-batch")
            c4.write("")
            start = c4.form_submit_button("Start training", type="primary", disabled=running, width="stretch",
                                          key=f"{key}-start")
        pause_default = bool(wb.settings.get("pause_at_epoch_end", False))
        st.toggle("Pause at the end of each epoch", value=pause_default, key=f"{key}-pae",
                  on_change=_set_pause_at_epoch_end, args=(wb, key),
                  help="The job stops after each epoch and waits for Resume (the grid-feedback page uses this to "
                       "show mistakes between epochs).")
        if frozen:
            st.caption(f"Frozen from the first step: {', '.join(frozen)} (change on the Layer freezing page).")
    if start:
        cfg = TrainConfig(epochs=int(epochs), lr=float(lr), batch_size=int(batch), seed=int(time.time()) % 10_000,
                          device=wb.settings.get("device", "cpu"))
        _, sample, _ = probe_sample(wb, probe_n)
        try:
            wb.start_training(cfg, description=f"trained {cfg.epochs} epochs (lr {cfg.lr:g}, monitored)",
                              attach=lambda m: monitors_for(m, sample, layer=probe_layer),
                              frozen=frozen, pause_at_epoch_end=bool(st.session_state.get(f"{key}-pae")))
        except (JobBusy, ValueError, KeyError) as exc:
            st.error(f"Could not start training: {exc}")
        else:
            st.session_state[f"{key}-watching"] = True
            st.rerun()


def _set_pause_at_epoch_end(wb: Workbench, key: str) -> None:
    value = bool(st.session_state.get(f"{key}-pae"))
    wb.update_settings(pause_at_epoch_end=value)
    job = wb.jobs.current
    if job is not None and job.running:
        job.control.pause_at_epoch_end = value


def job_status(wb: Workbench, job: Job | None, view: dict | None, key: str) -> None:
    """Progress line with Pause/Resume and Stop while a job runs; the outcome when it ended."""
    with st.container(key=f"{key}-status"):
        if job is None or view is None:
            st.info("No training yet in this session: press Start training.")
            return
        if view["status"] in ("running", "paused"):
            paused = view["status"] == "paused" or job.control.paused
            epoch = min(len(view["epochs"]) + 1, view.get("total_epochs") or 10**9)
            text = (f"{'Paused' if paused else 'Training'}: step {view['done_steps']} / {view['total_steps']}, epoch {epoch}"
                    + (f", loss {view['steps'][-1][1]:.4f}" if view["steps"] else ""))
            c1, c2, c3 = st.columns([4, 1, 1])
            c1.progress(view["progress"], text=text)
            if paused:
                if c2.button("Resume", key=f"{key}-resume", width="stretch"):
                    job.control.resume()
            elif c2.button("Pause", key=f"{key}-pause", width="stretch"):
                job.control.pause()
            if c3.button("Stop", key=f"{key}-stop", width="stretch"):
                job.stop()
                job.control.resume()  # a paused job must wake up to stop
        elif view["status"] == "failed":
            st.error(f"Training failed: {view['error']}. The model is unchanged.")
        elif job.result is not None:
            v = job.result
            st.success(f"{'Stopped' if view['status'] == 'stopped' else 'Finished'}: version v{v.number}, "
                       f"test accuracy {pct(v.metrics.get('test_acc'))} ({view['done_steps']} steps, {view['elapsed']:.1f}s).")


def live(wb: Workbench, key: str, draw: Callable[[Job | None, dict | None], None]) -> None:
    """A fragment that polls the workbench's job every POLL_S seconds while it runs, shows its
    status and calls ``draw(job, view)``; one full rerun when the job ends."""
    job = wb.jobs.current
    running = job is not None and job.running

    @st.fragment(run_every=POLL_S if running else None)
    def fragment() -> None:
        job = wb.jobs.current
        view = job.view() if job is not None else None
        job_status(wb, job, view, key)
        draw(job, view)
        still = view is not None and view["status"] in ("running", "paused")
        if not still and st.session_state.get(f"{key}-watching"):
            st.session_state[f"{key}-watching"] = False
            if job is not None and job.result is not None:
                notice(f"Training finished: version v{job.result.number}.", "success")
            st.rerun(scope="app")

    fragment()
