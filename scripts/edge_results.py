"""Edge variants of trained runs: FP32 vs INT8 vs FP16 ONNX size, ONNX Runtime CPU latency, accuracy.

    python scripts/edge_results.py runs/lenet5-fashion-mnist runs/mlp-fashion-mnist [--workdir DIR]

CIFAR-10 is not on the build machines, so unless runs for them are given, the CIFAR CNN and
MobileNetV2 are measured with untrained fixed-seed weights (size and latency do not depend on
training) and INT8-calibrated on random inputs; their accuracy is "n/a" and the table says so.

A trained MobileNetV2 (`make results` trains it on Fashion-MNIST) gets its INT8 variant chosen
by int8_search(): plain per-channel MinMax PTQ first, then percentile and entropy calibration,
and, if none is within the bar on validation images, the most sensitive nodes kept in float
(edgecnn.export.int8_search); every try is reported.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from edgecnn.export import int8_search as search
from edgecnn.export.data import dataset_images, random_inputs, run_data_dir
from edgecnn.export.metadata import CALIBRATION_KEY
from edgecnn.export.onnx_export import DEFAULT_CALIBRATION_IMAGES, export_run, to_onnx
from edgecnn.export.quantize import CALIBRATION_METHODS, prepare_for_int8
from edgecnn.export.cpu_inference import make_session, run_batched
from edgecnn.export.untrained import fixed_seed_run
from edgecnn.export.verify import Thresholds, compare, torch_logits
from edgecnn.training.checkpoint import load_checkpoint
from edgecnn.training.datasets import DatasetNotFoundError, load_split, normalize

VARIANTS = ("none", "int8", "fp16")
LABEL = {"none": "FP32", "int8": "INT8", "fp16": "FP16"}
# Targets from the issue: INT8 >= 3.5x smaller and >= 1.5x faster at batch 32 for these...
SPEED_SIZE_TARGET_MODELS = ("cifar-cnn", "mobilenet-v2")
MIN_SIZE_RATIO, MIN_SPEEDUP_B32 = 3.5, 1.5
# ...and accuracy drops (points, on the real test split) for the models trained on Fashion-MNIST.
MAX_INT8_DROP = {"lenet5": 1.0, "mobilenet-v2": 1.0}
MAX_FP16_DROP = {"mobilenet-v2": 0.1}
# Trained models whose INT8 variant int8_search() chooses (the others: plain per-channel MinMax).
INT8_SEARCH_MODELS = ("mobilenet-v2",)
VALIDATION_IMAGES = 2000  # training images outside the calibration set: what the search decides on
SENSITIVITY_IMAGES = 1000  # of those, for the per-node sensitivity
VALIDATION_MARGIN = 0.5  # the search aims at this share of the test bar on the validation images
SEARCH_THREADS = 2  # ONNX Runtime threads for the search's accuracy runs (not its latency)


@dataclass
class Variant:
    quantization: str
    size_bytes: int
    latency_ms: dict[int, float]  # batch size -> median milliseconds per call
    accuracy: float | None
    drop_points: float | None  # PyTorch FP32 accuracy minus this variant's, from counts (export/verify.compare)
    calibration: str | None


@dataclass
class ModelResult:
    model: str
    dataset: str
    weights: str  # where the weights came from
    test_data: str  # what the accuracies were measured on
    torch_accuracy: float | None
    variants: dict[str, Variant]
    int8_search: Int8Search | None = None
    label: str = ""  # the model as the tables name it

    def drop(self, q: str) -> float | None:
        return self.variants[q].drop_points


@dataclass
class Int8Try:
    label: str
    method: str
    excluded: tuple[str, ...]
    validation: search.Score
    test: search.Score


@dataclass
class Int8Search:
    bar: float  # test drop allowed, points
    target: float  # validation drop aimed at, points
    validation: str  # what the validation images are
    tries: list[Int8Try]
    chosen: Int8Try
    sensitivity: list[tuple[search.Node, search.Score]]  # most sensitive first; empty when not needed


def median_latencies_ms(
    sessions: dict[str, ort.InferenceSession], input_shape: list[int], batch: int, blocks: int = 6, calls: int = 10, warmup: int = 2
) -> dict[str, float]:
    """Median milliseconds per call of each variant over `blocks` rounds in which each variant
    makes `warmup` untimed then `calls` timed calls in turn: a machine getting slower or faster
    mid-run shifts every variant alike (measured one after the other, the MobileNetV2 INT8/FP32
    ratio moved from 2.30x to 1.32x between two runs here), while each timed call still finds its
    own weights in cache, as a served model does (alternating single calls evicts them)."""
    x = random_inputs(batch, input_shape, seed=2)
    times: dict[str, list[float]] = {q: [] for q in sessions}
    for _ in range(blocks):
        for q, session in sessions.items():
            for i in range(warmup + calls):
                start = time.perf_counter()
                session.run(None, {"input": x})
                if i >= warmup:
                    times[q].append(time.perf_counter() - start)
    return {q: 1000 * statistics.median(t) for q, t in times.items()}


def _weights_description(run_dir: Path, meta: dict) -> str:
    metrics_path = run_dir / "metrics.json"
    if meta.get("test_accuracy") is None or not metrics_path.is_file():
        return f"untrained, fixed seed {meta.get('seed')}"
    m = json.loads(metrics_path.read_text())
    width = (m.get("config") or {}).get("width_mult")
    return f"trained {m.get('epochs')} epochs on {m.get('train_images'):,} {meta['dataset']} images" + (
        f", width {width:g}" if width is not None else ""
    )


def validation_images(dataset: str, shape: list[int], data_dir: str | None, count: int, seed: int = 1):
    """count training images outside the INT8 calibration set (export.data.dataset_sample's
    pick of DEFAULT_CALIBRATION_IMAGES with seed 0), normalized, with labels; and what they are."""
    split = load_split(dataset, "train", data_dir)
    n = len(split)
    calibration = np.random.default_rng(0).choice(n, size=min(DEFAULT_CALIBRATION_IMAGES, n), replace=False)
    rest = np.setdiff1d(np.arange(n), calibration)
    pick = np.sort(np.random.default_rng(seed).choice(rest, size=min(count, len(rest)), replace=False))
    x = normalize(split.images[pick], split.mean, split.std)
    return x, split.labels[pick], f"{len(pick)} random {dataset} training images outside the calibration set (seed {seed})"


def int8_search(model, meta: dict, data_dir: str | None, test, bar: float, log=print) -> Int8Search:
    """Choose the INT8 variant on validation images: plain per-channel MinMax PTQ if within
    bar * VALIDATION_MARGIN there, else the best calibration method, else that method with the
    most sensitive nodes kept in float (greedy, one more node per step). Every try is scored on
    the validation images and on the test split too, for the report."""
    shape = [int(v) for v in meta["input_shape"]]
    prepared = prepare_for_int8(to_onnx(model, shape))
    calibration, _ = calibration_images(meta["dataset"], shape, data_dir)
    vx, vy, vsource = validation_images(meta["dataset"], shape, data_dir, VALIDATION_IMAGES)
    val = search.with_reference(prepared, vx, vy, SEARCH_THREADS)
    tst = search.with_reference(prepared, test.x, test.labels, SEARCH_THREADS)
    quantizer = search.Quantizer(prepared, calibration)
    target = bar * VALIDATION_MARGIN

    def attempt(label: str, method: str, excluded: tuple[str, ...] = ()) -> Int8Try:
        q = quantizer.variant(method, exclude=excluded)
        t = Int8Try(label, method, excluded, search.Score.of(search.logits(q, val.x, SEARCH_THREADS), val),
                    search.Score.of(search.logits(q, tst.x, SEARCH_THREADS), tst))
        log(f"int8 search ({meta['model']}): {label}: validation drop {t.validation.drop_points:+.2f}, test drop {t.test.drop_points:+.2f}")
        return t

    tries = [attempt(f"per-channel, {m} calibration", m) for m in CALIBRATION_METHODS]
    plain = tries[0]
    best = min(tries, key=lambda t: t.validation.drop_points)  # min keeps the first of equals: minmax
    chosen = plain if plain.validation.drop_points <= target else best
    sensitivity: list = []
    if chosen.validation.drop_points > target:
        sub = search.Images(val.x[:SENSITIVITY_IMAGES], val.labels[:SENSITIVITY_IMAGES], val.reference[:SENSITIVITY_IMAGES])
        sensitivity = search.node_sensitivity(quantizer, sub, best.method, threads=SEARCH_THREADS)
        log(f"int8 search ({meta['model']}): most sensitive: " + ", ".join(f"{n.name} {sc.flips:.2%}" for n, sc in sensitivity[:5]))
        for k in range(1, min(8, len(sensitivity)) + 1):
            excluded = tuple(n.name for n, _ in sensitivity[:k])
            tries.append(attempt(f"{best.method}, the {k} most sensitive node{'s' * (k > 1)} in float", best.method, excluded))
            chosen = tries[-1]
            if chosen.validation.drop_points <= target:
                break
    return Int8Search(bar, target, vsource, tries, chosen, sensitivity)


def calibration_images(dataset: str, shape: list[int], data_dir: str | None):
    """The export's INT8 calibration images (export.onnx_export._calibration_images)."""
    from edgecnn.export.data import dataset_sample

    images, why = dataset_sample(dataset, "train", DEFAULT_CALIBRATION_IMAGES, shape, data_dir)
    if images is None:
        raise DatasetNotFoundError(why)
    return images.x, images.source


def measure_run(
    run_dir: Path, repository: Path, threads: int, calibrate_on_random: bool = False, loaded: tuple | None = None
) -> ModelResult:
    """loaded: the run's (model, meta) when the caller has already loaded its checkpoint."""
    model, meta = loaded or load_checkpoint(run_dir)
    shape = [int(v) for v in meta["input_shape"]]
    name = f"{meta['model']}-{meta['dataset']}"
    data_dir = run_data_dir(run_dir)
    test, why = dataset_images(meta["dataset"], "test", None, shape, data_dir)
    expected = torch_logits(model, test.x) if test is not None else None
    found = None
    if test is not None and meta["model"] in INT8_SEARCH_MODELS and meta.get("test_accuracy") is not None:
        found = int8_search(model, meta, data_dir, test, MAX_INT8_DROP.get(meta["model"], 1.0))
    torch_accuracy = None
    variants: dict[str, Variant] = {}
    sessions: dict[str, ort.InferenceSession] = {}
    for q in VARIANTS:
        int8 = {"calibration_method": found.chosen.method, "int8_exclude": found.chosen.excluded} if found and q == "int8" else {}
        exported = export_run(
            run_dir, repository, name=f"{name}-{LABEL[q].lower()}", quantize=q, verify=False,
            calibrate_on_random=calibrate_on_random and q == "int8", **int8,
        )
        path = exported.onnx_path
        sessions[q] = make_session(path, threads)  # one per variant: accuracy and both batch sizes
        accuracy = drop = None
        if test is not None:
            c = compare("test", test.source, expected, run_batched(sessions[q], test.x), test.labels, Thresholds())
            torch_accuracy, accuracy, drop = c.torch_accuracy, c.onnx_accuracy, c.accuracy_drop_points
        props = {p.key: p.value for p in onnx.load(path, load_external_data=False).metadata_props}
        variants[q] = Variant(q, path.stat().st_size, {}, accuracy, drop, props.get(CALIBRATION_KEY))
    for batch in (1, 32):
        for q, ms in median_latencies_ms(sessions, shape, batch).items():
            variants[q].latency_ms[batch] = ms
    test_data = test.source if test is not None else f"none: {why}"
    weights = _weights_description(run_dir, meta)
    # A fixed-seed model says so (its shape too: MobileNetV2 may also be there trained on another dataset).
    label = f"`{meta['model']}`" + (f" (fixed-seed, {'×'.join(map(str, shape))})" if weights.startswith("untrained") else "")
    return ModelResult(meta["model"], meta["dataset"], weights, test_data, torch_accuracy, variants, found, label)


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.2f}%"


def _met(ok: bool | None) -> str:
    return "n/a" if ok is None else ("yes" if ok else "**no**")


def render(results: list[ModelResult], threads: int) -> str:
    lines = [
        "## Edge variants: FP32 vs INT8 vs FP16 (ONNX Runtime, CPU)",
        "",
        f"Latency: median of 60 `InferenceSession.run` calls, taken in 6 rounds in which each variant makes 2 untimed then 10 timed calls in turn "
        f"(so drift in the machine's speed hits every variant alike), CPU execution provider, "
        f"`intra_op_num_threads={threads}`, random inputs. INT8 is static QDQ (uint8 activations, per-channel "
        "int8 weights, MinMax calibration on 512 images; for a trained MobileNetV2, the variant its INT8 search "
        "below chose); FP16 keeps float32 input/output. Accuracy is top-1 on the "
        "test data named per model; drop is PyTorch FP32 minus the variant, in points.",
        "",
        "| model | variant | size (bytes) | × smaller | batch 1 (ms) | batch 32 (ms) | × faster (b32) | accuracy | drop (points) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        fp32 = r.variants["none"]
        for q, v in r.variants.items():
            drop = r.drop(q)
            lines.append(
                f"| {r.label} | {LABEL[q]} | {v.size_bytes:,} | {fp32.size_bytes / v.size_bytes:.2f} "
                f"| {v.latency_ms[1]:.3f} | {v.latency_ms[32]:.2f} | {fp32.latency_ms[32] / v.latency_ms[32]:.2f} "
                f"| {_pct(v.accuracy)} | {'n/a' if drop is None else f'{drop:+.2f}'} |"
            )
    lines += ["", "Data per model:", ""]
    for r in results:
        lines.append(
            f"- {r.label} ({r.dataset}): weights {r.weights}; PyTorch FP32 accuracy {_pct(r.torch_accuracy)}; "
            f"test data: {r.test_data}; INT8 calibration: {r.variants['int8'].calibration}."
        )
    lines += ["", "| target | model | value | met |", "|---|---|---:|:-:|"]
    for r in results:
        fp32, int8 = r.variants["none"], r.variants["int8"]
        if r.model in SPEED_SIZE_TARGET_MODELS and r.dataset == "cifar10":  # the targets' CIFAR-10 shapes
            ratio = fp32.size_bytes / int8.size_bytes
            speedup = fp32.latency_ms[32] / int8.latency_ms[32]
            lines.append(f"| INT8 ≥ {MIN_SIZE_RATIO}× smaller | {r.label} | {ratio:.2f}× | {_met(ratio >= MIN_SIZE_RATIO)} |")
            lines.append(
                f"| INT8 ≥ {MIN_SPEEDUP_B32}× faster at batch 32 | {r.label} | {speedup:.2f}× | {_met(speedup >= MIN_SPEEDUP_B32)} |"
            )
        if r.dataset != "fashion-mnist":
            continue
        for q, bars in (("int8", MAX_INT8_DROP), ("fp16", MAX_FP16_DROP)):
            if r.model in bars:
                drop, bar = r.drop(q), bars[r.model]
                value = "n/a" if drop is None else f"{drop:+.2f} points"
                lines.append(
                    f"| {LABEL[q]} accuracy drop ≤ {bar:g} point | {r.label} | {value} | "
                    f"{_met(None if drop is None else drop <= bar)} |"
                )
    for r in results:
        if r.int8_search is not None:
            lines += ["", *render_int8_search(r)]
    return "\n".join(lines) + "\n"


def _drop(score: search.Score) -> str:
    return "n/a" if score.drop_points is None else f"{score.drop_points:+.2f}"


def render_int8_search(r: ModelResult) -> list[str]:
    found = r.int8_search
    assert found is not None
    lines = [
        f"### INT8 for `{r.model}`: what was tried",
        "",
        f"Each try is static QDQ with per-channel int8 weights and uint8 activations, calibrated on the same "
        f"512 training images. The variant is chosen on validation images, {found.validation}: plain MinMax PTQ "
        f"if its drop there is ≤ {found.target:g} points ({VALIDATION_MARGIN:g} of the test bar, a drop of at most {found.bar:g} "
        f"point{'' if found.bar == 1 else 's'}, since the model fits training images better than test images), else the best calibration, else "
        "that calibration with the most sensitive nodes kept in float, one more at a time. Every try is also "
        f"measured on the test split ({r.test_data}); drops are against ONNX Runtime FP32. Percentile clips each "
        "activation's range to its central 99.999% of values (histogram over the calibration images); entropy "
        "picks the range minimizing the KL divergence between its histogram and its quantized one. The chosen try is the INT8 row above.",
        "",
        "| try | kept in float | validation drop | test accuracy | test drop (points) | test answers changed vs FP32 | chosen |",
        "|---|---|---:|---:|---:|---:|:-:|",
    ]
    for t in found.tries:
        kept = ", ".join(f"`{n}`" for n in t.excluded) or "none"
        lines.append(
            f"| {t.label} | {kept} | {_drop(t.validation)} | {_pct(t.test.accuracy)} | {_drop(t.test)} "
            f"| {t.test.flips:.2%} | {'**yes**' if t is found.chosen else ''} |"
        )
    if found.sensitivity:
        lines += [
            "",
            f"Per-node sensitivity (why plain PTQ loses accuracy): each quantizable node quantized alone, the rest in "
            f"float, on {SENSITIVITY_IMAGES} of the validation images; the most sensitive first.",
            "",
            "| node | module (role) | answers changed | logit MSE / power |",
            "|---|---|---:|---:|",
        ]
        for node, score in found.sensitivity[:10]:
            lines.append(f"| `{node.name}` | {node.describe()} | {score.flips:.2%} | {score.relative_error:.2e} |")
    return lines


def edge_results(runs: list[Path], workdir: Path, threads: int = 1, add_cifar_models: bool = True) -> str:
    """Export each run as FP32/INT8/FP16 under workdir and return the markdown section.

    With add_cifar_models, the CIFAR CNN and MobileNetV2 are added with fixed-seed weights when
    no run for them is given (their targets are about size and speed in CIFAR-10's shape); a model
    given trained on another dataset (MobileNetV2 on Fashion-MNIST: 1x28x28, width 0.5) gets its
    CIFAR-10-shaped fixed-seed twin beside it either way, for those targets. Without CIFAR-10 on
    the machine they are INT8-calibrated on random inputs, which the table's calibration column
    says. Given runs must find their training images for INT8 calibration.
    """
    workdir = Path(workdir)
    runs = [Path(r) for r in runs]
    loaded = {r: load_checkpoint(r) for r in runs}
    given = {meta["model"] for _, meta in loaded.values()}
    given_cifar = {meta["model"] for _, meta in loaded.values() if meta["dataset"] == "cifar10"}
    added = [
        fixed_seed_run(workdir / "runs" / f"{m}-untrained", m, "cifar10")
        for m in SPEED_SIZE_TARGET_MODELS
        if (m not in given and add_cifar_models) or (m in given and m not in given_cifar)
    ]
    repository = workdir / "repository"
    results = [measure_run(r, repository, threads, calibrate_on_random=r in added, loaded=loaded.get(r)) for r in runs + added]
    return render(results, threads)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="*", type=Path, help="training run folders")
    parser.add_argument("--workdir", type=Path, help="where the exports go (default: a temporary folder)")
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads (default 1)")
    parser.add_argument("--no-cifar-models", action="store_true", help="do not add fixed-seed CIFAR CNN / MobileNetV2")
    parser.add_argument("--out", type=Path, help="also write the markdown here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="edge-results-") as tmp:
        text = edge_results(args.runs, args.workdir or Path(tmp), args.threads, not args.no_cifar_models)
    if args.out:
        args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
