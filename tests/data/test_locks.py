"""Lock files shared by the dataset build and the run store: holder identity, stale takeover, heartbeat."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from carebench_data.locks import FileLock, LockHeldError, acquire_lock, lock_holder


def _dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def _write_lock(path: Path, **fields) -> None:
    now = time.time()
    content = {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started": now,
        "heartbeat": now,
        "token": "other",
        "purpose": "test",
        **fields,
    }
    path.write_text(json.dumps(content))


def test_lock_records_its_holder_and_release_removes_it(tmp_path):
    path = tmp_path / ".x.lock"
    with acquire_lock(path, purpose="build x") as lock:
        content = json.loads(path.read_text())
        assert content["host"] == socket.gethostname()
        assert content["pid"] == os.getpid()
        assert content["purpose"] == "build x"
        assert content["token"] == lock.info.token
        assert content["started"] <= content["heartbeat"] <= time.time()
        assert lock.owned()
        with pytest.raises(LockHeldError, match=rf"pid {os.getpid()} on {socket.gethostname()}"):
            acquire_lock(path, purpose="build x")
    assert not path.exists()


def test_a_dead_holder_on_this_host_is_taken_over_with_a_warning(tmp_path, caplog):
    path = tmp_path / ".x.lock"
    pid = _dead_pid()
    _write_lock(path, pid=pid)
    with caplog.at_level(logging.WARNING, logger="carebench_data.locks"):
        lock = acquire_lock(path, purpose="build x")
    assert lock.taken_over is not None and lock.taken_over.pid == pid
    assert f"pid {pid}" in caplog.text and "gone" in caplog.text
    lock.release()


def test_a_bare_pid_lock_of_an_earlier_version_is_understood(tmp_path):
    path = tmp_path / ".x.lock"
    path.write_text(str(_dead_pid()))
    acquire_lock(path, purpose="x").release()
    path.write_text(str(os.getpid()))
    with pytest.raises(LockHeldError):
        acquire_lock(path, purpose="x")


def test_another_host_counts_as_alive_until_its_heartbeat_is_old(tmp_path):
    path = tmp_path / ".x.lock"
    _write_lock(path, host="node-17.cluster", pid=1, heartbeat=time.time() - 30)
    with pytest.raises(LockHeldError, match=r"node-17\.cluster"):
        acquire_lock(path, purpose="x", stale_after=120)
    _write_lock(path, host="node-17.cluster", pid=1, heartbeat=time.time() - 600)
    lock = acquire_lock(path, purpose="x", stale_after=120)
    assert lock.taken_over is not None and lock.taken_over.host == "node-17.cluster"
    lock.release()


def test_an_unreadable_lock_is_held_while_fresh_and_stale_when_old(tmp_path):
    path = tmp_path / ".x.lock"
    path.write_text("")  # a holder between creating the file and writing it
    with pytest.raises(LockHeldError):
        acquire_lock(path, purpose="x", stale_after=60)
    old = time.time() - 3600
    os.utime(path, (old, old))
    acquire_lock(path, purpose="x", stale_after=60).release()


def test_a_reused_pid_is_not_the_holder(tmp_path):
    path = tmp_path / ".x.lock"
    if not Path(f"/proc/{os.getpid()}/stat").exists():
        pytest.skip("needs /proc")
    _write_lock(path, pid=os.getpid(), pid_start=1)  # our pid, but a process that started at tick 1
    acquire_lock(path, purpose="x").release()


def test_heartbeat_advances_and_release_spares_a_lock_taken_over_by_another(tmp_path):
    path = tmp_path / ".x.lock"
    lock = acquire_lock(path, purpose="x", heartbeat_seconds=0.05)
    first = json.loads(path.read_text())["heartbeat"]
    deadline = time.monotonic() + 30
    while json.loads(path.read_text())["heartbeat"] == first and time.monotonic() < deadline:
        time.sleep(0.02)
    assert json.loads(path.read_text())["heartbeat"] > first
    _write_lock(path, host="elsewhere", token="theirs")
    deadline = time.monotonic() + 30
    while not lock.lost and time.monotonic() < deadline:
        time.sleep(0.02)
    assert lock.lost and not lock.owned()
    lock.release()
    assert json.loads(path.read_text())["token"] == "theirs"


_CONTENDER = """
import sys, time
from pathlib import Path
from carebench_data.locks import LockHeldError, acquire_lock
lock_path, go, done = map(Path, sys.argv[1:4])
while not go.exists():
    time.sleep(0.01)
try:
    lock = acquire_lock(lock_path, purpose="race")
except LockHeldError:
    print("held", flush=True)
    sys.exit(0)
print("won", flush=True)
while not done.exists():
    time.sleep(0.01)
lock.release()
"""


def test_only_one_of_several_processes_takes_over_a_stale_lock(tmp_path):
    path, go, done = tmp_path / ".x.lock", tmp_path / "go", tmp_path / "done"
    _write_lock(path, pid=_dead_pid())
    script = tmp_path / "contender.py"
    script.write_text(_CONTENDER)
    processes = [
        subprocess.Popen(
            [sys.executable, str(script), str(path), str(go), str(done)],
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        )
        for _ in range(4)
    ]
    try:
        go.touch()
        outcomes = []
        for process in processes:
            if process.stdout is None:
                raise AssertionError("no stdout")
            outcomes.append(process.stdout.readline().strip())
        done.touch()
        for process in processes:
            assert process.wait(timeout=60) == 0
    finally:
        done.touch()
        for process in processes:
            if process.poll() is None:
                process.kill()
    assert sorted(outcomes) == ["held", "held", "held", "won"]
    assert lock_holder(path) is None


def test_file_lock_is_a_context_manager(tmp_path):
    with acquire_lock(tmp_path / ".y.lock", purpose="y") as lock:
        assert isinstance(lock, FileLock)
    assert not (tmp_path / ".y.lock").exists()
