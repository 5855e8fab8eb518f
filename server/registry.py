"""Every model version the server holds, looked up by (name, version) the way KServe does:
an empty version means the latest."""

from __future__ import annotations

import logging

from edgecnn import repository as repo
from edgecnn.protos import model_config_pb2

from .errors import NotFound, StartupError
from .model_version import ModelVersion

log = logging.getLogger(__name__)


class ModelRegistry:
    """Mutable on the event loop thread only: set_versions swaps a model's versions in one step."""

    def __init__(self, versions: list[ModelVersion]) -> None:
        self._versions: dict[str, list[ModelVersion]] = {}
        by_name: dict[str, list[ModelVersion]] = {}
        for mv in versions:
            by_name.setdefault(mv.name, []).append(mv)
        for name, listed in by_name.items():
            self.set_versions(name, listed)

    def set_versions(self, name: str, versions: list[ModelVersion]) -> None:
        """Serve exactly these versions of the model from now on (none: the model goes)."""
        if versions:
            self._versions[name] = sorted(versions, key=lambda mv: mv.version)
        else:
            self._versions.pop(name, None)

    def lookup(self, name: str, version: str = "") -> ModelVersion | None:
        """The version asked for, or None (get says why)."""
        listed = self._versions.get(name)
        if not listed:
            return None
        if version == "":
            return listed[-1]
        for mv in listed:
            if mv.version_str == version:
                return mv
        return None

    def get(self, name: str, version: str = "") -> ModelVersion:
        mv = self.lookup(name, version)
        if mv is not None:
            return mv
        listed = self._versions.get(name)
        if not listed:
            known = ", ".join(sorted(self._versions)) or "none"
            raise NotFound(f"unknown model {name!r}; this server has: {known}")
        have = ", ".join(mv.version_str for mv in listed)
        raise NotFound(f"model {name!r} has no version {version!r}; expected one of: {have} (or empty for the latest)")

    def versions_of(self, name: str) -> list[ModelVersion]:
        return list(self._versions.get(name, []))

    def all(self) -> list[ModelVersion]:
        return [mv for name in sorted(self._versions) for mv in self._versions[name]]


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
