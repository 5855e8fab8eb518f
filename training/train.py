"""The training loop: read it top to bottom.

Data is held in memory as uint8 tensors; each step takes a shuffled batch, scales and
standardizes it (and, for CIFAR-10, randomly crops and flips it), then takes one optimizer step.
After every epoch the model is evaluated on the test split.
"""

from __future__ import annotations

import functools
import json
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from edgecnn import __version__
from edgecnn.training.checkpoint import CHECKPOINT_NAME, checkpoint_meta, save_checkpoint
from edgecnn.training.datasets import Split, get_info, load_split
from edgecnn.training.models import build_model, count_parameters, get_spec, model_kwargs


@dataclass
class TrainConfig:
    model: str
    dataset: str
    epochs: int = 10
    batch_size: int = 128
    lr: float = 2e-3
    optimizer: str = "adamw"
    weight_decay: float = 5e-4
    label_smoothing: float = 0.0
    crop_padding: int | None = None  # crop-flip: zero padding before the crop (default side // 8)
    limit: int | None = None
    test_limit: int | None = None  # evaluate on the first N test images only (smoke runs)
    seed: int = 0
    device: str = "auto"
    threads: int = 0  # torch intra-op threads on the CPU; 0: torch's default (one per core)
    data_dir: str | None = None
    download: bool = False
    augment: str = "auto"  # auto: crop-flip for cifar10, none otherwise; or none|flip|crop-flip
    width_mult: float | None = None
    memory_format: str = "auto"  # auto: channels-last for mobilenet-v2 on the CPU, contiguous otherwise
    out: str | None = None
    progress: bool = True

    def out_dir(self) -> Path:
        return Path(self.out or f"runs/{self.model}-{self.dataset}")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda asked for, but torch sees no CUDA GPU on this machine")
    if name not in ("cpu", "cuda"):
        raise ValueError(f"--device must be auto, cpu or cuda, not {name!r}")
    return torch.device(name)


def make_optimizer(cfg: TrainConfig, params) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, nesterov=True, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    raise ValueError(f"--optimizer must be sgd, adam or adamw, not {cfg.optimizer!r}")


def to_input(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 NCHW -> float32 standardized NCHW (the same preprocessing the server applies)."""
    return (images.float() / 255.0 - mean) / std


def random_flip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Per-image random horizontal flip of a uint8 NCHW batch."""
    flips = torch.rand(len(x), generator=generator) < 0.5
    return torch.where(flips.view(-1, 1, 1, 1), x.flip(-1), x)


def random_crop_flip(x: torch.Tensor, generator: torch.Generator, padding: int | None = None) -> torch.Tensor:
    """Per-image random crop (after zero padding, by default an eighth of the side: 4 pixels for
    CIFAR-10's 32x32, 3 for 28x28) and horizontal flip of a uint8 NCHW batch."""
    n, _, h, w = x.shape
    padding = h // 8 if padding is None else padding
    padded = F.pad(x, (padding, padding, padding, padding))
    offsets = torch.randint(0, 2 * padding + 1, (n, 2), generator=generator)
    flips = torch.rand(n, generator=generator) < 0.5
    out = torch.empty_like(x)
    for i in range(n):
        top, left = offsets[i].tolist()
        crop = padded[i, :, top : top + h, left : left + w]
        out[i] = crop.flip(-1) if flips[i] else crop
    return out


AUGMENTATIONS = {"none": None, "flip": random_flip, "crop-flip": random_crop_flip}
MEMORY_FORMATS = {"contiguous": torch.contiguous_format, "channels-last": torch.channels_last}


def memory_format_for(cfg: TrainConfig, device: torch.device) -> torch.memory_format:
    """auto: channels-last (NHWC) for MobileNetV2 on the CPU, where oneDNN's depthwise convolutions
    train about 2x faster in it (measured on 2 cores); NCHW otherwise, which keeps the other models'
    runs bit for bit as they were."""
    name = cfg.memory_format
    if name == "auto":
        name = "channels-last" if cfg.model == "mobilenet-v2" and device.type == "cpu" else "contiguous"
    if name not in MEMORY_FORMATS:
        raise ValueError(f"--memory-format must be auto, {', '.join(MEMORY_FORMATS)}; not {cfg.memory_format!r}")
    return MEMORY_FORMATS[name]


def augmentation_for(cfg: TrainConfig):
    """auto: random crop + flip for CIFAR-10; nothing for the 28x28 datasets."""
    name = cfg.augment
    if name == "auto":
        name = "crop-flip" if cfg.dataset == "cifar10" else "none"
    if name not in AUGMENTATIONS:
        raise ValueError(f"--augment must be auto, {', '.join(AUGMENTATIONS)}; not {cfg.augment!r}")
    if name == "crop-flip" and cfg.crop_padding is not None:
        return functools.partial(random_crop_flip, padding=cfg.crop_padding)
    return AUGMENTATIONS[name]


@torch.no_grad()
def evaluate(
    model: nn.Module, split: Split, device: torch.device, batch_size: int = 1000,
    memory_format: torch.memory_format = torch.contiguous_format,
) -> tuple[float, float]:
    """Mean cross-entropy loss and top-1 accuracy on a split."""
    model.eval()
    mean, std = _stats(split, device)
    images = torch.from_numpy(split.images)
    labels = torch.from_numpy(split.labels)
    total_loss, correct = 0.0, 0
    for start in range(0, len(split), batch_size):
        x = to_input(images[start : start + batch_size].to(device), mean, std).contiguous(memory_format=memory_format)
        y = labels[start : start + batch_size].to(device)
        logits = model(x)
        total_loss += F.cross_entropy(logits, y, reduction="sum").item()
        correct += (logits.argmax(1) == y).sum().item()
    return total_loss / len(split), correct / len(split)


def _stats(split: Split, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    mean = torch.tensor(split.mean, device=device).view(1, -1, 1, 1)
    std = torch.tensor(split.std, device=device).view(1, -1, 1, 1)
    return mean, std


def train(cfg: TrainConfig) -> dict[str, Any]:
    if cfg.threads < 0:
        raise ValueError(f"--threads must be >= 0, not {cfg.threads}")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    device = resolve_device(cfg.device)
    train_split = load_split(cfg.dataset, "train", cfg.data_dir, cfg.download, cfg.limit)
    test_split = load_split(cfg.dataset, "test", cfg.data_dir, cfg.download, cfg.test_limit)
    channels = train_split.images.shape[1]
    spec = get_spec(cfg.model)
    _check_input_fits(cfg.model, spec.input_shape, train_split.images.shape[1:])

    kwargs = model_kwargs(cfg.model, channels, len(train_split.classes), cfg.width_mult)
    memory_format = memory_format_for(cfg, device)
    model = build_model(cfg.model, **kwargs).to(device, memory_format=memory_format)
    params = count_parameters(model)

    optimizer = make_optimizer(cfg, model.parameters())
    steps_per_epoch = (len(train_split) + cfg.batch_size - 1) // cfg.batch_size
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=cfg.lr, total_steps=cfg.epochs * steps_per_epoch, pct_start=0.15
    )
    augment = augmentation_for(cfg)
    generator = torch.Generator().manual_seed(cfg.seed)
    images = torch.from_numpy(train_split.images)
    labels = torch.from_numpy(train_split.labels)
    mean, std = _stats(train_split, device)

    out_dir = cfg.out_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    history: list[dict[str, float]] = []
    started = time.perf_counter()
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        order = torch.randperm(len(train_split), generator=generator)
        running_loss, seen, correct = 0.0, 0, 0
        # disable=None: bars on a terminal only; in a log file they would be one \r-joined line per update.
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch}/{cfg.epochs}", disable=None if cfg.progress else True, leave=True)
        for step in bar:
            idx = order[step * cfg.batch_size : (step + 1) * cfg.batch_size]
            batch = images[idx]
            if augment:
                batch = augment(batch, generator)
            x = to_input(batch.to(device), mean, std).contiguous(memory_format=memory_format)
            y = labels[idx].to(device)

            logits = model(x)
            loss = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()

            running_loss += loss.item() * len(idx)
            correct += (logits.argmax(1) == y).sum().item()
            seen += len(idx)
            bar.set_postfix(loss=f"{running_loss / seen:.4f}", acc=f"{correct / seen:.3f}")
        test_loss, test_acc = evaluate(model, test_split, device, memory_format=memory_format)
        history.append(
            {
                "epoch": epoch,
                "train_loss": running_loss / seen,
                "train_accuracy": correct / seen,
                "test_loss": test_loss,
                "test_accuracy": test_acc,
                "lr": scheduler.get_last_lr()[0],
            }
        )
        tqdm.write(f"epoch {epoch}: train loss {running_loss / seen:.4f}  test loss {test_loss:.4f}  test acc {test_acc:.4f}")
    seconds = time.perf_counter() - started

    metrics = {
        "model": cfg.model,
        "dataset": cfg.dataset,
        "params": params,
        "epochs": cfg.epochs,
        "history": history,
        "train_loss": [h["train_loss"] for h in history],
        "test_loss": [h["test_loss"] for h in history],
        "test_accuracies": [h["test_accuracy"] for h in history],
        "test_accuracy": history[-1]["test_accuracy"] if history else None,
        "train_images": len(train_split),
        "test_images": len(test_split),
        "train_seconds": round(seconds, 2),
        "seed": cfg.seed,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
        "torch_version": str(torch.__version__),
        "edgecnn_version": __version__,
        "config": asdict(cfg),
    }
    meta = checkpoint_meta(
        cfg.model, kwargs, get_info(cfg.dataset), list(train_split.images.shape[1:]), params,
        metrics["test_accuracy"], cfg.seed,
    )
    save_checkpoint(out_dir / CHECKPOINT_NAME, model.to(memory_format=torch.contiguous_format), meta)
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    plot_curves(history, out_dir / "curves.png", f"{cfg.model} on {cfg.dataset}")
    return metrics


def _check_input_fits(model: str, expected: tuple[int, int, int], got: tuple[int, ...]) -> None:
    """MobileNetV2 adapts to any input; the CNNs need the spatial size, the MLPs the whole shape."""
    if model == "mobilenet-v2":
        return
    compare = slice(1, 3) if get_spec(model).takes_channels else slice(0, 3)
    if tuple(got[compare]) != tuple(expected[compare]):
        shape = lambda s: "x".join(map(str, s))  # noqa: E731
        raise ValueError(f"{model} takes {shape(expected[compare])} inputs; this dataset has {shape(got[compare])}")


def plot_curves(history: list[dict[str, float]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [h["train_loss"] for h in history], marker="o", label="train")
    ax_loss.plot(epochs, [h["test_loss"] for h in history], marker="o", label="test")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("cross-entropy loss")
    ax_loss.legend()
    ax_acc.plot(epochs, [h["train_accuracy"] for h in history], marker="o", label="train")
    ax_acc.plot(epochs, [h["test_accuracy"] for h in history], marker="o", label="test")
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("top-1 accuracy")
    ax_acc.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
