"""Drawing helpers shared by the pages: live training panel, charts, image grids, versions."""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st
import torch
from PIL import Image
from plotly.subplots import make_subplots

from core.session.base_models import base_config
from core.engine import EPOCHS_RANGE, LR_RANGE, TrainConfig, check_train_settings
from core.session.jobs import Job, JobBusy
from core.session.runs import JobOptions
from core.session.workbench import Workbench

from app.axes import percent_axis
from app.monitor_plots import add_loss_and_accuracy, integer_epoch_axis
from app.state import base_model_job, notice, switch_workbench


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


def metric_delta(change: float | None, *, unit: str = " pts", decimals: int = 1, suffix: str = "",
                 lower_is_better: bool = False) -> dict:
    """``st.metric`` keyword arguments for a change shown with ``decimals`` decimals, then
    ``unit`` and ``suffix``. Every metric delta on the pages goes through here.

    None (nothing to compare with): no delta at all. A change that rounds to zero at the shown
    precision reads "±0.0" in grey without an arrow, whatever its sign: Streamlit would put a
    green up-arrow on "+0.0" and a red down-arrow on "-0.0", a change nobody can see.
    ``lower_is_better``: a fall is green (e.g. time per epoch)."""
    if change is None or not np.isfinite(change):
        return {}
    text = f"{float(change):+.{decimals}f}"
    if float(text) == 0:
        return {"delta": f"±{0:.{decimals}f}{unit}{suffix}", "delta_color": "off", "delta_arrow": "off"}
    return {"delta": f"{text}{unit}{suffix}", **({"delta_color": "inverse"} if lower_is_better else {})}


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
    if not view["epochs"]:  # an empty panel would look broken
        (x0, x1), (y0, y1) = fig.layout.xaxis2.domain, fig.layout.yaxis2.domain  # paper coordinates: an axis
        fig.add_annotation(text="appears after the first epoch", x=(x0 + x1) / 2, y=(y0 + y1) / 2, xref="paper",
                           yref="paper", showarrow=False, font=dict(color="#6b7280"))  # with no trace has no data range
        fig.update_xaxes(showticklabels=False, row=1, col=2)
        fig.update_yaxes(showticklabels=False, row=1, col=2)
    else:
        integer_epoch_axis(fig, len(view["epochs"]), row=1, col=2)
        accuracies = [100 * e[k] for e in view["epochs"] for k in ("train_acc", "val_acc") if e.get(k) is not None]
        fig.update_yaxes(**percent_axis(accuracies), row=1, col=2)
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


# ----------------------------------------------------------------------------- canvas toolbar
# streamlit-drawable-canvas 0.13 shows its toolbar (Edit, Undo, Redo, Delete, Reset) only while the
# pointer is over the canvas, and then lays it over whatever is above the canvas (the page's caption
# saying to turn on Edit). Its styles live in the component's shadow root, out of reach of page CSS,
# so a hidden helper component adds a style there: the toolbar always shown, in its own row above the
# canvas, right-aligned. It patches every canvas of the page, also ones mounted later.
CANVAS_TOOLBAR_CSS = """
.dc-root { display: flex; flex-direction: column; }
.dc-root > .dc-toolbar { position: static !important; opacity: 1 !important; top: auto !important;
  order: -1; align-self: flex-end; padding: 0 0 .4rem 0 !important; transition: none !important; }
"""

_TOOLBAR_JS = """
export default function(component) {
  const G = (window.__steerboardCanvasToolbar = window.__steerboardCanvasToolbar || {});
  G.css = component.data.css;
  const patch = () => {
    for (const host of document.querySelectorAll('[data-testid="stBidiComponentIsolated"]')) {
      const root = host.shadowRoot;
      if (!root || !root.querySelector('.dc-root')) continue;
      let style = root.querySelector('style[data-steerboard-toolbar]');
      if (!style) {
        style = document.createElement('style');
        style.dataset.steerboardToolbar = '1';
        root.appendChild(style);
      }
      if (style.textContent !== G.css) style.textContent = G.css;
    }
  };
  patch();
  if (!G.timer) G.timer = setInterval(patch, 250);  // canvases mount later and remount after reruns
}
"""

_TOOLBAR_FIX = st.components.v2.component("steerboard_canvas_toolbar", js=_TOOLBAR_JS)


def canvas_toolbars_visible() -> None:
    """Make every drawable-canvas toolbar of the page always visible, above its canvas (the
    sidebar mounts this on every page; the element itself is hidden)."""
    with st.container(key="canvas-toolbar-fix"):
        st.html("<style>.st-key-canvas-toolbar-fix { display: none; }</style>")
        _TOOLBAR_FIX(data={"css": CANVAS_TOOLBAR_CSS}, key="canvas-toolbar-fix-js")


# ----------------------------------------------------------------------------- training
@dataclass(frozen=True)
class TrainInput:
    """What a training form's fields held when it was submitted (typed values, not yet checked)."""

    epochs: float
    lr: float
    batch: int
    seed: int | None

    @property
    def settings(self) -> tuple[float, float]:
        """(epochs, learning rate) for :func:`start_job` to check."""
        return float(self.epochs), float(self.lr)

    def config(self, wb: Workbench, **extra: object) -> TrainConfig:
        """The run's config: these fields, a fresh seed when none was typed, the workbench's device."""
        return TrainConfig(epochs=int(self.epochs), lr=float(self.lr), batch_size=int(self.batch),
                           seed=pick_seed(self.seed), device=wb.settings.get("device", "cpu"), **extra)


def train_form(key: str, *, default_epochs: int, lr: float, lr_help: str, start_label: str,
               disabled: bool) -> TrainInput | None:
    """Epochs, learning rate, batch size, seed and the start button in one row (a form: typing
    reruns nothing); the fields' values once the button was pressed, else None."""
    with st.form(f"{key}-form", border=False):
        c1, c2, c3, c3b, c4 = st.columns([1, 1, 1, 0.8, 1])
        epochs = c1.number_input("Epochs", value=default_epochs, step=1, key=f"{key}-epochs",
                                 help=f"{EPOCHS_RANGE[0]} to {EPOCHS_RANGE[1]}.")
        rate = c2.number_input("Learning rate", value=lr, step=0.005, format="%.4f", key=f"{key}-lr", help=lr_help)
        batch = c3.selectbox("Batch size", [16, 32, 64, 128, 256], index=2, key=f"{key}-batch")
        seed = seed_input(c3b, key)
        c4.write("")
        go_clicked = c4.form_submit_button(start_label, type="primary", disabled=disabled, width="stretch",
                                           key=f"{key}-start")
    return TrainInput(epochs, rate, int(batch), seed) if go_clicked else None


def train_panel(wb: Workbench, *, key: str = "train", default_epochs: int = 5,
                start_label: str = "Train", describe: Callable[[TrainConfig], str] | None = None) -> None:
    """Settings, Start/Stop and a live chart of the workbench's training job.

    Training runs in the workbench's background job (shared by every tab of the workbench);
    a fragment polls it while it runs, and one full rerun follows when it ends, so the page
    shows the new version.
    """
    job = wb.jobs.current
    running = job is not None and job.running
    with st.container(key=f"{key}-panel"):
        suggested = base_config(wb.data_source, wb.data).lr  # 0.02 for the digits, 0.005 for shortcut sets
        typed = train_form(key, default_epochs=default_epochs, lr=suggested, start_label=start_label, disabled=running,
                           lr_help=f"{LR_RANGE[0]:g} to {LR_RANGE[1]:g}; {suggested:g} suits this dataset (its "
                                   "base models' setting). If validation accuracy falls far below its best epoch's, "
                                   "the run keeps that epoch's weights and says so.")
        if running:
            st.caption("A job is running on this workbench (started from this or another tab); its progress is "
                       "below. Train is available again when it ends or is stopped.")
        if typed is not None:
            cfg = typed.config(wb, keep_best=True)
            text = describe(cfg) if describe else f"trained {cfg.epochs} epoch{'s' if cfg.epochs != 1 else ''} (lr {cfg.lr:g})"
            start_job(lambda: wb.train(cfg, JobOptions(text)), settings=typed.settings, key=key)
        live_job(wb, key)


def seed_input(col, key: str):
    """The training seed field: empty (the default) draws a fresh seed per run; either way the
    seed is saved with the version (Home's "Train again, same seed" reuses it)."""
    return col.number_input("Seed", value=None, min_value=0, max_value=2**31 - 1, step=1, placeholder="random",
                            key=f"{key}-seed", help="Empty: a new random seed each run. The seed is saved with the "
                                                     "version, so any run can be repeated exactly.")


def pick_seed(typed) -> int:
    """The typed seed, or a fresh one from the clock when the field is empty."""
    return int(typed) if typed is not None else int(time.time() * 1000) % 1_000_000


def start_job(start: Callable[[], Job], *, key: str, settings: tuple[int, float] | None = None) -> bool:
    """Check the typed settings, start a job, and rerun; on a bad value or a busy workbench
    show a one-line message and change nothing. Returns False when nothing started."""
    try:
        if settings is not None:
            check_train_settings(*settings)
        start()
    except JobBusy as exc:
        st.error(f"Not started: {exc} It may have been started from another tab; its progress is shown here.",
                 icon=":material/block:")
        return False
    except (ValueError, KeyError) as exc:
        st.error(f"Not started: {exc}", icon=":material/error:")
        return False
    st.rerun()
    return True


POLL_S = 0.8  # the chart updates more than once a second without keeping a 2-core machine busy
# redrawing it (the browser often shares the machine with the server in demos and tests)
IDLE_POLL_S = 2.0  # how often an idle tab looks for a job started elsewhere (another tab)


def job_signature(job: Job | None) -> tuple:
    """What, when it changes, needs a full rerun of the page: another job, or one that
    started or ended, or whose partial result was kept."""
    if job is None:
        return (None,)
    return (job.uid, "active" if job.running else job.status, job.partial is not None, job.kept is not None)


def remember_job(wb: Workbench) -> None:
    """Called by the entry script on every full run: the job state this run drew."""
    st.session_state["job-sig"] = job_signature(wb.jobs.current)


def rerun_if_job_changed(wb: Workbench) -> None:
    """From a polling fragment: a full rerun when the job changed since the page was drawn."""
    if job_signature(wb.jobs.current) != st.session_state.get("job-sig"):
        st.session_state["job-sig"] = job_signature(wb.jobs.current)
        st.rerun(scope="app")


def job_status(wb: Workbench, job: Job, view: dict, key: str, *, pausable: bool = False) -> None:
    """One status line per job state: progress with Stop (and Pause/Resume when
    ``pausable``) while it runs, its place in the queue with Cancel while it waits, and an
    honest outcome when it ended, with Keep for a partial result."""
    status = view["status"]
    what = view["description"]
    with st.container(key=f"{key}-status"):
        if status == "queued":
            c1, c2 = st.columns([5, 1])
            c1.info(f"Queued: place {view['queue_position'] or 1} in line for a free training slot "
                    f"({what}). It starts by itself.", icon=":material/hourglass_top:")
            if c2.button("Cancel", key=f"{key}-cancel", width="stretch"):
                job.stop()
        elif status in ("running", "paused"):
            paused = status == "paused" or job.control.paused
            epoch = min(len(view["epochs"]) + 1, view.get("total_epochs") or 10**9)
            loss = f", loss {view['steps'][-1][1]:.4f}" if view["steps"] else ""
            at_epoch_end = paused and job.control.waiting and job.control.pause_at_epoch_end and view["epochs"] and \
                view["done_steps"] == sum(e["steps"] for e in view["epochs"])
            if at_epoch_end:
                text = (f"Paused after epoch {len(view['epochs'])}: step {view['done_steps']} / {view['total_steps']}"
                        f"{loss} ({what})")
            else:
                text = (f"{'Paused' if paused else 'Training'}: step {view['done_steps']} / {view['total_steps']}, "
                        f"epoch {epoch}{loss} ({what})")
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
        elif status == "failed":
            st.error(f"Training failed: {view['error']}. The model is unchanged (still v{wb.current_version}).",
                     icon=":material/error:")
        elif status == "diverged":
            why = view["message"].removeprefix("Training diverged: ")
            st.error(f"Diverged after {view['done_steps']} step{'s' if view['done_steps'] != 1 else ''}: {why} No version was made; the current "
                     f"version is still v{wb.current_version}. Try a smaller learning rate.", icon=":material/trending_up:")
        elif job.kept is not None:
            st.success(f"Kept the partial result as version v{job.kept.number}, test accuracy "
                       f"{pct(job.kept.metrics.get('test_acc'))}.", icon=":material/check_circle:")
        elif job.result is not None:
            v = job.result
            st.success(f"{'Stopped' if status == 'stopped' else 'Finished'}: version v{v.number}, test accuracy "
                       f"{pct(v.metrics.get('test_acc'))} ({view['done_steps']} steps, {view['elapsed']:.1f}s).",
                       icon=":material/check_circle:")
        elif status == "stopped":
            detail = view["message"] if view["message"] not in ("", "Stopped by request.") else \
                f"after {view['done_steps']} of {view['total_steps']} steps; no version was made."
            st.info(f"Stopped: {detail} The current version is still v{wb.current_version}.",
                    icon=":material/stop_circle:")
        if view["has_partial"]:
            c1, c2 = st.columns([3, 1])
            c1.caption(f"The partly trained model ({view['partial_note']}) was not saved. Keep it as a new version?")
            if c2.button("Keep as new version", key=f"{key}-keep", width="stretch"):
                try:
                    wb.keep_partial(job)
                except ValueError as exc:
                    st.error(str(exc))
                else:  # the status line above says "Kept ... as version vN" after the rerun
                    st.rerun(scope="app")


def live_job(wb: Workbench, key: str, draw: Callable[[Job | None, dict | None], None] | None = None, *,
             pausable: bool = False, kinds: tuple[str, ...] | None = None) -> None:
    """A fragment that polls the workbench's current job every POLL_S seconds while it is
    active: its status, then ``draw(job, view)`` (default: the loss and accuracy chart). Any
    tab of the workbench sees it; a full rerun follows when the job starts or ends.

    ``kinds``: the job kinds this place shows in full (e.g. only the latent page's Updates
    in its result window); another kind's job is named in one line while it runs, and its
    result is not shown here."""
    job = wb.jobs.current
    running = job is not None and job.running

    @st.fragment(run_every=POLL_S if running else None)
    def live() -> None:
        job = wb.jobs.current
        if job is not None and kinds is not None and job.kind not in kinds:
            if job.running:
                st.caption(f"Another job runs on this workbench: {job.description} (see its page). This page's "
                           "actions wait until it ends.")
            job = None
        view = job_view(job, key) if job is not None else None
        if view is not None:
            job_status(wb, job, view, key, pausable=pausable)
        if draw is not None:
            draw(job, view)
        elif view is not None and view["steps"]:
            st.plotly_chart(training_figure(view), key=f"{key}-chart", width="stretch")
        rerun_if_job_changed(wb)

    live()


def job_view(job: Job, key: str) -> dict:
    """``job.view()`` with the step history read incrementally: this tab keeps what it read
    and asks the job only for newer steps (the training thread holds the same lock)."""
    ss = st.session_state
    view = job.view(steps=False)
    uid, cursor, steps = ss.get(f"{key}-steps-cache", (None, None, []))
    if uid != job.uid:
        cursor, steps = None, []
    cursor, new, reset = job.steps_since(cursor)
    steps = list(new) if reset else steps + new
    ss[f"{key}-steps-cache"] = (job.uid, cursor, steps)
    view["steps"] = steps
    return view


def sidebar_job(wb: Workbench) -> None:
    """A compact status of the workbench's job on every page, polling slowly while idle so a
    job started from another tab appears here too."""
    job = wb.jobs.current
    running = job is not None and job.running

    @st.fragment(run_every=POLL_S if running else IDLE_POLL_S)
    def watch() -> None:
        job = wb.jobs.current
        with st.container(key="sb-job"):
            if job is not None and job.running:
                view = job.view(steps=False)
                if view["status"] == "queued":
                    st.caption(f"Queued (place {view['queue_position'] or 1}): {view['description']}")
                else:
                    st.progress(view["progress"], text=f"{view['status'].capitalize()}: step {view['done_steps']} / "
                                                       f"{view['total_steps']}")
                if st.button("Stop" if view["status"] != "queued" else "Cancel", key="sb-job-stop", width="stretch"):
                    job.stop()
        rerun_if_job_changed(wb)

    watch()


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
        "seed": str(v.feedback["seed"]) if "seed" in v.feedback else "",
        "created": time.strftime("%H:%M:%S", time.localtime(v.created)),
    } for v in versions]
    busy = wb.jobs.current is not None and wb.jobs.current.running
    with st.container(key=key):
        st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")
        numbers = [v.number for v in versions]
        c1, c2, c3, c4, c5 = st.columns([2, 1, 1, 1, 1.4])
        # keyed by the current version and the count: the picker follows the current version
        # whenever it changes (a new run, a restore, another tab), instead of keeping its first value
        chosen = c1.selectbox("Version", numbers, index=numbers.index(wb.current_version), format_func=lambda n: f"v{n}",
                              key=f"{key}-pick-{wb.current_version}-{len(numbers)}", label_visibility="collapsed")
        if c2.button("Restore", key=f"{key}-restore", disabled=busy or chosen == wb.current_version, width="stretch"):
            _restore(wb, chosen)
        if c3.button("Reset to base", key=f"{key}-reset", disabled=busy or wb.current_version == 0, width="stretch"):
            _restore(wb, 0)
        c4.download_button("Download", data=lambda: wb.checkpoint_bytes(chosen), file_name=f"steerboard-{wb.id}-v{chosen}.pt",
                           mime="application/octet-stream", key=f"{key}-download", width="stretch", on_click="ignore")
        replay = wb.replay_config(chosen)
        again = c5.button("Train again, same seed", key=f"{key}-again", disabled=busy or replay is None, width="stretch",
                          help="Train this version's parent again with the same settings and seed: on the CPU the "
                               "result is identical bit for bit. Only for plain training runs, not for fine-tunes "
                               "with feedback or runs whose freezing changed.")
        if again and replay is not None:
            cfg, parent, frozen = replay
            again_options = JobOptions(f"v{chosen} trained again from v{parent} (seed {cfg.seed})", frozen=frozen,
                                       start_version=parent)
            start_job(lambda: wb.train(cfg, again_options), key=key)
        if busy:
            st.caption("Restoring is disabled while a job runs.")


def _restore(wb: Workbench, number: int) -> None:
    try:
        dismissed = wb.restore(number)  # the last job's banner and chart go: they were about another version
    except Exception as exc:  # a broken checkpoint file must not lose the current model
        st.error(f"Could not restore v{number}: {exc}. The current model is unchanged.")
        return
    dropped = dismissed is not None and dismissed.partial is not None and dismissed.kept is None
    notice(f"Restored v{number}." + (" The last run's partly trained model, which was not kept, is dropped."
                                     if dropped else ""), "success")
    st.rerun()


# ----------------------------------------------------------------------------- biased digits
# The bundled shortcut sets a page can offer: (source, button label, key suffix, what the shortcut is).
SHORTCUT_OFFERS = [
    ("biased-digits", "Open biased digits", "biased", "the background colour gives the class away"),
    ("decoy-digits", "Open decoy digits", "decoy", "a grey square in a corner, whose shade gives the class away "
                                                   "(Decoy-MNIST)"),
    ("texture-digits", "Open texture digits", "texture", "the background's stripes give the class away"),
]


def offer_biased_digits(wb: Workbench, prefix: str, why: str, *, busy: bool) -> None:
    """An info box saying ``why`` this page shows more on the bundled shortcut sets (biased,
    decoy or texture digits), with a button for each that opens it (training its base model
    once, in the background, with progress). Keys: ``{prefix}-open-biased``, ``-decoy``, ``-texture``."""
    ss = st.session_state
    want_key = f"{prefix}-want-shortcut"
    with st.container(key=f"{prefix}-no-masks"):
        st.info(f"{why} The bundled **biased**, **decoy** and **texture digits** have object masks (the digit "
                "strokes) and a known shortcut: " + "; ".join(f"{label[5:]}: {what}" for _, label, _, what in
                                                              SHORTCUT_OFFERS) + ".", icon=":material/info:")
        for column, (source, label, suffix, _) in zip(st.columns(len(SHORTCUT_OFFERS)), SHORTCUT_OFFERS):
            if column.button(label, key=f"{prefix}-open-{suffix}", disabled=busy, width="stretch"):
                ss[want_key] = source
    source = ss.get(want_key)
    if not source:
        return
    label = source.replace("-", " ")
    base_job = base_model_job(source, wb.arch)

    @st.fragment(run_every=0.5 if base_job is not None else None)
    def wait_for_base() -> None:
        j = base_model_job(source, wb.arch)
        if j is not None and j.running:
            v = j.view(steps=False)
            st.progress(v["progress"], text=f"Training the base model for {label}: step {v['done_steps']} / "
                                            f"{v['total_steps']} (once; later workbenches reuse it)")
            return
        if j is not None and j.status != "done":
            st.error(f"Training the base model did not finish ({j.error or j.message or j.status}).")
            ss[want_key] = None
            return
        ss[want_key] = None
        if switch_workbench(source, wb.arch):
            st.rerun(scope="app")

    wait_for_base()
