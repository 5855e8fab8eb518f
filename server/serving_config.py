"""How one loaded model version is served, decided once at load: config.pbtxt, then the
command line's overrides, then what the execution provider changes.

Every rule that differs on a GPU lives in resolve_serving (nowhere else): on the CUDA provider
no call runs inline on the event loop (a CUDA call mostly waits for the device and would stall
every other request meanwhile), batch size buckets are on by default (shapes.py), and with
dynamic batching the model gets one compute slot (at most two batches run at once and the
requests behind them merge into the next ones). Otherwise every worker thread is a slot:
concurrent calls overlap (on a GPU one call's kernel launches with another's wait; measured on
an H100, one slot served MobileNetV2 unbatched at a third of the floor's req/s).
"""

from __future__ import annotations

from dataclasses import dataclass

from edgecnn.protos import model_config_pb2

from .device import CUDA
from .settings import Settings

BATCHES_PER_SLOT = 2  # a worker finishing a batch finds the next one already formed


@dataclass(frozen=True)
class ModelServing:
    max_batch_size: int  # 0: the model takes no batching (one request per run)
    max_queue_delay_us: int
    batch_buckets: bool  # one session per batch size bucket (shapes.py)
    compute_slots: int  # ONNX Runtime calls of this version that may run at once
    inline_max_s: float  # inline.py's budget; 0: never on the event loop
    inline_idle_max_s: float  # its budget for a request alone in the server
    max_queue: int  # requests waiting before RESOURCE_EXHAUSTED

    @property
    def dynamic_batching(self) -> bool:
        """Requests merge into batches (Triton: a max batch size and a queue delay)."""
        return self.max_batch_size > 1 and self.max_queue_delay_us > 0

    @property
    def batches_in_flight(self) -> int:
        return BATCHES_PER_SLOT * self.compute_slots

    @property
    def batch_limit(self) -> int:
        """The most rows one request may carry."""
        return self.max_batch_size if self.max_batch_size > 0 else 1

    def effective_config(self, config: model_config_pb2.ModelConfig) -> model_config_pb2.ModelConfig:
        """config.pbtxt with the batching really applied (what ModelConfig answers)."""
        effective = model_config_pb2.ModelConfig()
        effective.CopyFrom(config)
        effective.max_batch_size = self.max_batch_size
        if self.dynamic_batching:
            effective.dynamic_batching.max_queue_delay_microseconds = self.max_queue_delay_us
        else:  # Triton reads a dynamic_batching block, even an empty one, as batching on
            effective.ClearField("dynamic_batching")
        return effective


def resolve_serving(config: model_config_pb2.ModelConfig, settings: Settings, provider: str, workers: int) -> ModelServing:
    """workers: the server's ONNX Runtime worker threads."""
    batch = config.max_batch_size if settings.max_batch_size is None else settings.max_batch_size
    if settings.max_queue_delay_us is not None:
        delay = settings.max_queue_delay_us
    elif config.HasField("dynamic_batching"):
        delay = config.dynamic_batching.max_queue_delay_microseconds
    else:
        delay = 0
    batch, delay = max(batch, 0), max(delay, 0)
    on_gpu = provider == CUDA
    buckets = on_gpu if settings.batch_buckets == "auto" else settings.batch_buckets == "on"
    batching = batch > 1 and delay > 0
    return ModelServing(
        max_batch_size=batch,
        max_queue_delay_us=delay,
        batch_buckets=buckets and batch > 1,
        compute_slots=1 if on_gpu and batching else max(1, workers),
        inline_max_s=0.0 if on_gpu else settings.inline_max_us * 1e-6,
        # --inline-max-us 0 means never, the idle budget included.
        inline_idle_max_s=0.0 if on_gpu or not settings.inline_max_us else settings.inline_idle_max_us * 1e-6,
        max_queue=settings.max_queue,
    )
