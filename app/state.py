"""Session bootstrap and server-wide cached resources.

Read-only objects (the store, datasets, base models) and the server-wide registry of live
workbenches are cached once per server process and shared. A tab's ``st.session_state`` holds
only which workbench it shows (``wb_id``) and view state; the workbench object itself, its
job runner and its current version are the same for every tab and every refresh of that id
(``?wb=<id>`` in the URL), and everything that must survive a restart is in the store.
"""
from __future__ import annotations

import logging
import os
import pickle
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import streamlit as st

from core.session.base_models import BaseModels, untrained_model
from core.data import DataError, ImageDataset, Progress, load_dataset, parse_shortcut_source, shortcut_kind
from core.engine import available_devices
from core.session.jobs import ComputeBudget, compute_plan
from core.models import CheckpointError, SteerableModel
from core.session.paths import PathNotAllowed, check_user_path, data_roots
from core.session.registry import DEFAULT_IDLE_S, WorkbenchRegistry
from core.shortcut import meter_split
from core.session.store import Store, WorkspaceError, claim_workspace, valid_workbench_id
from core.session.workbench import SHORTCUT_ROWS, Workbench, WorkbenchError, version_metrics

log = logging.getLogger(__name__)

DEFAULT_SOURCE = "digits"
DEFAULT_ARCH = "seed-cnn"
BUILTIN_CHOICES = ["digits", "biased-digits", "decoy-digits", "texture-digits"]
QUERY_KEY = "wb"
SESSION_KEY = "wb_id"


@st.cache_resource(show_spinner=False)
def configure_threads() -> int:
    """Set torch's thread count once per server from :func:`compute_plan`."""
    import torch

    _, threads = compute_plan()
    torch.set_num_threads(threads)
    return threads


@st.cache_resource(show_spinner=False)
def get_store() -> Store:
    """The workspace's store, claimed for this server process: a second server started on
    the same workspace (a replica given the same volume) gets a message naming the first one
    instead of running its jobs beside it (see ``core.session.store.claim_workspace``)."""
    store = Store()
    claim = _CLAIMS.get(store.root)
    if claim is None or not claim.holds():  # one descriptor per workspace for the process's life
        claim = _CLAIMS[store.root] = claim_workspace(store.root)
    store.server_claim = claim
    return store


# The server process's workspace claims, kept past a cleared resource cache: a claim is a
# POSIX lock, which closing any descriptor of the file would drop, so each is made once.
_CLAIMS: dict = {}


@st.cache_resource(show_spinner=False)
def get_budget() -> ComputeBudget:
    """The server-wide limit on training jobs that compute at once (others queue)."""
    return ComputeBudget(compute_plan()[0])


@st.cache_resource(show_spinner=False)
def get_base_models() -> BaseModels:
    return BaseModels(get_store(), get_budget())


class DatasetCache:
    """The server's loaded datasets (read-only, shared by every session), the ``size`` most
    recently used kept. Two sessions asking for the same new dataset load it once.

    Not an ``st.cache_resource`` function: Streamlit records the elements such a function draws
    and replays them on every later hit, so a load could not show its progress."""

    def __init__(self, size: int = 6) -> None:
        self.size = size
        self._lock = threading.Lock()
        self._items: OrderedDict[tuple[str, int], ImageDataset] = OrderedDict()
        self._loading: dict[tuple[str, int], threading.Lock] = {}

    def get(self, source: str, seed: int = 0, progress: Progress | None = None) -> ImageDataset:
        """The dataset, loaded now (``progress`` hears the steps) unless it is held already."""
        key = (source, int(seed))
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
            loading = self._loading.setdefault(key, threading.Lock())
        with loading:  # a second session asking for it now waits for the first one's load
            with self._lock:
                if key in self._items:
                    return self._items[key]
            try:
                data = load_dataset(source, seed=seed, progress=progress)
            finally:
                with self._lock:
                    self._loading.pop(key, None)
            with self._lock:
                self._items[key] = data
                while len(self._items) > self.size:
                    self._items.popitem(last=False)
        return data


@st.cache_resource(show_spinner=False)
def get_dataset_cache() -> DatasetCache:
    return DatasetCache()


def get_dataset(source: str, seed: int = 0, progress: Progress | None = None) -> ImageDataset:
    """A dataset, shared by every session. When it must be read first, ``progress`` hears the
    steps; without one, a box showing them is drawn where the script is (nothing is drawn
    for a dataset already held)."""
    box = None
    if progress is None:
        box = StepsBox(f"Opening {source}", ["Reading the data"])
        progress = box.progress_for(0)
    data = get_dataset_cache().get(source, seed, progress)
    if box is not None:
        box.finish(f"Opened {data.name}", clear=True)
    return data


class StepsBox:
    """A wait of a few steps, shown as a status box: its label names the step ("step 2 of 3:
    evaluating version 0"), a bar shows how far that step is and what it does now ("decoding
    the images of train.tar.gz: 30,000 of 60,000"), and a line below lists the steps done
    with their seconds. Drawn on the first report, into ``parent`` (default: where the script
    is), so a wait that never happens draws nothing."""

    # A counter ("decoding ...: 3,000 of 60,000") is redrawn at most this often (each redraw is a message to
    # the browser); a line saying something new is always drawn: it may be the last before a long wait.
    MIN_INTERVAL_S = 0.1

    def __init__(self, title: str, steps: list[str], parent=None, key: str | None = None) -> None:
        self.title, self.steps, self.parent, self.key = title, list(steps), parent, key
        self.step = -1
        self._status = self._bar = self._log = self._slot = None
        self._thread = threading.get_ident()
        self._start = self._step_start = time.monotonic()
        self._last_draw = 0.0
        self._last_what = ""
        self._done: list[str] = []

    def _draw(self) -> None:
        if self._status is not None:
            return
        self._slot = (self.parent if self.parent is not None else st).empty()
        with self._slot.container(key=self.key):
            self._status = st.status(self.title, expanded=True)
            with self._status:
                self._bar = st.progress(0.0, text="Starting…")
                self._log = st.empty()

    def start(self, step: int, text: str | None = None) -> None:
        """Begin ``step`` (an index into ``steps``); the steps before it count as done."""
        if threading.get_ident() != self._thread:
            return  # only the script's thread may draw
        self._draw()
        now = time.monotonic()
        if 0 <= self.step < step:
            self._done.append(f"{self.steps[self.step]} ({now - self._step_start:.1f} s)")
        self.step, self._step_start, self._last_draw = step, now, now
        name = self.steps[step]
        self._status.update(label=f"{self.title} · step {step + 1} of {len(self.steps)}: {name}", state="running",
                            expanded=True)
        self._bar.progress(0.0, text=text or f"{name}…")
        if self._done:
            self._log.caption("Done: " + "; ".join(self._done))

    def report(self, fraction: float, text: str) -> None:
        """The current step is ``fraction`` done and doing ``text``."""
        if threading.get_ident() != self._thread:
            return
        if self._status is None:
            self.start(max(self.step, 0))
        now = time.monotonic()
        what = text.split(":", 1)[0]  # a counter's line without its count
        if fraction < 1.0 and what == self._last_what and now - self._last_draw < self.MIN_INTERVAL_S:
            return
        self._last_draw, self._last_what = now, what
        self._bar.progress(min(1.0, max(0.0, float(fraction))), text=text)

    def progress_for(self, step: int) -> Progress:
        """A progress callback for ``step`` (starts it on its first call)."""
        def report(fraction: float, text: str) -> None:
            if self.step != step:
                self.start(step)
            self.report(fraction, text)

        return report

    def finish(self, label: str, *, clear: bool = False) -> None:
        """All steps done: the box says ``label`` (or goes away with ``clear``)."""
        if self._status is None:
            return
        if clear:
            self._slot.empty()
            return
        self._status.update(label=f"{label} in {time.monotonic() - self._start:.1f} s", state="complete",
                            expanded=False)

    def fail(self, label: str) -> None:
        if self._status is not None:
            self._status.update(label=label, state="error", expanded=False)


@contextmanager
def counting_images(model: SteerableModel, total: int, progress: Progress | None, what: str) -> Iterator[None]:
    """While the block runs, ``progress`` hears how many images went through ``model`` in this
    thread ("WHAT: 2,048 of 16,000 images"), counted by a forward hook on its feature layer
    (run once per batch by every forward pass); the hook is removed afterwards.

    ``model`` must be in eval mode, as shared models are: evaluating one in train mode runs
    an eval-mode copy, which carries no hooks (``core.models.for_inference``)."""
    layer = dict(model.named_modules()).get(getattr(model, "feature_layer", ""))
    if progress is None or layer is None or total <= 0:
        yield
        return
    thread, seen = threading.get_ident(), [0]

    def hook(module, inputs, output) -> None:
        if threading.get_ident() == thread:
            seen[0] += int(output.shape[0])
            progress(min(1.0, seen[0] / total), f"{what}: {min(seen[0], total):,} of {total:,} images")

    handle = layer.register_forward_hook(hook)
    try:
        progress(0.0, f"{what}: 0 of {total:,} images")
        yield
    finally:
        handle.remove()


def metric_images(data: ImageDataset) -> int:
    """How many images :func:`core.session.workbench.version_metrics` runs through a model: the val
    and test splits, and twice the shortcut meter's rows on data with masks."""
    total = sum(len(data.splits.get(s, ())) for s in ("val", "test"))
    split = meter_split(data)
    if data.masks is not None and split in data.splits:
        rows = np.asarray(data.ids(split), dtype=np.int64)
        total += 2 * min(SHORTCUT_ROWS, int(data.rows_with_mask()[rows].sum()))
    return total


@st.cache_resource(show_spinner=False)
def get_registry() -> WorkbenchRegistry:
    """One live workbench per id for the whole server. Jobs a dead server left running are
    marked interrupted now, so their workbenches can say so."""
    store = get_store()
    store.mark_interrupted()
    idle_minutes = os.environ.get("STEERBOARD_IDLE_MINUTES")
    idle_s = float(idle_minutes) * 60 if idle_minutes else DEFAULT_IDLE_S
    return WorkbenchRegistry(store, loader=get_dataset, budget=get_budget(), idle_s=idle_s)


def data_roots_now():
    return data_roots(get_store().root)


def resolve_source(text: str) -> str:
    """A built-in name as is; a typed path checked against the allowed data roots; a shortcut
    set over another source ("biased-digits:SOURCE?rho=R", also decoy- and texture-digits)
    with its SOURCE resolved the same way."""
    text = (text or "").strip()
    if text in BUILTIN_CHOICES or text in ("mnist", "fashion-mnist", "cifar10"):
        return text
    if shortcut_kind(text) is not None:
        kind, base, _ = parse_shortcut_source(text)
        query = "?" + text.rpartition("?")[2] if "?" in text[len(kind):] else ""
        return f"{kind}{'' if base == 'digits' else ':' + resolve_source(base)}{query}"
    return str(check_user_path(text, data_roots_now()))


@dataclass
class Boot:
    """What the entry script needs to draw: a workbench, or the base job to wait for."""

    workbench: Workbench | None
    base_job: object | None = None


def notice(text: str, kind: str = "info") -> None:
    """Queue a message for the next drawn page (survives one rerun)."""
    st.session_state.setdefault("notices", []).append((kind, text))


def show_notices() -> None:
    for kind, text in st.session_state.pop("notices", []):
        getattr(st, kind)(text)


def current_workbench() -> Workbench:
    """The live workbench this tab shows (the entry script's :func:`boot` chose it)."""
    return get_registry().get(st.session_state[SESSION_KEY])


def _open(wb_id: str, why_fresh: str) -> Workbench | None:
    """The live workbench ``wb_id``, or None with a notice saying why a fresh one starts."""
    if not valid_workbench_id(wb_id):
        notice(f"The link's workbench id {wb_id[:40]!r} is malformed; {why_fresh}.", "warning")
        return None
    try:
        return get_registry().get(wb_id)
    except KeyError:
        notice(f"No workbench {wb_id} on this server; {why_fresh}.", "warning")
    except WorkbenchError as exc:
        notice(f"Workbench {wb_id} cannot be opened: {exc}; {why_fresh}.", "warning")
    except (DataError, CheckpointError, OSError, ValueError) as exc:
        notice(f"Workbench {wb_id} could not be reopened ({exc}); {why_fresh}.", "warning")
    return None


def store_or_stop(shell=None) -> Store:
    """The server's store; when the workspace cannot be used (another server holds it, a newer
    release wrote it, the database is unreadable) the page says why, in place of ``shell``
    (the start shell) when given, and stops."""
    try:
        return get_store()
    except WorkspaceError as exc:
        if shell is not None:
            shell.empty()
        st.error(f"The workspace cannot be used: {exc}")
        st.stop()


def boot() -> Boot:
    """This tab's workbench: the one it shows, else the URL's, else a fresh one on the
    default data (training the shared default base model if needed)."""
    ss = st.session_state
    store = store_or_stop()
    wanted = ss.get(SESSION_KEY) or st.query_params.get(QUERY_KEY)
    if wanted:
        gone = ss.get(SESSION_KEY) == wanted
        wb = _open(wanted, "started a fresh workbench" if not gone else
                   "it is gone from this server (was the workspace folder deleted?); started a fresh workbench")
        if wb is not None:
            return _adopt(wb)
        ss.pop(SESSION_KEY, None)
    data = get_dataset(DEFAULT_SOURCE)
    status = get_base_models().status(data, DEFAULT_SOURCE, DEFAULT_ARCH, train=True)
    if status.model is None:
        return Boot(None, status.job)
    wb = Workbench.create(store, data, DEFAULT_SOURCE, status.model, base_checkpoint=status.path,
                          settings={"device": "cpu"}, metrics=status.metrics, budget=get_budget())
    return _adopt(get_registry().add(wb))


def _adopt(wb: Workbench) -> Boot:
    ss = st.session_state
    ss[SESSION_KEY] = wb.id
    if st.query_params.get(QUERY_KEY) != wb.id:
        st.query_params[QUERY_KEY] = wb.id
    # an interrupted job's notice is the workbench's (on disk, every tab): app.sidebar.interrupted_banner
    return Boot(wb)


def open_workbench(wb_id: str) -> bool:
    """Make ``wb_id`` this tab's workbench (from the workbench list). On an error the
    current one stays and a message says why. Returns True on success."""
    ss = st.session_state
    old = ss.get(SESSION_KEY)
    wb = _open(wb_id, "the current workbench stays")
    if wb is None:
        return False
    if old and old != wb_id:
        ss.setdefault("previous_workbenches", []).append(old)
    _adopt(wb)
    return True


def base_model_job(source: str, arch: str):
    """The background job training the base model for ``source`` and ``arch`` (started if
    none is cached or running), or None when the base model is ready."""
    status = get_base_models().status(get_dataset(source), source, arch, train=True)
    return None if status.model is not None else status.job


OPEN_STEPS = ["reading the data", "finding the base model", "evaluating version 0 on the validation and test splits",
              "predicting the test split for the pages"]


def open_steps_box(what: str, *, upload: bool = False, parent=None) -> StepsBox:
    """The box :func:`switch_workbench` reports its steps in, titled "Opening WHAT" (with a
    first step for storing an upload), drawn into ``parent`` (default: where the script is);
    key ``open-progress`` (browser tests wait for it)."""
    steps = (["storing the upload"] if upload else []) + OPEN_STEPS
    return StepsBox(f"Opening {what}", steps, parent=parent, key="open-progress")


def source_label(source_text: str) -> str:
    """A short name for a typed source: a path's last part ("biased-digits:/data/mnist" -> "biased mnist")."""
    text = source_text.strip().rstrip("/\\")
    kind = shortcut_kind(text)
    if kind is not None and ":" in text[len(kind):]:
        base = text[len(kind) + 1:].rpartition("?")[0] or text[len(kind) + 1:]
        return f"{kind.removesuffix('-digits')} {source_label(base)}"
    return Path(text).name or text


# What opening a dataset can raise that says what was wrong with it (others are logged as bugs).
_OPEN_ERRORS = (DataError, PathNotAllowed, CheckpointError, ValueError, OSError, RuntimeError,
                pickle.UnpicklingError, EOFError, MemoryError)


def switch_workbench(source_text: str, arch: str, *, box: StepsBox | None = None,
                     shown_as: dict[str, str] | None = None) -> bool:
    """Start a new workbench for another dataset or model, showing each step of the wait in
    ``box`` (default: a new :func:`open_steps_box` where the script is). On any error the current
    workbench stays and a message says what was wrong (with each ``shown_as`` key, a path the
    user never typed, replaced by its value). Returns True on success."""
    ss = st.session_state
    old = get_registry().get(ss[SESSION_KEY]) if ss.get(SESSION_KEY) else None
    if old is not None and old.jobs.current is not None and old.jobs.current.running:
        notice("A training job is running; stop it before switching dataset or model.", "warning")
        return False
    box = box or open_steps_box(source_label(source_text))
    first = len(box.steps) - len(OPEN_STEPS)  # the index of "reading the data"
    try:
        source = resolve_source(source_text)
        box.start(first)
        data = get_dataset(source, progress=box.progress_for(first))
        box.start(first + 1, f"looking for a trained {arch} for {data.name}")
        status = get_base_models().status(data, source, arch, train=False)
        base, metrics = status.model, status.metrics
        description = "base model"
        if base is None:
            base, description = untrained_model(data, arch).eval(), "untrained initial weights"  # eval: see counting_images
            box.start(first + 2)
            with counting_images(base, metric_images(data), box.progress_for(first + 2), "evaluating"):
                metrics = version_metrics(base, data)
        wb = Workbench.create(get_store(), data, source, base,
                              base_checkpoint=status.path if status.model is not None else None,
                              settings={"device": "cpu"}, description=description,
                              metrics=metrics, budget=get_budget())
        box.start(first + 3)
        # Home shows these at once; computed here (and kept with the version) they come with progress.
        with counting_images(wb.model, len(data.ids("test")), box.progress_for(first + 3), "predicting"):
            wb.evaluation("test")
    except _OPEN_ERRORS as exc:
        return _open_failed(box, str(exc), shown_as)
    except Exception as exc:  # a bug, not the data: logged with its traceback; the page still says what happened
        log.exception("opening %r with %s failed", source_text, arch)
        return _open_failed(box, f"an unexpected error ({type(exc).__name__}: {exc}); this is a bug, "
                                 "please report it with the server's log", shown_as)
    box.finish(f"Opened {data.name}")
    if old is not None:
        ss.setdefault("previous_workbenches", []).append(old.id)
    _adopt(get_registry().add(wb))
    notice(f"Started workbench {wb.id} on {data.name} with {arch}"
           + ("" if status.model is not None else " (untrained: train it on Home)") + ".", "success")
    skipped = data.card.skipped_summary()
    if skipped:
        notice(skipped, "warning")
    return True


def _open_failed(box: StepsBox, why: str, shown_as: dict[str, str] | None) -> bool:
    for path, name in (shown_as or {}).items():
        why = why.replace(path, name)
    box.fail("Could not open that dataset")
    notice(f"Could not open that dataset: {why}", "error")
    return False


def devices() -> list[str]:
    return available_devices()
