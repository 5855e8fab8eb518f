"""Server settings: what `edgecnn serve` accepts, as one immutable value."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Device = Literal["auto", "cpu", "cuda"]
BatchBuckets = Literal["auto", "on", "off"]

DEFAULT_PORT = 8001  # Triton's gRPC port
DEFAULT_METRICS_PORT = 8002  # Triton's metrics port
DEFAULT_HTTP_PORT = 8000  # Triton's HTTP/REST port (`edgecnn serve`'s default)
DEFAULT_MAX_QUEUE = 256
DEFAULT_MAX_IMAGE_PIXELS = 4096 * 4096
DEFAULT_INLINE_MAX_US = 400
DEFAULT_INLINE_IDLE_MAX_US = 2000


@dataclass(frozen=True)
class Settings:
    repository: Path
    host: str = "0.0.0.0"
    port: int = DEFAULT_PORT
    # None: no metrics endpoint (in-process tests may not need one); 0: any free port.
    metrics_port: int | None = DEFAULT_METRICS_PORT
    # HTTP/REST (KServe V2) port; None: no HTTP front end (`edgecnn serve` defaults to 8000); 0: any free port.
    http_port: int | None = None
    device: Device = "auto"
    # ONNX Runtime intra-op threads per session; 0 lets ONNX Runtime decide.
    threads: int = 0
    # None: take max_batch_size / max_queue_delay_microseconds from each config.pbtxt.
    max_batch_size: int | None = None
    max_queue_delay_us: int | None = None
    # Requests waiting per model version before RESOURCE_EXHAUSTED.
    max_queue: int = DEFAULT_MAX_QUEUE
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    auth_token: str | None = None
    # Seconds in-flight requests get to finish on SIGTERM/SIGINT.
    grace_s: float = 10.0
    # Width x height an encoded Classify image may declare; larger ones are refused undecoded.
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    # The longest a batch may block the event loop when it runs there instead of on a worker
    # thread (server/inline.py); 0: always a worker thread.
    inline_max_us: int = DEFAULT_INLINE_MAX_US
    inline_idle_max_us: int = DEFAULT_INLINE_IDLE_MAX_US
    # One session per batch size bucket, batches padded up to it (server/shapes.py); auto: on CUDA.
    batch_buckets: BatchBuckets = "auto"
    # ModelInfer refuses NaN or infinite inputs (INVALID_ARGUMENT) instead of accepting and counting
    # them as Triton does (edgecnn_nonfinite_inputs_total). Classify always refuses them.
    reject_nonfinite: bool = False
    # The live repository (repository_manager.py), Triton's flags: none | poll | explicit.
    model_control_mode: str = "none"
    repository_poll_secs: float = 15.0
    load_models: tuple[str, ...] = ()  # explicit mode's start-up set; "*": every model
    exit_on_error: bool = True  # a model that fails to load at start-up stops the start
    strict_readiness: bool = True  # ServerReady only while every model that should serve does
    # One of the workers of `edgecnn serve --workers N` (server/workers.py): it shares the gRPC and
    # HTTP ports with the others through SO_REUSEPORT (the supervisor checked them and holds them),
    # listens only once its models are loaded, and writes its metrics to PROMETHEUS_MULTIPROC_DIR
    # for the supervisor's /metrics (it serves none itself).
    worker: bool = False
    # CPUs this server's ONNX Runtime calls may use (its worker threads); 0: usable_cpus(). A
    # worker of --workers N gets its share.
    cpus: int = 0
    # auto | asyncio | uvloop (server/event_loop.py); a worker runs the loop its supervisor was given.
    event_loop: str = "auto"

    def __post_init__(self) -> None:
        if self.model_control_mode not in ("none", "poll", "explicit"):
            raise ValueError(f"model_control_mode must be none, poll or explicit, got {self.model_control_mode!r}")
        if not self.repository_poll_secs > 0:
            raise ValueError(f"repository_poll_secs must be > 0, got {self.repository_poll_secs}")
        if self.load_models and self.model_control_mode != "explicit":
            raise ValueError("--load-model needs --model-control-mode explicit (the other modes load every model)")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("TLS needs both --tls-cert and --tls-key")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError("--tls-client-ca needs --tls-cert and --tls-key")
        if self.max_queue < 1:
            raise ValueError(f"max_queue must be >= 1, got {self.max_queue}")
        if self.max_image_pixels < 1:
            raise ValueError(f"max_image_pixels must be >= 1, got {self.max_image_pixels}")
        if self.inline_max_us < 0:
            raise ValueError(f"inline_max_us must be >= 0, got {self.inline_max_us}")
        if self.inline_idle_max_us < 0:
            raise ValueError(f"inline_idle_max_us must be >= 0, got {self.inline_idle_max_us}")
        if self.cpus < 0:
            raise ValueError(f"cpus must be >= 0, got {self.cpus}")
        if self.threads < 0:
            raise ValueError(f"threads must be >= 0, got {self.threads}")
        if self.batch_buckets not in ("auto", "on", "off"):
            raise ValueError(f"batch_buckets must be auto, on or off, got {self.batch_buckets!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be auto, cpu or cuda, got {self.device!r}")
