"""Grid feedback inside a workbench's training job (seed 002), without any UI: the Grid
feedback page drives these functions.

How a run goes:

1. :func:`start_grid_training` trains a copy of the current model in the background with
   CE + the grid penalty (:class:`core.feedback.grid.loss.GridPenalty`) and "pause at the end of
   each epoch" on. The penalty starts with the reviews of the version it starts from (so
   restoring a version restores its penalty set).
2. At each epoch end that has training after it, :class:`CandidateFinder` (a callback bound to
   the training copy, so it runs in the training thread before the engine pauses) picks the
   ``k`` uncertain mistakes to review and keeps a copy of that epoch's weights, so the page
   shows saliency maps of the model as it was when it paused.
3. The page shows them; each click is saved in the workbench's page state
   (:class:`PendingReview`, :func:`save_pending`), so a refresh or a second tab sees the
   same marks while the job waits.
4. :func:`continue_training` stores the marks as annotations (on disk), adds them to the
   penalty set and to the run's review record, then resumes the job. :func:`skip_review`
   records the review as skipped and resumes.
5. The version the run makes carries every review (``feedback["grid"]``), with the
   penalty set it ended with.
"""
from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np

from core.data.spec import ImageDataset
from core.engine import Callback, EpochInfo, TrainConfig
from core.feedback.grid.loss import (
    FEEDBACK as GRID,
    KIND,
    PER_STEP,
    SHARE,
    GridAnnotation,
    GridPenalty,
    GridSettings,
    default_grid,
)
from core.feedback.counterexamples import KIND as CEX, CounterexampleSettings
from core.feedback.grid.workflow import REVIEW_K, REVIEW_SAMPLERS, review_candidates
from core.session.runs import FineTune, JobOptions
from core.models.base import SteerableModel

SETTINGS_KEY = "grid"  # in the workbench's settings
PENDING_KEY = "grid.review"  # in the workbench's page state
JOB_KIND = "grid"
# Counterexamples off by default until benchmarks/grid_feedback.py's tuning seeds say otherwise
# (the option is one switch away on the page).
COUNTEREXAMPLES_ON = False


@dataclass(frozen=True)
class GridPageSettings:
    """The Grid feedback page's parameters, saved with the workbench. Defaults follow the
    paper (K = 10 entropy-sampled mistakes per epoch, a grid whose square is about 1/7 of
    the side, input gradients)."""

    epochs: int = 5
    lr: float = 0.005
    batch_size: int = 64
    k: int = REVIEW_K
    sampler: str = "entropy"
    n: int = 0  # squares per side; 0: core.feedback.grid.loss.default_grid for the image size
    method: str = "gradient"  # saliency shown while reviewing
    share: float = SHARE  # lambda: the penalty starts at this share of the CE
    opacity: float = 0.5
    top_percent: float = 10.0  # "all squares outside the saliency's top x%"
    penalty: bool = True  # the input-gradient penalty (off: counterexamples alone, when on)
    counterexamples: bool = COUNTEREXAMPLES_ON  # copies of each reviewed image, marked squares from other images
    cex_k: int = CounterexampleSettings.k

    def counterexample_settings(self, seed: int = 0) -> CounterexampleSettings:
        """The counterexamples this page's run adds (disabled when the option is off)."""
        return CounterexampleSettings(enabled=bool(self.counterexamples), k=int(self.cex_k), seed=int(seed))

    @classmethod
    def from_dict(cls, raw: dict[str, Any] | None) -> GridPageSettings:
        """Saved settings, ignoring keys this release does not know."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in (raw or {}).items() if k in known})

    def config(self, seed: int = 0, device: str | None = None) -> TrainConfig:
        """The run's optimiser and loop (the engine's other defaults)."""
        return TrainConfig(epochs=int(self.epochs), lr=float(self.lr), batch_size=int(self.batch_size), seed=int(seed),
                           device=device)

    def grid(self, shape: tuple[int, int]) -> int:
        """Squares per side for images of ``shape``: ``n`` when set and valid, else the default."""
        n = int(self.n)
        return n if 1 <= n <= min(shape) else default_grid(*shape)


def check_settings(s: GridPageSettings) -> list[str]:
    """What is wrong with ``s``, as sentences a user can act on (empty when nothing)."""
    problems = []
    if not 2 <= int(s.epochs) <= 200:
        problems.append("Epochs must be 2 to 200: reviews happen between epochs.")
    if not (0 < float(s.lr) <= 1):
        problems.append("The learning rate must be above 0 and at most 1.")
    if not 1 <= int(s.k) <= 100:
        problems.append("Show 1 to 100 mistakes per review.")
    if s.sampler not in REVIEW_SAMPLERS:
        problems.append(f"The review sampler must be one of {', '.join(REVIEW_SAMPLERS)}.")
    if not (float(s.share) > 0 and np.isfinite(float(s.share))):
        problems.append("The penalty's starting share of the loss must be above 0.")
    if s.counterexamples and not 1 <= int(s.cex_k) <= 64:
        problems.append("Make 1 to 64 counterexamples per reviewed image.")
    if not s.penalty and not s.counterexamples:
        problems.append("Turn on the penalty, the counterexamples or both: with neither, the marks would change nothing.")
    return problems


# ----------------------------------------------------------------------------- the penalty set of a version
def reviews_of_version(wb, number: int | None = None) -> list[GridAnnotation]:
    """The penalty set a version ended with (the reviews it inherited plus its run's), or
    none when it was not made by grid feedback."""
    number = wb.current_version if number is None else number
    grid = (wb.version(number).feedback or {}).get("grid") or {}
    payloads = list(grid.get("inherited", []))
    for review in grid.get("reviews", []):
        payloads.extend(review.get("annotations", []))
    latest: dict[int, GridAnnotation] = {}
    for p in payloads:
        try:
            a = GridAnnotation.from_payload(int(p["example_id"]), {k: v for k, v in p.items() if k != "example_id"})
        except (KeyError, TypeError, ValueError):
            continue  # an entry this release cannot read: left out, not fatal
        latest[a.example_id] = a
    return list(latest.values())


def _payload(a: GridAnnotation) -> dict[str, Any]:
    return {"example_id": a.example_id, **a.payload()}


# ----------------------------------------------------------------------------- in the training thread
class CandidateFinder(Callback):
    """At each epoch end that has training after it: the ``k`` mistakes to review (ranked
    by ``sampler``, never an image already in the penalty set or shown in an earlier review
    of this run) and a copy of the weights, in ``context["candidates"][epoch]``. Runs in
    the training thread, so the job is paused only once they are ready."""

    def __init__(self, model: SteerableModel, data: ImageDataset, context: dict, *, epochs: int, k: int,
                 sampler: str, seed: int = 0) -> None:
        self.model, self.data, self.context = model, data, context
        self.epochs, self.k, self.sampler, self.seed = int(epochs), int(k), sampler, int(seed)
        self.context.setdefault("candidates", {})

    def on_epoch(self, info: EpochInfo) -> None:
        if info.epoch + 1 >= self.epochs:
            return
        penalty: GridPenalty = self.context["penalty"]
        shown = [i for r in self.context.get("reviews", []) for i in r.get("ids", [])]
        exclude = {a.example_id for a in penalty.annotations()} | set(shown)
        t0 = time.perf_counter()
        ids = review_candidates(self.model, self.data, self.k, method=self.sampler, exclude=exclude,
                                seed=self.seed * 1000 + info.epoch)
        state = {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}
        self.context["candidates"][info.epoch] = {"ids": [int(i) for i in ids], "state": state,
                                                  "seconds": time.perf_counter() - t0}


def start_grid_training(wb, settings: GridPageSettings, *, seed: int | None = None):
    """Train a copy of the current model in the background with CE + the grid penalty,
    pausing at each epoch end for a review. Returns the job. ``ValueError`` with a sentence
    when the settings cannot run."""
    problems = check_settings(settings)
    if problems:
        raise ValueError(" ".join(problems))
    data: ImageDataset = wb.data
    inherited = reviews_of_version(wb)
    shape = tuple(data.image_shape[1:])
    inherited = [a for a in inherited if a.shape == shape]
    grid_settings = GridSettings(per_step=PER_STEP, share=float(settings.share))
    # the review set; also the loss term when the penalty is on (the page adds each review to it)
    penalty = GRID.loss_term(data, inherited, grid_settings)
    seed = int(time.time()) % 10_000 if seed is None else int(seed)
    config = settings.config(seed, wb.settings.get("device", "cpu"))
    reviews: list[dict[str, Any]] = []
    context: dict[str, Any] = {"penalty": penalty, "reviews": reviews, "settings": asdict(settings), "candidates": {},
                               "grid": settings.grid(shape)}
    feedback = {"grid": {"inherited": [_payload(a) for a in inherited], "reviews": reviews,
                         "settings": asdict(settings), "from_version": wb.current_version}}
    desc = (f"grid feedback: {settings.epochs} epochs, reviews at epoch ends"
            + (f", {len(inherited)} reviewed images from v{wb.current_version}" if inherited else ""))

    def attach(model: SteerableModel) -> list[Callback]:
        return [CandidateFinder(model, data, context, epochs=config.epochs, k=int(settings.k),
                                sampler=settings.sampler, seed=seed)]

    fine_tune = FineTune(config, grid_settings, guidance=bool(settings.penalty),
                         counterexamples=settings.counterexample_settings(seed), on_annotated=False,
                         feedback=feedback, description=desc, term=penalty)
    return wb.start_training(GRID, inherited, fine_tune,
                             JobOptions(kind=JOB_KIND, attach=attach, pause_at_epoch_end=True, context=context))


def job_token(job) -> str:
    """A name for ``job`` that stays the same across reruns and tabs (its store record)."""
    return f"job-{job.record_id if job.record_id is not None else id(job)}"


def waiting_epoch(job) -> int | None:
    """The epoch (0-based) whose end ``job`` is waiting at for a review, or None."""
    if job is None or job.kind != JOB_KIND or not job.running or not job.control.waiting:
        return None
    found = job.context.get("candidates", {})
    epochs = [e for e in found if not any(r.get("epoch") == e for r in job.context.get("reviews", []))]
    return max(epochs) if epochs else None


# ----------------------------------------------------------------------------- the review while the job waits
@dataclass
class PendingReview:
    """The review on screen: which images, the squares marked so far (with undo), when it was
    first shown and the clicks made. Saved in the workbench's page state after every change,
    so a refresh or another tab continues it."""

    job: str
    epoch: int
    ids: list[int]
    n: int
    method: str = "gradient"
    marks: dict[str, list[int]] = field(default_factory=dict)
    undo: dict[str, list[list[int]]] = field(default_factory=dict)
    operations: dict[str, int] = field(default_factory=dict)
    shown_at: float = field(default_factory=time.time)
    current: int = 0  # which image the review shows (index into ids)

    def squares(self, example_id: int) -> list[int]:
        return list(self.marks.get(str(int(example_id)), []))

    def set_squares(self, example_id: int, squares: Sequence[int]) -> None:
        """Replace an image's marks (keeps the old ones for undo, counts one operation)."""
        key = str(int(example_id))
        new = sorted({int(s) for s in squares})
        old = self.squares(example_id)
        if new == old:
            return
        self.undo.setdefault(key, []).append(old)
        self.marks[key] = new
        self.operations[key] = self.operations.get(key, 0) + 1

    def toggle(self, example_id: int, square: int) -> None:
        old = self.squares(example_id)
        self.set_squares(example_id, [s for s in old if s != square] if square in old else old + [int(square)])

    def undo_last(self, example_id: int) -> bool:
        key = str(int(example_id))
        stack = self.undo.get(key) or []
        if not stack:
            return False
        self.marks[key] = stack.pop()
        self.operations[key] = self.operations.get(key, 0) + 1
        return True

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> PendingReview:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in known})


def load_pending(wb, job) -> PendingReview | None:
    """The review saved for the epoch ``job`` waits at, or a new one (saved at once, so its
    clock starts now for every tab); None when the job is not waiting for a review."""
    epoch = waiting_epoch(job)
    if epoch is None:
        return None
    raw = wb.get_state(PENDING_KEY)
    if raw and raw.get("job") == job_token(job) and raw.get("epoch") == epoch:
        try:
            return PendingReview.from_dict(raw)
        except TypeError:
            pass  # an unreadable saved review: start this one again
    found = job.context["candidates"][epoch]
    settings = GridPageSettings.from_dict(job.context.get("settings"))
    pending = PendingReview(job_token(job), epoch, list(found["ids"]), int(job.context["grid"]), settings.method)
    save_pending(wb, pending)
    return pending


def save_pending(wb, pending: PendingReview | None) -> None:
    wb.put_state(PENDING_KEY, None if pending is None else asdict(pending))


def review_model(wb, job, epoch: int) -> SteerableModel:
    """The model as it was when ``job`` paused after ``epoch`` (for the saliency maps)."""
    model = copy.deepcopy(wb.model)
    model.load_state_dict(job.context["candidates"][epoch]["state"])
    return model.eval()


def _annotations(wb, pending: PendingReview, now: float) -> list[GridAnnotation]:
    data: ImageDataset = wb.data
    shape = tuple(data.image_shape[1:])
    seconds = round(max(0.0, now - pending.shown_at), 3)
    out = []
    for i in pending.ids:
        squares = pending.squares(i)
        if squares:
            out.append(GridAnnotation(int(i), int(data.labels[int(i)]), shape, pending.n, tuple(squares),
                                      pending.method, pending.epoch, seconds / max(1, len(pending.ids)),
                                      pending.operations.get(str(int(i)), 0), {"job": pending.job}))
    return out


def continue_training(wb, job, pending: PendingReview, *, now: float | None = None) -> list[GridAnnotation]:
    """Store the marked images as annotations (on disk first), add them to the penalty set
    and the run's review record, and resume the job. Images left unmarked are recorded as
    reviewed but add no penalty. Returns the new annotations."""
    now = time.time() if now is None else now
    anns = _annotations(wb, pending, now)
    if anns:
        replaced = {a.example_id for a in anns}
        kept = [(a.example_id, a.payload) for a in wb.annotations(KIND) if a.example_id not in replaced]
        wb.replace_annotations(KIND, kept + [GRID.to_payload(a) for a in anns])
    if anns:
        job.context["penalty"].add(anns)
        if CEX in job.context.get("terms", {}):
            job.context["terms"][CEX].add(anns)
    _record(job, pending, anns, now, skipped=False)
    save_pending(wb, None)
    job.control.resume()
    return anns


def skip_review(wb, job, pending: PendingReview, *, now: float | None = None) -> None:
    """Resume without feedback (the review is recorded as skipped)."""
    _record(job, pending, [], time.time() if now is None else now, skipped=True)
    save_pending(wb, None)
    job.control.resume()


def _record(job, pending: PendingReview, anns: list[GridAnnotation], now: float, *, skipped: bool) -> None:
    penalty: GridPenalty = job.context["penalty"]
    job.context["reviews"].append({
        "epoch": pending.epoch, "ids": list(pending.ids), "method": pending.method, "grid": pending.n,
        "seconds": round(max(0.0, now - pending.shown_at), 3), "skipped": skipped,
        "operations": int(sum(pending.operations.values())),
        "annotations": [_payload(a) for a in anns],
        "penalty_size": len(penalty),
    })


def review_records(wb, number: int | None = None) -> list[dict[str, Any]]:
    """The reviews recorded in a version's feedback (one per epoch end), for display and download."""
    number = wb.current_version if number is None else number
    return list(((wb.version(number).feedback or {}).get("grid") or {}).get("reviews", []))
