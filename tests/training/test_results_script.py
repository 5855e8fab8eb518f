"""scripts/results.py's `--models` subset: the rows of the models it measured replace theirs in
docs/results.md, every other row is kept (no training here)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"

OLD = """# Results

Produced by `make results` (scripts/results.py) on 2026-11-26 13:25 UTC; do not edit by hand.

| model | accuracy |
|---|---:|
| `lenet5` | 91.59% |
| `mlp` | 89.53% |

| model | variant | accuracy |
|---|---|---:|
| `lenet5` | INT8 | 90.79% |
| `cifar-cnn` | INT8 | n/a |
| `mobilenet-v2` | INT8 | n/a |

Data per model:

- `lenet5` (fashion-mnist): trained.
- `mobilenet-v2` (cifar10): untrained.

| target | model | value | met |
|---|---|---:|:-:|
| INT8 accuracy drop ≤ 1 point | `lenet5` | +0.80 points | yes |
| INT8 ≥ 3.5× smaller | `mobilenet-v2` | 3.61× | yes |
"""

NEW = """# Results

Produced by the subset run.

| model | accuracy |
|---|---:|
| `mobilenet-v2` | 93.00% |

| model | variant | accuracy |
|---|---|---:|
| `mobilenet-v2` | INT8 | 92.50% |
| `mobilenet-v2` | FP16 | 93.00% |

Data per model:

- `mobilenet-v2` (fashion-mnist): trained.

| target | model | value | met |
|---|---|---:|:-:|
| INT8 ≥ 3.5× smaller | `mobilenet-v2` | 3.50× | yes |
| INT8 accuracy drop ≤ 1 point | `mobilenet-v2` | +0.50 points | yes |

### INT8 for `mobilenet-v2`: what was tried

| try | test drop |
|---|---:|
| minmax | +0.50 |
"""


@pytest.fixture(scope="module")
def results():
    sys.path.insert(0, str(SCRIPTS))
    try:
        import results
    finally:
        sys.path.remove(str(SCRIPTS))
    return results


def test_subset_rows_replace_theirs_and_the_others_are_kept(results):
    merged = results.merge_rows(OLD, NEW, {"mobilenet-v2"})
    assert "Produced by the subset run." in merged and "2026-11-26" not in merged  # prose: the new run's
    assert "| `lenet5` | 91.59% |\n| `mlp` | 89.53% |\n| `mobilenet-v2` | 93.00% |" in merged  # appended
    # in place of the old rows, the other models' rows around them kept
    assert "| `cifar-cnn` | INT8 | n/a |\n| `mobilenet-v2` | INT8 | 92.50% |\n| `mobilenet-v2` | FP16 | 93.00% |" in merged
    assert "untrained" not in merged and "- `lenet5` (fashion-mnist): trained.\n- `mobilenet-v2` (fashion-mnist): trained." in merged
    assert "| INT8 accuracy drop ≤ 1 point | `lenet5` | +0.80 points | yes |\n| INT8 ≥ 3.5× smaller | `mobilenet-v2` | 3.50× |" in merged
    assert "3.61×" not in merged
    assert merged.endswith("| minmax | +0.50 |\n")  # a section the old file lacked


def test_models_flag_names_known_models_only(results, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["results.py", "--models", "resnet"])
    with pytest.raises(SystemExit) as exc:
        results.main()
    assert exc.value.code == 2 and "expected some of lenet5, mlp, mobilenet-v2" in capsys.readouterr().err


def test_the_mobilenet_row_names_its_training_command(results):
    command = results.train_command("mobilenet-v2")
    assert command.startswith("edgecnn train mobilenet-v2 --dataset fashion-mnist ")
    assert "--width-mult 0.5" in command and "--seed 0" in command
