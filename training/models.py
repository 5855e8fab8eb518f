"""The lecture's architectures, registered by name.

Parameter counts (checked by the tests) follow the EE4016 CNN lecture:
lenet5 44,426 · cifar-cnn 545,098 · mlp 109,386 · cifar-mlp 6,246,410.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn
from torchvision.models import MobileNetV2


class LeNet5(nn.Module):
    """Simplified LeNet-5 for 28×28 inputs (no padding to 32×32)."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, kernel_size=5),  # 28 -> 24
            nn.ReLU(),
            nn.MaxPool2d(2),  # 24 -> 12
            nn.Conv2d(6, 16, kernel_size=5),  # 12 -> 8
            nn.ReLU(),
            nn.MaxPool2d(2),  # 8 -> 4: 16*4*4 = 256 features
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(256, 120),
            nn.ReLU(),
            nn.Linear(120, 84),
            nn.ReLU(),
            nn.Linear(84, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class CifarCNN(nn.Module):
    """The lecture's 4-layer CIFAR-10 CNN: 3×3-32, 3×3-64 (same padding), 4096-128-10."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 32, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 32 -> 16
            nn.Conv2d(32, 64, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 16 -> 8: 64*8*8 = 4096 features
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(4096, 128),
            nn.ReLU(),
            nn.Linear(128, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class MLP(nn.Module):
    """A fully connected baseline: flatten, then Linear+ReLU for each hidden width."""

    def __init__(self, sizes: list[int]) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            layers.append(nn.Linear(fan_in, fan_out))
            if i < len(sizes) - 2:
                layers.append(nn.ReLU())
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def small_input_mobilenet_v2(
    in_channels: int = 3, num_classes: int = 10, width_mult: float = 1.0
) -> MobileNetV2:
    """torchvision's MobileNetV2 with the first two stride-2 stages set to stride 1.

    ImageNet's 224×224 is downsampled 32×; a 28×28 or 32×32 image keeps a 4×4 map this way
    (8× downsampling) instead of vanishing to 1×1.
    """
    setting = [
        [1, 16, 1, 1],
        [6, 24, 2, 1],  # stride 2 on ImageNet
        [6, 32, 3, 2],
        [6, 64, 4, 2],
        [6, 96, 3, 1],
        [6, 160, 3, 2],
        [6, 320, 1, 1],
    ]
    model = MobileNetV2(
        num_classes=num_classes, width_mult=width_mult, inverted_residual_setting=setting
    )
    stem = model.features[0][0]
    model.features[0][0] = nn.Conv2d(
        in_channels, stem.out_channels, kernel_size=3, stride=1, padding=1, bias=False
    )
    return model


@dataclass(frozen=True)
class ModelSpec:
    name: str
    build: Callable[..., nn.Module]
    input_shape: tuple[int, int, int]  # (C, H, W)
    default_dataset: str
    description: str
    takes_channels: bool = True  # convolutional: the first layer follows the data's channels
    options: dict[str, Any] = field(default_factory=dict)


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in [
        ModelSpec(
            "lenet5",
            lambda in_channels=1, num_classes=10: LeNet5(in_channels, num_classes),
            (1, 28, 28),
            "fashion-mnist",
            "simplified LeNet-5: conv5x5x6-pool-conv5x5x16-pool-FC 256-120-84-10",
        ),
        ModelSpec(
            "cifar-cnn",
            lambda in_channels=3, num_classes=10: CifarCNN(in_channels, num_classes),
            (3, 32, 32),
            "cifar10",
            "lecture CIFAR-10 CNN: conv3x3x32-pool-conv3x3x64-pool-FC 4096-128-10",
        ),
        ModelSpec(
            "mlp",
            lambda num_classes=10: MLP([784, 128, 64, num_classes]),
            (1, 28, 28),
            "fashion-mnist",
            "MLP baseline 784-128-64-10",
            takes_channels=False,
        ),
        ModelSpec(
            "cifar-mlp",
            lambda num_classes=10: MLP([3072, 1536, 768, 384, 128, num_classes]),
            (3, 32, 32),
            "cifar10",
            "MLP baseline 3072-1536-768-384-128-10",
            takes_channels=False,
        ),
        ModelSpec(
            "mobilenet-v2",
            small_input_mobilenet_v2,
            (3, 32, 32),
            "cifar10",
            "torchvision MobileNetV2, early strides removed for 28x28/32x32 inputs",
            options={"width_mult": 1.0},
        ),
    ]
}


def get_spec(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(MODELS)}") from None


def model_kwargs(
    name: str, in_channels: int, num_classes: int, width_mult: float | None = None
) -> dict[str, Any]:
    """The build_model keyword arguments for a model trained on data with these channels/classes."""
    kwargs: dict[str, Any] = {"num_classes": num_classes}
    if get_spec(name).takes_channels:
        kwargs["in_channels"] = in_channels
    if width_mult is not None:
        kwargs["width_mult"] = width_mult
    return kwargs


def build_model(
    name: str,
    *,
    in_channels: int | None = None,
    num_classes: int = 10,
    width_mult: float | None = None,
) -> nn.Module:
    """Build a registered architecture. MLPs ignore in_channels (their input size is fixed)."""
    spec = get_spec(name)
    kwargs: dict[str, Any] = {"num_classes": num_classes}
    if spec.takes_channels:
        kwargs["in_channels"] = in_channels if in_channels is not None else spec.input_shape[0]
    if name == "mobilenet-v2":
        kwargs["width_mult"] = width_mult if width_mult is not None else spec.options["width_mult"]
    elif width_mult is not None:
        raise ValueError(f"--width-mult applies to mobilenet-v2 only, not {name}")
    return spec.build(**kwargs)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
