"""The small argument lists of a workbench run (:meth:`core.session.workbench.Workbench.train`
and :meth:`~core.session.workbench.Workbench.start_training`):

- :class:`JobOptions`: how the background job runs (its description, kind, listeners, freezing...);
- :class:`FineTune`: a fine-tune's settings (config, the kind's own settings, weights, counterexamples);
- :class:`KindPlan`: what a feedback kind makes of its annotations (loss terms, weights, the
  train set when not the training split, a description and the feedback to store).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from core.engine import Callback, LossTerm, TrainConfig

if TYPE_CHECKING:
    from core.feedback.counterexamples import CounterexampleSettings
    from core.models import SteerableModel


@dataclass(frozen=True)
class JobOptions:
    """How a workbench's background job runs.

    ``description``: the job's and the new version's line (a fine-tune's kind supplies one
    when empty). ``kind``: the job's kind (pages tell their jobs apart by it). ``listeners``:
    callbacks on every step and epoch. ``keep_if_stopped``: a stopped run still makes a
    version. ``frozen``: layer groups frozen from the first step. ``attach(model)``: callbacks
    bound to the training copy (kept in ``job.attached``). ``pause_at_epoch_end``: wait for
    Resume after each epoch. ``context``: kept in ``job.context`` for the pages.
    ``start_version``: train a copy of that version instead of the current one."""

    description: str = ""
    kind: str = "train"
    listeners: Sequence[Callback] = ()
    keep_if_stopped: bool = False
    frozen: Sequence[str] = ()
    attach: Callable[["SteerableModel"], Sequence[Callback]] | None = None
    pause_at_epoch_end: bool = False
    context: dict[str, Any] | None = None
    start_version: int | None = None


@dataclass(frozen=True)
class FineTune:
    """A fine-tune with a feedback kind: ``config`` and the kind's own ``settings``; the loss is
    ``cls_weight`` x CE + ``kind_weight`` x the kind's term (``guidance=False`` leaves the term
    out) + the counterexamples' term when ``counterexamples`` is enabled. ``on_annotated``: the
    CE runs on the annotated images only (else on the training split), plus ``rehearsal``
    training images drawn at random under the config's seed (:func:`core.feedback.rehearsal_ids`:
    a small round then does not undo what the model knows). ``feedback``: extra
    keys for the version's feedback; ``description``: instead of the kind's; ``term``: the
    kind's term when the caller built it already (one it adds to while the job waits)."""

    config: TrainConfig
    settings: Any = None
    guidance: bool = True
    counterexamples: "CounterexampleSettings | None" = None
    cls_weight: float = 1.0
    kind_weight: float = 1.0
    on_annotated: bool = True
    rehearsal: int = 0
    feedback: Mapping[str, Any] = field(default_factory=dict)
    description: str | None = None
    term: LossTerm | None = None


@dataclass(frozen=True)
class KindPlan:
    """What a run trains with besides its config: extra loss ``terms`` and their ``weights``
    (``"cls"``: the classification loss), the ``train`` set and its ``train_ids`` when not the
    training split, a ``description`` and the ``feedback`` the version stores."""

    terms: Mapping[str, LossTerm] = field(default_factory=dict)
    weights: Mapping[str, float] = field(default_factory=dict)
    train: tuple[torch.Tensor, torch.Tensor] | None = None
    train_ids: torch.Tensor | None = None
    description: str = ""
    feedback: Mapping[str, Any] = field(default_factory=dict)
