import os
import signal
import subprocess
import sys
import time

import pytest

from edgecnn.loadtest.process_cpu import cpu_text, cpu_use, pool_cpu, tree_cpu_seconds

TICK = 1 / os.sysconf("SC_CLK_TCK")
BUSY = "import time\nend = time.process_time() + {s}\nwhile time.process_time() < end: pass\n"


def write_stat(proc, pid, ppid, utime, stime):
    (proc / str(pid)).mkdir()
    # A comm with a space and a parenthesis, as /proc may hold: fields are counted from the last ')'.
    (proc / str(pid) / "stat").write_text(f"{pid} (py thon) S {ppid} {' '.join(['0'] * 9)} {utime} {stime} 0 0 20 0 1 0\n")


def test_a_process_tree_adds_its_descendants_and_nothing_else(tmp_path):
    write_stat(tmp_path, 10, 1, 100, 50)  # the supervisor
    write_stat(tmp_path, 11, 10, 300, 20)  # a worker
    write_stat(tmp_path, 12, 11, 5, 5)  # the worker's child
    write_stat(tmp_path, 13, 1, 999, 999)  # a neighbour
    (tmp_path / "self").mkdir()
    assert tree_cpu_seconds(10, tmp_path) == pytest.approx(480 * TICK)
    assert tree_cpu_seconds(11, tmp_path) == pytest.approx(330 * TICK)
    assert tree_cpu_seconds(14, tmp_path) is None


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="needs Linux's /proc")
def test_cpu_use_measures_a_busy_child_and_a_waited_for_client():
    child = subprocess.Popen([sys.executable, "-c", "import subprocess, sys; subprocess.run([sys.executable, '-c', sys.argv[1]])",
                              BUSY.format(s=5)], start_new_session=True)  # fmt: skip
    try:
        time.sleep(0.3)  # both interpreters started
        with cpu_use(child.pid) as use:
            time.sleep(0.5)
        assert use["client_s"] is None
        assert 0.2 <= use["server_s"] <= use["wall_s"] + 0.1  # the grandchild's busy loop, counted through its parent
        with cpu_use(None, client_children=True) as client:
            subprocess.run([sys.executable, "-c", BUSY.format(s=0.3)], check=True)
        assert client["server_s"] is None and client["client_s"] >= 0.25
    finally:
        os.killpg(child.pid, signal.SIGKILL)  # the grandchild too
        child.wait()


def test_pooling_adds_up_and_a_missing_part_stays_missing():
    a = {"wall_s": 2.0, "server_s": 2.2, "client_s": None}
    b = {"wall_s": 2.0, "server_s": 2.4, "client_s": 0.5}
    assert pool_cpu([a, b]) == {"wall_s": 4.0, "server_s": 4.6, "client_s": None}
    assert pool_cpu([a, None]) is None and pool_cpu([]) is None
    assert cpu_text(pool_cpu([a, b]), "server_s", 2000.0) == "1.15 cores, 575 us/req"
    assert cpu_text(pool_cpu([a, b]), "client_s", 2000.0) == "n/a"
    assert cpu_text(None, "server_s", 2000.0) == "n/a"
