"""`edgecnn verify DIR/NAME`: compare an exported version with its PyTorch checkpoint.

Exit codes: 0 passed, 1 a breach (the report names the worst sample), 2 verification could not
run (no such version, unreadable ONNX file, missing or changed checkpoint, bad arguments).
"""

from __future__ import annotations

import argparse

from edgecnn.export.cli_args import EXIT_BREACH, add_verification_args, fail, int_at_least, test_images_from, thresholds_from
from edgecnn.export.verify import VerificationError, format_report, verify_file, write_report
from edgecnn.repository import RepositoryError, resolve


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model_dir", metavar="DIR/NAME", help="a model folder in a repository")
    parser.add_argument("--version", type=int_at_least(1), help="version to verify (default: the latest)")
    add_verification_args(parser)


def run(args: argparse.Namespace) -> int:
    try:
        target = resolve(args.model_dir, args.version)
        report = verify_file(
            target.onnx_path, samples=args.samples, test_images=test_images_from(args),
            thresholds=thresholds_from(args), data_dir=args.data_dir,
        )
    except (RepositoryError, VerificationError, OSError, ValueError) as exc:
        # ValueError also covers a foreign or stale checkpoint (export.source.CheckpointError)
        return fail("verify", exc)
    write_report(report, target.verification_path)
    print(format_report(report))
    print(f"wrote {target.verification_path}")
    return 0 if report["passed"] else EXIT_BREACH
