"""connect() with no path: this user's server, started when none runs, shared by
every process, outliving its starter; its private directory; stop; python -m."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import arrowpool
from arrowpool import server as srv

from conftest import server_binary


@pytest.fixture
def runtime_dir(tmp_path, monkeypatch):
    """A private XDG_RUNTIME_DIR of its own, the repository's server binary, and
    whatever server the test started stopped at the end."""
    d = tmp_path / "run"
    d.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(d))
    monkeypatch.delenv("ARROWPOOL_SOCKET", raising=False)
    monkeypatch.setenv("ARROWPOOLD", str(server_binary()))
    monkeypatch.setenv("ARROWPOOL_MEMORY", "256M")
    yield d
    sock = d / "arrowpool" / "arrowpool.sock"
    if srv.listening(sock):
        srv.stop_server(sock)


def run_python(code: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, **(env_extra or {}))
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_eight_processes_starting_at_once_start_one_server(runtime_dir):
    code = """
        import os, arrowpool, pyarrow as pa
        c = arrowpool.connect()
        c.put(f"p{os.getpid()}", pa.table({"x": [os.getpid()]}))
        print(arrowpool.server.server_pid(c.path), c.path)
    """
    procs = [
        subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], stdout=subprocess.PIPE, text=True)
        for _ in range(8)
    ]
    outs = [p.communicate(timeout=120)[0].split() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    pids = {o[0] for o in outs}
    assert len(pids) == 1, outs
    sock = runtime_dir / "arrowpool" / "arrowpool.sock"
    assert {o[1] for o in outs} == {str(sock)}
    log = (runtime_dir / "arrowpool" / "arrowpoold.log").read_text()
    assert log.count("starting:") == 1, log
    assert "--memory 256M" in log
    # Every process's table is in the one server; the starters have all exited.
    c = arrowpool.connect()
    assert len([e for e in c.list() if e["name"].startswith("p")]) == 8
    assert c.arena_bytes == 256 * 1024 * 1024
    # The directory is private.
    assert (runtime_dir / "arrowpool").stat().st_mode & 0o777 == 0o700


def test_the_server_outlives_its_starter_and_stop_ends_it(runtime_dir):
    out = run_python("""
        import arrowpool, pyarrow as pa
        c = arrowpool.connect()
        c.put("kept", pa.table({"x": [1, 2, 3]}))
    """)
    assert out.returncode == 0, out.stderr
    c = arrowpool.connect(autostart=False)
    assert c.get("kept").column("x").to_pylist() == [1, 2, 3]
    c.close()
    # `arrowpool stop` through `python -m arrowpool` (the CLI installed with the package).
    stop = subprocess.run(
        [sys.executable, "-m", "arrowpool", "stop"], capture_output=True, text=True, timeout=60
    )
    if stop.returncode != 0 and "no arrowpool executable" in stop.stderr:
        pytest.fail(f"the arrowpool CLI is not installed: {stop.stderr}")
    assert stop.returncode == 0, stop.stderr
    assert "stopped arrowpoold" in stop.stdout
    with pytest.raises(arrowpool.ServerUnavailable):
        arrowpool.connect(autostart=False)
    # The next connect() starts a fresh one: the table is gone with the old.
    c = arrowpool.connect()
    with pytest.raises(arrowpool.NotFound):
        c.get("kept")


def test_autostart_false_and_explicit_paths_start_nothing(runtime_dir, tmp_path):
    with pytest.raises(arrowpool.ServerUnavailable):
        arrowpool.connect(autostart=False)
    with pytest.raises(arrowpool.ServerUnavailable):
        arrowpool.connect(tmp_path / "nobody.sock")
    assert not srv.listening(runtime_dir / "arrowpool" / "arrowpool.sock")
    # autostart=True with an explicit path starts one there.
    c = arrowpool.connect(tmp_path / "mine.sock", autostart=True)
    assert c.ping() >= 0
    srv.stop_server(tmp_path / "mine.sock")


def test_a_server_that_cannot_start_says_why(runtime_dir, monkeypatch):
    monkeypatch.setenv("ARROWPOOL_MEMORY", "not-a-size")
    with pytest.raises(arrowpool.ServerUnavailable) as e:
        arrowpool.connect()
    assert "arrowpoold.log" in str(e.value)
    assert "not-a-size" in str(e.value)


def test_a_directory_others_can_enter_or_own_is_refused(tmp_path, monkeypatch):
    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(run))
    monkeypatch.delenv("ARROWPOOL_SOCKET", raising=False)
    (run / "arrowpool").mkdir(mode=0o755)
    os.chmod(run / "arrowpool", 0o755)
    with pytest.raises(arrowpool.ArrowpoolError, match="lets others in"):
        arrowpool.default_socket()
    os.rmdir(run / "arrowpool")
    os.symlink(tmp_path, run / "arrowpool")
    with pytest.raises(arrowpool.ArrowpoolError, match="not a directory"):
        arrowpool.default_socket()
    os.unlink(run / "arrowpool")
    if os.geteuid() == 0:
        (run / "arrowpool").mkdir(mode=0o700)
        os.chown(run / "arrowpool", 65534, 65534)
        with pytest.raises(arrowpool.ArrowpoolError, match="belongs to uid 65534"):
            arrowpool.default_socket()
    # Without XDG_RUNTIME_DIR: a per-user directory in the temp directory.
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    assert arrowpool.default_socket() == str(tmp_path / f"arrowpool-{os.geteuid()}" / "arrowpool.sock")
    # ARROWPOOL_SOCKET names the path outright.
    monkeypatch.setenv("ARROWPOOL_SOCKET", "/somewhere/s.sock")
    assert arrowpool.default_socket() == "/somewhere/s.sock"


def test_python_m_arrowpool_server_runs_the_server(tmp_path):
    sock = tmp_path / "m.sock"
    env = dict(os.environ, ARROWPOOLD=str(server_binary()))
    p = subprocess.Popen(
        [sys.executable, "-m", "arrowpool", "server", "--socket", str(sock), "--memory", "64M"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 20
        while not srv.listening(sock):
            assert p.poll() is None, p.stderr.read()
            assert time.monotonic() < deadline
            time.sleep(0.02)
        c = arrowpool.connect(sock)
        assert c.arena_bytes == 64 * 1024 * 1024
        # The process behind the socket is the one python -m started (exec'd).
        assert srv.server_pid(sock) == p.pid
    finally:
        p.terminate()
        p.wait(timeout=30)
