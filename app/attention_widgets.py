"""Pictures for the Attention and Grid pages: an image with its Grad-CAM (or saliency) overlay,
superpixel boundaries, positive dots and hatched negative regions, magnified without blurring.

The overlay is a colour map blended in and an outline around where the attention is above half
its peak, drawn as a line with a halo whose colours are chosen per pixel against the image under
it (black on light, white on dark): a colour map alone vanished on backgrounds of its own hues
(a magenta digit background under Turbo's reds and purples), a two-tone line cannot."""
from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw
from plotly.colors import hex_to_rgb, sequential
from scipy import ndimage
from skimage.segmentation import find_boundaries

POSITIVE = (22, 163, 74)  # green: "look here"
NEGATIVE = (220, 38, 38)  # red: "ignore this"


@lru_cache(maxsize=1)
def _lut() -> np.ndarray:
    """A 256-entry colour map (plotly's Turbo), for attention heat maps."""
    stops = np.array([hex_to_rgb(c) for c in sequential.Turbo], dtype=np.float64)
    pos = np.linspace(0, 1, len(stops))
    t = np.linspace(0, 1, 256)
    return np.stack([np.interp(t, pos, stops[:, k]) for k in range(3)], axis=1).astype(np.uint8)


def to_rgb(image: torch.Tensor) -> np.ndarray:
    """(C, H, W) in [0, 1] -> uint8 (H, W, 3)."""
    arr = image.detach().clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).cpu().numpy()
    return np.repeat(arr, 3, axis=2) if arr.shape[2] == 1 else arr[:, :, :3]


def scale_for(shape: tuple[int, int], size: int) -> int:
    """Whole-number magnification that fits the larger side into ``size`` pixels."""
    return max(1, size // max(shape))


OUTLINE_LEVEL = 0.5  # the outline runs where the normalised map crosses half its peak


def relative_luminance(rgb: np.ndarray) -> np.ndarray:
    """WCAG relative luminance of sRGB colours in 0..255 (shape (..., 3)) -> (...)."""
    c = np.asarray(rgb, dtype=np.float64) / 255
    c = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    return c @ np.array([0.2126, 0.7152, 0.0722])


def outline_masks(cam: np.ndarray, k: int, threshold: float = OUTLINE_LEVEL) -> tuple[np.ndarray, np.ndarray]:
    """The outline of where the min-max normalised map ``cam`` (h, w) is at least
    ``threshold``, on the map magnified ``k`` times (bilinear): its line (about k/6 px wide,
    at least 1) and the 1 px halo on both sides of it. The map is smoothed by about half a
    source pixel first, so a noisy saliency map gives a few outlines, not speckle; regions
    smaller than two source pixels get none."""
    c = ndimage.gaussian_filter(np.asarray(cam, dtype=np.float64), sigma=0.6)
    c = (c - c.min()) / (c.max() - c.min() + 1e-12)
    h, w = c.shape
    big = np.asarray(Image.fromarray(c.astype(np.float32)).resize((w * k, h * k), Image.BILINEAR))
    inside = big >= threshold
    labels, count = ndimage.label(inside)
    if count > 1:
        sizes = ndimage.sum(inside, labels, index=np.arange(1, count + 1))
        inside = np.isin(labels, 1 + np.flatnonzero(sizes >= 4 * k * k))
    line = find_boundaries(inside, mode="inner")
    width = max(1, round(k / 6))
    if width > 1:
        line = ndimage.binary_dilation(line, iterations=width - 1)
    halo = ndimage.binary_dilation(line, iterations=1) & ~line
    return line, halo


def render(image: torch.Tensor, cam: np.ndarray | None, *, size: int = 384, opacity: float = 0.45,
           segments: np.ndarray | None = None, positives: Sequence[tuple[float, float]] = (),
           negative: np.ndarray | None = None, polygon: Sequence[tuple[float, float]] = (),
           grid: int = 0) -> Image.Image:
    """The picture a person annotates: ``image`` magnified by a whole factor (NEAREST, so
    pixels stay crisp), the min-max normalised ``cam`` blended in (up to ``opacity`` where
    attention is highest) and outlined where it is above half its peak (a line with a halo,
    black or white by the image under it, so it shows on any colour; none at ``opacity`` 0),
    negative regions darkened and hatched red, superpixel boundaries as thin white lines,
    positive points as green dots, a polygon as an outline and, with ``grid`` n > 1, an n x n
    grid of thin white lines (under the attention outline). Points are (x, y) in the image's
    own pixels."""
    rgb = to_rgb(image).astype(np.float64)
    h, w = rgb.shape[:2]
    k = scale_for((h, w), size)
    big = np.kron(rgb, np.ones((k, k, 1)))
    if cam is not None and opacity > 0:
        c = np.asarray(cam, dtype=np.float64).reshape(h, w)
        c = (c - c.min()) / (c.max() - c.min() + 1e-12) if np.isfinite(c).all() else np.zeros((h, w))
        heat = Image.fromarray((c * 255).astype(np.uint8)).resize((w * k, h * k), Image.BILINEAR)
        level = np.asarray(heat, dtype=np.float64) / 255
        colours = _lut()[np.asarray(heat)].astype(np.float64)
        # weighted by the attention itself: where the model does not look, the image shows through
        alpha = opacity * (0.25 + 0.75 * level[:, :, None])
        big = (1 - alpha) * big + alpha * colours
        outline = outline_masks(c, k)
    else:
        outline = None
    if negative is not None and np.asarray(negative).any():
        # hatched, not filled: a red fill vanishes on a red heat map or a red background
        m = np.kron(np.asarray(negative, dtype=bool).reshape(h, w), np.ones((k, k), dtype=bool))
        yy, xx = np.mgrid[0:h * k, 0:w * k]
        stripe = ((xx + yy) // max(2, k // 3)) % 2 == 0
        big = np.where(m[:, :, None], 0.45 * big, big)  # darkened
        big = np.where((m & stripe)[:, :, None], np.array(NEGATIVE, dtype=np.float64) * 0.6 + 0.4 * 255, big)
    if segments is not None:
        seg = np.kron(np.asarray(segments).reshape(h, w), np.ones((k, k), dtype=np.int64))
        edge = find_boundaries(seg, mode="inner")[:, :, None]
        big = np.where(edge, 0.35 * big + 0.65 * 255, big)
    if grid > 1:
        for i in range(1, grid):
            big[:, i * w // grid * k] = 255.0
            big[i * h // grid * k, :] = 255.0
    if outline is not None:  # on top of the marks: it must show wherever it runs
        line, halo = outline
        # the better of black and white on the image under the line (WCAG: luminance above 0.179)
        dark = np.kron(relative_luminance(rgb) > 0.179, np.ones((k, k), dtype=bool))[:, :, None]
        black, white = np.zeros(3), np.full(3, 255.0)
        big = np.where(line[:, :, None], np.where(dark, black, white), big)
        big = np.where(halo[:, :, None], np.where(dark, white, black), big)
    out = Image.fromarray(np.clip(big, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(out)
    if len(polygon) >= 2:
        pts = [(x * k, y * k) for x, y in polygon]
        draw.line(pts + ([pts[0]] if len(pts) >= 3 else []), fill=(37, 99, 235), width=max(2, k // 4))
    r = max(4, k // 2 + 2)
    for x, y in positives:
        cx, cy = x * k, y * k
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=POSITIVE, outline=(255, 255, 255), width=2)
    return out


def thumbnail(image: torch.Tensor, cam: np.ndarray | None, *, size: int = 112, opacity: float = 0.45,
              confirmed: bool = False) -> Image.Image:
    """A small overlay for the candidate grid; a confirmed image gets a check mark badge."""
    out = render(image, cam, size=size, opacity=opacity)
    if confirmed:
        draw = ImageDraw.Draw(out)
        s = max(14, out.width // 5)
        draw.ellipse([out.width - s - 3, 3, out.width - 3, s + 3], fill=POSITIVE, outline=(255, 255, 255), width=2)
        x0, y0 = out.width - s - 3, 3
        draw.line([(x0 + s * 0.25, y0 + s * 0.52), (x0 + s * 0.43, y0 + s * 0.7), (x0 + s * 0.75, y0 + s * 0.32)],
                  fill=(255, 255, 255), width=max(2, s // 7))
    return out


def render_grid(image: torch.Tensor, saliency: np.ndarray | None, n: int, marked: Sequence[int], *, size: int = 256,
                opacity: float = 0.5) -> Image.Image:
    """An image for grid feedback: the saliency map over it (blended and outlined, see
    :func:`render`), an ``n`` x ``n`` grid of thin white lines, and the marked squares (the
    model must not use them) darkened and hatched red."""
    h, w = image.shape[-2:]
    mask = np.zeros((h, w), dtype=bool)
    for q in marked:
        r, c = divmod(int(q), n)
        mask[r * h // n:(r + 1) * h // n, c * w // n:(c + 1) * w // n] = True
    return render(image, saliency, size=size, opacity=opacity, negative=mask, grid=n)


def polygon_from_canvas(value: Any, scale: float) -> list[tuple[float, float]]:
    """The last closed polygon in a drawable-canvas value, in image pixels (canvas pixels / ``scale``).

    streamlit-drawable-canvas 0.13 (fabric 7) reports a closed polygon as a ``Polygon`` object
    whose ``points`` are ``{x, y}`` in canvas pixels, centred on ``left``/``top``; older
    releases sent a ``path`` of ``M``/``L`` commands relative to the object's own box. Both are
    read. The value is the component's session-state entry (a mapping-like object, not a dict).
    """
    get = getattr(value, "get", None)
    drawing = get("drawing") if get else None
    raw = drawing.get("raw") if hasattr(drawing, "get") else None
    objects = (raw.get("objects") if hasattr(raw, "get") else None) or []
    for obj in reversed(list(objects)):
        if obj.get("points"):
            pts = [(float(p["x"]), float(p["y"])) for p in obj["points"]]
        else:
            pts = [(float(p[1]), float(p[2])) for p in obj.get("path") or []
                   if isinstance(p, list) and len(p) >= 3 and p[0] in ("M", "L")]
        if len(pts) < 3:
            continue
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        left, top = float(obj.get("left", 0) or 0), float(obj.get("top", 0) or 0)
        if obj.get("points") and obj.get("originX", "left") == "center":  # moved objects keep their points
            dx, dy = left - (min(xs) + max(xs)) / 2, top - (min(ys) + max(ys)) / 2
        else:  # path points are relative to the object's own box
            dx, dy = left - min(xs), top - min(ys)
        return [((x + dx) / scale, (y + dy) / scale) for x, y in pts]
    return []
