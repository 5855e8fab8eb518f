"""edgecnn: train small CNNs, export them to verified ONNX, serve them over gRPC."""

__version__ = "0.1.0"
