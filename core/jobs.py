"""Background jobs: one long task (training, fine-tuning, embedding) at a time per workbench,
run in a daemon thread that never touches the UI. Pages poll the job's progress."""
from __future__ import annotations

import logging
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from core.engine import Callback, EpochInfo, StepInfo, TrainControl

log = logging.getLogger(__name__)


class JobBusy(RuntimeError):
    """A job is already running for this workbench."""


class Job(Callback):
    """A running or finished task. Doubles as the engine callback that records progress.

    Read ``status`` ("running", "paused", "done", "stopped", "failed"), ``progress`` in
    [0, 1], ``message``, ``error``, ``steps`` ((step, loss, accuracy) tuples) and ``epochs``
    (dicts of :class:`EpochInfo`). All reads go through :meth:`view` for a consistent copy.
    """

    def __init__(self, kind: str, total_steps: int, description: str = "", total_epochs: int | None = None) -> None:
        self.kind = kind
        self.total_epochs = total_epochs
        self.description = description
        self.total_steps = max(int(total_steps), 1)
        self.control = TrainControl()
        self.status = "running"
        self.message = ""
        self.error = ""
        self.result: Any = None
        self.started = time.time()
        self.finished: float | None = None
        self.steps: list[tuple[int, float, float]] = []
        self.epochs: list[dict[str, Any]] = []
        self.freeze_events: list[tuple[int, tuple[str, ...]]] = []  # (step, frozen groups from then on)
        self.done_steps = 0
        self.listeners: list[Callback] = []
        self.model: Any = None  # the training copy, when the job trains one (read-only for pages)
        self.attached: list[Callback] = []  # callbacks bound to that copy (statistics, probes)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._last_frozen: tuple[str, ...] | None = None

    # engine callbacks ---------------------------------------------------------------
    def on_step(self, info: StepInfo) -> None:
        with self._lock:
            self.steps.append((info.step, info.loss, info.accuracy))
            self.done_steps = info.step + 1
            if info.frozen != self._last_frozen:
                self.freeze_events.append((info.step, info.frozen))
                self._last_frozen = info.frozen
        for cb in self.listeners:
            cb.on_step(info)

    def on_epoch(self, info: EpochInfo) -> None:
        with self._lock:
            self.epochs.append(asdict(info))
        for cb in self.listeners:
            cb.on_epoch(info)

    # reading ------------------------------------------------------------------------
    @property
    def progress(self) -> float:
        if self.status == "done":
            return 1.0
        return min(self.done_steps / self.total_steps, 1.0)

    @property
    def running(self) -> bool:
        return self.status in ("running", "paused")

    def view(self) -> dict[str, Any]:
        """A consistent copy of the job's state for drawing."""
        with self._lock:
            status = self.status
            if status == "running" and self.control.waiting:
                status = "paused"
            return {
                "kind": self.kind,
                "description": self.description,
                "status": status,
                "progress": self.progress,
                "message": self.message,
                "error": self.error,
                "steps": list(self.steps),
                "epochs": list(self.epochs),
                "freeze_events": list(self.freeze_events),
                "elapsed": (self.finished or time.time()) - self.started,
                "done_steps": self.done_steps,
                "total_steps": self.total_steps,
                "total_epochs": self.total_epochs,
            }

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the job ends; True if it has."""
        if self._thread is not None:
            self._thread.join(timeout)
        return not self.running

    def stop(self) -> None:
        self.control.request_stop()


class JobRunner:
    """Runs at most one :class:`Job` at a time in a daemon thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.current: Job | None = None

    def start(self, job: Job, work: Callable[[Job], Any]) -> Job:
        """Run ``work(job)`` in the background. Its return value becomes ``job.result``; an
        exception marks the job failed with a one-line message (the traceback goes to the log)."""
        with self._lock:
            if self.current is not None and self.current.running:
                raise JobBusy(f"A {self.current.kind} job is still running; stop it or wait for it first.")
            self.current = job

        def run() -> None:
            try:
                result = work(job)
                with job._lock:
                    job.result = result
                    job.status = "stopped" if job.control.stop_requested else "done"
            except Exception as exc:  # the page shows the message, never a traceback
                log.error("job %s failed:\n%s", job.kind, traceback.format_exc())
                with job._lock:
                    job.status = "failed"
                    job.error = f"{exc.__class__.__name__}: {exc}"
            finally:
                job.finished = time.time()

        job._thread = threading.Thread(target=run, name=f"steerboard-{job.kind}", daemon=True)
        job._thread.start()
        return job
