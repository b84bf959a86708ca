"""2D layouts of feature vectors: PCA, t-SNE, and a warm-started stream of t-SNE layouts
with trails, plus the two readers the training monitor lays out (filter weights and
per-channel layer activations).

t-SNE is openTSNE's (Barnes-Hut below 10,000 points, FFT above, one thread). A stream keeps
the last layout: the next update starts every point that was in it where it was and runs a
short optimisation without early exaggeration, so a point moves on screen only as far as its
neighbourhood in feature space changed. Layouts are deterministic under ``seed``.
"""
from __future__ import annotations

import warnings
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from sklearn.decomposition import PCA
from sklearn.neighbors import NearestNeighbors
from torch import nn

from core.explain.activations import capture

__all__ = [
    "EmbeddingConfig",
    "EmbeddingStream",
    "StreamState",
    "filter_vectors",
    "layer_activations",
    "pca_layout",
    "tsne_layout",
]

MIN_TSNE_POINTS = 5  # below this, t-SNE has no meaningful neighbourhoods: layouts fall back to PCA
_METHODS = ("tsne", "pca")
PROGRESS_EVERY_ITERS = 25  # t-SNE iterations between two progress reports
EARLY_EXAGGERATION_ITER = 250  # openTSNE's default, run before the n_iter of a cold layout

Progress = Callable[[float, str], None]
"""``progress(fraction, text)``: how far a layout is (0..1) and what it does now (as core.data.Progress)."""


class _IterationProgress:
    """An openTSNE callback that turns its iteration counts into ``progress`` reports over a
    run of ``total`` iterations (all phases together); never stops the optimisation."""

    def __init__(self, progress: Progress, total: int, what: str, every: int = PROGRESS_EVERY_ITERS) -> None:
        self.progress, self.total, self.what, self.every, self.done = progress, max(int(total), 1), what, every, 0

    def __call__(self, iteration: int, error: float, embedding) -> bool:
        self.done = min(self.done + self.every, self.total)
        self.progress(self.done / self.total, f"{self.what}: iteration {self.done} of {self.total}")
        return False


# ---------------------------------------------------------------------------------------------
# input checks and small helpers


def _check_x(x: np.ndarray, name: str = "x") -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (n_points, n_features), got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
        raise ValueError(f"{name} must hold real numbers, got dtype {arr.dtype}")
    arr = arr.astype(np.float64, copy=False)
    if not np.isfinite(arr).all():
        bad = int((~np.isfinite(arr)).any(axis=1).sum())
        raise ValueError(f"{name} has non-finite values (NaN or inf) in {bad} of {len(arr)} rows")
    return arr


def _check_ids(ids: Sequence[int], n: int) -> np.ndarray:
    arr = np.asarray(ids)
    if arr.ndim != 1:
        raise ValueError(f"ids must be a 1-D sequence of integers, got shape {arr.shape}")
    if len(arr) != n:
        raise ValueError(f"len(ids) = {len(arr)} but x has {n} rows; give one id per row")
    if len(arr) and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"ids must be integers, got dtype {arr.dtype}")
    arr = arr.astype(np.int64, copy=False)
    if len(np.unique(arr)) != len(arr):
        raise ValueError("ids must be unique: each id names one point")
    return arr


def _clip_perplexity(perplexity: float, n: int) -> float:
    if not perplexity > 0:
        raise ValueError(f"perplexity must be positive, got {perplexity}")
    return float(min(perplexity, max((n - 1) / 3.0, 1.0)))


def _rms_radius(p: np.ndarray) -> float:
    """Root mean squared distance of the points to their centroid."""
    if len(p) == 0:
        return 0.0
    return float(np.sqrt(np.mean(np.sum((p - p.mean(axis=0)) ** 2, axis=1))))


def _safe_radius(p: np.ndarray) -> float:
    r = _rms_radius(p)
    return r if r > 1e-12 else 1.0


# ---------------------------------------------------------------------------------------------
# one-shot layouts


def pca_layout(x: np.ndarray, seed: int = 0) -> np.ndarray:
    """(n, 2) PCA of the rows of x (sklearn PCA), deterministic sign.

    Each axis is flipped so that the largest-magnitude coefficient of its principal component
    is positive. Fewer than 2 rows, or 1 feature, give zero columns where no component exists.
    Returns float32.
    """
    arr = _check_x(x)
    n, d = arr.shape
    out = np.zeros((n, 2), dtype=np.float64)
    k = min(2, n - 1, d)  # n - 1: n points span at most n - 1 directions
    if k >= 1:
        with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
            warnings.simplefilter("ignore", RuntimeWarning)  # 0/0 explained variance of constant data
            pca = PCA(n_components=k, random_state=seed).fit(arr)
            proj = pca.transform(arr)
        comps = pca.components_
        signs = np.sign(comps[np.arange(k), np.argmax(np.abs(comps), axis=1)])
        signs[signs == 0] = 1.0
        out[:, :k] = proj * signs
    return out.astype(np.float32)


def _affinities(x: np.ndarray, perplexity: float, seed: int):
    from openTSNE.affinity import PerplexityBasedNN

    return PerplexityBasedNN(x, perplexity=perplexity, method="auto", n_jobs=1, random_state=seed, verbose=False)


def tsne_layout(x: np.ndarray, *, perplexity: float = 30.0, seed: int = 0, n_iter: int = 500,
                init: np.ndarray | None = None, progress: Progress | None = None) -> np.ndarray:
    """One cold (or init-given) openTSNE layout, (n, 2) float32. Perplexity is clipped to what n allows.

    The full schedule runs: 250 iterations of early exaggeration, then ``n_iter``. Without
    ``init`` it starts from openTSNE's PCA initialisation; a given ``init`` (n, 2) sets the
    starting arrangement and is rescaled to openTSNE's recommended small spread (std 1e-4)
    first, so it is a seed shape, not positions to keep (see :class:`EmbeddingStream` for
    that); an ``init`` with no spread is ignored. Data whose rows are all equal start from a
    seeded random initialisation. Fewer than 5 points get :func:`pca_layout` instead.
    ``progress`` hears the neighbour search, then every 25 iterations ("iteration k of n").
    """
    from openTSNE import TSNE
    from openTSNE.initialization import random as random_init

    arr = _check_x(x)
    n = len(arr)
    if n_iter < 0:
        raise ValueError(f"n_iter must be >= 0, got {n_iter}")
    if init is not None:
        init = np.asarray(init, dtype=np.float64)
        if init.shape != (n, 2):
            raise ValueError(f"init must have shape ({n}, 2) for {n} points, got {init.shape}")
        if not np.isfinite(init).all():
            raise ValueError("init has non-finite values (NaN or inf)")
    perp = _clip_perplexity(perplexity, n)
    if n < MIN_TSNE_POINTS:
        return pca_layout(arr, seed)
    spread = 0.0
    if init is not None:
        init = init - init.mean(axis=0)
        spread = float(init.std(axis=0).max())
    if spread > 0:
        initialization: np.ndarray | str = init * (1e-4 / spread)  # openTSNE's recommended std
    elif np.ptp(arr, axis=0).max() > 0:
        initialization = "pca"
    else:  # all rows equal: PCA has no direction to give (openTSNE would divide by 0)
        initialization = random_init(n, 2, random_state=seed)
    hooks = {}
    if progress is not None:
        progress(0.0, f"t-SNE of {n} points: finding each point's neighbours")
        hooks = {"callbacks": _IterationProgress(progress, EARLY_EXAGGERATION_ITER + n_iter, f"t-SNE of {n} points"),
                 "callbacks_every_iters": PROGRESS_EVERY_ITERS}
    tsne = TSNE(n_components=2, perplexity=perp, n_iter=n_iter, initialization=initialization,
                early_exaggeration_iter=EARLY_EXAGGERATION_ITER, n_jobs=1, random_state=seed, verbose=False, **hooks)
    emb = tsne.fit(arr)
    if progress is not None:
        progress(1.0, f"t-SNE of {n} points: done")
    return np.asarray(emb, dtype=np.float32)


def _tsne_warm(x: np.ndarray, init: np.ndarray, *, perplexity: float, seed: int, n_iter: int,
               progress: Progress | None = None) -> np.ndarray:
    """``n_iter`` iterations of t-SNE from ``init`` as-is: no rescaling, no early exaggeration."""
    from openTSNE import TSNEEmbedding

    hooks = {}
    if progress is not None:
        progress(0.0, f"t-SNE of {len(x)} points from the last layout: finding each point's neighbours")
        hooks = {"callbacks": _IterationProgress(progress, n_iter, f"t-SNE of {len(x)} points from the last layout"),
                 "callbacks_every_iters": PROGRESS_EVERY_ITERS}
    emb = TSNEEmbedding(np.ascontiguousarray(init, dtype=np.float64), _affinities(x, perplexity, seed),
                        negative_gradient_method="auto", random_state=seed, n_jobs=1, verbose=False)
    # learning rate "auto" is n / exaggeration (Belkina et al. 2019), as in openTSNE's own
    # non-exaggerated phase; momentum 0.8 is its final-phase momentum.
    emb = emb.optimize(n_iter=n_iter, exaggeration=None, momentum=0.8, learning_rate="auto",
                       inplace=True, propagate_exception=True, **hooks)
    return np.asarray(emb, dtype=np.float64)


# ---------------------------------------------------------------------------------------------
# a stream of layouts


@dataclass(frozen=True)
class EmbeddingConfig:
    """How a stream lays its points out (the parameters; the layouts are :class:`StreamState`).

    ``method``: "tsne" or "pca"; ``perplexity`` of t-SNE; ``seed`` of every layout;
    ``trail``: positions kept per point; ``warm_iter`` / ``cold_iter``: t-SNE iterations of a
    warm update and of a cold one (after early exaggeration).
    """

    method: str = "tsne"
    perplexity: float = 30.0
    seed: int = 0
    trail: int = 5
    warm_iter: int = 100
    cold_iter: int = 500

    def __post_init__(self) -> None:
        if self.method not in _METHODS:
            raise ValueError(f"Unknown method {self.method!r}; choose one of: {', '.join(_METHODS)}")
        if not self.perplexity > 0:
            raise ValueError(f"perplexity must be positive, got {self.perplexity}")
        if self.trail < 1:
            raise ValueError(f"trail must be >= 1 position, got {self.trail}")
        if self.warm_iter < 1 or self.cold_iter < 0:
            raise ValueError(f"warm_iter must be >= 1 and cold_iter >= 0, got {self.warm_iter} and {self.cold_iter}")


@dataclass
class StreamState:
    """What a stream has laid out so far: the last layout (rows in the order of ``ids``), each
    id's recent positions, how many updates ran, whether the last layout was a t-SNE one (not
    a PCA fallback), and the mean displacement of the last update's shared points."""

    layout: np.ndarray | None = None
    ids: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    history: dict[int, deque[np.ndarray]] = field(default_factory=dict)
    updates: int = 0
    prev_tsne: bool = False
    last_displacement: float | None = None


class EmbeddingStream:
    """Warm-started 2D layouts of a changing set of points keyed by example/filter ids, with trails.

    ``method="tsne"``: the first update is a cold :func:`tsne_layout` (``cold_iter``
    iterations after early exaggeration); later ones start from the previous layout as-is and
    run ``warm_iter`` iterations, after which the layout is scaled and shifted so the points
    shared with the previous layout keep their centroid and RMS radius (t-SNE's slow inflation
    is not motion). An update is cold again when fewer than half of its points (or fewer than
    5) were in the previous layout, since new points piled onto a few old ones untangle badly
    in a short run, and after a PCA fallback (fewer than 5 points).

    ``method="pca"``: each update is a :func:`pca_layout` whose axes are sign-aligned to the
    previous layout, so points do not flip.

    A point's history (and so its trail) continues while it stays in consecutive updates; an
    id missing from an update loses its history and is placed as a new id when it returns.
    """

    def __init__(self, method: str = "tsne", *, perplexity: float = 30.0, seed: int = 0,
                 trail: int = 5, warm_iter: int = 100, cold_iter: int = 500) -> None:
        self.config = EmbeddingConfig(method, float(perplexity), int(seed), int(trail), int(warm_iter), int(cold_iter))
        self.state = StreamState()

    def reset(self) -> None:
        """Forget every layout and history; the next update is cold."""
        self.state = StreamState()

    @property
    def layout(self) -> np.ndarray | None:
        """Last layout (n, 2) float32, rows in the order of :attr:`ids`; None before the first update."""
        return None if self.state.layout is None else self.state.layout.copy()

    @property
    def ids(self) -> np.ndarray:
        """Ids of the last update."""
        return self.state.ids.copy()

    @property
    def updates(self) -> int:
        """Number of update() calls so far (since the last reset)."""
        return self.state.updates

    @property
    def last_displacement(self) -> float | None:
        """Mean distance the last update's shared points moved, over the layout's RMS radius."""
        return self.state.last_displacement

    def update(self, x: np.ndarray, ids: Sequence[int], progress: Progress | None = None) -> np.ndarray:
        """Lay out rows of x (one per id). First call: cold. Later calls: warm start from the previous
        layout for ids seen before (new ids start at the position of their nearest already-placed
        neighbour in x-space, plus tiny seeded jitter), optimised for warm_iter iterations with no early
        exaggeration. Appends each id's new position to its history. Returns (n, 2) in the order of ids.
        ``progress`` hears how far the layout is (a cold t-SNE takes seconds; PCA reports once)."""
        arr = _check_x(x)
        id_arr = _check_ids(ids, len(arr))
        st, cfg = self.state, self.config
        prev, prev_ids = st.layout, st.ids
        prev_row = {int(i): r for r, i in enumerate(prev_ids)}
        # rows of this update that were in the previous layout, and their previous rows
        known = np.array([int(i) in prev_row for i in id_arr], dtype=bool)
        old_rows = np.array([prev_row[int(i)] for i in id_arr[known]], dtype=np.int64)

        if cfg.method == "pca" or len(arr) < MIN_TSNE_POINTS:
            new = pca_layout(arr, cfg.seed).astype(np.float64)
            if prev is not None and known.any():
                new = self._align_signs(new, known, prev[old_rows])
            if progress is not None:
                progress(1.0, f"PCA of {len(arr)} points: done")
        elif (not st.prev_tsne or known.sum() < max(MIN_TSNE_POINTS, len(arr) / 2)
              or _rms_radius(prev[old_rows]) <= 1e-12):
            new = tsne_layout(arr, perplexity=cfg.perplexity, seed=cfg.seed, n_iter=cfg.cold_iter, progress=progress)
            new = new.astype(np.float64)
        else:
            old = prev[old_rows].astype(np.float64)
            init = self._warm_init(arr, known, old)
            new = _tsne_warm(arr, init, perplexity=_clip_perplexity(cfg.perplexity, len(arr)),
                             seed=cfg.seed, n_iter=cfg.warm_iter, progress=progress)
            new = self._match_spread(new, known, old)

        if prev is not None and known.any():
            moved = np.linalg.norm(new[known] - prev[old_rows], axis=1)
            st.last_displacement = float(moved.mean() / _safe_radius(new))
        else:
            st.last_displacement = None

        history: dict[int, deque[np.ndarray]] = {}
        for r, i in enumerate(id_arr.tolist()):
            h = st.history.get(i) if known[r] else None
            if h is None:
                h = deque(maxlen=cfg.trail)
            h.append(new[r].astype(np.float32))
            history[i] = h
        st.history = history
        st.layout = new.astype(np.float32)
        st.prev_tsne = cfg.method == "tsne" and len(arr) >= MIN_TSNE_POINTS
        st.ids = id_arr.copy()
        st.updates += 1
        return st.layout.copy()

    def _warm_init(self, x: np.ndarray, known: np.ndarray, known_pos: np.ndarray) -> np.ndarray:
        """Previous positions for known rows; new rows at their nearest known neighbour in
        x-space plus jitter of 1e-3 of the layout's RMS radius (seeded by seed and update count)."""
        st, cfg = self.state, self.config
        init = np.empty((len(x), 2), dtype=np.float64)
        init[known] = known_pos
        new = ~known
        if new.any():
            nn_index = NearestNeighbors(n_neighbors=1).fit(x[known])
            nearest = nn_index.kneighbors(x[new], return_distance=False)[:, 0]
            rng = np.random.default_rng([cfg.seed, st.updates])
            jitter = rng.normal(scale=1e-3 * _safe_radius(known_pos), size=(int(new.sum()), 2))
            init[new] = known_pos[nearest] + jitter
        return init

    @staticmethod
    def _match_spread(new: np.ndarray, known: np.ndarray, old: np.ndarray) -> np.ndarray:
        """Scale and shift ``new`` so its shared points have the centroid and RMS radius they had in
        the previous layout. t-SNE keeps inflating slowly however long it runs (a few percent per
        100 iterations); without this, unchanged data would drift outwards on every update."""
        shared = new[known]
        c_new, c_old = shared.mean(axis=0), old.mean(axis=0)
        r_new, r_old = _rms_radius(shared), _rms_radius(old)
        scale = r_old / r_new if r_new > 1e-12 and r_old > 1e-12 else 1.0
        return (new - c_new) * scale + c_old

    @staticmethod
    def _align_signs(new: np.ndarray, known: np.ndarray, old: np.ndarray) -> np.ndarray:
        """Flip each axis of ``new`` whose centred coordinates disagree with ``old`` on the shared points."""
        a = new[known] - new[known].mean(axis=0)
        b = old - old.mean(axis=0)
        signs = np.where(np.sum(a * b, axis=0) < 0, -1.0, 1.0)
        return new * signs

    def trails(self) -> np.ndarray:
        """(n, k, 2) last k <= trail positions of each id of the last update, oldest first; ids with a
        shorter history are padded by repeating their oldest position."""
        st = self.state
        if st.layout is None or len(st.ids) == 0:
            return np.zeros((len(st.ids), 0, 2), dtype=np.float32)
        hists = [st.history[int(i)] for i in st.ids]
        k = max(len(h) for h in hists)
        out = np.empty((len(hists), k, 2), dtype=np.float32)
        for r, h in enumerate(hists):
            pos = np.asarray(h, dtype=np.float32)
            out[r, : k - len(pos)] = pos[0]
            out[r, k - len(pos):] = pos
        return out


# ---------------------------------------------------------------------------------------------
# what the training monitor lays out


def _module(model: nn.Module, layer: str) -> nn.Module:
    named = dict(model.named_modules())
    if layer not in named or layer == "":
        names = [n for n, m in named.items() if isinstance(m, (nn.Conv2d, nn.Linear))]
        raise ValueError(f"Unknown layer {layer!r}; layers with weights: {', '.join(names)}")
    return named[layer]


def filter_vectors(model: torch.nn.Module, layer: str) -> np.ndarray:
    """(out_channels, fan_in) weights of a Conv2d/Linear layer (name as in dict(model.named_modules())), flattened, float32 CPU."""
    module = _module(model, layer)
    if not isinstance(module, (nn.Conv2d, nn.Linear)):
        raise ValueError(f"Layer {layer!r} is a {type(module).__name__}; filter vectors need a Conv2d or Linear layer")
    w = module.weight.detach()
    return w.reshape(w.shape[0], -1).to(device="cpu", dtype=torch.float32).numpy().copy()


def layer_activations(model: torch.nn.Module, layer: str, images: torch.Tensor, *, batch_size: int = 256) -> np.ndarray:
    """(n, C) activations of `layer` for `images`: conv outputs averaged over space per channel, linear outputs as-is.
    Runs under torch.no_grad() in eval mode without switching the model's mode (it may be shared with other
    threads; see core.models.for_inference: a model in train mode is read through an eval-mode copy). Uses a
    forward hook, removed afterwards, that acts in the calling thread only (core.explain.activations.capture).

    The forward pass of each batch stops right after ``layer`` (later layers are not run).
    Images are moved to the device of the model's parameters.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not isinstance(images, torch.Tensor) or images.dim() < 2:
        raise ValueError("images must be a tensor (N, C, H, W)")
    _module(model, layer)  # an unknown layer fails before any copy
    return capture(model, [layer], images, batch_size=batch_size).of(layer).numpy()
