"""Latent moves (seed 000): a person moves points on the 2D map; the network is
fine-tuned so that the projection branch puts each moved example at its target.

Loss = w_cls * CE(training batch) + w_dis * mean ||branch(features(x_moved)) - target||_2
(paper defaults w_cls 0.89, w_dis 0.11, SGD lr 0.04, momentum 0.9, 1-3 epochs). The moved
examples' labels are not used unless asked for. Two variants beyond the paper:

- "implied-label" adds CE toward the class whose region each point was moved into: the
  label the user implied by the move;
- "lifted" (the default) uses no label either: it lifts each 2D target into feature space (the mean
  features of the map's points nearest to it) and adds a normalised L2 toward that.
  On Quick Draw the 2D axes hold about half of the feature variance, so a point can reach
  its 2D target while the classifier, which reads every feature, still says the old class;
  the lifted target moves the rest of the features too.
"""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy.spatial import cKDTree

from core.data.spec import ImageDataset
from core.engine import Batch
from core.models.base import SteerableModel
from core.feedback import PayloadCodec
from core.feedback.latent.projection import ProjectionBranch
from core.session.runs import FineTune, KindPlan

KIND = "latent"
PAPER_WEIGHTS = {"cls": 0.89, "latent": 0.11}
PAPER_LR = 0.04
PAPER_MOMENTUM = 0.9
# Weight of the implied-label CE inside the latent term. At 1.0 it fixed every moved Quick Draw
# example but cost 0.33 test points against the CE-only baseline; 0.25 fixed them all too.
IMPLIED_WEIGHT = 0.25
# "lifted" is the default: it uses no labels, as the paper asks, and on Quick Draw it gets far
# more of the moved examples right than the paper's 2D-only loss (a fit figure: the fine-tune saw
# them). On held-out test examples of the moved pairs it does not beat CE on the same examples on
# every seed: see the README's results table (benchmarks/latent_editing.py).
VARIANTS = ("lifted", "paper", "implied-label")
DEFAULT_VARIANT = VARIANTS[0]


@dataclass(frozen=True)
class Move:
    """Example ``example_id`` moved from ``source`` to ``target`` (map coordinates)."""

    example_id: int
    source: tuple[float, float]
    target: tuple[float, float]

    def __post_init__(self) -> None:  # plain floats: numpy scalars do not serialise to JSON
        object.__setattr__(self, "example_id", int(self.example_id))
        object.__setattr__(self, "source", (float(self.source[0]), float(self.source[1])))
        object.__setattr__(self, "target", (float(self.target[0]), float(self.target[1])))

    def payload(self) -> dict[str, Any]:
        return {"source": list(self.source), "target": list(self.target)}

    @classmethod
    def from_payload(cls, example_id: int, payload: dict[str, Any]) -> "Move":
        return cls(int(example_id), tuple(payload["source"]), tuple(payload["target"]))  # type: ignore[arg-type]


@dataclass
class MoveList:
    """The moves of one editing session, with undo and redo.

    Moving a point again replaces its target and keeps its original source. Every change
    pushes the previous list on the undo stack and clears the redo stack.
    """

    moves: dict[int, Move] = field(default_factory=dict)
    undo_stack: list[dict[int, Move]] = field(default_factory=list)
    redo_stack: list[dict[int, Move]] = field(default_factory=list)

    def _push(self) -> None:
        self.undo_stack.append(dict(self.moves))
        self.redo_stack.clear()

    def add(self, moves: list[Move]) -> None:
        """Record one gesture (one or several points moved together) as one undo step."""
        if not moves:
            return
        self._push()
        for m in moves:
            old = self.moves.get(m.example_id)
            source = old.source if old is not None else m.source
            self.moves[m.example_id] = Move(m.example_id, source, m.target)

    def remove(self, example_ids: list[int]) -> None:
        if any(i in self.moves for i in example_ids):
            self._push()
            for i in example_ids:
                self.moves.pop(i, None)

    def clear(self) -> None:
        if self.moves:
            self._push()
            self.moves = {}

    def reset_history(self, keep: list[Move] | tuple[Move, ...] = ()) -> None:
        """Start over with only ``keep`` and no undo or redo history. For moves that were
        applied (an Update made a version from them) or that belong to a model the page left
        (Reset): their coordinates are those of an older projection, so Undo must not bring
        them back; ``keep`` are moves still to apply."""
        self.moves = {m.example_id: m for m in keep}
        self.undo_stack, self.redo_stack = [], []

    def undo(self) -> bool:
        if not self.undo_stack:
            return False
        self.redo_stack.append(dict(self.moves))
        self.moves = self.undo_stack.pop()
        return True

    def redo(self) -> bool:
        if not self.redo_stack:
            return False
        self.undo_stack.append(dict(self.moves))
        self.moves = self.redo_stack.pop()
        return True

    def items(self) -> list[tuple[int, dict[str, Any]]]:
        """(example id, payload) pairs for the store."""
        return [(m.example_id, m.payload()) for m in self.moves.values()]

    @classmethod
    def from_items(cls, items: list[tuple[int, dict[str, Any]]]) -> "MoveList":
        return cls({int(i): Move.from_payload(i, p) for i, p in items})

    def to_json(self) -> dict[str, Any]:
        return {"moves": [asdict(m) for m in self.moves.values()]}

    def __len__(self) -> int:
        return len(self.moves)


class LatentMoveLoss:
    """Loss term: mean L2 distance between the branch's output for the moved examples and
    their targets (plus, in the implied-label variant, CE toward the implied classes).

    The moved examples are forwarded once per training step, in the model's current mode,
    so the gradient reaches every unfrozen layer of the backbone.
    """

    def __init__(self, branch: ProjectionBranch, images: torch.Tensor, targets: torch.Tensor,
                 implied_labels: torch.Tensor | None = None, implied_weight: float = IMPLIED_WEIGHT,
                 feature_targets: torch.Tensor | None = None) -> None:
        if len(images) != len(targets) or len(images) == 0:
            raise ValueError("LatentMoveLoss needs at least one moved example and one target per example.")
        self.branch = copy.deepcopy(branch).requires_grad_(False)
        self.images = images
        self.targets = targets.float()
        self.implied_labels = implied_labels
        self.implied_weight = implied_weight
        self.feature_targets = None if feature_targets is None else feature_targets.float()

    def __call__(self, model: SteerableModel, batch: Batch) -> torch.Tensor:
        device = batch.x.device
        self.branch.to(device)
        feats = model.features(self.images.to(device))
        out = self.branch(feats)
        # sqrt of a sum of squares with a small epsilon: the L2 norm stays differentiable at 0
        dist = ((out - self.targets.to(device)).pow(2).sum(1) + 1e-8).sqrt().mean()
        if self.feature_targets is not None:
            ft = self.feature_targets.to(device)
            # normalised by the targets' mean norm, so it weighs like the 2D distance
            dist = dist + ((feats - ft).pow(2).sum(1) + 1e-8).sqrt().mean() / ft.norm(dim=1).mean().clamp_min(1e-8)
        if self.implied_labels is None:
            return dist
        ce = F.cross_entropy(model.head(feats), self.implied_labels.to(device))
        return dist + self.implied_weight * ce


def implied_labels(targets: np.ndarray, coords: np.ndarray, predicted: np.ndarray, k: int = 10) -> np.ndarray:
    """The class whose region each target lies in: the majority predicted class among the
    ``k`` map points nearest to it (the colour the user sees around the target)."""
    targets = np.asarray(targets, dtype=np.float64)
    d = ((targets[:, None, :] - np.asarray(coords)[None, :, :]) ** 2).sum(-1)
    near = np.argsort(d, axis=1)[:, :k]
    votes = np.asarray(predicted)[near]
    return np.array([np.bincount(v).argmax() for v in votes], dtype=np.int64)


def lift_targets(targets: np.ndarray, coords: np.ndarray, features: np.ndarray, k: int = 20) -> np.ndarray:
    """Each 2D target lifted into feature space: the mean features of the ``k`` map
    points nearest to it."""
    d = ((np.asarray(targets, np.float64)[:, None, :] - np.asarray(coords)[None, :, :]) ** 2).sum(-1)
    near = np.argsort(d, axis=1)[:, :k]
    return np.asarray(features)[near].mean(1).astype(np.float32)


def class_centroids(coords: np.ndarray, labels: np.ndarray, predicted: np.ndarray | None, num_classes: int) -> np.ndarray:
    """Map centroid of each class, over the points of that class the model gets right
    (all points of the class when it gets none right); NaN for absent classes."""
    out = np.full((num_classes, 2), np.nan)
    for c in range(num_classes):
        mask = labels == c
        if predicted is not None and (mask & (predicted == c)).any():
            mask &= predicted == c
        if mask.any():
            out[c] = coords[mask].mean(0)
    return out


def candidates(coords: np.ndarray, probs: np.ndarray, labels: np.ndarray, *, k: int = 10, top: int = 20) -> dict[str, np.ndarray]:
    """Indices (into ``coords``) worth a look: ``uncertain`` (smallest margin between the top
    two class probabilities) and ``foreign`` (most of the ``k`` nearest neighbours on the map
    have another true class), ``top`` of each. Neighbours come from a k-d tree, so thousands
    of points take milliseconds (a full distance matrix of 5,000 points took seconds and 400 MB)."""
    coords = np.asarray(coords, dtype=np.float64)
    srt = np.sort(probs, axis=1)
    margin = srt[:, -1] - srt[:, -2]
    uncertain = np.argsort(margin, kind="stable")[:top]
    n = len(coords)
    if n < 2:
        return {"uncertain": uncertain, "foreign": np.zeros(0, dtype=np.int64)}
    kk = min(k, n - 1)
    _, near = cKDTree(coords).query(coords, k=kk + 1)
    near = np.atleast_2d(near)
    # each point's own row is among its k + 1 nearest (first, unless it has duplicates): drop it
    is_self = near == np.arange(n)[:, None]
    drop = np.where(is_self.any(1), is_self.argmax(1), kk)
    keep = np.ones_like(near, dtype=bool)
    keep[np.arange(n), drop] = False
    near = near[keep].reshape(n, kk)
    foreign_share = (labels[near] != labels[:, None]).mean(1)
    foreign = np.argsort(-foreign_share, kind="stable")[:top]
    foreign = foreign[foreign_share[foreign] > 0.5]
    return {"uncertain": uncertain, "foreign": foreign}


@dataclass
class LatentContext:
    """What the latent loss needs besides the moves: the projection branch and the map
    view the moves were made in (pool coordinates, predictions and features)."""

    branch: ProjectionBranch
    coords: np.ndarray
    preds: np.ndarray
    features: np.ndarray | None = None
    variant: str = DEFAULT_VARIANT


class LatentKind(PayloadCodec):
    """The latent-moves feedback kind (see :class:`core.feedback.FeedbackKind`)."""

    name = KIND
    annotation_type = Move

    def loss_term(self, data, annotations: list[Move], settings: LatentContext) -> LatentMoveLoss:
        """The latent term for the moves; the implied-label variant also uses the class whose
        region each point was moved into (majority predicted class around the target), the
        lifted variant the mean features of the points around the target."""
        if settings.variant not in VARIANTS:
            raise ValueError(f"Unknown variant {settings.variant!r}; use one of {', '.join(VARIANTS)}.")
        if not annotations:
            raise ValueError("Move at least one point before pressing Update.")
        ids = np.array([m.example_id for m in annotations], dtype=np.int64)
        targets = np.array([m.target for m in annotations], dtype=np.float32)
        implied = lifted = None
        if settings.variant == "implied-label":
            implied = torch.as_tensor(implied_labels(targets, settings.coords, settings.preds))
        elif settings.variant == "lifted":
            if settings.features is None:
                raise ValueError("The lifted variant needs the pool features of the current view.")
            lifted = torch.as_tensor(lift_targets(targets, settings.coords, settings.features))
        return LatentMoveLoss(settings.branch, data.images[torch.as_tensor(ids)], torch.as_tensor(targets), implied,
                              feature_targets=lifted)

    def describe(self, annotations: list[Move]) -> str:
        return f"latent edit: {len(annotations)} move{'s' if len(annotations) != 1 else ''}"

    def plan(self, data: ImageDataset, annotations: list[Move], settings: FineTune) -> KindPlan:
        """``cls_weight`` x CE on the training split + ``kind_weight`` x the latent term of the
        moves (``settings.settings``: the :class:`LatentContext` they were made in)."""
        context: LatentContext = settings.settings
        term = settings.term if settings.term is not None else self.loss_term(data, annotations, context)
        weights = {"cls": settings.cls_weight, KIND: settings.kind_weight}
        return KindPlan(terms={KIND: term}, weights=weights,
                        description=f"latent edit: {len(annotations)} moves ({context.variant})",
                        feedback={"kind": KIND, "variant": context.variant, "weights": dict(weights)})


FEEDBACK = LatentKind()
