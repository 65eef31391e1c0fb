"""The per-user server: where it listens, starting it when nobody is listening,
stopping it.

Where (the same rule as ``arrowpoold`` and the ``arrowpool`` CLI, ``src/paths.rs``)::

    $ARROWPOOL_SOCKET                          if set: exactly that path
    $XDG_RUNTIME_DIR/arrowpool/arrowpool.sock  if XDG_RUNTIME_DIR names a directory
    /tmp/arrowpool-<uid>/arrowpool.sock        otherwise

The directory is created with mode 0700 and refused unless it is a real directory
owned by this user that nobody else may enter: a predictable name in a
world-writable ``/tmp`` could otherwise be taken first by another user.

Starting (``ensure_server``, which ``arrowpool.connect()`` calls when no path is
given): under an exclusive ``flock`` on ``<dir>/arrowpool.lock``, so that many
processes starting at once (the workers of a gunicorn app) start exactly one
server, the first one checks again that nobody listens, then starts
``arrowpoold --socket PATH --memory SIZE`` in a session of its own (it outlives the
process that started it and ignores that process's terminal), appending its
output to ``<dir>/arrowpoold.log``, and waits until it accepts connections.

- The binary: ``$ARROWPOOLD``, else the ``arrowpoold`` installed next to this
  Python (``pip install arrowpool`` puts it there), else the one on ``PATH``.
- Its memory cap: ``$ARROWPOOL_MEMORY`` (``8G``, ``512M``...), else half of the
  machine's memory. The arena only reserves address space up front; pages are
  taken as tables arrive, and least-recently-used tables are evicted at the cap.
- ``$ARROWPOOL_STATE_DIR`` (a directory on tmpfs, e.g. ``/dev/shm/arrowpool``): passed
  as ``--state-dir``, so the tables survive the server (a crash, ``kill -9``,
  ``arrowpool stop``), and a client that finds it gone starts it again on its next
  request. Not the default: the tables' memory then stays taken while no server
  runs, until the directory is removed.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import socket
import stat
import struct
import subprocess
import sys
import time
from pathlib import Path

from .errors import ArrowpoolError, ServerUnavailable

SOCKET_ENV = "ARROWPOOL_SOCKET"
MEMORY_ENV = "ARROWPOOL_MEMORY"
STATE_DIR_ENV = "ARROWPOOL_STATE_DIR"
SERVER_ENV = "ARROWPOOLD"
SOCKET_NAME = "arrowpool.sock"
LOG_NAME = "arrowpoold.log"
LOCK_NAME = "arrowpool.lock"
#: Seconds ``ensure_server`` waits for a new server to accept connections.
START_TIMEOUT = 30.0


def ensure_private(path: str | os.PathLike[str]) -> None:
    """Creates directory ``path`` (mode 0700) if missing; then it must be a
    directory, not a symlink, owned by this user, closed to group and others."""
    path = os.fspath(path)
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    st = os.lstat(path)
    why = None
    if not stat.S_ISDIR(st.st_mode):
        why = "it is not a directory"
    elif st.st_uid != os.geteuid():
        why = f"it belongs to uid {st.st_uid}, not {os.geteuid()}"
    elif st.st_mode & 0o077:
        why = f"mode {st.st_mode & 0o777:o} lets others in (want 700)"
    if why:
        raise ArrowpoolError(
            f"refusing {path} for the socket: {why}; remove it, or set {SOCKET_ENV} to a path of your own"
        )


def private_dir() -> str:
    """The per-user directory of the default socket, created if missing."""
    xdg = os.environ.get("XDG_RUNTIME_DIR", "")
    if xdg and os.path.isabs(xdg) and os.path.isdir(xdg):
        d = os.path.join(xdg, "arrowpool")
    else:
        import tempfile

        d = os.path.join(tempfile.gettempdir(), f"arrowpool-{os.geteuid()}")
    ensure_private(d)
    return d


def default_socket() -> str:
    """The socket path when none is given (see the module doc)."""
    explicit = os.environ.get(SOCKET_ENV)
    if explicit:
        return explicit
    return os.path.join(private_dir(), SOCKET_NAME)


def log_path(socket_path: str | os.PathLike[str]) -> str:
    """Where an autostarted server logs: ``arrowpoold.log`` beside its socket."""
    return os.path.join(os.path.dirname(os.path.abspath(socket_path)), LOG_NAME)


def _binary(name: str, env: str | None) -> str:
    if env and os.environ.get(env):
        return os.environ[env]
    here = Path(sys.executable).parent / name
    if here.is_file() and os.access(here, os.X_OK):
        return str(here)
    found = shutil.which(name)
    if found:
        return found
    import sysconfig

    scripts = Path(sysconfig.get_path("scripts")) / name
    if scripts.is_file():
        return str(scripts)
    raise ArrowpoolError(
        f"no {name} executable found (next to {sys.executable}, or on PATH): "
        f"`pip install arrowpool` installs it; or set {env or 'PATH'}"
    )


def server_binary() -> str:
    """The ``arrowpoold`` to start: ``$ARROWPOOLD``, the one installed beside this
    Python, or the one on ``PATH``."""
    return _binary("arrowpoold", SERVER_ENV)


def cli_binary() -> str:
    """The ``arrowpool`` command-line tool: ``$ARROWPOOL_CLI``, else the one
    installed with the package."""
    return _binary("arrowpool", "ARROWPOOL_CLI")


def default_memory() -> str:
    """The memory cap of an autostarted server: ``$ARROWPOOL_MEMORY``, else half
    of the machine's memory (``MemTotal`` / 2, in MiB)."""
    explicit = os.environ.get(MEMORY_ENV)
    if explicit:
        return explicit
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    kib = int(line.split()[1])
                    return f"{max(1024, kib // 2 // 1024)}M"
    except OSError:
        pass
    return "1G"


def listening(path: str | os.PathLike[str]) -> bool:
    """True if something accepts connections on the Unix socket ``path``."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.settimeout(5.0)
        s.connect(os.fspath(path))
        return True
    except OSError:
        return False
    finally:
        s.close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # Reaped by init or a zombie of ours: a zombie is not running.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _tail(path: str, lines: int = 12) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 8192))
            return "\n".join(f.read().decode("utf-8", "replace").splitlines()[-lines:])
    except OSError:
        return ""


def ensure_server(
    path: str | os.PathLike[str] | None = None,
    memory: str | None = None,
    timeout: float = START_TIMEOUT,
) -> str:
    """Starts ``arrowpoold`` on ``path`` (default: :func:`default_socket`) unless
    something already listens there; returns the path. Safe to call from many
    processes at once: one starts the server, the others wait for it. Raises
    :class:`ServerUnavailable` (with the end of the server's log) if it does not
    come up within ``timeout`` seconds."""
    path = os.fspath(path) if path is not None else default_socket()
    if listening(path):
        return path
    directory = os.path.dirname(os.path.abspath(path))
    lock = os.path.join(directory, LOCK_NAME)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        if listening(path):
            return path
        binary = server_binary()
        log = log_path(path)
        args = [binary, "--socket", path, "--memory", memory or default_memory()]
        state_dir = os.environ.get(STATE_DIR_ENV)
        if state_dir:
            args += ["--state-dir", state_dir]
        with open(log, "ab") as out:
            out.write(f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} starting: {' '.join(args)}\n".encode())
        # `sh` starts the server in the background and exits at once: the server
        # is nobody's child (no zombie, init reaps it) and, in a session of its
        # own, gets no signal from this process's terminal.
        started = subprocess.run(
            ["/bin/sh", "-c", 'LOG="$1"; shift; "$@" </dev/null >>"$LOG" 2>&1 & echo $!', "sh", log, *args],
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            check=True,
            close_fds=True,
        )
        pid = int(started.stdout.decode().strip() or 0)
        deadline = time.monotonic() + timeout
        while not listening(path):
            if not pid or not _alive(pid):
                raise ServerUnavailable(
                    f"arrowpoold exited before listening on {path}; the end of {log}:\n{_tail(log)}"
                )
            if time.monotonic() > deadline:
                raise ServerUnavailable(
                    f"arrowpoold (pid {pid}) did not listen on {path} within {timeout} s; "
                    f"the end of {log}:\n{_tail(log)}"
                )
            time.sleep(0.02)
        return path
    finally:
        os.close(fd)


def server_pid(path: str | os.PathLike[str] | None = None) -> int:
    """The pid of the server on ``path``, from the socket's peer credentials."""
    path = os.fspath(path) if path is not None else default_socket()
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(path)
        pid, _uid, _gid = struct.unpack("3i", s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
        return pid
    except OSError as e:
        raise ServerUnavailable(f"no server on {path}: {e.strerror or e}") from e
    finally:
        s.close()


def stop_server(path: str | os.PathLike[str] | None = None, timeout: float = 30.0) -> int:
    """Stops the server on ``path`` (SIGTERM, then waits for it to exit); returns
    its pid. Every table it held is gone. The ``arrowpool stop`` command does the
    same."""
    pid = server_pid(path)
    try:
        os.kill(pid, 15)
    except ProcessLookupError:
        return pid
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() > deadline:
            raise ArrowpoolError(f"arrowpoold (pid {pid}) did not exit within {timeout} s")
        time.sleep(0.02)
    return pid


def main(argv: list[str] | None = None) -> int:
    """``python -m arrowpool server ARGS`` runs ``arrowpoold ARGS``; ``python -m
    arrowpool start`` starts the per-user server if none runs; anything else runs
    the ``arrowpool`` tool (``ls``, ``stats``, ``ingest``, ``stop``...)."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["server"]:
        binary = server_binary()
        os.execv(binary, [binary, *argv[1:]])
    if argv[:1] == ["start"]:
        path = ensure_server(argv[1] if len(argv) > 1 else None)
        print(f"arrowpoold listening on {path} (log: {log_path(path)})")
        return 0
    binary = cli_binary()
    try:
        os.execv(binary, [binary, *argv])
    except OSError as e:
        if e.errno == errno.ENOENT:
            raise ArrowpoolError(f"cannot run {binary}: {e}") from e
        raise
    return 0
