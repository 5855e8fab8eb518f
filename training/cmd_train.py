"""`edgecnn train MODEL --dataset DS ...`"""

from __future__ import annotations

import argparse
import json
import sys

from edgecnn.number_args import is_non_negative, is_positive
from edgecnn.training.datasets import DATASETS, DatasetNotFoundError
from edgecnn.training.models import MODELS


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", choices=list(MODELS), help="architecture to train")
    parser.add_argument("--dataset", choices=list(DATASETS), help="default: the model's own dataset")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=2e-3, help="peak learning rate of the one-cycle schedule")
    parser.add_argument("--optimizer", choices=["sgd", "adam", "adamw"], default="adamw")
    parser.add_argument("--weight-decay", type=float, default=5e-4)
    parser.add_argument("--label-smoothing", type=float, default=0.0, help="cross-entropy label smoothing")
    parser.add_argument("--limit", type=int, help="use only the first N training images (smoke runs)")
    parser.add_argument("--test-limit", type=int, help="evaluate on the first N test images only (smoke runs)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch intra-op threads on the CPU (0: one per core; 1 keeps a busy machine responsive)")
    parser.add_argument("--data-dir", help="where the dataset files are (searched first)")
    parser.add_argument("--download", action="store_true", help="download the dataset through torchvision if missing")
    parser.add_argument("--augment", choices=["auto", "none", "flip", "crop-flip"], default="auto",
                        help="auto: random crop + flip for cifar10, none for the others")
    parser.add_argument("--crop-padding", type=int, help="crop-flip: pixels of zero padding (default side/8)")
    parser.add_argument("--width-mult", type=float, help="MobileNetV2 width multiplier")
    parser.add_argument("--memory-format", choices=["auto", "contiguous", "channels-last"], default="auto",
                        help="training tensors' layout; auto: channels-last for mobilenet-v2 on the CPU (2x faster there)")
    parser.add_argument("--out", help="run directory (default runs/<model>-<dataset>)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (they show on a terminal only)")


def _bad_number(args: argparse.Namespace) -> str | None:
    """What is wrong with the numeric flags, if anything (NaN fails every check)."""
    checks = [
        ("--epochs", args.epochs, args.epochs >= 1),
        ("--batch-size", args.batch_size, args.batch_size >= 1),
        ("--limit", args.limit, args.limit is None or args.limit >= 1),
        ("--test-limit", args.test_limit, args.test_limit is None or args.test_limit >= 1),
        ("--lr", args.lr, is_positive(args.lr)),
        ("--weight-decay", args.weight_decay, is_non_negative(args.weight_decay)),
        ("--label-smoothing", args.label_smoothing, 0 <= args.label_smoothing < 1),
        ("--threads", args.threads, args.threads >= 0),
        ("--crop-padding", args.crop_padding, args.crop_padding is None or args.crop_padding >= 0),
        ("--width-mult", args.width_mult, args.width_mult is None or is_positive(args.width_mult)),
    ]
    bad = [f"{flag} {value}" for flag, value, ok in checks if not ok]
    if not bad:
        return None
    return f"out of range: {', '.join(bad)} (epochs, batch size, limits >= 1; lr, width-mult > 0; weight decay, threads, crop padding >= 0; label smoothing in [0, 1))"


def run(args: argparse.Namespace) -> int:
    from edgecnn.training.train import TrainConfig, train

    problem = _bad_number(args)
    if problem:
        print(f"edgecnn train: {problem}", file=sys.stderr)
        return 2
    cfg = TrainConfig(
        model=args.model,
        dataset=args.dataset or MODELS[args.model].default_dataset,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        optimizer=args.optimizer,
        weight_decay=args.weight_decay,
        label_smoothing=args.label_smoothing,
        limit=args.limit,
        test_limit=args.test_limit,
        seed=args.seed,
        device=args.device,
        threads=args.threads,
        data_dir=args.data_dir,
        download=args.download,
        augment=args.augment,
        crop_padding=args.crop_padding,
        width_mult=args.width_mult,
        memory_format=args.memory_format,
        out=args.out,
        progress=not args.no_progress,
    )
    try:
        metrics = train(cfg)
    except (DatasetNotFoundError, ValueError, RuntimeError) as exc:
        print(f"edgecnn train: {exc}", file=sys.stderr)
        return 2
    summary = {k: metrics[k] for k in ("model", "dataset", "params", "epochs", "test_accuracy", "train_seconds", "device")}
    print(json.dumps(summary))
    print(f"wrote {cfg.out_dir()}/model.pt, metrics.json, curves.png")
    return 0
