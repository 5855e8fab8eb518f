"""`make data`'s last resort: say where Fashion-MNIST is, or fetch it through torchvision
(online) into the per-user cache that `edgecnn train` searches."""

from __future__ import annotations

import sys

from edgecnn.training.datasets import locate_or_download

NAME = "fashion-mnist"


def main() -> int:
    try:
        print(f"Fashion-MNIST: {locate_or_download(NAME, download=True)}")
    except Exception as exc:  # noqa: BLE001 - offline, a proxy, ...: one line, not a traceback
        print(f"Fashion-MNIST: not found, and the torchvision download failed ({type(exc).__name__}: {exc})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
