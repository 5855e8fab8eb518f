"""`make results`: train LeNet-5, the MLP and MobileNetV2 on the full Fashion-MNIST and write docs/results.md.

Then the edge-variant section (export to FP32/INT8/FP16, sizes, ORT latency, accuracy drop)
is appended by scripts/edge_results.py.

    python scripts/results.py                          # everything (about 2 hours on 2 cores)
    python scripts/results.py --models mobilenet-v2    # train and measure just these; the other
                                                       # models' rows are kept from docs/results.md
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

# OpenMP threads that wait for work sleep instead of spinning: on a shared 2-core machine a
# spinning thread burns the core its sibling needs (MobileNetV2 at 2 threads measured 6x slower
# per step under load with the default policy). Set before torch starts OpenMP; same results.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import torch  # noqa: E402
from machine import describe  # noqa: E402

from edgecnn.training.models import MODELS as KNOWN_MODELS  # noqa: E402
from edgecnn.training.train import TrainConfig, train  # noqa: E402

# (model, lecture's accuracy on Fashion-MNIST, our target, training settings)
RUNS = [
    (
        "lenet5", ">91%", 0.915,
        {"epochs": 60, "optimizer": "adamw", "lr": 3e-3, "weight_decay": 0.05, "augment": "crop-flip", "crop_padding": 1},
    ),
    ("mlp", "84.18%", 0.842, {"epochs": 20, "optimizer": "adamw", "lr": 2e-3, "weight_decay": 0.05, "augment": "flip"}),
    # Above LeNet-5. Width 0.5 and 2 threads so that it trains in about 75 minutes on 2 CPU cores;
    # training is channels-last there (TrainConfig.memory_format auto), about 2x faster than NCHW.
    (
        "mobilenet-v2", "n/a", 0.925,
        {"epochs": 12, "width_mult": 0.5, "threads": 2, "optimizer": "adamw", "lr": 3e-3, "weight_decay": 0.05,
         "augment": "crop-flip", "crop_padding": 2, "label_smoothing": 0.1},
    ),
]
MODEL_NAMES = [run[0] for run in RUNS]
STAMP_RE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d UTC")


def train_command(model: str) -> str:
    """The `edgecnn train` command line of a model's row (what --models MODEL trains)."""
    settings = next(s for m, _, _, s in RUNS if m == model)
    flags = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in settings.items())
    return f"edgecnn train {model} --dataset fashion-mnist {flags} --seed 0 --out runs/{model}-fashion-mnist"


def recipe(settings: dict) -> str:
    return ", ".join(f"{k.replace('_', '-')} {v}" for k, v in settings.items() if k != "epochs")


def training_section(rows: list[dict]) -> str:
    lines = [
        "## Training on Fashion-MNIST (60,000 train / 10,000 test images)",
        "",
        "| model | params | lecture | target | test accuracy | met | epochs | recipe (one-cycle LR) | train seconds | device |",
        "|---|---:|---:|---:|---:|:-:|---:|---|---:|---|",
    ]
    for r in rows:
        met = "yes" if r["test_accuracy"] >= r["target"] else "**no**"
        lines.append(
            f"| `{r['model']}` | {r['params']:,} | {r['lecture']} | ≥ {r['target']:.1%} | {r['test_accuracy']:.2%} | {met} "
            f"| {r['epochs']} | {recipe(r['settings'])} | {r['train_seconds']:.0f} | {r['device']} |"
        )
    lines += ["", "Each row trains with (the same seed and threads give the same weights on this CPU):", ""]
    lines += [f"- `{m}`: `{train_command(m)}`" for m in MODEL_NAMES]
    lines += [
        "",
        "Not trained here: the lecture's MNIST rows (MLP 98.36%, LeNet-5 99.36%) and its CIFAR-10 rows "
        "(MLP 6,246,410 parameters, 55%; CNN 545,098 parameters, 78%). These machines are offline and "
        "carry only Fashion-MNIST; the parameter counts are checked by tests/test_models.py, and "
        "`edgecnn train lenet5 --dataset mnist --download` or `edgecnn train cifar-cnn --download` "
        "trains them where the data can be fetched.",
    ]
    return "\n".join(lines) + "\n"


def _blocks(text: str) -> list[list[str]]:
    """Markdown split into blocks of non-blank lines."""
    blocks: list[list[str]] = [[]]
    for line in text.splitlines():
        if line.strip():
            blocks[-1].append(line)
        elif blocks[-1]:
            blocks.append([])
    return [b for b in blocks if b]


def _block_key(blocks: list[list[str]], i: int) -> tuple[str, str]:
    """What a block is, to find it again in another version of the file: a table by its header
    row, a bullet list by the line before it, anything else by its first line."""
    block = blocks[i]
    if block[0].startswith("|"):
        return ("table", block[0])
    if block[0].startswith("- "):
        return ("list", blocks[i - 1][0] if i else "")
    return ("text", block[0])


def _row_model(line: str) -> str | None:
    """The model a table row or bullet is about: the first `name` in it naming a known model."""
    if line.startswith(("|", "- ")):
        for name in re.findall(r"`([^`]+)`", line):
            if name in KNOWN_MODELS:
                return name
    return None


def merge_rows(old: str, new: str, rerun: set[str]) -> str:
    """new's text, its tables and bullet lists completed with old's rows of the models not in
    rerun: old's order, a rerun model's new rows where its old ones were (else at the end)."""
    old_blocks = _blocks(old)
    old_by_key = {_block_key(old_blocks, i): b for i, b in enumerate(old_blocks)}
    out = []
    new_blocks = _blocks(new)
    for i, block in enumerate(new_blocks):
        key = _block_key(new_blocks, i)
        previous = old_by_key.get(key) if key[0] != "text" else None
        if previous is None:
            out.append(block)
            continue
        head = [line for line in block if _row_model(line) is None]
        fresh = [line for line in block if _row_model(line) in rerun]
        rows: list[str] = []
        for line in previous:
            model = _row_model(line)
            if model is None:
                continue
            if model in rerun:
                rows += fresh
                fresh = []
            else:
                rows.append(line)
        out.append(head + rows + fresh)
    return "\n\n".join("\n".join(b) for b in out) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", default=str(ROOT / "runs"), help="where the run directories go")
    parser.add_argument("--out", default=str(ROOT / "docs" / "results.md"))
    parser.add_argument("--models", default=",".join(MODEL_NAMES),
                        help=f"comma-separated subset of {', '.join(MODEL_NAMES)} to train and measure; with a subset "
                        "the other models' rows are kept from --out (default: all)")
    parser.add_argument("--skip-training", action="store_true", help="reuse existing runs' metrics.json")
    parser.add_argument("--no-edge", action="store_true", help="skip the export / edge-variant section")
    args = parser.parse_args()
    chosen = [m for m in args.models.split(",") if m]
    unknown = sorted(set(chosen) - set(MODEL_NAMES))
    if unknown or not chosen:
        parser.error(f"--models {args.models}: expected some of {', '.join(MODEL_NAMES)}")
    subset = set(chosen) != set(MODEL_NAMES)
    out = Path(args.out)
    if subset and not out.is_file():
        parser.error(f"--models {args.models} keeps the other rows of {out}, which does not exist; run without --models")
    old_text = out.read_text() if subset else ""

    rows, run_dirs = [], []
    for model, lecture, target, settings in RUNS:
        if model not in chosen:
            continue
        # LeNet-5 and the MLP are too small to gain from a second thread; one thread is faster on
        # a 2-core machine and makes the run reproducible bit for bit. MobileNetV2's recipe says
        # its own threads (the same count gives the same result).
        torch.set_num_threads(settings.get("threads", 1))
        run_dir = Path(args.runs) / f"{model}-fashion-mnist"
        if not args.skip_training:
            train(TrainConfig(model=model, dataset="fashion-mnist", seed=0, out=str(run_dir), **settings))
        metrics = json.loads((run_dir / "metrics.json").read_text())
        rows.append({**metrics, "settings": settings, "lecture": lecture, "target": target})
        run_dirs.append(run_dir)
    torch.set_num_threads(1)

    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    if subset:
        kept = STAMP_RE.findall(old_text.split("\n## ", 1)[0])
        names = ", ".join(f"`{m}`" for m in chosen)
        produced = (
            f"Produced by `make results` (scripts/results.py); do not edit by hand. The rows of {names} are from "
            f"`scripts/results.py --models {','.join(chosen)}` on {stamp}; the other rows were kept from the run "
            f"of {kept[-1] if kept else 'an earlier run'}."
        )
    else:
        produced = f"Produced by `make results` (scripts/results.py) on {stamp}; do not edit by hand."
    text = (
        "# Results\n\n"
        f"{produced}\n\n"
        f"Machine: {describe()}; torch {torch.__version__}, 1 thread unless the recipe says threads.\n\n"
        + training_section(rows)
    )
    if not args.no_edge:
        from edge_results import edge_results

        # A subset run does not measure the fixed-seed CIFAR CNN again: its rows are kept.
        text += "\n" + edge_results(run_dirs, Path(args.runs) / "edge-results", add_cifar_models=not subset)
    elif subset and "\n## Edge variants" in old_text:  # keep the old section as it was
        text += "\n" + old_text[old_text.index("\n## Edge variants") + 1 :]
    if subset:
        text = merge_rows(old_text, text, set(chosen))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(text)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
