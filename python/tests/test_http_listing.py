"""Ingest of a prefix over plain HTTP: listing the files below a URL is
WebDAV's PROPFIND (what object_store's HTTP store speaks). A real WebDAV
server (WsgiDAV, on loopback) serves a directory of Parquet files, which a
real arrowpoold lists and reads with ranged GETs; a plain web server (Python's
http.server) cannot list, and the error says so in a sentence, not an HTML
page.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import arrowpool
from conftest import Server, free_port, wait_for_port


def serve(argv: list[str], port: int, log: Path) -> subprocess.Popen:
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    wait_for_port(port, proc, log, argv[0])
    return proc


def part(i: int) -> pa.Table:
    return pa.table({
        "id": pa.array(range(i * 1000, (i + 1) * 1000), pa.int64()),
        "name": pa.array([f"p{i}-{j}" for j in range(1000)]),
    })


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """parts/: three Parquet files (written out of name order), a hidden one,
    a file that is not Parquet and a subdirectory, none of which are read."""
    root = tmp_path_factory.mktemp("site")
    parts = root / "parts"
    (parts / "deeper").mkdir(parents=True)
    for i in (2, 0, 1):
        pq.write_table(part(i), parts / f"part-{i}.parquet", row_group_size=400)
    pq.write_table(part(9), parts / "_hidden.parquet")
    pq.write_table(part(8), parts / "deeper" / "x.parquet")
    (parts / "README.txt").write_text("not data\n")
    return root


@pytest.fixture(scope="module")
def webdav(site, tmp_path_factory):
    port = free_port()
    wsgidav = Path(sys.executable).parent / "wsgidav"
    log = tmp_path_factory.mktemp("dav") / "wsgidav.log"
    proc = serve([str(wsgidav), "--host", "127.0.0.1", "--port", str(port), "--root", str(site),
                  "--auth", "anonymous", "--no-config"], port, log)
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(10)


@pytest.fixture(scope="module")
def plain_web(site, tmp_path_factory):
    port = free_port()
    log = tmp_path_factory.mktemp("web") / "http.log"
    proc = serve([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
                  "--directory", str(site)], port, log)
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(10)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = Server(tmp_path_factory.mktemp("srv"), memory="256M")
    yield srv
    srv.stop()


def test_a_webdav_prefix_reads_its_parquet_files_in_name_order(webdav, server):
    expected = pa.concat_tables([part(0), part(1), part(2)])
    with server.connect() as c:
        # With and without the final slash: the collection itself is an
        # empty resource, which is read as the prefix it is.
        for url, name in ((f"{webdav}/parts/", "slash"), (f"{webdav}/parts", "bare")):
            r = c.ingest(url, name, timeout=120)
            assert (r["files"], r["rows"]) == (3, 3000), r
            assert c.get(name).combine_chunks().equals(expected.combine_chunks())
        r = c.ingest(f"{webdav}/parts/", "some", columns=["name"], timeout=120)
        assert c.get("some").column_names == ["name"]
        # One file of the same server.
        c.ingest(f"{webdav}/parts/part-1.parquet", "one", timeout=120)
        assert c.get("one").equals(part(1))


def test_a_plain_web_server_cannot_list_and_says_so(plain_web, server):
    with server.connect() as c:
        with pytest.raises(arrowpool.IngestError) as e:
            c.ingest(f"{plain_web}/parts/", "listed", timeout=120)
        message = str(e.value)
        assert "WebDAV" in message and "501" in message, message
        assert "<html" not in message.lower(), message
        assert "listed" not in [o["name"] for o in c.list()]
