"""The CNN lecture's worked examples as fixed-weight modules (golden tests of the exporter, tests/export/test_golden.py).

Each example carries the numbers the lecture prints, by (row, col), so tests can hold PyTorch
and ONNX Runtime to them. The lecture's convolution is cross-correlation (no kernel flip),
O[i, j] = sum_m sum_n I[i+m, j+n] F[m, n] + b, which is what nn.Conv2d computes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

Matrix = list[list[float]]

EDGE_KERNEL: Matrix = [[1, 0, -1], [1, 0, -1], [1, 0, -1]]


@dataclass(frozen=True)
class ConvExample:
    name: str
    title: str  # the lecture slide
    image: Matrix
    kernel: Matrix
    padding: int = 0
    bias: float = 0.0
    printed: dict[tuple[int, int], float] = field(default_factory=dict)  # feature-map values the slide shows

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (1, len(self.image), len(self.image[0]))


CONV_EXAMPLES: dict[str, ConvExample] = {
    e.name: e
    for e in [
        ConvExample(
            "filter-x",
            "2D Filter Convolution (first)",
            image=[[1, 1, 1, 0, 0], [0, 1, 1, 1, 0], [0, 0, 1, 1, 1], [0, 0, 1, 1, 0], [0, 1, 1, 0, 0]],
            kernel=[[1, 0, 1], [0, 1, 0], [1, 0, 1]],
            printed={(0, 0): 4},
        ),
        ConvExample(
            "filter-plus",
            "2D Filter Convolution (second)",
            image=[[1, 1, 1, 1, 0], [0, 0, 1, 1, 0], [0, 0, 1, 0, 1], [0, 0, 1, 1, 1], [1, 1, 0, 1, 0]],
            kernel=[[0, 1, 0], [1, 0, 1], [0, 1, 0]],
            printed={
                (0, 0): 2, (0, 1): 3, (0, 2): 2,
                (1, 0): 1, (1, 1): 2, (1, 2): 3,
                (2, 0): 3, (2, 1): 2, (2, 2): 4,
            },
        ),
        ConvExample(
            "vertical-edge",
            "The Role of Filters: Feature Detection (Vertical Edge)",
            image=[[10, 10, 10, 0, 0, 0] for _ in range(6)],
            kernel=EDGE_KERNEL,
            printed={(i, j): v for i in range(4) for j, v in enumerate([0, 30, 30, 0])},
        ),
        ConvExample(
            "valid-padding",
            "Valid Padding Example",
            image=[[7, 2, 3, 3, 8], [4, 5, 3, 8, 4], [3, 3, 2, 8, 4], [2, 8, 7, 2, 7], [5, 4, 4, 5, 4]],
            kernel=EDGE_KERNEL,
            printed={(0, 0): 6},
        ),
        ConvExample(
            "same-padding",
            "Same Padding Example",
            image=[
                [60, 113, 56, 139, 85],
                [73, 121, 54, 84, 128],
                [131, 99, 70, 129, 127],
                [80, 57, 115, 69, 134],
                [104, 126, 123, 95, 130],
            ],
            kernel=[[0, -1, 0], [-1, 5, -1], [0, -1, 0]],
            padding=1,
            printed={(0, 0): 114},
        ),
    ]
}


@dataclass(frozen=True)
class Exercise:
    """"CNN Exercise": 6x6 image -> conv 3x3 (bias -5) -> ReLU -> max-pool 2x2/2 -> FC 4->3 -> softmax."""

    image: Matrix
    kernel: Matrix
    conv_bias: float
    fc_weight: Matrix
    fc_bias: list[float]
    printed_conv_without_bias: Matrix
    printed_pooled: Matrix
    printed_logits: list[float]
    printed_probabilities: list[float]
    printed_class: int  # 1-based, as the lecture counts

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (1, len(self.image), len(self.image[0]))


EXERCISE = Exercise(
    image=[[0, 5, 5, 5, 5, 0]] * 2 + [[0, 5, 0, 5, 5, 0]] * 4,
    kernel=EDGE_KERNEL,
    conv_bias=-5.0,
    fc_weight=[[0.8, -0.2, 0.1, -0.2], [0.2, -0.6, 0.5, -0.3], [0.5, 0.3, -0.8, 0.9]],
    fc_bias=[0.1, -0.3, 0.6],
    printed_conv_without_bias=[[-10, 0, -5, 15], [-5, 0, -10, 15], [0, 0, -15, 15], [0, 0, -15, 15]],
    printed_pooled=[[0, 10], [0, 10]],
    printed_logits=[-3.9, -9.3, 12.6],
    printed_probabilities=[6.8256e-8, 3.0828e-10, 0.9999],
    printed_class=3,
)


def image_tensor(image: Matrix) -> torch.Tensor:
    """A lecture image as a (1, 1, H, W) float32 batch."""
    return torch.tensor(image, dtype=torch.float32)[None, None]


def _fixed_conv(kernel: Matrix, padding: int, bias: float) -> nn.Conv2d:
    conv = nn.Conv2d(1, 1, kernel_size=len(kernel), padding=padding, bias=True)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor(kernel, dtype=torch.float32)[None, None])
        conv.bias.fill_(bias)
    return conv


def conv_module(example: ConvExample) -> nn.Module:
    return _fixed_conv(example.kernel, example.padding, example.bias).eval()


class ExerciseCNN(nn.Module):
    """The exercise's network; forward returns the FC logits (softmax is the consumer's)."""

    def __init__(self, exercise: Exercise = EXERCISE) -> None:
        super().__init__()
        self.features = nn.Sequential(
            _fixed_conv(exercise.kernel, 0, exercise.conv_bias),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=2, stride=2),
            nn.Flatten(),
        )
        self.fc = nn.Linear(len(exercise.fc_weight[0]), len(exercise.fc_weight))
        with torch.no_grad():
            self.fc.weight.copy_(torch.tensor(exercise.fc_weight))
            self.fc.bias.copy_(torch.tensor(exercise.fc_bias))
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


def exercise_with_softmax(exercise: Exercise = EXERCISE) -> nn.Module:
    return nn.Sequential(ExerciseCNN(exercise), nn.Softmax(dim=1)).eval()
