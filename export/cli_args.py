"""Command-line flags shared by `edgecnn export` and `edgecnn verify`, and how both report errors."""

from __future__ import annotations

import argparse
import sys

from edgecnn.export.verify import (
    AUTO,
    DEFAULT_ATOL,
    DEFAULT_MAX_ACCURACY_DROP,
    DEFAULT_RTOL,
    DEFAULT_SAMPLES,
    DEFAULT_TEST_IMAGES,
    Thresholds,
)
from edgecnn.number_args import int_at_least, non_negative_float

# Exit codes: a verification that ran and found a breach, and input the command could not use.
EXIT_BREACH = 1
EXIT_BAD_INPUT = 2


def add_verification_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("verification against PyTorch")
    group.add_argument("--samples", type=int_at_least(0), default=DEFAULT_SAMPLES, metavar="N",
                       help=f"random inputs to compare (default {DEFAULT_SAMPLES})")
    group.add_argument("--test-images", type=int_at_least(-1, " (-1: the whole split, 0: none)"),
                       default=None, metavar="N",
                       help=f"real test images to compare, -1 for the whole split (default: {DEFAULT_TEST_IMAGES} for FP32, "
                            "the whole split for INT8/FP16, whose accuracy-drop gate needs it)")
    group.add_argument("--atol", type=non_negative_float, default=DEFAULT_ATOL,
                       help=f"FP32 logit tolerance (default {DEFAULT_ATOL:g})")
    group.add_argument("--rtol", type=non_negative_float, default=DEFAULT_RTOL,
                       help="FP32 tolerance relative to the sample's largest |logit| (default 0)")
    group.add_argument("--max-accuracy-drop", type=non_negative_float, default=DEFAULT_MAX_ACCURACY_DROP,
                       metavar="POINTS",
                       help=f"INT8/FP16: allowed test accuracy drop in percentage points (default {DEFAULT_MAX_ACCURACY_DROP:g})")
    group.add_argument("--data-dir", default=None,
                       help="where the dataset lives (default: the training run's --data-dir, then the usual places)")


def thresholds_from(args: argparse.Namespace) -> Thresholds:
    return Thresholds(atol=args.atol, rtol=args.rtol, max_accuracy_drop=args.max_accuracy_drop)


def test_images_from(args: argparse.Namespace) -> int | None | str:
    if args.test_images is None:
        return AUTO
    return None if args.test_images == -1 else args.test_images


def fail(command: str, exc: BaseException, code: int = EXIT_BAD_INPUT) -> int:
    """Print the error as one line on stderr and return the exit code."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()] or [type(exc).__name__]
    print(f"edgecnn {command}: {'; '.join(lines)}", file=sys.stderr)
    return code
