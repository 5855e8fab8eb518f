"""Why an INT8 model loses accuracy, and which nodes to keep in float: per-node sensitivity over
ONNX Runtime's static QDQ quantization.

    prepared = prepare_for_int8(fp32)
    quantizer = Quantizer(prepared, calibration_images)
    validation = with_reference(prepared, x, labels)
    ranking = node_sensitivity(quantizer, validation)          # one node quantized at a time
    int8 = quantizer.variant("minmax", exclude=[ranking[0][0].name])   # the worst kept in float

Sensitivity is the usual one-at-a-time measurement: each quantizable node (Conv, Gemm, Add) is
quantized alone, the rest of the graph kept in float, and the top-1 answers that change against
the float model on validation images are counted (with the mean squared logit error relative to
the logits' power, to order nodes that flip none). A mixed-precision search then keeps the most
sensitive nodes in float (`nodes_to_exclude`), one more at a time, until the drop on validation
images is within a bar (scripts/edge_results.py). All variants of one calibration method share
one calibration (a cache of activation ranges). Choose on validation images (e.g. training images
not used for calibration) and report on the test split, so that the test set does not pick the
variant.
"""

from __future__ import annotations

import ast
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from edgecnn.export.quantize import quantize_int8
from edgecnn.repository import INPUT_NAME

QUANTIZABLE_OPS = ("Conv", "Gemm", "MatMul", "Add")


@dataclass(frozen=True)
class Node:
    name: str  # in the pre-processed graph (export.quantize.prepare_for_int8)
    op_type: str
    module: str  # the PyTorch module it came from (torch.onnx's name scopes), "" when unknown
    role: str  # what it is in the network, for reports (e.g. "depthwise 3x3 conv")

    def describe(self) -> str:
        return f"{self.module or self.name} ({self.role})"


def _module(node: onnx.NodeProto) -> str:
    """The innermost PyTorch module scope torch.onnx recorded for a node (a Conv fused with its
    BatchNorm reports the BatchNorm's)."""
    for prop in node.metadata_props:
        if prop.key == "pkg.torch.onnx.name_scopes":
            try:
                scopes = ast.literal_eval(prop.value)
            except (ValueError, SyntaxError):
                return ""
            modules = [s for s in scopes[:-1] if s]  # the last scope is the operation itself
            return modules[-1] if modules else ""
    return ""


def quantizable_nodes(prepared: onnx.ModelProto) -> list[Node]:
    """The nodes static QDQ quantizes, in graph order, with a readable role."""
    graph = prepared.graph
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    weights = {t.name: t for t in graph.initializer}
    nodes = []
    for n in graph.node:
        if n.op_type not in QUANTIZABLE_OPS:
            continue
        role = {"Gemm": "classifier", "MatMul": "matmul", "Add": "residual add"}.get(n.op_type, "conv")
        if n.op_type == "Conv" and len(n.input) > 1 and n.input[1] in weights:
            out_ch, in_per_group, *kernel = weights[n.input[1]].dims
            group = next((a.i for a in n.attribute if a.name == "group"), 1)
            size = "x".join(map(str, kernel))
            activations = [c for c in consumers.get(n.output[0], []) if c.op_type in ("Clip", "Relu")]
            pooled = any(c.op_type in ("ReduceMean", "GlobalAveragePool") for a in activations for c in consumers.get(a.output[0], []))
            if group > 1:
                role = f"depthwise {size} conv"
            elif n.input[0] == graph.input[0].name:
                role = f"stem {size} conv"
            elif size == "1x1" and pooled:
                role = "last 1x1 conv, before the pooling"
            elif size == "1x1":
                role = "expand 1x1 conv" if activations else "project 1x1 conv (linear)"
            else:
                role = f"{size} conv"
            role += f", {out_ch} out"
        nodes.append(Node(n.name, n.op_type, _module(n), role))
    return nodes


@dataclass
class Images:
    """Inputs to compare variants on, with the float model's logits and (optionally) labels."""

    x: np.ndarray
    labels: np.ndarray | None
    reference: np.ndarray = field(default_factory=lambda: np.empty(0))  # the FP32 logits


def session(model: onnx.ModelProto, threads: int = 1) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def logits(model: onnx.ModelProto, x: np.ndarray, threads: int = 1, batch: int = 256) -> np.ndarray:
    s = session(model, threads)
    return np.concatenate([s.run(None, {INPUT_NAME: x[i : i + batch]})[0] for i in range(0, len(x), batch)])


@dataclass(frozen=True)
class Score:
    accuracy: float | None  # top-1 against the labels
    drop_points: float | None  # float model's accuracy minus this one's, in points (from counts)
    flips: float  # share of top-1 answers that differ from the float model's
    relative_error: float  # mean squared logit error / mean squared float logit

    @staticmethod
    def of(out: np.ndarray, images: Images) -> Score:
        ref = images.reference
        flips = float(np.mean(out.argmax(1) != ref.argmax(1)))
        err = float(np.mean((out - ref) ** 2) / max(float(np.mean(ref**2)), 1e-30))
        if images.labels is None:
            return Score(None, None, flips, err)
        correct = int(np.sum(out.argmax(1) == images.labels))
        ref_correct = int(np.sum(ref.argmax(1) == images.labels))
        n = len(images.labels)
        return Score(correct / n, 100.0 * (ref_correct - correct) / n, flips, err)


def with_reference(prepared: onnx.ModelProto, x: np.ndarray, labels: np.ndarray | None, threads: int = 1) -> Images:
    return Images(x, labels, logits(prepared, x, threads))


class Quantizer:
    """INT8 variants of one pre-processed model sharing one calibration per method."""

    def __init__(self, prepared: onnx.ModelProto, calibration_images: np.ndarray, workdir: Path | None = None) -> None:
        self.prepared = prepared
        self.calibration_images = calibration_images
        self._tmp = None
        if workdir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="edgecnn-int8-search-")
            workdir = Path(self._tmp.name)
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)

    def variant(
        self, method: str = "minmax", exclude: Sequence[str] = (), only: Sequence[str] | None = None
    ) -> onnx.ModelProto:
        cache = self.workdir / f"calibration-{method}.json"
        images = None if cache.is_file() else self.calibration_images
        return quantize_int8(
            self.prepared, images, calibration_method=method, nodes_to_exclude=exclude, nodes_to_quantize=only,
            prepared=True, calibration_cache=cache,
        )


def node_sensitivity(
    quantizer: Quantizer, images: Images, method: str = "minmax", nodes: Sequence[Node] | None = None, threads: int = 1
) -> list[tuple[Node, Score]]:
    """Each node quantized alone: its score, most sensitive first (flips, then logit error)."""
    nodes = quantizable_nodes(quantizer.prepared) if nodes is None else nodes
    scored = [(n, Score.of(logits(quantizer.variant(method, only=[n.name]), images.x, threads), images)) for n in nodes]
    return sorted(scored, key=lambda item: (item[1].flips, item[1].relative_error), reverse=True)
