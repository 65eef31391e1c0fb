"""``--writers-group`` / ``--readers-group``: clients run as another user (uid 65534)
with chosen supplementary groups; the server decides from the peer's credentials who
may read and who may write. Needs root (to run a client as another user)."""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

import pyarrow as pa
import pytest

import arrowpool

from conftest import REPO, Server

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="runs clients as another user: needs root")

NOBODY = 65534
WRITERS, READERS, OTHER = 4242, 4243, 4244


def cli() -> str:
    path = Path(os.environ.get("ARROWPOOL_CLI") or "target/debug/arrowpool")
    return str(path if path.is_absolute() else REPO / path)


def as_nobody(groups: list[int], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [cli(), *args], user=NOBODY, group=NOBODY, extra_groups=groups,
        capture_output=True, text=True, timeout=30,
    )


def python_as_nobody(groups: list[int], socket: str, write: bool) -> str:
    """Connects from a forked child running as uid 65534 in ``groups``; returns what
    happened: ``ok [rows]`` or ``ErrorClass: message``."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            os.setgroups(groups)
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            try:
                c = arrowpool.connect(socket, write=write, autostart=False)
                out = f"ok [{c.get('t').num_rows}]"
            except Exception as e:
                out = f"{type(e).__name__}: {e}"
            os.write(w, out.encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        out = f.read().decode()
    os.waitpid(pid, 0)
    return out


@pytest.fixture
def shared_dir():
    # A directory other users can enter (pytest's tmp_path is 0700).
    d = Path(tempfile.mkdtemp(prefix="arrowpool-groups-"))
    d.chmod(0o755)
    yield d
    import shutil

    shutil.rmtree(d, ignore_errors=True)


def test_readers_read_writers_write_others_are_refused(shared_dir):
    s = Server(shared_dir, memory="64M", extra=("--writers-group", str(WRITERS), "--readers-group", str(READERS)))
    try:
        # With group flags and no --socket-mode the socket is open to all; the
        # groups decide.
        assert os.stat(s.socket).st_mode & 0o777 == 0o666
        owner = s.connect()
        owner.put("t", pa.table({"a": [1, 2, 3]}))
        sock = ("--socket", s.socket)

        reader = as_nobody([READERS], *sock, "ls")
        assert reader.returncode == 0, reader.stderr
        assert "t" in reader.stdout
        refused = as_nobody([READERS], *sock, "rm", "t")
        assert refused.returncode != 0
        assert "write access refused" in refused.stderr and "--writers-group" in refused.stderr
        assert "write access refused to uid 65534" in s.log()
        assert [e["name"] for e in owner.list()] == ["t"]

        stranger = as_nobody([OTHER], *sock, "ls")
        assert stranger.returncode != 0
        assert "neither" in stranger.stderr

        writer = as_nobody([OTHER, WRITERS], *sock, "rm", "t")
        assert writer.returncode == 0, writer.stderr
        assert owner.list() == []
        owner.close()
    finally:
        s.stop()


def test_writers_group_alone_leaves_reading_to_the_socket_mode(shared_dir):
    s = Server(shared_dir, memory="64M", extra=("--writers-group", str(WRITERS)))
    try:
        owner = s.connect()
        owner.put("t", pa.table({"a": [1]}))
        sock = ("--socket", s.socket)
        assert as_nobody([OTHER], *sock, "ls").returncode == 0
        refused = as_nobody([OTHER], *sock, "rm", "t")
        assert refused.returncode != 0 and "write access refused" in refused.stderr
        # The Python client says what to do, with its own error type, and
        # connects read-only.
        assert python_as_nobody([OTHER], s.socket, write=True).startswith("ReadOnly: ")
        assert "write=False" in python_as_nobody([OTHER], s.socket, write=True)
        assert python_as_nobody([OTHER], s.socket, write=False) == "ok [1]"
        owner.close()
    finally:
        s.stop()


def test_unknown_group_is_refused_at_start(tmp_path):
    p = subprocess.run(
        [str(Path(os.environ.get("ARROWPOOLD") or REPO / "target/debug/arrowpoold")), "--socket",
         str(tmp_path / "s.sock"), "--writers-group", "no-such-group-here"],
        capture_output=True, text=True, timeout=30,
    )
    assert p.returncode == 2
    assert "--writers-group: no group" in p.stderr
