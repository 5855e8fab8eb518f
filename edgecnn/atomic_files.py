"""Writing a file so that a reader never sees it half written."""

from __future__ import annotations

import os
from pathlib import Path


def write_text_atomic(path: Path | str, text: str) -> None:
    """Write beside the file, then rename over it: whole or not at all, even after a crash."""
    path = Path(path)
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text)
    os.replace(partial, path)
