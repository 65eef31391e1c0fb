"""Server start, stop and restart as a client sees them, and LRU eviction."""

import gc
import os
import signal
import time

import numpy as np
import pyarrow as pa
import pytest

import arrowpool
from conftest import Server, wait_until_stopped


def test_shutdown_is_server_unavailable(fresh_server):
    client = fresh_server.connect(timeout=10)
    client.ping()
    fresh_server.stop()
    # The server sent the shutdown notice (kind 0xFFFE) before closing; the client
    # notices before sending, tries a new connection, and says both.
    with pytest.raises(arrowpool.ServerUnavailable, match="shutting down.*cannot connect"):
        client.ping()
    # Later requests try to connect again and say why they cannot.
    with pytest.raises(arrowpool.ServerUnavailable, match="cannot connect"):
        client.ping()


def test_hung_server_is_a_timeout_not_a_hang(fresh_server):
    client = fresh_server.connect(timeout=0.5)
    client.ping()
    fresh_server.proc.send_signal(signal.SIGSTOP)
    try:
        wait_until_stopped(fresh_server.proc.pid)
        start = time.monotonic()
        with pytest.raises(arrowpool.ServerUnavailable, match="did not answer within 0.5 s"):
            client.ping()
        assert time.monotonic() - start < 5
    finally:
        fresh_server.proc.send_signal(signal.SIGCONT)
    # The broken connection was dropped; the next request uses a new one.
    assert client.ping() >= 0


def test_server_removes_its_socket_on_sigterm(fresh_server):
    assert os.path.exists(fresh_server.socket)
    assert fresh_server.stop() == 0
    assert not os.path.exists(fresh_server.socket)


def test_client_reconnects_after_a_restart(tmp_path):
    first = Server(tmp_path)
    client = first.connect(timeout=10)
    client.put("t", pa.table({"a": [1]}))
    old_table = client.get("t")
    first.stop()
    second = Server(tmp_path)
    try:
        # The old connection is gone: noticed before the request is sent, which
        # goes to the new server instead (a new, empty arena).
        client.ping()
        with pytest.raises(arrowpool.NotFound):
            client.get("t")
        assert client.put("t", pa.table({"a": [2]})) == 1
        assert client.get("t").column("a").to_pylist() == [2]
        # The old table still reads from the old mapping.
        assert old_table.column("a").to_pylist() == [1]
        client.close()
    finally:
        second.stop()


def test_lru_eviction_spares_held_tables(tmp_path):
    srv = Server(tmp_path, memory="256M")
    try:
        client = srv.connect()
        chunk = 80 * 1024 * 1024  # three fit in 256M, four do not
        blob = np.zeros(chunk // 8)
        client.put("held", pa.table({"x": blob}))
        held = client.get("held")
        client.put("old", pa.table({"x": blob}))
        time.sleep(0.01)
        client.put("newer", pa.table({"x": blob}))
        time.sleep(0.01)
        # Does not fit next to the three: the least recently used unheld one goes.
        client.put("newest", pa.table({"x": blob}))
        names = {e["name"] for e in client.list()}
        assert "held" in names and "newest" in names
        assert "old" not in names
        with pytest.raises(arrowpool.NotFound):
            client.get("old")
        assert client.stats()["evictions"] >= 1
        assert held.num_rows == blob.size
        del held
        gc.collect()
        client.close()
    finally:
        srv.stop()


def test_out_of_memory_when_everything_is_held(tmp_path):
    srv = Server(tmp_path, memory="128M")
    try:
        client = srv.connect()
        blob = pa.table({"x": np.zeros(50 * 1024 * 1024 // 8)})
        client.put("a", blob)
        a = client.get("a")
        client.put("b", blob)
        b = client.get("b")
        with pytest.raises(arrowpool.OutOfMemory) as info:
            client.put("c", blob)
        assert "held" in info.value.message
        del a, b
        gc.collect()
        client.ping()
        assert client.put("c", blob) >= 1  # now a and b may be evicted
        client.close()
    finally:
        srv.stop()
