"""edgecnn/loadtest/onnxruntime_in_process.py: the bench's in-process ONNX Runtime numbers."""

from __future__ import annotations

from edgecnn.loadtest.onnxruntime_in_process import bench_onnxruntime


def test_in_process_numbers_of_a_served_model(served_repository):
    numbers = bench_onnxruntime(served_repository.onnx, (1, 28, 28), threads=1, duration_s=0.2, callers=2, device="cpu")
    assert set(numbers) == {"batch1_req_per_s", "batch1_p50_ms", "batch1_p99_ms", "batch1_parallel_req_per_s", "batch64_images_per_s"}
    assert all(value > 0 for value in numbers.values()), numbers
    assert numbers["batch1_p50_ms"] <= numbers["batch1_p99_ms"]
    assert numbers["batch1_req_per_s"] > 10 and numbers["batch64_images_per_s"] > 10
