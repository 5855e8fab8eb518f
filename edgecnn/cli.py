"""The `edgecnn` command line.

Each sub-command lives in its own module with `configure(parser)` and `run(args) -> int`.
Only the chosen command's module is imported, so `edgecnn serve` never pulls in torch.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from edgecnn import __version__

COMMANDS: dict[str, tuple[str, str]] = {
    "models": ("edgecnn.training.cmd_models", "list the registered architectures"),
    "train": ("edgecnn.training.cmd_train", "train a model on a dataset"),
    "export": ("edgecnn.export.cmd_export", "export a training run to an ONNX model repository"),
    "verify": ("edgecnn.export.cmd_verify", "verify an exported model against PyTorch"),
    "serve": ("edgecnn.server.cmd_serve", "serve a model repository over gRPC"),
    "health": ("edgecnn.client.cmd_health", "check a server's gRPC health service"),
    "classify": ("edgecnn.client.cmd_classify", "classify image files through a server"),
    "loadtest": ("edgecnn.loadtest.cmd_loadtest", "measure a server's inference latency"),
    "repository": ("edgecnn.client.cmd_repository", "list a server's model repository, load or unload a model"),
}


# Top-level modules that only an extra installs.
TRAIN_EXTRA_MODULES = frozenset({"torch", "torchvision", "onnx", "onnxscript", "matplotlib", "tqdm"})
LOADTEST_EXTRA_MODULES = frozenset({"hdrh"})


def missing_module_hint(module: str | None) -> str:
    """What to install when `module` (a dotted name, or None when unknown) cannot be imported."""
    missing = module or "a dependency"
    if module and module.split(".")[0] in TRAIN_EXTRA_MODULES:
        return f"cannot import {missing}. Training and export need the extras: pip install 'edgecnn[train]'"
    if module and module.split(".")[0] in LOADTEST_EXTRA_MODULES:
        return f"cannot import {missing}. The load tester needs its extra: pip install 'edgecnn[loadtest]'"
    return f"cannot import {missing}. Reinstall the serving install: pip install edgecnn"


def _top_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgecnn",
        description="Train, export, verify and serve convolutional image classifiers.",
    )
    parser.add_argument("--version", action="version", version=f"edgecnn {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        parser = _top_parser()
        if not argv:
            parser.print_help()
            return 2
        parser.parse_args(argv)  # prints usage, or --help / --version, and exits
        return 2
    name, rest = argv[0], argv[1:]
    module_name, help_text = COMMANDS[name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        print(f"edgecnn {name}: {missing_module_hint(exc.name)}", file=sys.stderr)
        return 2
    parser = argparse.ArgumentParser(prog=f"edgecnn {name}", description=help_text)
    module.configure(parser)
    args = parser.parse_args(rest)
    return int(module.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
