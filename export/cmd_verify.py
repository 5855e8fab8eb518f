"""`edgecnn verify DIR/NAME`: compare an exported version with its PyTorch checkpoint."""

from __future__ import annotations

import argparse
import sys

from edgecnn.export.cli_args import add_verification_args, test_images_from, thresholds_from
from edgecnn.export.verify import VerificationError, format_report, verify_file, write_report
from edgecnn.repository import RepositoryError, resolve


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model_dir", metavar="DIR/NAME", help="a model folder in a repository")
    parser.add_argument("--version", type=int, help="version to verify (default: the latest)")
    add_verification_args(parser)


def run(args: argparse.Namespace) -> int:
    try:
        target = resolve(args.model_dir, args.version)
        report = verify_file(
            target.onnx_path, samples=args.samples, test_images=test_images_from(args),
            thresholds=thresholds_from(args), data_dir=args.data_dir,
        )
    except (RepositoryError, VerificationError, FileNotFoundError, ValueError) as exc:
        print(f"edgecnn verify: {exc}", file=sys.stderr)
        return 1
    write_report(report, target.verification_path)
    print(format_report(report))
    print(f"wrote {target.verification_path}")
    return 0 if report["passed"] else 1
