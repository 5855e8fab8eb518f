"""What the servicers share: the loaded models with their batchers, metrics, and the
ready/draining flags."""

from __future__ import annotations

from dataclasses import dataclass, field

from .batching import Batcher
from .metrics import Metrics
from .registry import ModelRegistry
from .runtime import ModelVersion
from .settings import DEFAULT_MAX_IMAGE_PIXELS


@dataclass
class ServerState:
    metrics: Metrics
    registry: ModelRegistry = field(default_factory=lambda: ModelRegistry([]))
    batchers: dict[tuple[str, int], Batcher] = field(default_factory=dict)
    ready: bool = False
    draining: bool = False
    inflight: int = 0  # RPCs inside a handler now (event-loop thread only)
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS  # per encoded Classify image, checked before decoding

    def batcher(self, mv: ModelVersion) -> Batcher:
        return self.batchers[(mv.name, mv.version)]

    @property
    def serving(self) -> bool:
        return self.ready and not self.draining
