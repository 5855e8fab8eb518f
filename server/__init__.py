"""The gRPC inference server: Open Inference Protocol (KServe V2) and edgecnn.v1.Classifier
over ONNX Runtime, with dynamic batching, health, reflection and Prometheus metrics.

Never imports torch. Start it with `edgecnn serve` or in-process:

    from edgecnn.server import ServerThread, Settings
    with ServerThread(Settings(repository=repo, host="127.0.0.1", port=0, metrics_port=0)) as s:
        ...  # s.address, s.metrics_port
"""

from .app import InferenceServer, ServerThread, serve_until_signal
from .errors import StartupError
from .settings import Settings

__all__ = ["InferenceServer", "ServerThread", "Settings", "StartupError", "serve_until_signal"]
