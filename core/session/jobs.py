"""Background jobs: one long task (training, fine-tuning, embedding) at a time per workbench,
run in a daemon thread that never touches the UI, under a server-wide compute budget.

A job ends in exactly one honest state: ``done``, ``stopped``, ``failed`` or ``diverged``
(``interrupted`` is what the store calls a job whose server died). While it lives it is
``queued`` (waiting for a slot in the :class:`ComputeBudget`), ``running`` or ``paused``.
Pages poll :meth:`Job.view`; they never read the model being trained, only the snapshots the
training thread publishes (:meth:`Job.request_weights`, :meth:`Job.weights`).
"""
from __future__ import annotations

import itertools
import logging
import os
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict
from typing import Any, Protocol

from core.engine import Callback, EpochInfo, StepInfo, TrainControl

log = logging.getLogger(__name__)

ACTIVE = ("queued", "running", "paused")
ENDED = ("done", "stopped", "failed", "diverged")
MAX_STEP_POINTS = 4000  # step-history points kept per job; older ones are thinned, epochs kept in full
_job_ids = itertools.count(1)


class JobBusy(RuntimeError):
    """A job is already running for this workbench."""


class StepHistory:
    """Per-step records, bounded: beyond ``limit`` points every other point is dropped and
    from then on only every ``stride``-th step is kept, so a long run costs O(limit) memory
    and a reader's copy stays cheap. Readers fetch only what is new with :meth:`since`."""

    def __init__(self, limit: int = MAX_STEP_POINTS) -> None:
        if limit < 4:
            raise ValueError("limit must be at least 4")
        self.limit = int(limit)
        self.stride = 1
        self.generation = 0  # bumped when points are thinned: readers must take all again
        self._items: list[tuple] = []
        self._seen = 0

    def append(self, item: tuple) -> None:
        self._seen += 1
        if (self._seen - 1) % self.stride:
            return
        self._items.append(item)
        if len(self._items) > self.limit:
            self._items = self._items[::2]
            self.stride *= 2
            self.generation += 1

    def since(self, cursor: tuple[int, int] | None) -> tuple[tuple[int, int], list[tuple], bool]:
        """(new cursor, items after ``cursor``, whether they replace everything read so far)."""
        if cursor is None or cursor[0] != self.generation or cursor[1] > len(self._items):
            return (self.generation, len(self._items)), list(self._items), True
        return (self.generation, len(self._items)), self._items[cursor[1]:], False

    def items(self) -> list[tuple]:
        return list(self._items)

    def __len__(self) -> int:
        return len(self._items)


class JobRecorder(Protocol):
    """Where a job's life is written down (the store, for a workbench's jobs)."""

    def started(self, job: "Job") -> None: ...

    def progress(self, job: "Job") -> None: ...

    def ended(self, job: "Job") -> None: ...


class Job(Callback):
    """A queued, running or finished task. Doubles as the engine callback that records progress.

    Read everything through :meth:`view` (a consistent copy). ``result`` is what the work
    returned; ``partial`` is a model the user may still keep after a stop or a divergence.
    """

    PROGRESS_EVERY_S = 2.0  # how often a recorder hears about progress

    def __init__(self, kind: str, total_steps: int, description: str = "", total_epochs: int | None = None) -> None:
        self.uid = next(_job_ids)
        self.kind = kind
        self.total_epochs = total_epochs
        self.description = description
        self.total_steps = max(int(total_steps), 1)
        self.control = TrainControl()
        self.status = "queued"
        self.message = ""
        self.error = ""
        self.result: Any = None
        self.partial: Any = None  # a model that can be kept explicitly (stopped / diverged runs)
        self.partial_note = ""
        self.kept: Any = None  # the version made from ``partial``, once kept
        self.commit_args: Any = None  # what the owner needs to commit ``partial`` later
        self.context: dict[str, Any] = {}  # objects the job's pages work with (e.g. a growing penalty set)
        self.created = time.time()
        self.started = self.created
        self.finished: float | None = None
        self.steps = StepHistory()
        self.epochs: list[dict[str, Any]] = []
        self.freeze_events: list[tuple[int, tuple[str, ...]]] = []  # (step, frozen groups from then on)
        self.done_steps = 0
        self.queue_position: int | None = None
        self.listeners: list[Callback] = []
        self.attached: list[Callback] = []  # callbacks bound to the training copy (statistics, probes)
        self.record_id: int | None = None
        self.recorder: JobRecorder | None = None
        self._declared: tuple[str, str] | None = None
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._last_frozen: tuple[str, ...] | None = None
        self._last_recorded = 0.0
        self._weights_model: Any = None
        self._weights_wanted = False
        self._weights: tuple[int, dict] | None = None

    # engine callbacks ---------------------------------------------------------------
    def on_step(self, info: StepInfo) -> None:
        with self._lock:
            self.steps.append((info.step, info.loss, info.accuracy, info.terms or None))
            self.done_steps = info.step + 1
            if info.frozen != self._last_frozen:
                self.freeze_events.append((info.step, info.frozen))
                self._last_frozen = info.frozen
        if self._weights_wanted and self._weights_model is not None:
            self._publish_weights(info.step)
        for cb in self.listeners:
            cb.on_step(info)
        now = time.monotonic()
        if self.recorder is not None and now - self._last_recorded >= self.PROGRESS_EVERY_S:
            self._last_recorded = now
            self._record("progress")

    def on_epoch(self, info: EpochInfo) -> None:
        with self._lock:
            self.epochs.append(asdict(info))
        if self._weights_model is not None:
            self._publish_weights(self.done_steps - 1)
        for cb in self.listeners:
            cb.on_epoch(info)
        self._record("progress")

    # weight snapshots ------------------------------------------------------------------
    def publish_weights_of(self, model: Any) -> None:
        """Let pages ask for copies of ``model``'s weights (taken in the training thread)."""
        self._weights_model = model

    def _publish_weights(self, step: int) -> None:
        state = {k: v.detach().to("cpu", copy=True) for k, v in self._weights_model.state_dict().items()}
        with self._lock:
            self._weights = (step, state)
            self._weights_wanted = False

    def request_weights(self) -> None:
        """Ask the training thread for a fresh snapshot at its next step (it also publishes one
        at every epoch end); read it with :meth:`weights`."""
        with self._lock:
            self._weights_wanted = True

    def weights(self) -> tuple[int, dict] | None:
        """The latest (step, state_dict copy) the training thread published, None before the
        first. Only reads: :meth:`request_weights` asks for a newer one."""
        with self._lock:
            return self._weights

    # state ---------------------------------------------------------------------------
    def declare(self, status: str, message: str = "") -> None:
        """Called by the work: how it ended (``done``, ``stopped`` or ``diverged``). The runner
        never overrides a declared state."""
        if status not in ENDED:
            raise ValueError(f"Not a final job state: {status!r}")
        self._declared = (status, message)

    @property
    def progress(self) -> float:
        if self.status == "done":
            return 1.0
        return min(self.done_steps / self.total_steps, 1.0)

    @property
    def running(self) -> bool:
        """True while queued, running or paused (the job still holds its workbench)."""
        return self.status in ACTIVE

    def _status_now(self) -> str:
        if self.status == "running" and self.control.waiting:
            return "paused"
        return self.status

    def view(self, *, steps: bool = True) -> dict[str, Any]:
        """A consistent copy of the job's state for drawing (``steps=False`` skips the step
        history; see :meth:`steps_since` for incremental reads)."""
        with self._lock:
            return {
                "uid": self.uid,
                "kind": self.kind,
                "description": self.description,
                "status": self._status_now(),
                "progress": self.progress,
                "message": self.message,
                "error": self.error,
                "steps": self.steps.items() if steps else [],
                "epochs": list(self.epochs),
                "freeze_events": list(self.freeze_events),
                "elapsed": (self.finished or time.time()) - self.started,
                "done_steps": self.done_steps,
                "total_steps": self.total_steps,
                "total_epochs": self.total_epochs,
                "queue_position": self.queue_position,
                "has_partial": self.partial is not None and self.kept is None,
                "partial_note": self.partial_note,
            }

    def steps_since(self, cursor: tuple[int, int] | None) -> tuple[tuple[int, int], list[tuple], bool]:
        """Step records after ``cursor`` (see :meth:`StepHistory.since`)."""
        with self._lock:
            return self.steps.since(cursor)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the job ends; True if it has."""
        if self._thread is not None:
            self._thread.join(timeout)
        return not self.running

    def stop(self) -> None:
        """Stop between steps (a queued job is cancelled; a paused one wakes up to stop)."""
        self.control.request_stop()
        self.control.resume()

    def _record(self, what: str) -> None:
        if self.recorder is None:
            return
        try:
            getattr(self.recorder, what)(self)
        except Exception:  # bookkeeping must never kill the work
            log.exception("could not record job %s %s", self.kind, what)


class ComputeBudget:
    """At most ``max_jobs`` jobs compute at once on this server; the others wait in a FIFO
    queue, know their place in it, and can be cancelled while they wait."""

    def __init__(self, max_jobs: int = 1) -> None:
        if max_jobs < 1:
            raise ValueError(f"max_jobs must be at least 1, got {max_jobs}")
        self.max_jobs = int(max_jobs)
        self._cond = threading.Condition()
        self._running: list[Job] = []
        self._queue: list[Job] = []

    def acquire(self, job: Job) -> bool:
        """Block until ``job`` may run; False if it was stopped while waiting."""
        with self._cond:
            self._queue.append(job)
            self._renumber()
            while True:
                if job.control.stop_requested:
                    self._queue.remove(job)
                    self._renumber()
                    self._cond.notify_all()
                    return False
                if self._queue[0] is job and len(self._running) < self.max_jobs:
                    self._queue.pop(0)
                    self._running.append(job)
                    job.queue_position = None
                    self._renumber()
                    self._cond.notify_all()
                    return True
                self._cond.wait(timeout=0.2)  # also wakes for a stop request

    def release(self, job: Job) -> None:
        with self._cond:
            if job in self._running:
                self._running.remove(job)
            self._cond.notify_all()

    def _renumber(self) -> None:
        for i, queued in enumerate(self._queue):
            queued.queue_position = i + 1

    def snapshot(self) -> dict[str, int]:
        with self._cond:
            return {"running": len(self._running), "queued": len(self._queue), "max_jobs": self.max_jobs}


class JobRunner:
    """Runs at most one :class:`Job` at a time for one owner (a workbench), in a daemon
    thread, under a shared :class:`ComputeBudget` when one is given."""

    def __init__(self, budget: ComputeBudget | None = None) -> None:
        self._lock = threading.Lock()
        self.budget = budget
        self.current: Job | None = None

    def start(self, job: Job, work: Callable[[Job], Any], *, recorder: JobRecorder | None = None,
              on_end: Callable[[Job], None] | None = None) -> Job:
        """Run ``work(job)`` in the background. Its return value becomes ``job.result``. The
        final state is what the work declared (:meth:`Job.declare`), else ``stopped`` when a
        stop was asked, else ``done``; an exception makes it ``failed`` with a one-line
        message (the traceback goes to the log). ``on_end(job)`` runs last, in the thread."""
        with self._lock:
            if self.current is not None and self.current.running:
                raise JobBusy(f"A {self.current.kind} job is still running ({self.current.description}); "
                              "stop it or wait for it first.")
            self.current = job
        job.recorder = recorder
        job._record("started")

        def run() -> None:
            acquired = False
            try:
                if self.budget is not None:
                    acquired = self.budget.acquire(job)
                    if not acquired:
                        with job._lock:
                            job.status, job.message = "stopped", "Cancelled while waiting in the queue."
                        return
                with job._lock:
                    job.status = "running"
                    job.started = time.time()
                job._record("progress")
                result = work(job)
                with job._lock:
                    job.result = result
                    if job._declared is not None:
                        job.status, message = job._declared
                        job.message = message or job.message
                    else:
                        job.status = "stopped" if job.control.stop_requested else "done"
            except Exception as exc:  # the page shows the message, never a traceback
                log.error("job %s failed:\n%s", job.kind, traceback.format_exc())
                with job._lock:
                    job.status = "failed"
                    job.error = f"{exc.__class__.__name__}: {exc}"
            finally:
                if acquired:
                    self.budget.release(job)
                job.finished = time.time()
                job._record("ended")
                if on_end is not None:
                    try:
                        on_end(job)
                    except Exception:
                        log.exception("job %s: on_end failed", job.kind)

        job._thread = threading.Thread(target=run, name=f"steerboard-{job.kind}-{job.uid}", daemon=True)
        job._thread.start()
        return job

    def dismiss_ended(self) -> Job | None:
        """Forget the current job if it has ended (its outcome no longer applies: e.g. another
        version was restored), so pages stop showing it; returns it, or None when there was
        none or it still runs."""
        with self._lock:
            job = self.current
            if job is None or job.running:
                return None
            self.current = None
            return job


def compute_plan(cpus: int | None = None) -> tuple[int, int]:
    """(training jobs at once, torch threads per job) for this machine.

    Small CNNs stop scaling beyond about 3 threads, and one core is left for the server
    (and, in demos, the browser drawing live charts: with every core busy, training slowed
    5-10x while a page watched it). 2 cores: 1 job x 1 thread; 4: 1 x 3; 8: 2 x 3; 16: 4 x 3.
    Override with STEERBOARD_MAX_JOBS and STEERBOARD_TORCH_THREADS.
    """
    cpus = cpus or os.cpu_count() or 2
    jobs = int(os.environ.get("STEERBOARD_MAX_JOBS") or max(1, cpus // 4))
    threads = int(os.environ.get("STEERBOARD_TORCH_THREADS") or max(1, min(3, (cpus - 1) // max(jobs, 1))))
    return max(1, jobs), max(1, threads)
