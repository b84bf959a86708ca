"""Counterexamples from "ignore this" marks (CAIPI, Teso & Kersting, AIES 2019; Schramowski et
al., Nature Machine Intelligence 2020): when a person says a region of an image does not matter,
the fine-tune also sees copies of the image in which that region is replaced by the same region
of other training images, with the label kept. A spatial penalty (click loss, grid penalty) can
only fence a local shortcut off; a counterexample breaks the shortcut in the data itself, so it
also works on a colour or a texture that surrounds the object.

It rides on any kind whose marks say "ignore this":

- attention clicks: the negative superpixels, and in polygon mode everything outside the polygon;
- grid marks: the marked squares.

:class:`CounterexampleTerm` is a loss term like the others (``term(model, batch) -> scalar``):
the cross-entropy of a rotating window of the copies, so it combines with the page's own loss
and can grow while a run waits at an epoch end (the grid page adds each review's copies).
"""
from __future__ import annotations

import math
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from core.engine import Batch
from core.models.base import SteerableModel

KIND = "counterexamples"
FILLS = ("donor",)


@dataclass(frozen=True)
class CounterexampleSettings:
    """Whether and how the fine-tune adds counterexamples of the marks.

    ``k`` copies of each annotated image; ``fill`` "donor": the marked pixels come from the
    same pixels of another training image drawn at random (a fill from the donor's background
    only measured no better: results/issue28/background_fill/). ``per_step`` copies enter each
    training step's term; ``weight`` is the term's weight against the CE of the batch.
    Defaults chosen on the tuning seeds of ``benchmarks/attention_guidance.py``.
    """

    enabled: bool = True
    k: int = 4
    fill: str = "donor"
    per_step: int = 32
    weight: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not (isinstance(self.k, int) and 1 <= self.k <= 64):
            raise ValueError(f"counterexamples per image must be a whole number from 1 to 64; got {self.k}")
        if self.fill not in FILLS:
            raise ValueError(f"unknown fill {self.fill!r}; use one of {', '.join(FILLS)}")
        if not (math.isfinite(self.weight) and self.weight >= 0):
            raise ValueError(f"the counterexamples' weight must be a non-negative number; got {self.weight}")

    def to_dict(self) -> dict[str, Any]:
        return {"enabled": self.enabled, "k": self.k, "fill": self.fill, "per_step": self.per_step,
                "weight": self.weight, "seed": self.seed}

    @classmethod
    def from_dict(cls, raw: dict[str, Any] | None) -> "CounterexampleSettings":
        """Saved settings, ignoring keys this release does not know; None means off."""
        if not raw:
            return cls(enabled=False)
        known = {"enabled", "k", "fill", "per_step", "weight", "seed"}
        return cls(**{k: v for k, v in raw.items() if k in known})


def ignore_mask(annotation: Any) -> np.ndarray:
    """The pixels an annotation says to ignore, (H, W) bool: an attention annotation's negative
    superpixels (and, in polygon mode, everything outside the polygon); a grid annotation's
    marked squares."""
    from core.feedback.attention.loss import AttentionAnnotation
    from core.feedback.grid.loss import GridAnnotation

    if isinstance(annotation, AttentionAnnotation):
        mask = annotation.negative_mask().copy()
        inside = annotation.inside_mask()
        if inside is not None:
            mask |= ~inside
        return mask
    if isinstance(annotation, GridAnnotation):
        return annotation.weights() > 0
    raise TypeError(f"{type(annotation).__name__} has no 'ignore this' marks")


def make_counterexamples(images: torch.Tensor, labels: torch.Tensor, marks: torch.Tensor | np.ndarray,
                         donors: torch.Tensor, *, k: int, seed: int = 0,
                         source_rows: torch.Tensor | None = None,
                         donor_rows: torch.Tensor | None = None,
                         donor_index: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``k`` copies of each image (N, C, H, W) whose pixels under ``marks`` (N, H, W) are the
    same pixels of a donor drawn at random from ``donors`` (M, C, H, W); every other pixel and
    every label is kept. Returns (copies (N*k, C, H, W), labels (N*k,), index of each copy's
    source image (N*k,)). Deterministic under ``seed``.

    ``donor_index``: draw only from these rows of ``donors``, so a caller can pass a whole
    dataset without copying a split out of it (only the drawn rows are read).
    ``source_rows`` / ``donor_rows`` (dataset row ids of the images and of the donors drawn from)
    keep an image from being its own donor when it is among them.
    """
    n = len(images)
    if len(labels) != n or len(marks) != n:
        raise ValueError(f"{n} images, {len(labels)} labels and {len(marks)} marks: they must match")
    n_donors = len(donors) if donor_index is None else len(donor_index)
    if n_donors == 0:
        raise ValueError("counterexamples need at least one donor image")
    m = torch.as_tensor(np.asarray(marks) if not torch.is_tensor(marks) else marks).to(torch.bool)
    if m.shape != (n, *images.shape[-2:]):
        raise ValueError(f"marks of shape {tuple(m.shape)} do not match images of shape {tuple(images.shape)}")
    gen = torch.Generator().manual_seed(int(seed))
    source = torch.arange(n).repeat_interleave(int(k))
    pick = torch.randint(0, n_donors, (len(source),), generator=gen)
    if source_rows is not None and donor_rows is not None and n_donors > 1:
        same = donor_rows[pick] == source_rows[source]
        # a copy whose donor is its own image would change nothing: take the next donor instead
        pick = torch.where(same, (pick + 1) % n_donors, pick)
    drawn = donors[pick] if donor_index is None else donors[donor_index[pick]]
    copies = torch.where(m[source][:, None], drawn, images[source])
    return copies, labels[source].clone(), source


class CounterexampleTerm:
    """Loss term: mean cross-entropy of this step's counterexamples (a rotating window of
    ``per_step`` copies, all when there are fewer), 0 with no graph while there are none.

    ``images``: the dataset's images by row id; ``donor_ids``: rows donors are drawn from (the
    training split). :meth:`add` makes ``k`` copies of each annotation's image from its
    :func:`ignore_mask` (an image annotated again replaces its copies) and is thread-safe, so a
    page can add reviews while a job waits. The copies are forwarded in the model's current
    mode, like the CE batch.
    """

    def __init__(self, images: torch.Tensor, donor_ids: Sequence[int] | np.ndarray, annotations: Iterable[Any] = (),
                 settings: CounterexampleSettings = CounterexampleSettings()) -> None:
        self.images = images
        self.donor_ids = torch.as_tensor(np.asarray(donor_ids, dtype=np.int64))
        if len(self.donor_ids) == 0:
            raise ValueError("counterexamples need training images to draw donors from")
        self.settings = settings
        self._lock = threading.Lock()
        self._copies: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._x: torch.Tensor | None = None
        self._y: torch.Tensor | None = None
        self._cursor = 0
        self.add(annotations)

    def __len__(self) -> int:
        """Number of counterexamples held."""
        with self._lock:
            return 0 if self._x is None else len(self._x)

    def add(self, annotations: Iterable[Any]) -> int:
        """Make the copies of ``annotations`` (those with no marks add none); returns how many
        counterexamples the term holds now."""
        made = []
        for a in annotations:
            mask = ignore_mask(a)
            if not mask.any():
                continue
            row = torch.tensor([int(a.example_id)])
            # each image's own stream, so its copies do not depend on what was added before it;
            # donor_index: only the k drawn donors are read, not the whole split copied per image
            copies, ys, _ = make_counterexamples(
                self.images[row], torch.tensor([int(a.label)]), mask[None], self.images,
                k=self.settings.k, seed=self.settings.seed * 1_000_003 + int(a.example_id),
                source_rows=row, donor_rows=self.donor_ids, donor_index=self.donor_ids)
            made.append((int(a.example_id), copies, ys))
        with self._lock:
            for example_id, copies, ys in made:
                self._copies[example_id] = (copies, ys)
            if self._copies:
                self._x = torch.cat([c for c, _ in self._copies.values()])
                self._y = torch.cat([y for _, y in self._copies.values()])
            return 0 if self._x is None else len(self._x)

    def _next(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        with self._lock:
            x, y = self._x, self._y
            if x is None:
                return None
            n, per = len(x), max(1, int(self.settings.per_step))
            if n <= per:
                return x, y
            idx = torch.arange(self._cursor, self._cursor + per) % n
            self._cursor = (self._cursor + per) % n
        return x[idx], y[idx]

    def __call__(self, model: SteerableModel, batch: Batch) -> torch.Tensor:
        chosen = self._next()
        if chosen is None:
            return torch.zeros((), device=batch.logits.device)
        x, y = chosen
        device = batch.logits.device
        return F.cross_entropy(model(x.to(device)), y.to(device))


def counterexample_term(data: Any, annotations: Iterable[Any], settings: CounterexampleSettings,
                        donor_split: str = "train") -> CounterexampleTerm:
    """The term for ``data`` (an ImageDataset): donors from its ``donor_split``."""
    return CounterexampleTerm(data.images, data.ids(donor_split), annotations, settings)


def describe(settings: CounterexampleSettings, count: int | None = None) -> str:
    """A clause for a version's description."""
    if not settings.enabled:
        return ""
    made = f", {count} made" if count is not None else ""
    return f"+ counterexamples ({settings.k} per marked image{made})"


def feedback_line(feedback: Any) -> str | None:
    """One short line saying how a version's fine-tune used counterexamples, from its feedback
    (``feedback["counterexamples"]``: settings plus "made", or None when off); None for a
    version made without the option (older ones, other kinds)."""
    if not isinstance(feedback, dict) or "counterexamples" not in feedback:
        return None
    rec = feedback["counterexamples"]
    if not rec:
        return "Counterexamples: off."
    made = rec.get("made")
    return f"Counterexamples: {rec.get('k')} per marked image" + (f", {made} made." if made is not None else ".")
