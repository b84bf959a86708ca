"""What the feedback pages read first: the tab's workbench, with the page's own view state
(session keys under one prefix) cleared when the tab moved to another workbench, and the
workbench's current job."""
from __future__ import annotations

import streamlit as st

from app.state import current_workbench
from core.session.jobs import Job
from core.session.workbench import Workbench


def open_page(prefix: str) -> tuple[Workbench, bool]:
    """The workbench this tab shows, and whether the page's view state (the session keys that
    start with ``prefix-``) was just cleared: on a first visit, or when the tab's workbench is
    another one than on the last visit (``<prefix>-wb`` remembers which)."""
    wb = current_workbench()
    ss = st.session_state
    if ss.get(f"{prefix}-wb") == wb.id:
        return wb, False
    for k in [k for k in ss if str(k).startswith(f"{prefix}-")]:
        del ss[k]
    ss[f"{prefix}-wb"] = wb.id
    return wb, True


def current_job(wb: Workbench) -> tuple[Job | None, bool]:
    """The workbench's current job (None before the first) and whether it is running."""
    job = wb.jobs.current
    return job, job is not None and job.running
