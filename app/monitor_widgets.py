"""Training controls shared by the training-monitor and layer-freezing pages: start a
monitored job and pause after each epoch (the live status with Pause/Resume/Stop is
``app.widgets.live_job(..., pausable=True)``)."""
from __future__ import annotations


import dataclasses
import time

import numpy as np
import streamlit as st
import torch

from app.state import notice
from app.widgets import metric_delta, pct, start_job, to_pil, train_form
from core.data import Progress
from core.engine import LR_RANGE
from core.feedback.selection import workflow as selection_workflow
from core.feedback.selection.loss import KIND as SELECTION, RetrainSettings
from core.session.jobs import Job, JobBusy
from core.monitor.live import PROBE_SAMPLE, ActivationProbe, EpochTimeSpread, FreezeSaving, Monitors, monitors_for
from core.session.runs import JobOptions
from core.session.workbench import Workbench


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


class EmbeddingWait:
    """The status box of a first (cold) draw of the Monitor's embedding: its label says which
    step of how many runs, a bar how far it is ("t-SNE of 267 points: iteration 300 of 750").
    Drawn on the first step only, so a warm update (a fraction of a second) draws nothing;
    gone once the layout is there. (``st.status(...).update`` must be given ``expanded=True``:
    without it Streamlit 1.67 collapses the box and hides the bar.)"""

    MIN_INTERVAL_S = 0.1  # the bar is redrawn at most this often

    def __init__(self, title: str, key: str = "mon-emb-progress") -> None:
        self.title, self.key = title, key
        self.steps: list[str] = []
        self._slot = self._status = self._bar = None
        self._last = 0.0

    def _step(self, steps: list[str], index: int, text: str) -> Progress:
        if self._slot is None:
            self.steps = steps
            self._slot = st.empty()
            with self._slot.container(key=self.key):
                self._status = st.status(self.title, expanded=True)
                with self._status:
                    self._bar = st.progress(0.0, text=text)
        self._status.update(label=f"{self.title} · step {index + 1} of {len(self.steps)}: {self.steps[index]}",
                            state="running", expanded=True)
        self._bar.progress(0.0, text=text)
        self._last = time.monotonic()

        def report(fraction: float, message: str) -> None:
            now = time.monotonic()
            if fraction < 1.0 and now - self._last < self.MIN_INTERVAL_S:
                return
            self._last = now
            self._bar.progress(min(1.0, max(0.0, float(fraction))), text=message)
        return report

    def activations(self, text: str) -> Progress:
        """Step 1 of 2: reading the layer for the pool sample."""
        return self._step(["Reading the layer for the pool sample", "Laying out the points"], 0, text)

    def layout(self) -> Progress:
        """The layout step (step 2 of 2, or the only one)."""
        steps = self.steps or ["Laying out the points"]
        return self._step(steps, len(steps) - 1, "Laying out the points…")

    def finish(self) -> None:
        if self._slot is not None:
            self._slot.empty()


def epoch_list(epochs: tuple[int, ...]) -> str:
    """0-based epoch indices as the page numbers them (from 1), runs joined: "2-4, 7"."""
    runs: list[list[int]] = []
    for e in sorted(epochs):
        if runs and e == runs[-1][-1] + 1:
            runs[-1].append(e)
        else:
            runs.append([e])
    return ", ".join(f"{r[0] + 1}" if len(r) == 1 else f"{r[0] + 1}-{r[-1] + 1}" for r in runs)


def _side(name: str, spread: EpochTimeSpread, frozen: tuple[str, ...]) -> str:
    what = f"{', '.join(frozen)} frozen" if frozen else "nothing frozen"
    if spread.n == 0:
        return f"no comparable epoch {name} ({what})"
    head = f"{spread.median:.2f} s {name} ({what}; epoch{'s' if spread.n != 1 else ''} {epoch_list(spread.epochs)}, n = {spread.n}"
    if spread.n == 1:
        return head + ")"
    return head + f", middle half {spread.q1:.2f}-{spread.q3:.2f} s, range {spread.low:.2f}-{spread.high:.2f} s)"


def saving_summary(saving: FreezeSaving) -> tuple[str, dict, str]:
    """(metric value, ``st.metric`` delta arguments, caption) for the measured saving of
    freezing: the median time per epoch after, the change against before (or "too few epochs
    to tell"), and what was compared: each side's epochs, n, interquartile range and range,
    and which epochs were left out and why."""
    value = f"{saving.after.median:.2f} s" if saving.after.n else "–"
    if saving.saving is not None:
        delta = metric_delta(-100 * saving.saving, unit="%", decimals=0,
                             suffix=f" vs {saving.before.median:.2f} s before", lower_is_better=True)
    else:
        delta = {"delta": "too few epochs to tell", "delta_color": "off", "delta_arrow": "off"}
    text = (f"Median time per epoch: {_side('before', saving.before, saving.frozen_before)} and "
            f"{_side('after', saving.after, saving.frozen_after)}.")
    if saving.left_out:
        text += (f" Left out: epoch{'s' if len(saving.left_out) != 1 else ''} {epoch_list(saving.left_out)} (the first "
                 "epoch of each phase: warm-up, or the change happened during it; and any epochs between the first and the "
                 "last change).")
    if saving.reason:
        text += f" No saving shown: {saving.reason}."
    return value, delta, text


PROBE_N = PROBE_SAMPLE  # pool examples the activation probe follows during training


def probe_caption(probe: ActivationProbe | None) -> str | None:
    """One line on how often the embedding of the model in training refreshes, and why: as
    the page's "Update every (s)" asks (the probe runs on that time basis), or slower because
    the probe is kept within its budget of the training time, or because it runs at most
    every few steps. None before the probe's first snapshot."""
    pace = probe.pace() if probe is not None else None
    if pace is None:
        return None
    what = f"each probe of the {pace['images']} points shown takes {pace['probe_s']:.2f} s"
    every, requested, steps = pace["interval_s"], pace["requested_s"], pace["interval"]
    share = f" ({pace['share']:.1%} so far)" if pace["share"] is not None else ""
    if pace["limited_by"] == "setting":
        return f"The embedding updates about every {requested:g} s, as set ({what}; every ~{steps} steps)."
    head = f"The embedding updates about every {every:.1f} s"
    if requested is not None:
        head += f", not every {requested:g} s as set"
    if pace["limited_by"] == "budget":
        return (f"{head}: {what} and is kept within {pace['budget']:.0%} of the training time{share}, so it runs every "
                f"{steps} steps. Fewer points make it cheaper.")
    return f"{head}: the probe runs at most every {steps} steps ({what})."


def training_controls(wb: Workbench, key: str, *, probe_layer: str | None = None, probe_n: int = PROBE_N,
                      probe_interval_s: float | None = None, probe_count: int | None = None,
                      freeze_hint: bool = True,
                      default_epochs: int = 10) -> None:
    """Epochs, learning rate, batch size, "pause at the end of each epoch", and Start. The job
    carries per-layer statistics, settle tracking and an activation probe (see core.monitor.live)
    of ``probe_layer``, probing the first ``probe_count`` of its ``probe_n`` images at most every
    ``probe_interval_s`` seconds (the embedding view's settings; the page can change them later)."""
    job = wb.jobs.current
    running = job is not None and job.running
    frozen = list(wb.settings.get("frozen", []))
    with st.container(key=f"{key}-panel"):
        typed = train_form(key, default_epochs=default_epochs, lr=0.02, start_label="Start training",
                           disabled=running, lr_help=f"{LR_RANGE[0]:g} to {LR_RANGE[1]:g}.")
        pause_default = bool(wb.settings.get("pause_at_epoch_end", False))
        st.toggle("Pause at the end of each epoch", value=pause_default, key=f"{key}-pae",
                  on_change=_set_pause_at_epoch_end, args=(wb, key),
                  help="The job stops after each epoch and waits for Resume (the grid-feedback page uses this to "
                       "show mistakes between epochs).")
        if frozen:
            hint = " (change on the Layer freezing page)" if freeze_hint else " (switches below)"
            st.caption(f"Frozen from the first step: {', '.join(frozen)}{hint}.")
    if typed is not None:
        cfg = typed.config(wb)
        _, sample, _ = probe_sample(wb, probe_n)
        options = JobOptions(f"trained {cfg.epochs} epoch{'s' if cfg.epochs != 1 else ''} (lr {cfg.lr:g}, monitored)",
                             attach=lambda m: monitors_for(m, sample, layer=probe_layer, interval_s=probe_interval_s,
                                                          count=probe_count),
                             frozen=frozen, pause_at_epoch_end=bool(st.session_state.get(f"{key}-pae")))
        start_job(lambda: wb.train(cfg, options), key=key, settings=typed.settings)


def _set_pause_at_epoch_end(wb: Workbench, key: str) -> None:
    value = bool(st.session_state.get(f"{key}-pae"))
    wb.update_settings(pause_at_epoch_end=value)
    job = wb.jobs.current
    if job is not None and job.running:
        job.control.pause_at_epoch_end = value


def selection_panel(wb: Workbench, job: Job | None, preds: np.ndarray | None, ids: np.ndarray) -> None:
    """The selected points of the embedding (``mon-selected``; ``preds`` of the points ``ids``),
    the retrain settings and "Retrain on selection" / "Clear selection"."""
    ss = st.session_state
    data, classes = wb.data, wb.data.classes
    busy = job is not None and job.running
    selected = [int(i) for i in ss.get("mon-selected", [])]
    pred_of = dict(zip(ids.tolist(), preds.tolist())) if preds is not None else {}
    with st.container(key="mon-selection"):
        if not selected:
            st.info("Box- or lasso-select points in the embedding to retrain on them.")
            return
        wrong = [i for i in selected if i in pred_of and pred_of[i] != int(data.labels[i])]
        st.markdown(f"**Selected: {len(selected)} examples, {len(wrong)} misclassified**")
        show = (wrong + [i for i in selected if i not in wrong])[:16]
        cols = st.columns(8)
        for k, i in enumerate(show):
            p = pred_of.get(i)
            cols[k % 8].image(to_pil(data.images[i], 56),
                              caption=f"{classes[int(data.labels[i])]}" + (f" → {classes[p]}" if p is not None else ""))
        with st.expander("Retrain settings"):
            d = RetrainSettings()
            c1, c2, c3 = st.columns(3)
            iterations = c1.number_input("Iterations", 10, 2000, d.iterations, step=10, key="mon-rt-iter")
            per_batch = c2.number_input("Selected per batch", 1, 63, d.selected_per_batch, key="mon-rt-per")
            lr = c3.number_input("Learning rate", 0.0001, 0.5, d.train.lr, format="%.4f", key="mon-rt-lr")
        b1, b2 = st.columns(2)
        if b1.button("Retrain on selection", type="primary", key="mon-retrain-go", disabled=busy, width="stretch"):
            settings = RetrainSettings(iterations=int(iterations), selected_per_batch=int(per_batch),
                                       train=dataclasses.replace(d.train, lr=float(lr), seed=int(time.time()) % 10_000))
            _start_retrain(wb, selected, settings)
        if b2.button("Clear selection", key="mon-clear", width="stretch"):
            ss["mon-selected"] = []
            wb.clear_annotations(SELECTION)
            st.rerun()


def _start_retrain(wb: Workbench, selected: list[int], settings: RetrainSettings) -> None:
    try:
        selection_workflow.start_retrain(wb, selected, settings)  # the pending report is on disk when it returns
    except selection_workflow.SelectionError as exc:
        st.error(f"Cannot retrain on this selection: {exc}")
        return
    except (JobBusy, ValueError) as exc:
        st.error(f"Could not start: {exc}")
        return
    notice(f"Retraining on {len(selected)} selected examples…")
    st.rerun()


def retrain_report_panel(wb: Workbench, job: Job | None) -> None:
    """The last retrain on a selection: running, or what it fixed and broke."""
    pending = selection_workflow.retrain_report(wb, job)
    if not pending:
        return
    report = pending.get("report")
    with st.container(key="mon-report"):
        if report is None:
            st.caption(f"Retraining on {len(pending['ids'])} selected examples…")
            return
        st.success(f"Retrained on selection → v{report['version']}: {report['right_after']} / {report['n']} selected "
                   f"examples now right; {report['fixed']} of {report['wrong_before']} misclassified ones fixed, "
                   f"{report['broken']} broken. Validation accuracy {pct(report['val_before'])} → {pct(report['val_after'])}.")
