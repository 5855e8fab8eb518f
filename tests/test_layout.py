"""The layout's rules, checked: module names that say one thing, harnesses outside the product
packages, test files of a readable size, and serving-side tests that need neither torch nor a
dataset (they run in a serving-only install: pip install ".[loadtest]" pytest tritonclient onnx)."""

from __future__ import annotations

import ast
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PRODUCT = ("edgecnn", "server", "export", "training")
SERVING_TESTS = ("tests/server", "tests/client", "tests/loadtest")
MAX_TEST_LINES = 500


def modules(*folders: str) -> list[Path]:
    return [p for folder in folders for p in (ROOT / folder).rglob("*.py")]


def test_no_module_basename_means_two_things():
    names = Counter(p.name for p in modules(*PRODUCT) if p.name != "__init__.py")
    assert [name for name, n in names.items() if n > 1] == []


def test_test_and_bench_harnesses_are_not_in_the_product_packages():
    assert [str(p.relative_to(ROOT)) for p in modules(*PRODUCT) if p.name in ("child.py", "golden.py")] == []


def test_no_test_file_is_over_500_lines():
    long = {str(p.relative_to(ROOT)): n for p in modules("tests") if (n := len(p.read_text().splitlines())) > MAX_TEST_LINES}
    assert long == {}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def _fixtures(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {a.arg for node in ast.walk(tree) if isinstance(node, ast.FunctionDef) for a in node.args.args}


def test_serving_side_tests_need_neither_torch_nor_a_dataset():
    torch_side = ("torch", "torchvision", "edgecnn.training", "edgecnn.export", "tests.export", "tests.training")
    offending = {}
    for path in modules(*SERVING_TESTS):
        bad = sorted(m for m in _imports(path) if m.startswith(torch_side))
        if "fashion_mnist_dir" in _fixtures(path):
            bad.append("fixture fashion_mnist_dir")
        if bad:
            offending[str(path.relative_to(ROOT))] = bad
    assert offending == {}
