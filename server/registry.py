"""Every model version the server holds, looked up by (name, version) the way KServe does:
an empty version means the latest."""

from __future__ import annotations

import logging
from pathlib import Path

from edgecnn import repository as repo
from edgecnn.protos import model_config_pb2

from .errors import NotFound, StartupError
from .model_version import ModelLoader, ModelVersion

log = logging.getLogger(__name__)


class ModelRegistry:
    def __init__(self, versions: list[ModelVersion]) -> None:
        self._by_key: dict[tuple[str, str], ModelVersion] = {}
        self._versions: dict[str, list[ModelVersion]] = {}
        for mv in sorted(versions, key=lambda v: (v.name, v.version)):
            self._by_key[(mv.name, mv.version_str)] = mv
            self._versions.setdefault(mv.name, []).append(mv)
        for name, listed in self._versions.items():
            self._by_key[(name, "")] = listed[-1]

    def get(self, name: str, version: str = "") -> ModelVersion:
        found = self._by_key.get((name, version))
        if found is not None:
            return found
        if name not in self._versions:
            known = ", ".join(self._versions) or "none"
            raise NotFound(f"unknown model {name!r}; this server has: {known}")
        have = ", ".join(mv.version_str for mv in self._versions[name])
        raise NotFound(f"model {name!r} has no version {version!r}; expected one of: {have} (or empty for the latest)")

    def versions_of(self, name: str) -> list[ModelVersion]:
        return list(self._versions.get(name, []))

    def all(self) -> list[ModelVersion]:
        return [mv for listed in self._versions.values() for mv in listed]


def served_versions(
    entries: list[repo.ModelVersionPath], configs: dict[str, model_config_pb2.ModelConfig]
) -> list[repo.ModelVersionPath]:
    """The versions each model's version_policy serves, as Triton picks them: latest N (N = 1
    when config.pbtxt has no policy), all, or specific ones (each must exist)."""
    served = []
    for name, config in configs.items():
        mine = [e for e in entries if e.name == name]
        policy = config.version_policy
        choice = policy.WhichOneof("policy_choice")
        if choice == "all":
            served += mine
        elif choice == "specific":
            have = {e.version: e for e in mine}
            missing = [v for v in policy.specific.versions if v not in have]
            if missing:
                raise StartupError(
                    f"model {name!r}: version_policy names versions {missing} that the repository lacks (have {sorted(have)})"
                )
            served += [have[v] for v in sorted(set(policy.specific.versions))]
        else:
            latest = policy.latest.num_versions if choice == "latest" else 1
            served += mine[-max(latest, 1):]
    return served


def load_registry(repository: Path, loader: ModelLoader) -> ModelRegistry:
    """Open a session for every served version in the repository; any failure stops the start."""
    try:
        entries = repo.list_models(repository)
    except repo.RepositoryError as exc:
        raise StartupError(str(exc)) from None
    if not entries:
        raise StartupError(f"model repository {repository} holds no model (expected <name>/config.pbtxt and <name>/<version>/model.onnx)")
    configs: dict[str, model_config_pb2.ModelConfig] = {}
    for entry in entries:
        if entry.name not in configs:
            try:
                configs[entry.name] = repo.read_config(entry.model_dir)
            except repo.RepositoryError as exc:
                raise StartupError(str(exc)) from None
    loaded = []
    for entry in served_versions(entries, configs):
        mv = loader.load(entry, configs[entry.name])
        serving = mv.serving
        log.info(
            "loaded %s version %d (%s, %d params, opset %d, max batch %d, queue delay %d us, batch of 1 in %.0f us)",
            mv.name, mv.version, mv.provider, mv.params, mv.opset, serving.max_batch_size, serving.max_queue_delay_us, mv.batch1_s * 1e6,
        )
        loaded.append(mv)
    return ModelRegistry(loaded)
