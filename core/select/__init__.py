"""Which pool images to show a person next: five samplers behind one interface
(``get_sampler(name).rank(pool, exclude=annotated, seed=..., k=...)``)."""
from core.select.kcenter import kcenter_greedy
from core.select.samplers import (
    SAMPLERS,
    EntropySampler,
    GMMSampler,
    KCenterSampler,
    MarginSampler,
    PoolView,
    RandomSampler,
    Sampler,
    downsample_cams,
    get_sampler,
)

__all__ = [
    "SAMPLERS",
    "EntropySampler",
    "GMMSampler",
    "KCenterSampler",
    "MarginSampler",
    "PoolView",
    "RandomSampler",
    "Sampler",
    "downsample_cams",
    "get_sampler",
    "kcenter_greedy",
]
