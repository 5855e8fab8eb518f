"""`edgecnn classify`: send image files to a server's Classifier (gRPC, HOST:PORT) or its
HTTP/REST /classify endpoint (http[s]://HOST:PORT) and print labels and scores.

Exit codes: 0 classified, 1 the server failed the call (the gRPC status is named), 2 bad
arguments or input files.
"""

from __future__ import annotations

import argparse
import sys

from edgecnn.auth_token import token_file_option

from .channel import add_connection_args
from .client import ClientError, EdgeClient, open_client
from .http_client import HttpEdgeClient
from .image_files import InputFileError, NamedImage, read_image_files
from .health import DEFAULT_TIMEOUT_S
from .messages import Prediction

PROG = "edgecnn classify"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="+", metavar="FILE", help="PNG/JPEG images, or .npy float32 tensors [C,H,W] / [N,C,H,W]")
    parser.add_argument(
        "--server", default="127.0.0.1:8001",
        help="HOST:PORT of the gRPC endpoint, or http://HOST:PORT (https://) of the HTTP/REST one",
    )
    parser.add_argument("--model", required=True, help="model name in the server's repository")
    parser.add_argument("--version", type=int, default=None, help="model version (default: the latest)")
    parser.add_argument("--top-k", type=int, default=3, help="classes to show per image, best first")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="seconds per call")
    add_connection_args(parser)


def format_table(images: list[NamedImage], predictions: list[list[Prediction]]) -> str:
    rows = [("FILE", "RANK", "LABEL", "SCORE")]
    for image, preds in zip(images, predictions):
        for rank, p in enumerate(preds, start=1):
            rows.append((image.name if rank == 1 else "", str(rank), p.label, f"{p.score:.4f}"))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    return "\n".join(lines)


def classify_all(client: EdgeClient | HttpEdgeClient, images: list[NamedImage], top_k: int) -> list[list[Prediction]]:
    """One Classify call per chunk of at most the model's max batch size."""
    chunk = len(images)
    if chunk > 1:
        chunk = max(client.max_batch_size(), 1)
    predictions: list[list[Prediction]] = []
    for start in range(0, len(images), chunk):
        predictions.extend(client.classify([i.image for i in images[start : start + chunk]], top_k=top_k))
    return predictions


def run(args: argparse.Namespace) -> int:
    try:
        if args.top_k < 1:
            raise ValueError(f"--top-k {args.top_k}: expected a positive number of classes")
        images = read_image_files(args.files)
        token = token_file_option(args.auth_token_file)
        client = open_client(
            args.server, args.model, args.version, tls_ca=args.tls_ca, token=token, timeout=args.timeout,
            tls_cert=args.tls_cert, tls_key=args.tls_key,
        )  # fmt: skip
    except (InputFileError, ValueError) as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    with client:
        try:
            predictions = classify_all(client, images, args.top_k)
        except ClientError as exc:
            print(f"{PROG}: model {args.model!r} at {args.server}: {exc}", file=sys.stderr)
            return 1
    print(format_table(images, predictions))
    return 0
