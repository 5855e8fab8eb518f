"""Triton's statistics extension (the ModelStatistics RPC): what one served model version has done
since it was loaded, in Triton's terms, for perf_analyzer's server-side breakdown and
tritonclient's get_inference_statistics().

Per request (`inference_stats`, each a count and cumulative nanoseconds):
    success         whole time in the data plane of a request that succeeded (decode to encode)
    fail            the same for a request that failed after its model was known (bad input,
                    a full queue, a failed batch, the drain, a cancelled call)
    queue           enqueue -> its batch starts (0 for a request run at once on the event loop)
    compute_input   decode and validate: the request's tensor (ModelInfer) or images (Classify)
                    into the model's float32 batch
    compute_infer   the ONNX Runtime call of the request's batch (every request in a batch
                    counts the batch's time, as in Triton)
    compute_output  encode the answer (ModelInfer's raw logits or classification strings;
                    Classify's softmax and top-k)
Per model execution (`batch_stats`, one entry per batch size in rows): compute_input is the
concatenation of the batch's requests (0 for a batch of one request), compute_infer the ONNX
Runtime call, compute_output 0 (the logits go back to each request as views, not copies).
`inference_count` counts rows (each image of a batched request is an inference, as in Triton),
`execution_count` ONNX Runtime calls, `last_inference` is the end of the latest one in
milliseconds since the epoch. perf_analyzer's "overhead" is success - queue - compute_*: the
event loop's scheduling between the steps.

A request's numbers (success, queue, compute_input, compute_infer, compute_output) are added
together when it succeeds, so every snapshot holds equal counts of them, as Triton's do (perf_analyzer
refuses a window whose compute counts differ; a batch's requests resume one by one after it).

Threads: the counters are plain ints, written and read on the event loop thread only. A batch
computed on a worker thread measures its own time there and hands the numbers back with its
logits; the batcher adds them on the loop (in the callback that delivers the batch), so no two
threads ever update one counter and no lock is needed.
"""

from __future__ import annotations

from time import time_ns


class Duration:
    """Triton's StatisticDuration: how many, and their cumulative nanoseconds."""

    __slots__ = ("count", "ns")

    def __init__(self) -> None:
        self.count = 0
        self.ns = 0

    def as_dict(self) -> dict[str, int]:
        return {"count": self.count, "ns": self.ns}


class BatchStatistics:
    """Triton's InferBatchStatistics of one batch size."""

    __slots__ = ("compute_input", "compute_infer", "compute_output")

    def __init__(self) -> None:
        self.compute_input = Duration()
        self.compute_infer = Duration()
        self.compute_output = Duration()


class VersionStatistics:
    """One served model version's statistics (event loop thread only; see the module's doc)."""

    __slots__ = (
        "inference_count", "execution_count", "last_inference_ms",
        "success", "fail", "queue", "compute_input", "compute_infer", "compute_output", "batches",
    )  # fmt: skip

    def __init__(self) -> None:
        self.inference_count = 0
        self.execution_count = 0
        self.last_inference_ms = 0
        self.success = Duration()
        self.fail = Duration()
        self.queue = Duration()
        self.compute_input = Duration()
        self.compute_infer = Duration()
        self.compute_output = Duration()
        self.batches: dict[int, BatchStatistics] = {}

    # --- the batcher: per ONNX Runtime call ---

    def executed(self, rows: int, infer_ns: int, input_ns: int = 0) -> None:
        """One ONNX Runtime call of `rows` rows took infer_ns, after input_ns to put the batch together."""
        self.inference_count += rows
        self.execution_count += 1
        self.last_inference_ms = time_ns() // 1_000_000
        batch = self.batches.get(rows)
        if batch is None:
            batch = self.batches[rows] = BatchStatistics()
        batch.compute_input.count += 1
        batch.compute_input.ns += input_ns
        batch.compute_infer.count += 1
        batch.compute_infer.ns += infer_ns
        batch.compute_output.count += 1

    # --- the data plane: per request, once it ends ---

    def succeeded(self, start: int, decoded: int, computed: int, end: int, queue_ns: int, infer_ns: int) -> None:
        """A request that started at `start` (perf_counter_ns), had its input ready at `decoded`,
        its logits at `computed` (after waiting queue_ns for its batch, which took infer_ns) and
        its answer encoded at `end`."""
        s, i, q, c, o = self.success, self.compute_input, self.queue, self.compute_infer, self.compute_output
        s.count += 1
        s.ns += end - start
        i.count += 1
        i.ns += decoded - start
        q.count += 1
        q.ns += queue_ns
        c.count += 1
        c.ns += infer_ns
        o.count += 1
        o.ns += end - computed

    def failed(self, ns: int) -> None:
        f = self.fail
        f.count += 1
        f.ns += ns

    def as_dict(self, name: str, version: str) -> dict:
        """Triton's ModelStatistics as JSON (its HTTP API's layout; json_format.ParseDict reads it
        into the protobuf message)."""
        return {
            "name": name,
            "version": version,
            "last_inference": self.last_inference_ms,
            "inference_count": self.inference_count,
            "execution_count": self.execution_count,
            "inference_stats": {
                "success": self.success.as_dict(),
                "fail": self.fail.as_dict(),
                "queue": self.queue.as_dict(),
                "compute_input": self.compute_input.as_dict(),
                "compute_infer": self.compute_infer.as_dict(),
                "compute_output": self.compute_output.as_dict(),
                "cache_hit": {"count": 0, "ns": 0},  # no response cache
                "cache_miss": {"count": 0, "ns": 0},
            },
            "batch_stats": [
                {
                    "batch_size": size,
                    "compute_input": batch.compute_input.as_dict(),
                    "compute_infer": batch.compute_infer.as_dict(),
                    "compute_output": batch.compute_output.as_dict(),
                }
                for size, batch in sorted(self.batches.items())
            ],
        }
