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
from dataclasses import dataclass

import streamlit as st

from core.base_models import BaseModels, untrained_model
from core.data import DataError, ImageDataset, load_dataset, parse_shortcut_source, shortcut_kind
from core.engine import available_devices
from core.jobs import ComputeBudget, compute_plan
from core.models import CheckpointError
from core.paths import PathNotAllowed, check_user_path, data_roots
from core.registry import DEFAULT_IDLE_S, WorkbenchRegistry
from core.store import Store, WorkspaceError, claim_workspace, valid_workbench_id
from core.workbench import Workbench, WorkbenchError

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
    instead of running its jobs beside it (see ``core.store.claim_workspace``)."""
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


@st.cache_resource(show_spinner="Loading the dataset…", max_entries=6)
def get_dataset(source: str, seed: int = 0) -> ImageDataset:
    """Datasets are read-only and shared by every session."""
    return load_dataset(source, seed=seed)


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


def switch_workbench(source_text: str, arch: str) -> bool:
    """Start a new workbench for another dataset or model. On any error the current
    workbench stays and a message says what was wrong. Returns True on success."""
    ss = st.session_state
    old = get_registry().get(ss[SESSION_KEY]) if ss.get(SESSION_KEY) else None
    if old is not None and old.jobs.current is not None and old.jobs.current.running:
        notice("A training job is running; stop it before switching dataset or model.", "warning")
        return False
    try:
        source = resolve_source(source_text)
        data = get_dataset(source)
        status = get_base_models().status(data, source, arch, train=False)
        base = status.model
        description = "base model"
        if base is None:
            base, description = untrained_model(data, arch), "untrained initial weights"
        wb = Workbench.create(get_store(), data, source, base,
                              base_checkpoint=status.path if status.model is not None else None,
                              settings={"device": "cpu"}, description=description,
                              metrics=status.metrics if status.model is not None else None, budget=get_budget())
    except (DataError, PathNotAllowed, CheckpointError, ValueError, OSError, RuntimeError) as exc:
        notice(f"Could not open that dataset: {exc}", "error")
        return False
    if old is not None:
        ss.setdefault("previous_workbenches", []).append(old.id)
    _adopt(get_registry().add(wb))
    notice(f"Started workbench {wb.id} on {data.name} with {arch}"
           + ("" if status.model is not None else " (untrained: train it on Home)") + ".", "success")
    return True


def devices() -> list[str]:
    return available_devices()
