import os

import pytest
from edgecnn.server.cpus import cgroup_cpu_limit, usable_cpus


def _cgroup_v2(tmp_path, own: str, limits: dict[str, str]):
    """A cgroup v2 tree under tmp_path/sys with cpu.max files at the given folders, and the
    /proc/self/cgroup text that puts the process at `own`."""
    root = tmp_path / "sys"
    for folder, text in limits.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        (root / folder / "cpu.max").write_text(text)
    proc = tmp_path / "proc-cgroup"
    proc.write_text(f"0::/{own}\n")
    return root, proc


def _cgroup_v1(tmp_path, own: str, quota: str, period: str = "100000"):
    root = tmp_path / "sys"
    folder = root / "cpu" / own
    folder.mkdir(parents=True)
    (folder / "cpu.cfs_quota_us").write_text(quota)
    (folder / "cpu.cfs_period_us").write_text(period)
    proc = tmp_path / "proc-cgroup"
    proc.write_text(f"9:name=systemd:/\n4:cpu,cpuacct:/{own}\n")
    return root, proc


@pytest.mark.parametrize(
    "limits, expected",
    [
        ({"": "150000 100000\n"}, 1.5),  # a private cgroup namespace: the limit at the root
        ({"": "max 100000\n", "kubepods/pod1": "max 100000\n", "kubepods/pod1/ctr": "250000 100000\n"}, 2.5),
        ({"": "max 100000\n", "kubepods/pod1": "100000 100000\n", "kubepods/pod1/ctr": "max 100000\n"}, 1.0),  # on a parent
        ({"": "max 100000\n"}, None),
        ({"": "garbage"}, None),
    ],
)
def test_cgroup_v2_limit_is_the_smallest_on_the_process_path(tmp_path, limits, expected):
    root, proc = _cgroup_v2(tmp_path, "kubepods/pod1/ctr", limits)
    assert cgroup_cpu_limit(root, proc) == expected


@pytest.mark.parametrize("quota, expected", [("200000", 2.0), ("-1", None)])
def test_cgroup_v1_cfs_quota(tmp_path, quota, expected):
    root, proc = _cgroup_v1(tmp_path, "docker/abc", quota)
    assert cgroup_cpu_limit(root, proc) == expected


def test_no_cgroup_files_is_no_limit(tmp_path):
    assert cgroup_cpu_limit(tmp_path / "missing", tmp_path / "missing-proc") is None


def test_usable_cpus_is_capped_by_the_quota(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)))
    root, proc = _cgroup_v2(tmp_path, "ctr", {"ctr": "150000 100000\n"})  # 1.5 CPUs on a 64-core node
    assert usable_cpus(root, proc) == 2
    (root / "ctr" / "cpu.max").write_text("max 100000\n")
    assert usable_cpus(root, proc) == 64
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3})
    assert usable_cpus(root, proc) == 1
