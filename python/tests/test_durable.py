"""A server with ``--state-dir`` killed with SIGKILL and started again: the client's
next request goes to the new server without an error, tables it holds stay readable
and leased (a later put does not overwrite them)."""

from __future__ import annotations

import gc
import os
import signal
import tempfile
import time

import numpy as np
import pyarrow as pa
import pytest

import arrowpool

from conftest import Server, leases_of, wait_until_stopped


@pytest.fixture
def state_dir():
    d = tempfile.mkdtemp(prefix="arrowpool-state-", dir="/dev/shm")
    yield d
    import shutil

    shutil.rmtree(d, ignore_errors=True)


def table(seed: int, rows: int = 200_000) -> pa.Table:
    rng = np.random.default_rng(seed)
    return pa.table({"a": rng.integers(0, 1 << 40, rows), "b": rng.random(rows), "s": [f"r{i}" for i in range(rows)]})


def kill_and_restart(server: Server, workdir) -> Server:
    server.proc.send_signal(signal.SIGKILL)
    server.proc.wait()
    return Server(workdir, memory="256M", extra=server.args[server.args.index("--state-dir"):])


def test_the_next_request_after_a_restart_reaches_the_new_server(tmp_path, state_dir):
    s = Server(tmp_path, memory="256M", extra=("--state-dir", state_dir))
    c = arrowpool.connect(s.socket)
    t = table(1)
    c.put("t", t)
    held = c.get("t")
    s = kill_and_restart(s, tmp_path)
    try:
        # No error: the dead connection is noticed before anything is sent.
        again = c.get("t")
        assert again.equals(t)
        assert held.equals(t)
        # The held table was leased again on the new server: twice now.
        assert leases_of(c, "t") == 2
        del again
        gc.collect()
        # Puts of the same size would reuse the old version's bytes were it not
        # leased: the held table must not change.
        for seed in (2, 3, 4):
            c.put("t", table(seed))
        assert held.equals(t)
        assert c.get("t").equals(table(4))
        del held
        gc.collect()
        c.ping()
        deadline = time.monotonic() + 5
        while c.stats()["leases"] and time.monotonic() < deadline:
            time.sleep(0.01)
        assert c.stats()["leases"] == 0
    finally:
        s.stop()


def test_a_request_the_killed_server_never_read_goes_to_the_new_one(tmp_path, state_dir):
    # Stopped with the request queued, then killed: its socket closes with the
    # request unread (ECONNRESET), which the client sends again to the restarted
    # server instead of failing.
    import threading

    # epoll, not io_uring: a recv armed in a ring before the stop could take the
    # request's bytes into the stopped server (its close is then an EOF, which is
    # rightly not resent); with epoll the bytes stay queued, and the close resets.
    s = Server(tmp_path, memory="256M", extra=("--state-dir", state_dir, "--io-driver", "polling"))
    c = arrowpool.connect(s.socket)
    t = table(5)
    c.put("t", t)
    s.proc.send_signal(signal.SIGSTOP)
    wait_until_stopped(s.proc.pid)
    result = {}

    def get() -> None:
        try:
            result["table"] = c.get("t")
        except Exception as e:  # reported below
            result["error"] = e

    getter = threading.Thread(target=get)
    getter.start()
    time.sleep(0.2)  # sent, queued, unread
    s = kill_and_restart(s, tmp_path)
    try:
        getter.join(10)
        assert "error" not in result, result
        assert result["table"].equals(t)
    finally:
        s.stop()


def test_a_held_replaced_version_is_leased_again_after_a_restart(tmp_path, state_dir, caplog):
    s = Server(tmp_path, memory="256M", extra=("--state-dir", state_dir))
    c = arrowpool.connect(s.socket)
    c.put("t", table(1))
    held = c.get("t")
    c.put("t", table(2))  # version 1 is held, no longer current: an orphan
    s = kill_and_restart(s, tmp_path)
    try:
        with caplog.at_level("WARNING", logger="arrowpool"):
            assert c.get("t").equals(table(2))
        assert "not on the new server" not in caplog.text
        # The new server holds the orphan for the quarantine and this client
        # leased it again; it stays until released.
        stats = c.stats()
        assert stats.get("orphaned_versions") == 1, stats
        assert held.equals(table(1))
    finally:
        s.stop()


def test_an_idle_reader_keeps_its_replaced_table_across_a_restart(tmp_path, state_dir):
    # The reader sends nothing after the kill: its client's watcher thread
    # reconnects and leases the table again within the quarantine.
    s = Server(tmp_path, memory="64M", extra=("--state-dir", state_dir, "--quarantine", "3"))
    c = arrowpool.connect(s.socket)
    c.put("t", table(1))
    held = c.get("t")
    c.put("t", table(2))
    s.proc.send_signal(signal.SIGKILL)
    s.proc.wait()
    s = Server(tmp_path, memory="64M", extra=("--state-dir", state_dir, "--quarantine", "3"))
    try:
        w = arrowpool.connect(s.socket)
        deadline = time.monotonic() + 10
        while w.stats()["leases"] != 2:  # the server's hold and the reader's lease
            assert time.monotonic() < deadline, (w.stats(), s.log_path.read_text())
            time.sleep(0.02)
        time.sleep(3.5)  # the quarantine is over
        blob = b"\x5a" * (4 << 20)
        for i in range(40):  # 160 MB through a 64 MB arena
            w.put_bytes(f"fill-{i}", blob)
        assert w.stats()["leases"] == 1
        assert held.equals(table(1))
    finally:
        s.stop()


def test_only_a_server_with_a_state_directory_is_watched(tmp_path, state_dir):
    # A memfd arena has no name a restart could find: no watcher thread.
    for extra, watched in (((), False), (("--state-dir", state_dir), True)):
        s = Server(tmp_path, memory="64M", extra=extra)
        try:
            c = arrowpool.connect(s.socket)
            c.put("t", table(1))
            held = c.get("t")
            assert (c._watcher_pid == os.getpid()) is watched, extra
            del held
            c.close()
        finally:
            s.stop()


def test_a_held_version_the_new_server_lacks_is_logged_and_stays_readable(tmp_path, state_dir, caplog):
    # --quarantine 0: orphans are not taken back, so the held version is gone.
    s = Server(tmp_path, memory="256M", extra=("--state-dir", state_dir, "--quarantine", "0"))
    c = arrowpool.connect(s.socket)
    c.put("t", table(1))
    held = c.get("t")
    c.put("t", table(2))
    s = kill_and_restart(s, tmp_path)
    try:
        with caplog.at_level("WARNING", logger="arrowpool"):
            assert c.get("t").equals(table(2))
        assert "is not on the new server" in caplog.text
        assert held.equals(table(1))
    finally:
        s.stop()


def test_a_spilled_table_is_listed_on_disk_and_comes_back(tmp_path):
    spill = tmp_path / "spill"
    s = Server(tmp_path, memory="64M", extra=("--spill-dir", str(spill), "--spill-ahead", "off"))
    try:
        c = arrowpool.connect(s.socket)
        a, b, d = table(1, 1_000_000), table(2, 1_000_000), table(3, 1_000_000)
        c.put("a", a)
        c.put("b", b)
        c.put("d", d)  # no room for three: a, the least recently used, goes to disk
        where = {e["name"]: e.get("on_disk", False) for e in c.list()}
        assert where == {"a": True, "b": False, "d": False}
        assert c.stats()["spilled_versions"] == 1
        assert len(list(spill.iterdir())) == 1
        got = c.get("a")  # brought back; b goes to disk to make room
        assert got.equals(a)
        assert c.version("a") == 1
        assert {e["name"] for e in c.list() if e.get("on_disk")} == {"b"}
        assert c.get_pandas("b").shape == (1_000_000, 3)
    finally:
        s.stop()
