"""The live model repository: which models and versions the server serves, loaded, reloaded
and unloaded while it serves, with Triton's model control modes:

- none: every model in the repository is loaded at start-up, and the set never changes;
- poll: the same at start-up, then the repository is rescanned every --repository-poll-secs and
  new, changed or removed models and versions are loaded, reloaded or unloaded;
- explicit: only --load-model models at start-up (``*``: all); RepositoryModelLoad and
  RepositoryModelUnload load, reload and unload while serving.

A version is opened, warmed up and self-tested on a worker thread, never on the event loop, and
only then swapped in (DataPlane.set_model); requests already queued on a version it replaces
finish there, and a version that leaves drains before its session is freed. A version that fails
to load leaves what was serving untouched: its reason shows in RepositoryIndex, the log and
edgecnn_model_load_failures_total. A version folder must appear whole (moved into place, as
`edgecnn export` does): one seen half-written fails to load and is tried again when it changes.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from google.protobuf import json_format

from edgecnn import repository as repo
from edgecnn.protos import model_config_pb2

from .dataplane import DataPlane, IndexEntry
from .errors import InvalidArgument, NotFound, StartupError, Unavailable
from .metrics import Metrics
from .model_version import ModelLoader, ModelVersion
from .registry import served_versions

log = logging.getLogger(__name__)

ControlMode = Literal["none", "poll", "explicit"]
READY, LOADING, UNLOADING, UNAVAILABLE = "READY", "LOADING", "UNLOADING", "UNAVAILABLE"
ALL_MODELS = "*"

Signature = tuple  # what a version was loaded from: file identities and the config's digest


@dataclass
class VersionState:
    state: str
    reason: str = ""


def _file_id(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def _digest(*paths: Path) -> str:
    h = hashlib.sha256()
    for path in paths:
        try:
            h.update(path.read_bytes())
        except OSError:
            h.update(b"\0missing")
    return h.hexdigest()


def model_signature(model_dir: Path) -> Signature:
    """Changes whenever the model's config, labels or any version's files do (what poll watches)."""
    versions = tuple(
        (v, _file_id(model_dir / str(v) / repo.MODEL_FILENAME), _file_id(model_dir / str(v) / repo.SELFTEST_NAME))
        for v in repo.versions(model_dir)
    )
    return (_digest(model_dir / repo.CONFIG_NAME, model_dir / repo.LABELS_NAME), versions)


def model_folders(repository: Path) -> dict[str, Path]:
    """The repository's model folders (those with a config.pbtxt), by name."""
    try:
        entries = list(os.scandir(repository))
    except OSError as exc:
        raise StartupError(f"model repository {repository} cannot be read: {exc}") from None
    return {e.name: Path(e.path) for e in entries if e.is_dir() and (Path(e.path) / repo.CONFIG_NAME).is_file()}


def parse_config_override(name: str, text: str) -> model_config_pb2.ModelConfig:
    """A JSON model configuration (Triton's load `config` parameter), used instead of config.pbtxt."""
    config = model_config_pb2.ModelConfig()
    try:
        json_format.Parse(text, config)
    except json_format.ParseError as exc:
        raise InvalidArgument(f"model {name!r}: the config parameter is not a valid JSON model configuration: {exc}") from None
    if config.name and config.name != name:
        raise InvalidArgument(f"the config parameter names model {config.name!r}; expected {name!r} or no name")
    config.name = name
    return config


@dataclass(frozen=True)
class _Plan:
    config: model_config_pb2.ModelConfig
    entries: list[repo.ModelVersionPath]
    config_digest: str


class RepositoryManager:
    def __init__(
        self,
        plane: DataPlane,
        repository: Path,
        loader: ModelLoader,
        executor: Executor,
        metrics: Metrics,
        mode: ControlMode = "none",
        startup_models: tuple[str, ...] = (),
        exit_on_error: bool = True,
        strict_readiness: bool = True,
        on_change: Callable[[str, bool], Awaitable[None]] | None = None,
    ) -> None:
        self.plane = plane
        self.repository = Path(repository)
        self.mode = mode
        self._loader = loader
        self._executor = executor  # repository reads
        # Opening, warming up and self-testing a version can take seconds (on CUDA, one session
        # per batch size bucket): not on a thread that inference waits for.
        self._load_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="edgecnn-load")
        self._work: set[asyncio.Task] = set()  # loads and unloads under way (a request that gives up does not stop them)
        self._metrics = metrics
        self._startup_models = startup_models
        self._exit_on_error = exit_on_error
        self._strict = strict_readiness
        self._on_change = on_change
        self._states: dict[str, dict[str, VersionState]] = {}  # model -> version ("" for the model) -> state
        self._loaded_from: dict[tuple[str, int], Signature] = {}
        self._seen: dict[str, Signature] = {}  # poll: the signature of each model folder when last acted on
        self._wanted: set[str] = set()  # models that should be serving (strict readiness)
        self._locks: dict[str, asyncio.Lock] = {}
        self._poll_task: asyncio.Task | None = None
        plane.manager = self

    @property
    def control_enabled(self) -> bool:
        """Whether load and unload requests are taken (Triton: explicit mode only)."""
        return self.mode == "explicit"

    # --- start-up, poll, stop ---

    async def start(self, poll_s: float = 0.0) -> None:
        """Load the start-up set; a failure stops the start unless exit_on_error is off."""
        folders = await self._in_executor(model_folders, self.repository)
        if self.mode == "explicit":
            names = sorted(folders) if ALL_MODELS in self._startup_models else list(dict.fromkeys(self._startup_models))
            missing = [n for n in names if n not in folders]
            if missing:
                raise StartupError(f"--load-model {', '.join(missing)}: no such model in {self.repository} (have: {', '.join(sorted(folders)) or 'none'})")
        else:
            names = sorted(folders)
            if not names and self.mode == "none":
                raise StartupError(f"model repository {self.repository} holds no model (expected <name>/config.pbtxt and <name>/<version>/model.onnx)")
        for name in names:
            self._seen[name] = await self._in_executor(model_signature, folders[name])
            failures = await self._load(name, None)
            if failures and self._exit_on_error:
                raise StartupError(failures[0])
            for failure in failures:
                log.error("not serving: %s", failure)
        if self.mode == "poll":
            self._poll_task = asyncio.create_task(self._poll_forever(poll_s), name="edgecnn-repository-poll")

    async def stop(self) -> None:
        if self._poll_task is not None:
            self._poll_task.cancel()
            try:
                await self._poll_task
            except asyncio.CancelledError:
                pass
            self._poll_task = None
        self._load_executor.shutdown(wait=False, cancel_futures=True)

    async def _poll_forever(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.poll_once()
            except Exception:  # a poll that fails must not end the polling
                log.exception("repository poll failed")

    async def poll_once(self) -> None:
        """Load what is new or changed in the repository, unload what is gone."""
        folders = await self._in_executor(model_folders, self.repository)
        for name, folder in sorted(folders.items()):
            signature = await self._in_executor(model_signature, folder)
            if self._seen.get(name) != signature:
                self._seen[name] = signature
                for failure in await self._load(name, None):
                    log.error("poll: %s", failure)
        for name in sorted(set(self._seen) - set(folders)):
            del self._seen[name]
            log.info("poll: model %s left the repository; unloading it", name)
            await self._unload(name)

    # --- load and unload requests (explicit mode) ---

    async def load_model(self, name: str, config_json: str | None = None) -> None:
        """Load, or reload, a model; InvalidArgument naming the reason when a version fails."""
        self._require_control()
        folders = await self._in_executor(model_folders, self.repository)
        if name not in folders:
            raise NotFound(f"no model {name!r} in the repository {self.repository} (have: {', '.join(sorted(folders)) or 'none'})")
        override = parse_config_override(name, config_json) if config_json else None
        failures = await self._finish(self._load(name, override))
        if failures:
            raise InvalidArgument(f"failed to load {failures[0]}" + (f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""))

    async def unload_model(self, name: str) -> None:
        """Unload a model once its requests in flight have their answers."""
        self._require_control()
        if not self.plane.versions_of(name) and name not in self._states:
            raise NotFound(f"model {name!r} is not loaded")
        await self._finish(self._unload(name))

    async def _finish(self, work: Coroutine):
        """Run a load or unload to its end even if the request that asked for it is cancelled
        (a client deadline): half a swap would leave states, health and readiness behind."""
        task = asyncio.ensure_future(work)
        self._work.add(task)
        task.add_done_callback(self._work.discard)
        return await asyncio.shield(task)

    def _require_control(self) -> None:
        if not self.control_enabled:
            raise Unavailable(
                f"model load and unload are disabled in model control mode {self.mode!r}; "
                "start the server with --model-control-mode explicit"
            )

    # --- what the data plane asks ---

    def ready(self) -> bool:
        """Strict readiness: every model that should serve has a version serving."""
        return not self._strict or all(self.plane.versions_of(name) for name in self._wanted)

    def index(self, serving: bool, ready_only: bool = False) -> list[IndexEntry]:
        try:
            names = set(model_folders(self.repository)) | set(self._states)
        except StartupError:
            names = set(self._states)
        rows = []
        for name in sorted(names):
            states = self._states.get(name)
            if not states:
                rows.append(IndexEntry(name, "", UNAVAILABLE, "not loaded"))
                continue
            for version, st in sorted(states.items(), key=lambda item: int(item[0] or 0)):
                state, reason = st.state, st.reason
                if state == READY and not serving:
                    state, reason = UNAVAILABLE, "the server is not serving (loading or shutting down)"
                rows.append(IndexEntry(name, version, state, reason))
        return [r for r in rows if r.state == READY] if ready_only else rows

    # --- the work ---

    async def _in_executor(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def _lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())

    def _set_state(self, name: str, version: str, state: str, reason: str = "") -> None:
        states = self._states.setdefault(name, {})
        if version:
            states.pop("", None)  # a model-level failure is replaced by what its versions show
        states[version] = VersionState(state, reason)

    def _plan(self, name: str, override: model_config_pb2.ModelConfig | None) -> _Plan:
        """What the model's config serves now (blocking: reads the repository)."""
        model_dir = self.repository / name
        config = override if override is not None else repo.read_config(model_dir)
        entries = [repo.ModelVersionPath(name, v, model_dir) for v in repo.versions(model_dir)]
        chosen = served_versions(entries, {name: config})
        text = repo.config_to_text(config).encode()
        return _Plan(config, chosen, hashlib.sha256(text).hexdigest() + _digest(model_dir / repo.LABELS_NAME))

    def _failed(self, name: str, version: str, reason: str) -> str:
        self._metrics.model_load_failures.labels(name, version).inc()
        log.error("model %s version %s failed to load: %s", name, version or "-", reason)
        return f"model {name!r}" + (f" version {version}" if version else "") + f": {reason}"

    async def _load(self, name: str, override: model_config_pb2.ModelConfig | None) -> list[str]:
        """(Re)load a model's versions; the reasons of the versions that failed."""
        async with self._lock(name):
            self._wanted.add(name)
            try:
                plan = await self._in_executor(self._plan, name, override)
            except (repo.RepositoryError, StartupError, OSError, ValueError) as exc:  # ValueError: e.g. a config that is not UTF-8
                if not self.plane.versions_of(name):
                    self._set_state(name, "", UNAVAILABLE, str(exc))
                return [self._failed(name, "", str(exc))]
            if not plan.entries:
                reason = f"no version to serve: no version folder with a {repo.MODEL_FILENAME} that the version policy picks"
                if not self.plane.versions_of(name):
                    self._set_state(name, "", UNAVAILABLE, reason)
                    return [self._failed(name, "", reason)]
                return [self._failed(name, "", reason + "; the versions loaded before keep serving")]
            current = {mv.version: mv for mv in self.plane.versions_of(name)}
            serving: list[ModelVersion] = []
            failures: list[str] = []
            for entry in plan.entries:
                signature = (plan.config_digest, _file_id(entry.onnx_path), _file_id(entry.selftest_path))
                old = current.get(entry.version)
                if old is not None and self._loaded_from.get((name, entry.version)) == signature:
                    serving.append(old)
                    continue
                version = str(entry.version)
                if old is None:  # a reload keeps showing READY: the old session serves meanwhile
                    self._set_state(name, version, LOADING)
                try:
                    mv = await asyncio.get_running_loop().run_in_executor(self._load_executor, self._loader.load, entry, plan.config)
                except Exception as exc:  # StartupError, or anything ONNX Runtime or numpy raise
                    failures.append(self._failed(name, version, str(exc)))
                    if old is not None:  # what was serving stays
                        serving.append(old)
                        self._set_state(name, version, READY, f"a reload failed, the earlier load serves: {exc}")
                    else:
                        self._set_state(name, version, UNAVAILABLE, str(exc))
                    continue
                self._loaded_from[(name, entry.version)] = signature
                self._set_state(name, version, READY)
                log.info(
                    "loaded %s version %d (%s, %d params, opset %d, max batch %d, queue delay %d us, batch of 1 in %.0f us; self-test %s)",
                    mv.name, mv.version, mv.provider, mv.params, mv.opset, mv.serving.max_batch_size,
                    mv.serving.max_queue_delay_us, mv.batch1_s * 1e6, mv.selftest,
                )  # fmt: skip
                serving.append(mv)
            if failures:  # what the policy would drop serves on until every version it picks has loaded
                chosen = {e.version for e in plan.entries}
                serving += [mv for v, mv in current.items() if v not in chosen]
            await self._swap(name, serving, wait=False)
            return failures

    async def _unload(self, name: str) -> None:
        async with self._lock(name):
            self._wanted.discard(name)
            await self._swap(name, [], wait=True)

    async def _swap(self, name: str, serving: list[ModelVersion], wait: bool) -> None:
        """Serve exactly `serving` of the model; the versions that leave drain in the background,
        or before this returns when `wait` (an unload)."""
        kept = {mv.version for mv in serving}
        retiring = self.plane.set_model(name, serving)
        if self._on_change is not None:
            await self._on_change(name, bool(serving))
        leaving = []
        for mv, drained in retiring:
            if mv.version in kept:
                continue  # replaced by a reload of the same version
            self._set_state(name, mv.version_str, UNLOADING)
            self._loaded_from.pop((name, mv.version), None)
            leaving.append((mv, drained))
        for mv, drained in leaving:
            drained.add_done_callback(lambda _, mv=mv: self._unloaded(mv))
        if wait:
            await asyncio.gather(*(drained for _, drained in leaving))

    def _unloaded(self, mv: ModelVersion) -> None:
        states = self._states.get(mv.name, {})
        if states.get(mv.version_str, VersionState("")).state == UNLOADING:  # not loaded again meanwhile
            self._set_state(mv.name, mv.version_str, UNAVAILABLE, "unloaded")
        log.info("unloaded %s version %d", mv.name, mv.version)
