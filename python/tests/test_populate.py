"""A writer builds its page tables for the arena's existing pages right after
connecting (so its first put copies at memcpy speed), and never for pages the
server has not allocated: the arena's committed memory does not grow."""

from __future__ import annotations

import os
import time

import arrowpool
from conftest import Server


def arena_committed_bytes(server: Server) -> int:
    fds = f"/proc/{server.proc.pid}/fd"
    for fd in os.listdir(fds):
        try:
            target = os.readlink(os.path.join(fds, fd))
        except OSError:
            continue
        if "memfd:arrowpool-arena" in target:
            return os.stat(os.path.join(fds, fd)).st_blocks * 512
    raise AssertionError("no arena memfd among the server's descriptors")


def arena_rss_bytes() -> int:
    rss, in_arena = 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            first = line.split(maxsplit=1)[0] if line.strip() else ""
            if "-" in first and all(ch in "0123456789abcdef-" for ch in first):
                in_arena = "memfd:arrowpool-arena" in line
            elif line.startswith("Rss:") and in_arena:
                rss += int(line.split()[1]) * 1024
    return rss


def wait_for(cond, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def test_a_writer_populates_preallocated_pages_only(tmp_path):
    s = Server(tmp_path, memory="256M", extra=("--preallocate", "64M", "--hugepages", "off"))
    try:
        wait_for(lambda: "preallocated" in s.log(), s.log())
        committed = arena_committed_bytes(s)
        assert committed >= 64 << 20
        before = arena_rss_bytes()
        c = arrowpool.connect(s.socket)
        # Whole 2 MiB chunks only: the region's ragged ends are skipped.
        wait_for(lambda: arena_rss_bytes() >= before + (48 << 20),
                 f"page tables not built: {arena_rss_bytes() - before} bytes resident")
        time.sleep(0.2)
        assert arena_committed_bytes(s) == committed, "memory was committed"
        c.close()
    finally:
        s.stop()
