"""One class-to-colour map for every page that colours classes (Latent, Monitor): class ``i``
of a dataset gets the same colour everywhere, from one qualitative palette."""
from __future__ import annotations

# D3's category10, then ten more of distinct hue and lightness (a class beyond 20 repeats
# the palette; the Latent page's marker shapes still tell such classes apart).
PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
           "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd", "#e6550d", "#31a354", "#756bb1", "#636363"]


def class_color(index: int) -> str:
    """The colour of the class at ``index`` in the dataset's class list."""
    return PALETTE[int(index) % len(PALETTE)]
