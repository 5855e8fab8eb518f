"""Build the CPU image with docker or podman, whichever works here (`make image`, and the image
test in tests/deploy/test_image.py). Standard library only.

    python deploy/docker/image.py build [--tag edgecnn-server:cpu] [--offline-base]
    python deploy/docker/image.py base        # only the local Python base image (needs root)
    python deploy/docker/image.py engine      # which engine would be used, and how

On a normal machine `build` just builds deploy/docker/Dockerfile on python:3.11-slim-bookworm,
which the engine pulls. `--offline-base` (`make image OFFLINE_BASE=1`) is for machines that reach a
Debian mirror and the Python package index but no container registry: it builds that base image
locally with debootstrap (Debian bookworm's Python 3.11, minbase, ca-certificates; a `python`
link; apt caches and docs removed as in Docker's slim images) and imports it as
localhost/python:3.11-slim-bookworm (once; `--rebuild-base` makes it again), then builds on it with
the host's network and CA certificates (/etc/ssl/certs mounted, a pip.conf naming the bundle), so
that pip gets through whatever TLS proxy the host trusts.

Podman: the build keeps the Docker image format (`--format docker`: OCI images drop HEALTHCHECK);
where runc is installed it runs containers with `--runtime runc` and explicit nofile/nproc
ulimits (crun fails on setting rlimits on some hosts, runc with these limits works).
EDGECNN_CONTAINER_ENGINE=docker|podman picks the engine.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "deploy" / "docker" / "Dockerfile"
IGNORE_FILE = DOCKERFILE.with_name(DOCKERFILE.name + ".dockerignore")
TAG = "edgecnn-server:cpu"
# Fully qualified: podman resolves a short name to a localhost/ image of the same name.
PYTHON_IMAGE = "docker.io/library/python:3.11-slim-bookworm"
LOCAL_PYTHON_IMAGE = "localhost/python:3.11-slim-bookworm"
SUITE = "bookworm"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
ULIMITS = ("--ulimit", "nofile=4096:4096", "--ulimit", "nproc=4096:4096")
# Removed from the debootstrapped tree, as Docker's Debian slim images leave them out.
TRIM = ("var/cache/apt/archives", "var/lib/apt/lists", "usr/share/doc", "usr/share/man", "usr/share/info",
        "usr/share/locale", "usr/share/lintian", "var/log")  # fmt: skip


def log(message: str) -> None:
    print(f"[image] {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Engine:
    name: str  # docker | podman
    global_args: tuple[str, ...] = ()
    container_args: tuple[str, ...] = field(default=())  # for `run` and `build`

    def argv(self, *args: str) -> list[str]:
        return [self.name, *self.global_args, *args]

    def run(self, *args: str, timeout: float = 600, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("text", True)
        return subprocess.run(self.argv(*args), timeout=timeout, check=check, **kwargs)

    def image_exists(self, ref: str) -> bool:
        return self.run("image", "inspect", ref, check=False, timeout=60).returncode == 0

    def describe(self) -> str:
        return " ".join([self.name, *self.global_args, "...", *self.container_args]).replace(" ... ", " ... ").strip()


def _works(argv: list[str]) -> bool:
    try:
        return subprocess.run(argv, capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def find_engine() -> tuple[Engine | None, str]:
    """(the engine, why) - docker when its daemon answers, else podman when it runs; None and the
    reason when neither does."""
    wanted = os.environ.get("EDGECNN_CONTAINER_ENGINE")
    tried = []
    for name in [wanted] if wanted else ["docker", "podman"]:
        if shutil.which(name) is None:
            tried.append(f"{name}: not installed")
            continue
        if not _works([name, "info"]):
            tried.append(f"{name}: `{name} info` fails" + (" (no daemon)" if name == "docker" else ""))
            continue
        if name == "podman" and shutil.which("runc"):
            return Engine("podman", ("--runtime", "runc"), ULIMITS), "podman (runc)"
        return Engine(name), name
    return None, "; ".join(tried)


def debian_mirror() -> str:
    """The Debian mirror apt uses here (deb822 or one-line sources), else deb.debian.org."""
    for path in [Path("/etc/apt/sources.list.d/debian.sources"), Path("/etc/apt/sources.list")]:
        if path.is_file():
            text = path.read_text()
            found = re.search(r"^URIs:\s*(\S+/debian)\s*$", text, re.M) or re.search(r"^deb\s+(?:\[[^]]*\]\s+)?(\S+/debian)\s", text, re.M)
            if found:
                return found.group(1)
    return DEFAULT_MIRROR


def build_local_base(engine: Engine, ref: str = LOCAL_PYTHON_IMAGE) -> str:
    """debootstrap a minimal bookworm with Python 3.11 and import it as `ref`."""
    if shutil.which("debootstrap") is None:
        raise RuntimeError("the offline base needs debootstrap (apt-get install debootstrap)")
    if os.geteuid() != 0:
        raise RuntimeError("debootstrap needs root")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="edgecnn-rootfs-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        mirror = debian_mirror()
        log(f"debootstrap --variant=minbase {SUITE} from {mirror} ...")
        subprocess.run(
            ["debootstrap", "--variant=minbase", "--include=python3,python3-venv,ca-certificates", SUITE, str(rootfs), mirror],
            check=True, capture_output=True, text=True, timeout=900,
        )  # fmt: skip
        (rootfs / "usr/bin/python").symlink_to("python3")
        for rel in TRIM:
            folder = rootfs / rel
            if folder.is_dir():
                for child in folder.iterdir():
                    if child.is_dir() and not child.is_symlink():
                        shutil.rmtree(child)
                    else:
                        child.unlink()
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "--numeric-owner", "-c", "."], stdout=subprocess.PIPE)
        engine.run("import", "--change", "ENV LANG=C.UTF-8", "--change", 'CMD ["python3"]', "-", ref,
                   stdin=tar.stdout, capture_output=True, timeout=600)  # fmt: skip
        assert tar.stdout is not None
        tar.stdout.close()
        if tar.wait() != 0:
            raise RuntimeError("tar of the debootstrapped tree failed")
    log(f"base {ref} built in {time.monotonic() - started:.0f} s")
    return ref


def base_image(engine: Engine, offline: str, rebuild: bool = False) -> tuple[str, bool]:
    """(the base image to build on, whether it is the local one). offline: "1" the local base,
    "0" the registry's, "auto" the registry's when it is there or can be pulled, else the local one."""
    if offline == "1":
        if rebuild or not engine.image_exists(LOCAL_PYTHON_IMAGE):
            build_local_base(engine)
        return LOCAL_PYTHON_IMAGE, True
    if offline == "0" or engine.image_exists(PYTHON_IMAGE):
        return PYTHON_IMAGE, False
    if engine.image_exists(LOCAL_PYTHON_IMAGE):
        return LOCAL_PYTHON_IMAGE, True
    pulled = engine.run("pull", PYTHON_IMAGE, check=False, timeout=300)
    if pulled.returncode == 0:
        return PYTHON_IMAGE, False
    reason = (pulled.stderr.strip().splitlines() or ["?"])[-1]
    log(f"cannot pull {PYTHON_IMAGE} ({reason}): building the local base")
    return build_local_base(engine), True


def build(engine: Engine, tag: str = TAG, offline: str = "0", rebuild_base: bool = False, log_file: Path | None = None) -> str:
    """Build deploy/docker/Dockerfile as `tag`; returns the base image it used."""
    base, local = base_image(engine, offline, rebuild_base)
    argv = ["build", "-f", str(DOCKERFILE), "-t", tag, "--build-arg", f"PYTHON_IMAGE={base}"]
    with tempfile.TemporaryDirectory(prefix="edgecnn-build-") as tmp:
        if engine.name == "podman":
            argv += ["--format", "docker", "--ignorefile", str(IGNORE_FILE), *engine.container_args]
        if local:
            argv += ["--network", "host"]
            if engine.name == "podman" and Path(CA_BUNDLE).is_file():
                pip_conf = Path(tmp) / "pip.conf"
                pip_conf.write_text(f"[global]\ncert = {CA_BUNDLE}\n")
                pip_conf.chmod(0o644)
                argv += ["-v", "/etc/ssl/certs:/etc/ssl/certs:ro", "-v", f"{pip_conf}:/etc/pip.conf:ro"]
        argv.append(str(ROOT))
        log(f"{' '.join(engine.argv(*argv))}")
        started = time.monotonic()
        out = open(log_file, "w") if log_file else None
        try:
            done = subprocess.run(engine.argv(*argv), stdout=out, stderr=subprocess.STDOUT if out else None, text=True, timeout=1200)
        finally:
            if out:
                out.close()
        if done.returncode != 0:
            tail = log_file.read_text()[-6000:] if log_file else ""
            raise RuntimeError(f"image build failed (exit {done.returncode}){': ' + tail if tail else ''}")
    log(f"built {tag} on {base} in {time.monotonic() - started:.0f} s")
    return base


def image_size(engine: Engine, ref: str) -> int:
    return int(engine.run("image", "inspect", "--format", "{{.Size}}", ref, timeout=60).stdout.strip())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["build", "base", "engine"])
    parser.add_argument("--tag", default=TAG)
    parser.add_argument("--offline-base", action="store_true", default=os.environ.get("OFFLINE_BASE") == "1",
                        help="build the Python base locally with debootstrap (also OFFLINE_BASE=1)")  # fmt: skip
    parser.add_argument("--rebuild-base", action="store_true", help="make the local base again even if it exists")
    args = parser.parse_args(argv)
    engine, why = find_engine()
    if engine is None:
        print(f"no container engine: {why}", file=sys.stderr)
        return 2
    if args.command == "engine":
        print(engine.describe())
        return 0
    if args.command == "base":
        build_local_base(engine)
        return 0
    build(engine, args.tag, "1" if args.offline_base else "0", args.rebuild_base)
    print(f"{args.tag}: {image_size(engine, args.tag) / 1e6:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
