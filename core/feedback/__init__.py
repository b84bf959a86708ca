"""Feedback kinds: each is the annotations a person makes plus a loss term the engine adds
to the classification loss during a fine-tune (``term(model, batch) -> scalar``).

Every kind has the same small interface (:class:`FeedbackKind`), so the engine, the
workbench and a new page need no plumbing of their own for a new kind:

- ``name``: the key its annotations are stored under;
- ``annotation_type``: a dataclass of one annotation, with ``to_payload`` / ``from_payload``
  to and from the store's JSON;
- ``loss_term(data, annotations, settings)``: the term the engine adds during a fine-tune;
- ``describe(annotations)``: one line for the version's description.

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

from core.data.spec import ImageDataset
from core.engine import LossTerm


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
