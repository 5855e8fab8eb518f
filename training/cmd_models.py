"""`edgecnn models`: the registered architectures with their parameter counts."""

from __future__ import annotations

import argparse
import json

from edgecnn.training.models import MODELS, build_model, count_parameters


def model_table() -> list[dict]:
    rows = []
    for spec in MODELS.values():
        rows.append(
            {
                "name": spec.name,
                "params": count_parameters(build_model(spec.name)),
                "input_shape": list(spec.input_shape),
                "default_dataset": spec.default_dataset,
                "description": spec.description,
            }
        )
    return rows


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run(args: argparse.Namespace) -> int:
    rows = model_table()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'name':<14}{'params':>12}  {'input (C,H,W)':<15}{'dataset':<15}description")
    for r in rows:
        shape = "x".join(str(d) for d in r["input_shape"])
        print(f"{r['name']:<14}{r['params']:>12,}  {shape:<15}{r['default_dataset']:<15}{r['description']}")
    return 0
