"""`edgecnn verify DIR/NAME --run-dir RUN_DIR`: compare an exported version with its PyTorch checkpoint.

The ONNX file records the checkpoint's file name and sha256, never a path: --run-dir says which
training run folder holds it.

Exit codes: 0 passed, 1 a breach (the report names the worst sample), 2 verification could not
run (no such version, unreadable ONNX file, missing or changed checkpoint, bad arguments).
"""

from __future__ import annotations

import argparse

from edgecnn.export.cli_args import EXIT_BREACH, add_verification_args, fail, test_images_from, thresholds_from
from edgecnn.export.verify import VerificationError, format_report, verify_file, write_report
from edgecnn.number_args import int_at_least
from edgecnn.repository import RepositoryError, resolve


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model_dir", metavar="DIR/NAME", help="a model folder in a repository")
    parser.add_argument("--version", type=int_at_least(1), help="version to verify (default: the latest)")
    # Not required=True: argparse would answer with the usage text; this names what is missing in one line.
    parser.add_argument("--run-dir", metavar="RUN_DIR",
                        help="the training run folder holding the checkpoint (model.pt) the version was exported from "
                        "(required; its sha256 must match the one recorded at export)")
    add_verification_args(parser)


def run(args: argparse.Namespace) -> int:
    if args.run_dir is None:
        return fail("verify", ValueError(
            "needs --run-dir RUN_DIR, the training run folder holding the model.pt this version was exported from "
            "(the ONNX file records only the checkpoint's file name and sha256)"
        ))
    try:
        target = resolve(args.model_dir, args.version)
        report = verify_file(
            target.onnx_path, args.run_dir, samples=args.samples, test_images=test_images_from(args),
            thresholds=thresholds_from(args), data_dir=args.data_dir,
        )
    except (RepositoryError, VerificationError, OSError, ValueError) as exc:
        # ValueError also covers a foreign or stale checkpoint (export.source.CheckpointError)
        return fail("verify", exc)
    write_report(report, target.verification_path)
    print(format_report(report))
    print(f"wrote {target.verification_path}")
    return 0 if report["passed"] else EXIT_BREACH
