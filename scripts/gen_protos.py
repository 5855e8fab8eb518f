"""Generate the Python gRPC stubs in protos/ (package edgecnn.protos) from protos/*.proto.

grpc_tools writes absolute imports (``import inference_pb2``); they are rewritten to
package-relative ones so the stubs live inside ``edgecnn.protos``. The messages are registered
in edgecnn.protos._pool.POOL instead of protobuf's default pool, so they coexist with
tritonclient's stubs for the same ``inference`` package in one process.
Run with ``--check`` to fail when the committed stubs are stale (the tests do).
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path

PROTO_DIR = Path(__file__).resolve().parent.parent / "protos"
_DEFAULT_POOL = "_descriptor_pool.Default().AddSerializedFile("
_PRIVATE_POOL = "_pool.POOL.AddSerializedFile("
_POOL_ANCHOR = "from google.protobuf import descriptor_pool as _descriptor_pool"


def generate(out_dir: Path) -> list[Path]:
    from grpc_tools import protoc
    import grpc_tools

    protos = sorted(PROTO_DIR.glob("*.proto"))
    include = Path(grpc_tools.__file__).parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_DIR}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *[str(p) for p in protos],
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    local = {p.stem for p in protos}
    written = sorted(out_dir.glob("*_pb2*.py")) + sorted(out_dir.glob("*_pb2.pyi"))
    for path in written:
        text = path.read_text()
        for stem in local:
            text = re.sub(rf"^import {stem}_pb2 as ", f"from . import {stem}_pb2 as ", text, flags=re.M)
            text = re.sub(rf"^from {stem}_pb2 import ", f"from .{stem}_pb2 import ", text, flags=re.M)
        text = text.replace(_DEFAULT_POOL, _PRIVATE_POOL)
        if _PRIVATE_POOL in text:
            text = text.replace(_POOL_ANCHOR, f"{_POOL_ANCHOR}\nfrom . import _pool", 1)
        path.write_text(text)
    return written


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="compare with the committed stubs, write nothing")
    args = parser.parse_args()
    if not args.check:
        for path in generate(PROTO_DIR):
            print(f"wrote {path.relative_to(PROTO_DIR.parent)}")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        stale = []
        for fresh in generate(Path(tmp)):
            committed = PROTO_DIR / fresh.name
            if not committed.exists() or committed.read_text() != fresh.read_text():
                stale.append(fresh.name)
    if stale:
        print(f"stale generated stubs: {', '.join(stale)}; run `make protos`", file=sys.stderr)
        return 1
    print("generated stubs are up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
