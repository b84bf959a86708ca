"""The model zoo: seed-cnn (seed 000), vgg6 (ReVACNN, seed 003) and a small-image ResNet-18."""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from core.models.base import ModelInfo, SteerableModel


def _flat_size(body: Callable[[torch.Tensor], torch.Tensor], in_channels: int, image_size: int) -> int:
    with torch.no_grad():
        return int(body(torch.zeros(1, in_channels, image_size, image_size)).numel())


def _grid_cap(image_size: int, pools: int, cap: int) -> nn.Module:
    """What brings the convolutions' output grid down to at most ``cap`` x ``cap`` before the
    first dense layer: nothing (the papers' networks, for images up to 64 px) or an adaptive
    average pool, so that layer's size stops growing with the image side squared (seed-cnn
    at 256 px would have 33.6 million weights in it; at 768 px, 302 million)."""
    grid = image_size >> pools
    return nn.AdaptiveAvgPool2d(cap) if grid > cap else nn.Identity()


def _kaiming_init(model: nn.Module) -> None:
    # He initialisation for ReLU layers: without BatchNorm, PyTorch's default init leaves this
    # plain network stuck near chance for several epochs on small data.
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            nn.init.zeros_(m.bias)


class SeedCNN(SteerableModel):
    """Four 3x3 convolutions and three fully connected layers, the base network of seed 000."""

    feature_layer = "fc2"
    gradcam_layer = "conv4"

    def __init__(self, in_channels: int, image_size: int, num_classes: int) -> None:
        super().__init__()
        self.info = ModelInfo("seed-cnn", in_channels, image_size, num_classes)
        self.conv1 = nn.Conv2d(in_channels, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 32, 3, padding=1)
        self.conv3 = nn.Conv2d(32, 64, 3, padding=1)
        self.conv4 = nn.Conv2d(64, 64, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.relu = nn.ReLU()
        self.grid = _grid_cap(image_size, 2, 16)  # fc1 at most 64 * 16 * 16 inputs
        flat = _flat_size(lambda x: self.grid(self._conv_body(x)), in_channels, image_size)
        self.fc1 = nn.Linear(flat, 128)
        self.fc2 = nn.Linear(128, 64)
        self.fc3 = nn.Linear(64, num_classes)
        self._feature_dim = 64
        self.layer_groups = {n: [n] for n in ("conv1", "conv2", "conv3", "conv4", "fc1", "fc2", "fc3")}
        _kaiming_init(self)

    def _conv_body(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.conv1(x))
        x = self.pool(self.relu(self.conv2(x)))
        x = self.relu(self.conv3(x))
        return self.pool(self.relu(self.conv4(x)))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.grid(self._conv_body(x)), 1)
        x = self.relu(self.fc1(x))
        return self.relu(self.fc2(x))

    def head(self, f: torch.Tensor) -> torch.Tensor:
        return self.fc3(f)


class VGG6(SteerableModel):
    """ReVACNN's VGG-style network: six 3x3 convs (32, 32, 64, 64, 128, 128), each with
    BatchNorm and ReLU, max-pool after the 2nd, 4th and 6th, then two fully connected layers."""

    feature_layer = "fc1"
    gradcam_layer = "conv6"

    def __init__(self, in_channels: int, image_size: int, num_classes: int) -> None:
        super().__init__()
        self.info = ModelInfo("vgg6", in_channels, image_size, num_classes)
        widths = [32, 32, 64, 64, 128, 128]
        prev = in_channels
        for i, w in enumerate(widths, start=1):
            setattr(self, f"conv{i}", nn.Conv2d(prev, w, 3, padding=1))
            setattr(self, f"bn{i}", nn.BatchNorm2d(w))
            prev = w
        self.pool = nn.MaxPool2d(2)
        self.relu = nn.ReLU()
        self.grid = _grid_cap(image_size, 3, 8)  # fc1 at most 128 * 8 * 8 inputs
        flat = _flat_size(lambda x: self.grid(self._conv_body(x)), in_channels, image_size)
        self.fc1 = nn.Linear(flat, 256)
        self.fc2 = nn.Linear(256, num_classes)
        self._feature_dim = 256
        self.layer_groups = {f"conv{i}": [f"conv{i}", f"bn{i}"] for i in range(1, 7)}
        self.layer_groups.update({"fc1": ["fc1"], "fc2": ["fc2"]})

    def _conv_body(self, x: torch.Tensor) -> torch.Tensor:
        for i in range(1, 7):
            x = self.relu(getattr(self, f"bn{i}")(getattr(self, f"conv{i}")(x)))
            if i % 2 == 0:
                x = self.pool(x)
        return x

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.fc1(torch.flatten(self.grid(self._conv_body(x)), 1)))

    def head(self, f: torch.Tensor) -> torch.Tensor:
        return self.fc2(f)


class ResNet18(SteerableModel):
    """torchvision's ResNet-18 with a 3x3 stride-1 stem and no stem max-pool, which keeps
    enough resolution for 28-64 pixel images."""

    feature_layer = "avgpool"
    gradcam_layer = "layer4"

    def __init__(self, in_channels: int, image_size: int, num_classes: int) -> None:
        super().__init__()
        import torchvision  # imported here: it costs over a second at app start and only resnet18 needs it

        self.info = ModelInfo("resnet18", in_channels, image_size, num_classes)
        net = torchvision.models.resnet18(weights=None, num_classes=num_classes)
        net.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
        self.conv1, self.bn1, self.relu = net.conv1, net.bn1, net.relu
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self.avgpool, self.fc = net.avgpool, net.fc
        self._feature_dim = 512
        self.layer_groups = {
            "stem": ["conv1", "bn1"],
            "layer1": ["layer1"],
            "layer2": ["layer2"],
            "layer3": ["layer3"],
            "layer4": ["layer4"],
            "fc": ["fc"],
        }

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)

    def head(self, f: torch.Tensor) -> torch.Tensor:
        return self.fc(f)


ARCHITECTURES: dict[str, type[SteerableModel]] = {
    "seed-cnn": SeedCNN,
    "vgg6": VGG6,
    "resnet18": ResNet18,
}
