import os

import pytest

from edgecnn.server.cpus import cgroup_cpu_limit, usable_cpus


@pytest.mark.parametrize("text, expected", [("150000 100000\n", 1.5), ("max 100000\n", None), ("garbage", None)])
def test_cgroup_cpu_limit(tmp_path, text, expected):
    path = tmp_path / "cpu.max"
    path.write_text(text)
    assert cgroup_cpu_limit(path) == expected
    assert cgroup_cpu_limit(tmp_path / "missing") is None


def test_usable_cpus_is_capped_by_the_quota(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)))
    path = tmp_path / "cpu.max"
    path.write_text("150000 100000\n")  # a container limited to 1.5 CPUs on a 64-core node
    assert usable_cpus(path) == 2
    path.write_text("max 100000\n")
    assert usable_cpus(path) == 64
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3})
    assert usable_cpus(path) == 1
