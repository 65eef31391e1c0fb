"""Test fixtures: a real ``arrowpoold`` on a temporary socket.

The binary comes from ``$ARROWPOOLD`` (default ``target/debug/arrowpoold`` at the
repository root). A missing binary fails the tests that need a server; it never skips
them. Tests that only check the wire format (test_protocol.py) need no server.
"""

from __future__ import annotations

import gc
import os
import re
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import pyarrow as pa
import pytest

import arrowpool

REPO = Path(__file__).resolve().parents[2]
# An object store ingest without credentials asks the cloud's instance metadata
# service (169.254.169.254, off this machine): test servers point it at a closed
# loopback port unless the environment already says otherwise.
NO_CLOUD_METADATA = {
    "AWS_METADATA_ENDPOINT": "http://127.0.0.1:9",
    "AWS_EC2_METADATA_DISABLED": "true",
    "GCE_METADATA_HOST": "127.0.0.1:9",
    "GCE_METADATA_IP": "127.0.0.1:9",
    "AZURE_MSI_ENDPOINT": "http://127.0.0.1:9",
    "IDENTITY_ENDPOINT": "http://127.0.0.1:9",
}
START_TIMEOUT_S = 20.0


def free_port() -> int:
    """A TCP port on loopback that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, log: Path, what: str, timeout: float = 30.0) -> None:
    """Waits until ``proc`` (``what``, logging to ``log``) listens on ``port``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{what} exited with {proc.returncode}:\n{log.read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    proc.kill()
    pytest.fail(f"{what} did not listen on {port}:\n{log.read_text()}")


def server_binary() -> Path:
    path = Path(os.environ.get("ARROWPOOLD") or "target/debug/arrowpoold")
    if not path.is_absolute():
        path = REPO / path
    return path


class Server:
    """An ``arrowpoold`` process listening on ``socket``."""

    def __init__(self, workdir: Path, memory: str = "512M", threads: int = 2, extra: tuple = ()):
        binary = server_binary()
        if not os.access(binary, os.X_OK):
            pytest.fail(
                f"arrowpoold binary not found at {binary}: build it with "
                "`cargo build --bin arrowpoold` or point $ARROWPOOLD at it",
                pytrace=False,
            )
        self.workdir = workdir
        self.socket = str(workdir / "s.sock")
        self.log_path = workdir / "arrowpoold.log"
        self.args = [
            str(binary), "--socket", self.socket, "--memory", memory, "--threads", str(threads),
            *extra,
        ]
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            self.args, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
            env={**NO_CLOUD_METADATA, **os.environ},
        )
        self._wait_ready()

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        last_error = None
        while time.monotonic() < deadline:
            code = self.proc.poll()
            if code is not None:
                pytest.fail(
                    f"arrowpoold exited with status {code} before accepting connections\n"
                    f"command: {' '.join(self.args)}\nserver output:\n{self.log()}",
                    pytrace=False,
                )
            if os.path.exists(self.socket):
                probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    probe.settimeout(1.0)
                    probe.connect(self.socket)
                    return
                except OSError as e:
                    last_error = e
                finally:
                    probe.close()
            time.sleep(0.05)
        self.stop()
        pytest.fail(
            f"arrowpoold did not accept connections on {self.socket} within "
            f"{START_TIMEOUT_S:.0f} s (last error: {last_error})\n"
            f"command: {' '.join(self.args)}\nserver output:\n{self.log()}",
            pytrace=False,
        )

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM, then SIGKILL if it does not exit in time; returns the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode

    def connect(self, **kwargs) -> arrowpool.Client:
        return arrowpool.connect(self.socket, **kwargs)


@pytest.fixture(scope="session")
def server():
    with tempfile.TemporaryDirectory(prefix="arrowpool-test-") as d:
        srv = Server(Path(d))
        yield srv
        srv.stop()


@pytest.fixture
def fresh_server(tmp_path):
    """A server of its own, for tests that stop it or need a known memory state."""
    srv = Server(tmp_path)
    yield srv
    srv.stop()


@pytest.fixture
def client(server):
    c = server.connect()
    yield c
    c.close()


@pytest.fixture
def name(request):
    """A name no other test uses."""
    base = re.sub(r"[^A-Za-z0-9_.-]", "_", request.node.name)[:200]
    return f"{base}-{uuid.uuid4().hex[:8]}"


def leases_of(client: arrowpool.Client, name: str) -> int:
    """Leases the server counts on ``name``'s current object (after the releases this
    client queued have reached it: list() is answered after them)."""
    gc.collect()
    for entry in client.list():
        if entry["name"] == name:
            return entry["leases"]
    raise AssertionError(f"{name!r} is not listed")


def arena_range(client: arrowpool.Client) -> tuple[int, int]:
    conn = client._connection()
    return conn.ro_address, conn.ro_address + conn.arena_len


def buffers_of(table: pa.Table):
    """Every non-null buffer of every chunk, children and dictionaries included."""

    def of_array(arr):
        for buf in arr.buffers():
            if buf is not None:
                yield buf
        if pa.types.is_dictionary(arr.type):
            yield from of_array(arr.dictionary)

    for column in table.columns:
        for chunk in column.chunks:
            yield from of_array(chunk)


def assert_in_arena(client: arrowpool.Client, table: pa.Table) -> int:
    """Fails unless every buffer lies inside the read-only arena mapping; returns how
    many buffers were checked."""
    lo, hi = arena_range(client)
    count = 0
    for buf in buffers_of(table):
        count += 1
        assert lo <= buf.address and buf.address + buf.size <= hi, (
            f"buffer [{buf.address:#x}, +{buf.size}) lies outside the arena "
            f"[{lo:#x}, {hi:#x}): it was copied"
        )
    return count


def wait_until_stopped(pid: int) -> None:
    """SIGSTOP is delivered asynchronously: wait until every thread is stopped, or
    a request sent right away may still be answered."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        states = []
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                states.append(f.read().rsplit(")", 1)[1].split()[0])
        if all(st == "T" for st in states):
            return
        time.sleep(0.001)
    raise AssertionError(f"server {pid} did not stop: thread states {states}")
