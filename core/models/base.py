"""What every model in the zoo tells the rest of steerboard about itself."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class ModelInfo:
    """How a model was built: enough to rebuild it and to check a checkpoint against it."""

    arch: str
    in_channels: int
    image_size: int
    num_classes: int

    def to_dict(self) -> dict[str, int | str]:
        return {
            "arch": self.arch,
            "in_channels": self.in_channels,
            "image_size": self.image_size,
            "num_classes": self.num_classes,
        }


class SteerableModel(nn.Module):
    """A classifier split into ``features`` (image -> feature vector) and ``head``
    (feature vector -> logits), that names its layers for the pages.

    Subclasses set:
      - ``feature_layer``: name of the module whose output is the feature vector
        (embeddings and the latent projection branch read it);
      - ``gradcam_layer``: name of the default convolutional layer for Grad-CAM;
      - ``layer_groups``: ordered ``{group: [module names]}``, the units a user freezes.
    """

    info: ModelInfo
    feature_layer: str
    gradcam_layer: str
    layer_groups: dict[str, list[str]]

    def features(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def head(self, f: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def group_modules(self, group: str) -> list[nn.Module]:
        """The modules of one freezable group."""
        named = dict(self.named_modules())
        return [named[n] for n in self.layer_groups[group]]

    def group_parameters(self, group: str) -> list[nn.Parameter]:
        """The parameters of one freezable group."""
        return [p for m in self.group_modules(group) for p in m.parameters()]

    @property
    def feature_dim(self) -> int:
        return int(self._feature_dim)
