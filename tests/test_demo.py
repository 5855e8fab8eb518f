"""`make demo`'s script end to end (trimmed: one epoch on 10,000 images), through the CLI a user runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(600)  # about 45 s here; the suite's 300 s default is for single tests
def test_demo_runs_the_whole_pipeline(tmp_path, fashion_mnist_dir):
    out = tmp_path / "demo"
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "demo.py"), "--epochs", "1", "--limit", "10000", "--out", str(out)],
        capture_output=True, text=True, timeout=540,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    classified = [line for line in done.stdout.splitlines() if "-true-" in line and line.split()[0].endswith(".png")]
    assert len(classified) == 8, done.stdout
    assert "server exited with code 0" in done.stdout and "Artifacts:" in done.stdout
    assert (out / "run" / "model.pt").is_file()
    for name in ("lenet5", "lenet5-int8"):
        assert json.loads((out / "models" / name / "1" / "verification.json").read_text())["passed"]
    report = json.loads((out / "loadtest.json").read_text())
    (step,) = report["steps"]
    assert step["ok"] > 0 and step["errors"] == {}
    assert (out / "loadtest.csv").is_file() and (out / "loadtest.png").is_file() and (out / "server.log").is_file()
