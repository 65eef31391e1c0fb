"""Threads and fork: one client shared by threads, a client inherited by a child."""

import gc
import multiprocessing
import os
import threading

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from conftest import assert_in_arena, leases_of


def test_eight_threads_get_in_parallel(client, name):
    rows = 200_000
    table = pa.table({"a": np.arange(rows, dtype=np.int64), "b": np.ones(rows)})
    client.put(name, table)
    expected = rows * (rows - 1) // 2
    errors = []
    barrier = threading.Barrier(8)

    def worker():
        try:
            barrier.wait()
            for _ in range(40):
                got = client.get(name, columns=["a"])
                assert pc.sum(got.column("a")).as_py() == expected
                assert_in_arena(client, got)
                del got
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads)
    assert not errors, errors
    # Every lease taken by the 320 gets was given back (some through the queue).
    assert leases_of(client, name) == 0


def test_threads_put_and_get_different_names(client, name):
    errors = []

    def worker(i):
        try:
            own = f"{name}-{i}"
            for v in range(10):
                client.put(own, pa.table({"v": [v] * 1000, "i": [i] * 1000}))
                got = client.get(own)
                assert got.column("v")[0].as_py() == v
                assert got.column("i")[0].as_py() == i
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors


def test_release_while_the_lock_is_held_is_queued_then_sent(client, name):
    client.put(name, pa.table({"a": np.arange(1000)}))
    table = client.get(name)
    conn = client._connection()
    assert leases_of(client, name) == 1
    with conn.lock:
        # The table dies on a thread that holds the connection lock (as when a garbage
        # collection runs inside a request): the release must not deadlock.
        del table
        gc.collect()
        assert list(conn.pending_releases) != []
    # The next request sends the queued release first.
    client.ping()
    assert list(conn.pending_releases) == []
    assert leases_of(client, name) == 0


def test_release_from_another_thread_while_a_request_runs(client, name):
    client.put(name, pa.table({"a": np.arange(1000)}))
    holder = {"t": client.get(name)}
    conn = client._connection()
    released = threading.Event()

    def drop():
        holder.clear()
        gc.collect()
        released.set()

    with conn.lock:
        t = threading.Thread(target=drop)
        t.start()
        assert released.wait(10), "the release blocked on the connection lock"
        t.join()
    assert leases_of(client, name) == 0


def _child_get(socket_path, name, queue, client_holder):
    # Runs in a forked child: uses the client inherited from the parent.
    client = client_holder[0]
    try:
        table = client.get(name)
        total = pc.sum(table.column("a")).as_py()
        new_version = client.put(name + "-child", pa.table({"pid": [os.getpid()]}))
        stats = client.stats()
        queue.put(("ok", total, new_version, os.getpid(), stats["connections"]))
    except BaseException as e:  # noqa: BLE001
        queue.put(("error", repr(e), None, os.getpid(), None))


def test_fork_child_reconnects_and_parent_keeps_working(server, name):
    ctx = multiprocessing.get_context("fork")
    client = server.connect()
    client.put(name, pa.table({"a": np.arange(100)}))
    parent_table = client.get(name)  # a lease and a busy connection at fork time
    parent_conn = client._connection()
    queue = ctx.Queue()
    children = [
        ctx.Process(target=_child_get, args=(server.socket, name, queue, [client]))
        for _ in range(3)
    ]
    for p in children:
        p.start()
    results = [queue.get(timeout=60) for _ in children]
    for p in children:
        p.join(60)
        assert p.exitcode == 0
    for status, total, version, pid, _ in results:
        assert status == "ok", total
        assert total == 4950
        assert version >= 1 and pid != os.getpid()
    # The parent's connection was not touched by the children.
    assert client._connection() is parent_conn
    assert client.ping() >= 0
    assert client.get(name, columns=["a"]).num_rows == 100
    assert parent_table.column("a").to_pylist()[-1] == 99
    assert leases_of(client, name) == 1
    del parent_table
    assert leases_of(client, name) == 0
    client.close()


def test_pid_change_without_fork_hook_reconnects(client, name, monkeypatch):
    client.put(name, pa.table({"a": [1]}))
    first = client._connection()
    # As if inherited through a fork that skipped Python's at-fork hooks.
    monkeypatch.setattr(first, "pid", -1)
    assert client.get(name).column("a").to_pylist() == [1]
    assert client._connection() is not first
    assert first.dead
