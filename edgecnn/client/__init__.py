"""Clients of an edgecnn server: health checks, classification. No torch here.

``from edgecnn.client import EdgeClient`` imports the client lazily, so `edgecnn health`
(the container HEALTHCHECK) does not pay for numpy and pillow.
"""

from __future__ import annotations

from typing import Any

_LAZY = {"EdgeClient": "client", "ClientError": "client", "Prediction": "messages"}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
