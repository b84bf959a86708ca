"""Session bootstrap and server-wide cached resources.

Read-only objects (the store, datasets, base models) are cached once per server process and
shared; everything a user changes lives in that user's workbench, kept in
``st.session_state`` and, on disk, in the store under the id in the URL (``?wb=<id>``).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import streamlit as st

from core.base_models import BaseModels, untrained_model
from core.data import DataError, ImageDataset, load_dataset
from core.engine import available_devices
from core.models import CheckpointError
from core.paths import PathNotAllowed, check_user_path, data_roots
from core.store import Store, valid_workbench_id
from core.workbench import Workbench

log = logging.getLogger(__name__)

DEFAULT_SOURCE = "digits"
DEFAULT_ARCH = "seed-cnn"
BUILTIN_CHOICES = ["digits", "biased-digits"]
QUERY_KEY = "wb"


@st.cache_resource(show_spinner=False)
def configure_threads() -> int:
    """Torch threads for background jobs in the server: one core is left for the server and
    (often on the same machine in demos) the browser redrawing live charts; with every core
    busy, training slowed 5-10x while a page watched it. Override with STEERBOARD_TORCH_THREADS."""
    import os

    import torch

    wanted = os.environ.get("STEERBOARD_TORCH_THREADS")
    n = int(wanted) if wanted else max(1, (os.cpu_count() or 2) - 1)
    torch.set_num_threads(n)
    return n


@st.cache_resource(show_spinner=False)
def get_store() -> Store:
    return Store()


@st.cache_resource(show_spinner=False)
def get_base_models() -> BaseModels:
    return BaseModels(get_store())


@st.cache_resource(show_spinner="Loading the dataset…", max_entries=6)
def get_dataset(source: str, seed: int = 0) -> ImageDataset:
    """Datasets are read-only and shared by every session."""
    return load_dataset(source, seed=seed)


def data_roots_now():
    return data_roots(get_store().root)


def resolve_source(text: str) -> str:
    """A built-in name as is; a typed path checked against the allowed data roots."""
    text = (text or "").strip()
    if text in BUILTIN_CHOICES or text in ("mnist", "fashion-mnist", "cifar10"):
        return text
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


def boot() -> Boot:
    """This session's workbench: from session state, else reopened from the URL's id, else a
    fresh one on the default data (training the shared default base model if needed)."""
    ss = st.session_state
    wb = ss.get("workbench")
    if wb is not None:
        if st.query_params.get(QUERY_KEY) != wb.id:
            st.query_params[QUERY_KEY] = wb.id
        return Boot(wb)
    store = get_store()
    wanted = st.query_params.get(QUERY_KEY)
    if wanted:
        if not valid_workbench_id(wanted):
            notice(f"The link's workbench id {wanted[:40]!r} is malformed; started a fresh workbench.", "warning")
        elif store.get_workbench(wanted) is None:
            notice(f"No workbench {wanted} on this server; started a fresh workbench.", "warning")
        else:
            try:
                wb = Workbench.open(store, wanted, loader=get_dataset)
            except (DataError, CheckpointError, OSError, KeyError) as exc:
                notice(f"Workbench {wanted} could not be reopened ({exc}); started a fresh workbench.", "warning")
            else:
                return _adopt(wb)
    data = get_dataset(DEFAULT_SOURCE)
    status = get_base_models().status(data, DEFAULT_SOURCE, DEFAULT_ARCH, train=True)
    if status.model is None:
        return Boot(None, status.job)
    wb = Workbench.create(store, data, DEFAULT_SOURCE, status.model, base_checkpoint=status.path,
                          settings={"device": "cpu"}, metrics=status.metrics)
    return _adopt(wb)


def _adopt(wb: Workbench) -> Boot:
    st.session_state["workbench"] = wb
    st.query_params[QUERY_KEY] = wb.id
    return Boot(wb)


def switch_workbench(source_text: str, arch: str) -> bool:
    """Start a new workbench for another dataset or model. On any error the current
    workbench stays and a message says what was wrong. Returns True on success."""
    old: Workbench | None = st.session_state.get("workbench")
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
                              metrics=status.metrics if status.model is not None else None)
    except (DataError, PathNotAllowed, CheckpointError, ValueError, OSError) as exc:
        notice(f"Could not open that dataset: {exc}", "error")
        return False
    if old is not None:
        st.session_state.setdefault("previous_workbenches", []).append(old.id)
    _adopt(wb)
    notice(f"Started workbench {wb.id} on {data.name} with {arch}"
           + ("" if status.model is not None else " (untrained: train it on Home)") + ".", "success")
    return True


def devices() -> list[str]:
    return available_devices()
