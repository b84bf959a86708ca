"""One class-to-colour map across the app: the Latent and Monitor figures built for the same
classes give each class the same colour (app.colors)."""
from __future__ import annotations

import numpy as np

from app.colors import PALETTE, class_color
from app.latent_plots import map_figure
from app.monitor_plots import embedding_figure
from core.feedback.latent.loss import MoveList
from core.feedback.latent.workflow import LatentView

CLASSES = [f"class {k}" for k in range(12)]


def class_colors(class_names):
    """Class name -> colour by the class's index in the list (what every page must draw)."""
    return {str(name): class_color(i) for i, name in enumerate(class_names)}


def _marker_colours(fig, prefix: str = "") -> dict[str, str]:
    """Trace name (without ``prefix``) -> its marker colour, for traces with points."""
    return {t.name.removeprefix(prefix): t.marker.color for t in fig.data
            if t.type == "scatter" and t.mode == "markers" and t.x is not None and t.x[0] is not None}


def test_latent_and_monitor_give_each_class_the_same_colour():
    rng = np.random.default_rng(0)
    n = 240
    labels = np.arange(n) % len(CLASSES)
    preds = labels.copy()
    preds[::7] = (labels[::7] + 1) % len(CLASSES)  # some mistakes
    coords = rng.normal(size=(n, 2)).astype(np.float32)
    view = LatentView(version=0, ids=np.arange(n), coords=coords, labels=labels, preds=preds,
                      probs=np.full((n, len(CLASSES)), 1 / len(CLASSES)), r2=1.0)
    latent = _marker_colours(map_figure(view, CLASSES, MoveList(), np.arange(n)), prefix="pred ")
    monitor = _marker_colours(embedding_figure(coords, None, labels, preds, CLASSES, np.arange(n), title="t"))
    assert set(latent) == set(monitor) == set(CLASSES)
    assert latent == monitor == class_colors(CLASSES)
    # the legend swatches of the latent page too
    legend = {t.name: t.marker.color for t in map_figure(view, CLASSES, MoveList(), np.arange(n)).data
              if t.name in CLASSES}
    assert legend == class_colors(CLASSES)


def test_a_class_keeps_its_colour_whichever_classes_are_shown():
    colours = class_colors(CLASSES)
    assert len(set(list(colours.values())[:len(PALETTE)])) == min(len(CLASSES), len(PALETTE))  # distinct
    labels = np.array([3, 3, 7, 7])
    fig = embedding_figure(np.zeros((4, 2)), None, labels, labels, CLASSES, np.arange(4), title="t")
    assert _marker_colours(fig) == {"class 3": colours["class 3"], "class 7": colours["class 7"]}
