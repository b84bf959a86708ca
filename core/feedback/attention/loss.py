"""Attention clicks (seed 001, He et al.): a person left-clicks the centre of the object the
model should look at (positive points) and right-clicks the superpixels it should ignore
(negative regions), or draws a polygon around the object (the paper's user-study baseline);
the model is fine-tuned so that its Grad-CAM follows.

Loss = w_g * (loss_pos + loss_neg) + w_c * CE (paper defaults w_g 0.75, w_c 0.25, lr 0.01):

- ``loss_pos``: distance between the barycentre of the Grad-CAM and the mean positive point,
  in image coordinates normalised to [0, 1] (paper eq. 3);
- ``loss_neg``: the share of the Grad-CAM's mass inside the negative regions (paper eq. 4
  sums the map's values there; a share does not depend on the map's scale, so it cannot be
  lowered by shrinking the whole map);
- polygon mode: the share of the mass outside the polygon (pixel-level supervision).

The Grad-CAM is computed with ``create_graph=True`` (:func:`core.explain.gradcam`), so the
guidance term really reaches the weights; in the published code of this paper it was built
from stored constants and sent no gradient.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

from core.engine import Batch
from core.explain.gradcam import gradcam
from core.feedback import CommonPlan, PayloadCodec
from core.models.base import SteerableModel

KIND = "attention"
PAPER_WEIGHTS = {"cls": 0.25, KIND: 0.75}  # w_c, w_g
PAPER_LR = 0.01
MODES = ("click", "polygon")


# ----------------------------------------------------------------------------- masks as JSON
def mask_to_rle(mask: np.ndarray) -> list[int]:
    """Run lengths of a boolean mask read row by row, starting with a run of False."""
    flat = np.asarray(mask, dtype=bool).ravel()
    change = np.flatnonzero(np.diff(flat.astype(np.int8))) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    runs = np.diff(bounds).tolist()
    return ([0] + runs) if flat.size and flat[0] else runs


def rle_to_mask(runs: Sequence[int], shape: tuple[int, int]) -> np.ndarray:
    """The boolean mask of ``shape`` that :func:`mask_to_rle` encoded."""
    values = np.zeros(len(runs), dtype=bool)
    values[1::2] = True
    flat = np.repeat(values, np.asarray(runs, dtype=np.int64))
    if flat.size != shape[0] * shape[1]:
        raise ValueError(f"run lengths cover {flat.size} pixels, not {shape[0]} x {shape[1]}")
    return flat.reshape(shape)


def polygon_mask(points: Sequence[tuple[float, float]], shape: tuple[int, int]) -> np.ndarray:
    """Pixels inside a polygon given as (x, y) image coordinates (PIL's rasteriser)."""
    h, w = shape
    img = Image.new("L", (w, h), 0)
    if len(points) >= 3:
        ImageDraw.Draw(img).polygon([(float(x), float(y)) for x, y in points], fill=1, outline=1)
    return np.asarray(img, dtype=bool)


# ----------------------------------------------------------------------------- annotations
@dataclass(frozen=True)
class AttentionAnnotation:
    """What a person said about one image.

    ``positives``: (x, y) points in image pixels (x = column, from the left edge; y = row,
    from the top; a pixel's centre is at +0.5). ``negative``: run-length-encoded mask of the
    negative regions (see :func:`mask_to_rle`), ``polygon``: (x, y) vertices in polygon mode.
    ``seconds`` from first shown to confirmed, ``operations`` clicks (or vertices) made.
    """

    example_id: int
    label: int
    shape: tuple[int, int]
    positives: tuple[tuple[float, float], ...] = ()
    negative: tuple[int, ...] = ()
    polygon: tuple[tuple[float, float], ...] = ()
    mode: str = "click"
    seconds: float = 0.0
    operations: int = 0
    model_version: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"Unknown annotation mode {self.mode!r}; use one of {', '.join(MODES)}.")
        object.__setattr__(self, "shape", (int(self.shape[0]), int(self.shape[1])))
        object.__setattr__(self, "positives", tuple((float(x), float(y)) for x, y in self.positives))
        object.__setattr__(self, "polygon", tuple((float(x), float(y)) for x, y in self.polygon))
        object.__setattr__(self, "negative", tuple(int(r) for r in self.negative))

    @classmethod
    def from_masks(cls, example_id: int, label: int, *, positives: Iterable[tuple[float, float]] = (),
                   negative: np.ndarray | None = None, polygon: Iterable[tuple[float, float]] = (),
                   mode: str = "click", **kw: Any) -> "AttentionAnnotation":
        """Build from a boolean negative mask (the union of the clicked superpixels)."""
        shape = tuple(negative.shape) if negative is not None else tuple(kw.pop("shape"))
        runs = tuple(mask_to_rle(negative)) if negative is not None and negative.any() else ()
        return cls(int(example_id), int(label), shape, tuple(positives), runs, tuple(polygon), mode, **kw)

    def negative_mask(self) -> np.ndarray:
        return rle_to_mask(self.negative, self.shape) if self.negative else np.zeros(self.shape, dtype=bool)

    def inside_mask(self) -> np.ndarray | None:
        """The polygon's pixels (polygon mode), else None."""
        return polygon_mask(self.polygon, self.shape) if self.mode == "polygon" and len(self.polygon) >= 3 else None

    def payload(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("example_id")
        return d

    @classmethod
    def from_payload(cls, example_id: int, payload: dict[str, Any]) -> "AttentionAnnotation":
        p = dict(payload)
        return cls(int(example_id), int(p.pop("label")), tuple(p.pop("shape")),
                   tuple(tuple(v) for v in p.pop("positives", ())), tuple(p.pop("negative", ())),
                   tuple(tuple(v) for v in p.pop("polygon", ())), **p)


def describe(annotations: Sequence[AttentionAnnotation]) -> str:
    """One line for a version's description."""
    if not annotations:
        return "attention: no annotations"
    modes = sorted({a.mode for a in annotations})
    pos = sum(len(a.positives) for a in annotations)
    neg = sum(1 for a in annotations if a.negative)
    poly = sum(1 for a in annotations if a.mode == "polygon")
    parts = [f"{pos} positive click{'s' if pos != 1 else ''}"] if "click" in modes else []
    parts += [f"negative regions on {neg}"] if neg else []
    parts += [f"{poly} polygon{'s' if poly != 1 else ''}"] if poly else []
    return f"attention: {len(annotations)} image{'s' if len(annotations) != 1 else ''} ({', '.join(parts) or 'no marks'})"


# ----------------------------------------------------------------------------- the loss
def cam_barycentre(cams: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """(N, 2) barycentres (x, y) of non-negative maps (N, H, W), in [0, 1] image coordinates
    (pixel centres at (j + 0.5) / W, (i + 0.5) / H)."""
    n, h, w = cams.shape
    ys = (torch.arange(h, device=cams.device, dtype=cams.dtype) + 0.5) / h
    xs = (torch.arange(w, device=cams.device, dtype=cams.dtype) + 0.5) / w
    mass = cams.sum(dim=(1, 2)) + eps
    bx = (cams.sum(dim=1) * xs).sum(dim=1) / mass
    by = (cams.sum(dim=2) * ys).sum(dim=1) / mass
    return torch.stack([bx, by], dim=1)


def guidance_terms(cams: torch.Tensor, pos: torch.Tensor, has_pos: torch.Tensor, neg: torch.Tensor,
                   inside: torch.Tensor, has_inside: torch.Tensor, eps: float = 1e-8) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image ``loss_pos`` and ``loss_neg`` (both (N,)) for maps ``cams`` (N, H, W).

    ``pos`` (N, 2) normalised mean positive point, used where ``has_pos``; ``neg`` (N, H, W)
    negative-region masks; ``inside`` (N, H, W) polygon masks, used where ``has_inside``
    (then the share of the mass outside the polygon is added to ``loss_neg``).
    """
    mass = cams.sum(dim=(1, 2)) + eps
    bary = cam_barycentre(cams, eps)
    loss_pos = ((bary - pos).pow(2).sum(1) + eps).sqrt() * has_pos
    loss_neg = (cams * neg).sum(dim=(1, 2)) / mass
    outside = (cams * (1 - inside)).sum(dim=(1, 2)) / mass
    return loss_pos, loss_neg + outside * has_inside


class AttentionLoss:
    """Loss term ``loss_pos + loss_neg`` over the annotated images (mean over images).

    Each training step takes the next ``per_step`` annotated images (rotating through all of
    them), computes their Grad-CAMs for ``target`` ("true": the label; "predicted") with the
    graph kept, and returns the mean guidance loss; the engine weighs it with w_g against
    w_c * CE. The images are forwarded in the model's current mode, so BatchNorm sees them as
    training data, like the CE batch.
    """

    def __init__(self, images: torch.Tensor, annotations: Sequence[AttentionAnnotation], *, per_step: int = 32,
                 target: str = "true", layer: str | None = None, seed: int = 0) -> None:
        if not annotations:
            raise ValueError("AttentionLoss needs at least one annotated image.")
        if len(images) != len(annotations):
            raise ValueError(f"{len(images)} images but {len(annotations)} annotations")
        if target not in ("true", "predicted"):
            raise ValueError("target must be 'true' or 'predicted'")
        h, w = images.shape[-2:]
        for a in annotations:
            if a.shape != (h, w):
                raise ValueError(f"annotation of example {a.example_id} is for {a.shape}, the images are {(h, w)}")
        self.images = images
        self.labels = torch.tensor([a.label for a in annotations], dtype=torch.long)
        self.per_step = max(1, int(per_step))
        self.target = target
        self.layer = layer
        pos = torch.zeros(len(annotations), 2)
        has_pos = torch.zeros(len(annotations))
        for i, a in enumerate(annotations):
            if a.positives:
                p = np.mean(np.asarray(a.positives, dtype=np.float64), axis=0)
                pos[i] = torch.tensor([p[0] / w, p[1] / h])
                has_pos[i] = 1.0
        self.pos, self.has_pos = pos, has_pos
        self.neg = torch.from_numpy(np.stack([a.negative_mask() for a in annotations])).float()
        inside = [a.inside_mask() for a in annotations]
        self.has_inside = torch.tensor([m is not None for m in inside], dtype=torch.float32)
        self.inside = torch.from_numpy(np.stack([m if m is not None else np.ones((h, w), bool) for m in inside])).float()
        self._order = torch.randperm(len(annotations), generator=torch.Generator().manual_seed(seed))
        self._cursor = 0

    def __len__(self) -> int:
        return len(self.labels)

    def next_indices(self) -> torch.Tensor:
        """The annotated images of the next step (a rotating window over a seeded order)."""
        n = len(self)
        if n <= self.per_step:
            return self._order
        idx = torch.arange(self._cursor, self._cursor + self.per_step) % n
        self._cursor = (self._cursor + self.per_step) % n
        return self._order[idx]

    def terms(self, model: SteerableModel, idx: torch.Tensor | None = None, *,
              create_graph: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-image (loss_pos, loss_neg) for the annotated images ``idx`` (default: all)."""
        idx = torch.arange(len(self)) if idx is None else idx
        device = next(model.parameters()).device
        targets = self.labels[idx] if self.target == "true" else None
        cams = gradcam(model, self.images[idx], targets, layer=self.layer, create_graph=create_graph).cams
        return guidance_terms(cams, self.pos[idx].to(device), self.has_pos[idx].to(device), self.neg[idx].to(device),
                              self.inside[idx].to(device), self.has_inside[idx].to(device))

    def __call__(self, model: SteerableModel, batch: Batch) -> torch.Tensor:
        loss_pos, loss_neg = self.terms(model, self.next_indices())
        return (loss_pos + loss_neg).mean()


def attention_in_mask(model: SteerableModel, images: torch.Tensor, masks: torch.Tensor, targets: torch.Tensor | None = None,
                      *, batch_size: int = 256, layer: str | None = None) -> float:
    """Mean share of the Grad-CAM's mass that lies inside the object masks (N, 1, H, W) or
    (N, H, W): how much the model looks at the object. Images whose map is all zero count 0."""
    shares = []
    for start in range(0, len(images), batch_size):
        t = None if targets is None else targets[start:start + batch_size]
        cams = gradcam(model, images[start:start + batch_size], t, layer=layer).cams
        m = masks[start:start + batch_size].to(cams.device).float().reshape(cams.shape)
        mass = cams.sum(dim=(1, 2))
        shares.append(torch.where(mass > 0, (cams * m).sum(dim=(1, 2)) / mass.clamp_min(1e-12), torch.zeros_like(mass)))
    return float(torch.cat(shares).mean()) if shares else float("nan")


@dataclass(frozen=True)
class AttentionSettings:
    """How attention annotations become a loss term (paper defaults)."""

    target: str = "true"  # the class whose Grad-CAM is guided: "true" or "predicted"
    per_step: int = 32  # annotated images in each training step's guidance term
    layer: str | None = None  # default: the model's Grad-CAM layer
    seed: int = 0


class AttentionKind(PayloadCodec, CommonPlan):
    """The attention-click feedback kind (see :class:`core.feedback.FeedbackKind`)."""

    name = KIND
    annotation_type = AttentionAnnotation

    def loss_term(self, data, annotations: Sequence[AttentionAnnotation],
                  settings: AttentionSettings | None = None) -> AttentionLoss:
        settings = settings or AttentionSettings()
        ids = torch.as_tensor([a.example_id for a in annotations], dtype=torch.long)
        return AttentionLoss(data.images[ids], annotations, per_step=settings.per_step, target=settings.target,
                             layer=settings.layer, seed=settings.seed)

    def describe(self, annotations: Sequence[AttentionAnnotation]) -> str:
        return describe(annotations)


FEEDBACK = AttentionKind()
