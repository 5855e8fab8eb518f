"""`edgecnn export RUN_DIR --repository DIR`: write a verified ONNX version into a model repository.

Exit codes: 0 exported, 1 verification found a breach, 2 unusable input (checkpoint, repository,
arguments, data) or a model torch.onnx cannot convert. Either failure leaves the repository as it was.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from edgecnn.export.onnx_checks import CheckError
from edgecnn.export.cli_args import (
    EXIT_BREACH,
    add_verification_args,
    fail,
    test_images_from,
    thresholds_from,
)
from edgecnn.export.onnx_export import (
    DEFAULT_CALIBRATION_IMAGES,
    DEFAULT_OPSET,
    ExportError,
    VerificationFailed,
    export_run,
)
from edgecnn.export.quantize import CALIB_PERCENTILE, CALIBRATION_METHODS, QUANTIZATIONS
from edgecnn.export.verify import VerificationError, format_report
from edgecnn.number_args import int_at_least
from edgecnn.repository import DEFAULT_MAX_BATCH_SIZE, RepositoryError


def _node_names(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if not names:
        raise argparse.ArgumentTypeError("expected comma-separated ONNX node names")
    return names


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR", help="training run folder (holding model.pt) or the model.pt itself")
    parser.add_argument("--repository", required=True, metavar="DIR", help="model repository to write into")
    parser.add_argument("--name", help="model name in the repository (default: the architecture's name)")
    parser.add_argument("--version", type=int_at_least(1), help="version number (default: the next free one)")
    parser.add_argument("--opset", type=int, default=None, help=f"ONNX opset, >= 17 (default {DEFAULT_OPSET})")
    parser.add_argument("--quantize", choices=QUANTIZATIONS, default="none", help="edge variant (default none = FP32)")
    parser.add_argument("--calibration-images", type=int_at_least(1), default=DEFAULT_CALIBRATION_IMAGES, metavar="N",
                        help=f"INT8: training images to calibrate on (default {DEFAULT_CALIBRATION_IMAGES})")
    parser.add_argument("--calibrate-on-random", action="store_true",
                        help="INT8: when the training images are not found, calibrate on random inputs instead of "
                        "failing (recorded in the metadata as edgecnn.calibration; accuracy will suffer)")
    parser.add_argument("--calibration-method", choices=list(CALIBRATION_METHODS), default="minmax",
                        help="INT8: how activation ranges are set from the calibration images: minmax (default), "
                        f"percentile (the central {CALIB_PERCENTILE}%% of values) or entropy (KL divergence)")
    parser.add_argument("--int8-exclude", type=_node_names, default=(), metavar="NODE,...",
                        help="INT8: nodes kept in float32 (ONNX node names after ONNX Runtime's quantization "
                        "pre-processing, as docs/results.md lists them for MobileNetV2)")
    parser.add_argument("--max-batch-size", type=int_at_least(1), default=None, metavar="N",
                        help=f"max_batch_size in a new model's config.pbtxt (default {DEFAULT_MAX_BATCH_SIZE}); "
                        "a new version of an existing model keeps the model's config")
    parser.add_argument("--no-verify", dest="verify", action="store_false",
                        help="skip the comparison with PyTorch (the structural ONNX checks still run)")
    add_verification_args(parser)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        result = export_run(
            args.run_dir, args.repository, name=args.name, version=args.version, opset=args.opset,
            quantize=args.quantize, verify=args.verify, data_dir=args.data_dir, samples=args.samples,
            test_images=test_images_from(args), thresholds=thresholds_from(args),
            calibration_images=args.calibration_images, max_batch_size=args.max_batch_size,
            calibrate_on_random=args.calibrate_on_random, calibration_method=args.calibration_method,
            int8_exclude=args.int8_exclude,
        )
    except VerificationFailed as exc:
        print(f"edgecnn export: {exc}", file=sys.stderr)
        return EXIT_BREACH
    except (ExportError, CheckError, VerificationError, RepositoryError, OSError, ValueError) as exc:
        # a foreign or stale checkpoint is a ValueError (CheckpointError), a missing file an OSError
        return fail("export", exc)
    print(f"exported {result.onnx_path} ({result.onnx_path.stat().st_size:,} bytes)")
    if result.verification_path.is_file():
        print(format_report(json.loads(result.verification_path.read_text())))
    else:
        print("verification skipped (--no-verify); structural ONNX checks passed")
    return 0
