"""Feedback kinds: each is the annotations a person makes plus a loss term the engine adds
to the classification loss during a fine-tune (``term(model, batch) -> scalar``).

Every kind has the same small interface (:class:`FeedbackKind`), so the engine, the
workbench and a new page need no plumbing of their own for a new kind:

- ``name``: the key its annotations are stored under;
- ``annotation_type``: a dataclass of one annotation, with ``to_payload`` / ``from_payload``
  to and from the store's JSON;
- ``loss_term(data, annotations, settings)``: the term the engine adds during a fine-tune;
- ``describe(annotations)``: one line for the version's description;
- ``plan(data, annotations, settings)``: what a fine-tune trains with
  (:class:`~core.session.runs.KindPlan`: terms, weights, train set, description, feedback);
  :class:`CommonPlan` gives the common one (:func:`common_plan`).

A fine-tune starts with ``Workbench.start_training(kind, annotations, FineTune(config, settings))``.

| kind | annotation | loss term | paper |
|---|---|---|---|
| latent | :class:`~core.feedback.latent.loss.Move` | L2 of the projection to the target | seed 000 |
| selection | :class:`~core.feedback.selection.loss.Selected` | CE on the selected examples | seed 003 |
| attention | :class:`~core.feedback.attention.loss.AttentionAnnotation` | Grad-CAM barycentre + negative mass | seed 001 |
| grid | :class:`~core.feedback.grid.loss.GridAnnotation` | lambda x W-weighted squared input gradients (double backward) | seed 002 |
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import torch

from core.data.spec import ImageDataset
from core.engine import LossTerm
from core.session.runs import FineTune, KindPlan


@runtime_checkable
class FeedbackKind(Protocol):
    """One kind of feedback: its annotations, its loss term and how it describes itself."""

    name: str
    annotation_type: type

    def to_payload(self, annotation: Any) -> tuple[int, dict[str, Any]]:
        """(example id, JSON-able payload) for the store."""
        ...

    def from_payload(self, example_id: int, payload: dict[str, Any]) -> Any:
        """An annotation back from the store."""
        ...

    def loss_term(self, data: ImageDataset, annotations: Sequence[Any], settings: Any) -> LossTerm:
        """The term the engine adds to the classification loss during a fine-tune."""
        ...

    def describe(self, annotations: Sequence[Any]) -> str:
        """One line for the version's description."""
        ...

    def plan(self, data: ImageDataset, annotations: Sequence[Any], settings: FineTune) -> KindPlan:
        """The loss terms, weights, train set, description and feedback of a fine-tune
        (most kinds: :func:`common_plan`, through :class:`CommonPlan`)."""
        ...


def rehearsal_ids(data: ImageDataset, n: int, seed: int, exclude: Sequence[int] = ()) -> torch.Tensor:
    """``n`` rows of ``data``'s training split drawn at random under ``seed``, none of them in
    ``exclude`` (all of them when there are fewer): the labelled images a fine-tune on a few
    annotated ones also trains on, so that it keeps what the model knows (rehearsal). On the
    bundled shortcut sets, a round of 16 images alone took validation accuracy from 97 % to 87 %
    (decoy digits, results/issue28/demo_diag/)."""
    if n < 0:
        raise ValueError(f"the number of rehearsal images must be 0 or more; got {n}")
    train = torch.as_tensor(data.ids("train"), dtype=torch.long)
    if exclude is not None and len(exclude):
        train = train[~torch.isin(train, torch.as_tensor(list(exclude), dtype=torch.long))]
    if n == 0 or len(train) == 0:
        return torch.zeros(0, dtype=torch.long)
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(int(seed)))
    return train[order[:n]]


def with_rehearsal(data: ImageDataset, ids: Sequence[int] | torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """``ids`` (the annotated rows) followed by :func:`rehearsal_ids` of ``n`` other training rows
    under ``seed``: the rows a fine-tune on annotated images trains on."""
    ids = torch.as_tensor(ids, dtype=torch.long)
    if not n:
        return ids
    return torch.cat([ids, rehearsal_ids(data, int(n), seed, exclude=ids.tolist())])


def common_plan(kind: FeedbackKind, data: ImageDataset, annotations: Sequence[Any], settings: FineTune) -> KindPlan:
    """The common fine-tune of a kind: ``cls_weight`` x CE on the annotated images
    (``settings.on_annotated``; ValueError when there are none; with ``settings.rehearsal``
    training images besides, :func:`rehearsal_ids`) or on the training split, plus ``kind_weight`` x the kind's term (``settings.term`` or ``kind.loss_term``) unless
    ``settings.guidance`` is off. The feedback records the kind and the annotations' ids."""
    annotations = list(annotations)
    if settings.on_annotated and not annotations:
        raise ValueError("Confirm at least one annotation before fine-tuning.")
    terms: dict[str, LossTerm] = {}
    weights = {"cls": float(settings.cls_weight)}
    if settings.guidance:
        terms[kind.name] = settings.term if settings.term is not None else kind.loss_term(data, annotations,
                                                                                          settings.settings)
        weights[kind.name] = float(settings.kind_weight)
    ids = [int(a.example_id) for a in annotations]
    feedback = {"kind": kind.name, "annotations": len(annotations), "example_ids": ids,
                "guidance": bool(settings.guidance)}
    train = train_ids = None
    if settings.on_annotated:
        train_ids = with_rehearsal(data, ids, int(settings.rehearsal), settings.config.seed)
        if len(train_ids) > len(ids):
            feedback["rehearsal"] = len(train_ids) - len(ids)
        train = (data.images[train_ids], data.labels[train_ids])
    description = kind.describe(annotations)
    if feedback.get("rehearsal"):
        description = f"{description} + {feedback['rehearsal']} rehearsal images"
    return KindPlan(terms=terms, weights=weights, train=train, train_ids=train_ids,
                    description=description, feedback=feedback)


class PayloadCodec:
    """Mixin of a feedback kind whose annotation type stores itself: ``annotation.payload()``
    and ``annotation_type.from_payload(example_id, payload)``."""

    annotation_type: type

    def to_payload(self, annotation: Any) -> tuple[int, dict[str, Any]]:
        """(example id, JSON-able payload) for the store."""
        return int(annotation.example_id), annotation.payload()

    def from_payload(self, example_id: int, payload: dict[str, Any]) -> Any:
        """An annotation back from the store."""
        return self.annotation_type.from_payload(example_id, payload)


class CommonPlan:
    """Mixin of a feedback kind whose fine-tune is the common one (:func:`common_plan`)."""

    def plan(self, data: ImageDataset, annotations: Sequence[Any], settings: FineTune) -> KindPlan:
        """See :func:`common_plan`."""
        return common_plan(self, data, annotations, settings)  # type: ignore[arg-type]


def kinds() -> dict[str, FeedbackKind]:
    """Every feedback kind by name (imported here, not at module import: each pulls in its
    own dependencies)."""
    from core.feedback.attention.loss import FEEDBACK as attention
    from core.feedback.grid.loss import FEEDBACK as grid
    from core.feedback.latent.loss import FEEDBACK as latent
    from core.feedback.selection.loss import FEEDBACK as selection

    return {k.name: k for k in (latent, selection, attention, grid)}


def get_kind(name: str) -> FeedbackKind:
    """The feedback kind called ``name``; ``KeyError`` naming the known ones otherwise."""
    known = kinds()
    if name not in known:
        raise KeyError(f"Unknown feedback kind {name!r}; known: {', '.join(known)}.")
    return known[name]
