"""Command-line flags shared by `edgecnn export` and `edgecnn verify`."""

from __future__ import annotations

import argparse

from edgecnn.export.verify import (
    DEFAULT_ATOL,
    DEFAULT_MAX_ACCURACY_DROP,
    DEFAULT_RTOL,
    DEFAULT_SAMPLES,
    DEFAULT_TEST_IMAGES,
    Thresholds,
)


def add_verification_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("verification against PyTorch")
    group.add_argument("--samples", type=int, default=DEFAULT_SAMPLES, metavar="N",
                       help=f"random inputs to compare (default {DEFAULT_SAMPLES})")
    group.add_argument("--test-images", type=int, default=DEFAULT_TEST_IMAGES, metavar="N",
                       help=f"real test images to compare, -1 for the whole split (default {DEFAULT_TEST_IMAGES})")
    group.add_argument("--atol", type=float, default=DEFAULT_ATOL, help=f"FP32 logit tolerance (default {DEFAULT_ATOL:g})")
    group.add_argument("--rtol", type=float, default=DEFAULT_RTOL,
                       help="FP32 tolerance relative to the sample's largest |logit| (default 0)")
    group.add_argument("--max-accuracy-drop", type=float, default=DEFAULT_MAX_ACCURACY_DROP, metavar="POINTS",
                       help=f"INT8/FP16: allowed test accuracy drop in percentage points (default {DEFAULT_MAX_ACCURACY_DROP:g})")
    group.add_argument("--data-dir", default=None,
                       help="where the dataset lives (default: the training run's --data-dir, then the usual places)")


def thresholds_from(args: argparse.Namespace) -> Thresholds:
    for flag in ("atol", "rtol", "max_accuracy_drop"):
        if getattr(args, flag) < 0:
            raise SystemExit(f"--{flag.replace('_', '-')} must be >= 0, not {getattr(args, flag)}")
    return Thresholds(atol=args.atol, rtol=args.rtol, max_accuracy_drop=args.max_accuracy_drop)


def test_images_from(args: argparse.Namespace) -> int | None:
    if args.test_images < -1:
        raise SystemExit(f"--test-images must be -1 (all), 0 (none) or a count, not {args.test_images}")
    return None if args.test_images == -1 else args.test_images
