"""Arrow Flight (``--flight``): pyarrow.flight, with no code of ours, against a real
server — reads, writes, actions, tokens and roles, TLS and client certificates, and
the refusals of each."""

from __future__ import annotations

import decimal
import json
import os
import subprocess
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.flight as fl
import pyarrow.parquet as pq
import pytest

from conftest import Server, assert_in_arena, server_binary

READ_TOKEN = "read-0123456789abcdef"
WRITE_TOKEN = "write-0123456789abcdef"
ADMIN_TOKEN = "admin-0123456789abcdef"
OLD_TOKEN = "old-0123456789abcdef00"


def table(seed: int, rows: int = 100_000) -> pa.Table:
    rng = np.random.default_rng(seed)
    return pa.table(
        {
            "id": np.arange(rows, dtype=np.int64),
            "x": rng.random(rows),
            "s": [f"s{seed}-{i}" for i in range(rows)],
            "cat": pa.array(["north", "south", "east"] * (rows // 3) + ["west"] * (rows % 3)).dictionary_encode(),
        }
    )


def flight_server(workdir: Path, *flags: str, memory: str = "256M") -> tuple[Server, str]:
    s = Server(workdir, memory=memory, extra=("--flight", "127.0.0.1:0", *flags))
    c = s.connect()
    addr = c.stats()["flight"]
    c.close()
    return s, addr


def put_flight(client: fl.FlightClient, descriptor: fl.FlightDescriptor, t: pa.Table, options=None) -> dict:
    writer, reader = client.do_put(descriptor, t.schema, options=options)
    writer.write_table(t, max_chunksize=30_000)
    writer.done_writing()
    meta = reader.read()
    writer.close()
    return json.loads(meta.to_pybytes())


@pytest.fixture
def served(tmp_path):
    s, addr = flight_server(tmp_path, "--keep-versions", "2")
    client = fl.connect(f"grpc://{addr}")
    yield s, client
    client.close()
    s.stop()


def test_a_table_put_on_the_socket_is_read_over_flight(served):
    s, client = served
    t = table(1)
    c = s.connect()
    c.put("sales", t)
    infos = list(client.list_flights())
    assert [i.descriptor.path for i in infos] == [[b"sales"]]
    info = infos[0]
    assert info.total_records == t.num_rows
    assert info.schema == t.schema
    assert json.loads(info.app_metadata)["version"] == 1
    got = client.do_get(info.endpoints[0].ticket).read_all()
    assert got.equals(t)
    # Dictionary columns stay dictionaries.
    assert pa.types.is_dictionary(got.schema.field("cat").type)
    # By plain name, and a projection.
    assert client.do_get(fl.Ticket(b"sales")).read_all().equals(t)
    proj = client.do_get(fl.Ticket(json.dumps({"name": "sales", "columns": ["s", "id"]}).encode())).read_all()
    assert proj.column_names == ["s", "id"]
    assert proj.column("s").equals(t.column("s"))
    assert client.get_schema(fl.FlightDescriptor.for_path("sales")).schema == t.schema
    c.close()


def test_endpoint_tickets_name_their_version(served):
    s, client = served
    c = s.connect()
    first, second = table(1), table(2)
    c.put("t", first)
    info = client.get_flight_info(fl.FlightDescriptor.for_path("t"))
    c.put("t", second)
    # The endpoint still reads version 1 (kept by --keep-versions 2)...
    assert client.do_get(info.endpoints[0].ticket).read_all().equals(first)
    # ...while the name reads the current one.
    assert client.do_get(fl.Ticket(b"t")).read_all().equals(second)
    c.close()


def test_a_table_put_over_flight_is_shared_memory_for_socket_readers(served):
    s, client = served
    t = table(3, rows=300_000)
    meta = put_flight(client, fl.FlightDescriptor.for_path("in"), t)
    assert meta["version"] == 1 and meta["rows"] == t.num_rows
    c = s.connect()
    got = c.get("in")
    assert got.equals(t)
    assert assert_in_arena(c, got) > 0
    # Replacing it: version 2; if_version guards against lost updates.
    meta = put_flight(client, fl.FlightDescriptor.for_command(json.dumps({"name": "in", "if_version": 1})), table(4))
    assert meta["version"] == 2
    with pytest.raises(pa.ArrowException, match="not 1"):
        put_flight(client, fl.FlightDescriptor.for_command(json.dumps({"name": "in", "if_version": 1})), t)
    assert c.get("in").equals(table(4))
    c.close()


def test_an_empty_table_and_a_large_one_go_both_ways(served):
    _, client = served
    empty = table(5).slice(0, 0)
    put_flight(client, fl.FlightDescriptor.for_path("empty"), empty)
    got = client.do_get(fl.Ticket(b"empty")).read_all()
    assert got.num_rows == 0 and got.schema == empty.schema
    rng = np.random.default_rng(6)
    big = pa.table({f"c{i}": rng.random(2_000_000) for i in range(6)})  # 96 MB: many messages
    put_flight(client, fl.FlightDescriptor.for_path("big"), big)
    assert client.do_get(fl.Ticket(b"big")).read_all().equals(big)


def test_one_batch_larger_than_a_message_reads_back_in_row_slices(served):
    """A pandas put is one batch of the whole table: sent as slices of rows
    that point into the arena (flat columns of every kind, nulls not on
    slice boundaries, a row count no slice size divides)."""
    s, client = served
    c = s.connect()
    rng = np.random.default_rng(13)
    rows = 1_000_003
    nulls = rng.random(rows) < 0.1
    big = pa.table({
        "i": pa.array(rng.integers(-(1 << 40), 1 << 40, rows)),
        "f": pa.array(rng.random(rows), mask=nulls),
        "b": pa.array(rng.random(rows) > 0.5, mask=np.roll(nulls, 3)),
        "s": pa.array([None if n else f"v{i}" for i, n in enumerate(nulls)]),
        "ls": pa.array([f"{i % 97}" for i in range(rows)], pa.large_string()),
        "t": pa.array(rng.integers(0, 1 << 50, rows), pa.timestamp("us")),
        "d": pa.array([decimal.Decimal(i) / 100 for i in range(rows)], pa.decimal128(12, 2)),
        "fsb": pa.array([i.to_bytes(3, "little") for i in range(rows)], pa.binary(3)),
    }).combine_chunks()
    assert big.nbytes > 40 << 20
    c.put("one", big)
    got = client.do_get(fl.Ticket(b"one")).read_all()
    assert got.equals(big)
    assert got.column("f").null_count == big.column("f").null_count
    assert len(got.to_batches()) > 1
    c.close()


def test_actions_delete_ingest_and_stats(served, tmp_path):
    s, client = served
    assert sorted(a.type for a in client.list_actions()) == [
        "ClosePreparedStatement", "CreatePreparedStatement", "delete", "ingest", "stats"
    ]
    t = table(7).drop_columns(["cat"])
    path = tmp_path / "t.parquet"
    pq.write_table(t, path)
    [r] = list(client.do_action(fl.Action("ingest", json.dumps({"name": "pq", "path": str(path)}).encode())))
    assert json.loads(r.body.to_pybytes())["rows"] == t.num_rows
    assert client.do_get(fl.Ticket(b"pq")).read_all().equals(t)
    [r] = list(client.do_action(fl.Action("stats", b"")))
    assert json.loads(r.body.to_pybytes())["names"] == 1
    list(client.do_action(fl.Action("delete", b"pq")))
    assert list(client.list_flights()) == []
    with pytest.raises(pa.ArrowException, match="no object named"):
        client.do_get(fl.Ticket(b"pq")).read_all()
    with pytest.raises(pa.ArrowException, match="unknown action"):
        list(client.do_action(fl.Action("drop-everything", b"")))
    with pytest.raises(pa.ArrowException, match="not a Parquet|No such file|missing|cannot"):
        list(client.do_action(fl.Action("ingest", json.dumps({"name": "x", "path": str(tmp_path / "nope.parquet")}).encode())))


def test_bad_requests_get_clear_errors(served):
    _, client = served
    with pytest.raises(pa.ArrowException, match="no object named"):
        client.do_get(fl.Ticket(b"missing")).read_all()
    with pytest.raises(pa.ArrowException, match="unknown field"):
        client.do_get(fl.Ticket(b'{"name": "t", "colums": []}')).read_all()
    with pytest.raises(pa.ArrowException, match="one table"):
        client.get_flight_info(fl.FlightDescriptor.for_path("a", "b"))
    put_flight(client, fl.FlightDescriptor.for_path("t"), table(8))
    with pytest.raises(pa.ArrowException, match='no column "nope"'):
        client.do_get(fl.Ticket(json.dumps({"name": "t", "columns": ["nope"]}).encode())).read_all()
    with pytest.raises(pa.ArrowException, match="name"):
        put_flight(client, fl.FlightDescriptor.for_path(""), table(8))


def write_tokens(path: Path) -> Path:
    path.write_text(
        f"# role token [expires]\nread {READ_TOKEN}\nwrite {WRITE_TOKEN}\nadmin {ADMIN_TOKEN}\n"
        f"admin {OLD_TOKEN} 2001-01-01T00:00:00Z\n"
    )
    path.chmod(0o600)
    return path


def bearer(token: str) -> fl.FlightCallOptions:
    return fl.FlightCallOptions(headers=[(b"authorization", f"Bearer {token}".encode())])


def test_tokens_and_roles(tmp_path):
    tokens = write_tokens(tmp_path / "tokens")
    s, addr = flight_server(tmp_path, "--flight-tokens", str(tokens))
    client = fl.connect(f"grpc://{addr}")
    try:
        t = table(9)
        with pytest.raises(fl.FlightUnauthenticatedError, match="requires a token"):
            list(client.list_flights())
        with pytest.raises(fl.FlightUnauthenticatedError, match="not known"):
            list(client.list_flights(options=bearer("x" * 20)))
        with pytest.raises(fl.FlightUnauthenticatedError, match="expired at 2001-01-01"):
            list(client.list_flights(options=bearer(OLD_TOKEN)))
        # A reader reads, and every write is refused.
        with pytest.raises(fl.FlightUnauthorizedError, match="needs the write role"):
            put_flight(client, fl.FlightDescriptor.for_path("t"), t, options=bearer(READ_TOKEN))
        put_flight(client, fl.FlightDescriptor.for_path("t"), t, options=bearer(WRITE_TOKEN))
        assert client.do_get(fl.Ticket(b"t"), options=bearer(READ_TOKEN)).read_all().equals(t)
        with pytest.raises(fl.FlightUnauthenticatedError, match="requires a token"):
            client.do_get(fl.Ticket(b"t")).read_all()
        with pytest.raises(fl.FlightUnauthenticatedError, match="not known"):
            client.do_get(fl.Ticket(b"t"), options=bearer("x" * 20)).read_all()
        with pytest.raises(fl.FlightUnauthorizedError, match="needs the write role"):
            list(client.do_action(fl.Action("delete", b"t"), options=bearer(READ_TOKEN)))
        # Reading the server's own files is for admins.
        with pytest.raises(fl.FlightUnauthorizedError, match="needs the admin role"):
            list(client.do_action(fl.Action("ingest", b'{"name": "x", "path": "/etc"}'), options=bearer(WRITE_TOKEN)))
        list(client.do_action(fl.Action("stats", b""), options=bearer(ADMIN_TOKEN)))
        # pyarrow's basic-token handshake: the password is the token.
        other = fl.connect(f"grpc://{addr}")
        header = other.authenticate_basic_token(b"anyone", READ_TOKEN.encode())
        assert header[1] == f"Bearer {READ_TOKEN}".encode()
        assert [i.descriptor.path for i in other.list_flights(options=fl.FlightCallOptions(headers=[header]))] == [[b"t"]]
        other.close()
        # Revoking a token by editing the file takes effect without a restart.
        tokens.write_text(f"read {READ_TOKEN}\n")
        tokens.chmod(0o600)
        os.utime(tokens, (time.time() + 5, time.time() + 5))
        time.sleep(1.1)
        with pytest.raises(fl.FlightUnauthenticatedError, match="not known"):
            list(client.list_flights(options=bearer(WRITE_TOKEN)))
        list(client.list_flights(options=bearer(READ_TOKEN)))
    finally:
        client.close()
        s.stop()


def start_fails(tmp_path: Path, *flags: str) -> str:
    sock = tmp_path / "refused.sock"
    p = subprocess.run(
        [str(server_binary()), "--socket", str(sock), "--memory", "64M", *flags],
        capture_output=True, text=True, timeout=30,
    )
    assert p.returncode != 0, p.stderr
    assert not sock.exists()
    return p.stderr


def test_refusals_at_start(tmp_path):
    err = start_fails(tmp_path, "--flight", "0.0.0.0:0")
    assert "not a loopback address" in err and "--flight-insecure" in err
    tokens = write_tokens(tmp_path / "tokens")
    tokens.chmod(0o644)
    assert "chmod 600" in start_fails(tmp_path, "--flight", "127.0.0.1:0", "--flight-tokens", str(tokens))
    bad = tmp_path / "bad-tokens"
    bad.write_text("reader 0123456789abcdef0123\n")
    bad.chmod(0o600)
    assert "line 1: unknown role" in start_fails(tmp_path, "--flight", "127.0.0.1:0", "--flight-tokens", str(bad))
    not_pem = tmp_path / "cert.pem"
    not_pem.write_text("hello")
    assert "no PEM CERTIFICATE" in start_fails(
        tmp_path, "--flight", "127.0.0.1:0", "--flight-tls-cert", str(not_pem), "--flight-tls-key", str(not_pem)
    )


def test_insecure_non_loopback_listener_starts_with_a_warning(tmp_path):
    # Listening on every address; the test only talks to loopback.
    s = Server(tmp_path, memory="64M", extra=("--flight", "0.0.0.0:0", "--flight-insecure"))
    try:
        c = s.connect()
        port = c.stats()["flight"].rsplit(":", 1)[1]
        c.close()
        assert "WARNING: --flight-insecure" in s.log()
        client = fl.connect(f"grpc://127.0.0.1:{port}")
        assert list(client.list_flights()) == []
        client.close()
    finally:
        s.stop()


def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def make_pki(d: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, with openssl."""
    p = {k: d / f"{k}.pem" for k in ("ca", "ca-key", "server", "server-key", "client", "client-key")}
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", str(p["ca-key"]), "-out", str(p["ca"]), "-days", "2", "-subj", "/CN=arrowpool test CA",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign")
    for who, ext in (("server", "subjectAltName=IP:127.0.0.1,DNS:localhost"), ("client", "extendedKeyUsage=clientAuth")):
        csr = d / f"{who}.csr"
        openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                "-keyout", str(p[f"{who}-key"]), "-out", str(csr), "-subj", f"/CN=arrowpool test {who}")
        extfile = d / f"{who}.ext"
        extfile.write_text(ext + "\n")
        openssl("x509", "-req", "-in", str(csr), "-CA", str(p["ca"]), "-CAkey", str(p["ca-key"]),
                "-CAcreateserial", "-out", str(p[who]), "-days", "2", "-extfile", str(extfile))
    return p


def test_tls_and_client_certificates(tmp_path):
    pki = make_pki(tmp_path)
    ca = pki["ca"].read_bytes()
    s, addr = flight_server(
        tmp_path, "--flight-tls-cert", str(pki["server"]), "--flight-tls-key", str(pki["server-key"]),
    )
    try:
        port = addr.rsplit(":", 1)[1]
        client = fl.connect(f"grpc+tls://127.0.0.1:{port}", tls_root_certs=ca)
        put_flight(client, fl.FlightDescriptor.for_path("t"), table(10))
        assert client.do_get(fl.Ticket(b"t")).read_all().num_rows == 100_000
        client.close()
        # Plain text to a TLS listener fails.
        plain = fl.connect(f"grpc://127.0.0.1:{port}")
        with pytest.raises(fl.FlightError):
            list(plain.list_flights(options=fl.FlightCallOptions(timeout=5)))
        plain.close()
    finally:
        s.stop()

    s, addr = flight_server(
        tmp_path, "--flight-tls-cert", str(pki["server"]), "--flight-tls-key", str(pki["server-key"]),
        "--flight-tls-client-ca", str(pki["ca"]),
    )
    try:
        port = addr.rsplit(":", 1)[1]
        anonymous = fl.connect(f"grpc+tls://127.0.0.1:{port}", tls_root_certs=ca)
        with pytest.raises(fl.FlightError):
            list(anonymous.list_flights(options=fl.FlightCallOptions(timeout=5)))
        anonymous.close()
        with_cert = fl.connect(
            f"grpc+tls://127.0.0.1:{port}", tls_root_certs=ca,
            cert_chain=pki["client"].read_bytes(), private_key=pki["client-key"].read_bytes(),
        )
        assert list(with_cert.list_flights()) == []
        with_cert.close()
    finally:
        s.stop()


def test_a_stream_in_progress_keeps_its_version_and_then_lets_it_go(served):
    s, client = served
    c = s.connect()
    rng = np.random.default_rng(11)
    first = pa.table({f"c{i}": rng.random(1_000_000) for i in range(4)})
    c.put("t", first)
    reader = client.do_get(fl.Ticket(b"t"))
    chunks = [reader.read_chunk().data]
    # While the stream is open the version is leased: replacing the name many
    # times (the same size, so its bytes would be reused were it free) must not
    # change what the stream sends.
    for seed in range(3):
        c.put("t", pa.table({f"c{i}": np.full(1_000_000, float(seed)) for i in range(4)}))
    chunks.extend(batch for batch in reader.read_all().to_batches())
    assert pa.Table.from_batches(chunks).equals(first)
    del reader, chunks
    # Done: no lease is left on any version (the old one was freed).
    deadline = time.monotonic() + 5
    while c.stats()["leases"] != 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert c.stats()["leases"] == 0
    c.close()


def test_versions_that_share_columns_and_plain_tables_read_exactly(served):
    s, client = served
    c = s.connect()
    rng = np.random.default_rng(12)
    rows = 200_000
    plain = pa.table({
        "i": pa.array(rng.integers(0, 1 << 40, rows)),
        "f": pa.array(rng.random(rows)),
        "s": pa.array([None if i % 7 == 0 else f"v{i}" for i in range(rows)]),
        "b": pa.array(rng.random(rows) > 0.5),
    })
    c.put("x", plain)
    assert client.do_get(fl.Ticket(b"x")).read_all().equals(plain)
    # A partial update: column "f" replaced, the others shared with version 1
    # (their buffers lie in the first version's chunk, the new one elsewhere).
    held = c.get("x")
    updated = held.set_column(1, "f", pa.array(rng.random(rows)))
    c.put("x", updated)
    assert [e for e in c.list() if e["name"] == "x"][0]["shared_bytes"] > 0
    assert client.do_get(fl.Ticket(b"x")).read_all().equals(updated)
    appended = pa.concat_tables([c.get("x"), plain.slice(0, 1000)])
    c.put("x", appended)
    assert client.do_get(fl.Ticket(b"x")).read_all().equals(appended)
    c.close()


def test_one_server_pulls_a_table_from_another(tmp_path):
    """Host to host: B ingests flight://TOKEN@A/NAME (tokens, then TLS, honoured)."""
    import arrowpool

    tokens = write_tokens(tmp_path / "tokens")
    pki = make_pki(tmp_path)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a, addr = flight_server(
        tmp_path / "a", "--flight-tokens", str(tokens),
        "--flight-tls-cert", str(pki["server"]), "--flight-tls-key", str(pki["server-key"]),
    )
    b = Server(tmp_path / "b", memory="256M", extra=("--flight-remote-ca", str(pki["ca"])))
    try:
        t = table(13).drop_columns(["cat"])
        ca = a.connect()
        ca.put("source", t)
        cb = b.connect()
        port = addr.rsplit(":", 1)[1]
        url = f"flight+tls://{READ_TOKEN}@127.0.0.1:{port}/source"
        reply = cb.ingest(url, "copy")
        assert reply["reader"] == "flight" and reply["rows"] == t.num_rows
        got = cb.get("copy")
        assert got.equals(t)
        assert_in_arena(cb, got) > 0
        # With a dictionary column: received whole, then written.
        ca.put("withcat", table(15))
        cb.ingest(url.replace("/source", "/withcat"), "wc")
        assert cb.get("wc").equals(table(15))
        proj = cb.ingest(url, "ids", columns=["id"])
        assert cb.get("ids").column_names == ["id"] and proj["rows"] == t.num_rows
        # A version by number, from the CLI.
        ca.put("source", table(14).drop_columns(["cat"]))
        cli = subprocess.run(
            [os.environ.get("ARROWPOOL_CLI") or str(Path(server_binary()).parent / "arrowpool"),
             "--socket", b.socket, "ingest", url + "?version=2", "v2"],
            capture_output=True, text=True, timeout=60,
        )
        assert cli.returncode == 0, cli.stderr
        assert READ_TOKEN not in cli.stdout + cli.stderr
        assert cb.get("v2").equals(table(14).drop_columns(["cat"]))
        # Refusals are the remote server's, named, without the token.
        with pytest.raises(arrowpool.IngestError, match="Unauthenticated") as e:
            cb.ingest(f"flight+tls://{'z' * 20}@127.0.0.1:{port}/source", "x")
        assert "z" * 20 not in str(e.value)
        with pytest.raises(arrowpool.IngestError, match="no object named"):
            cb.ingest(f"flight+tls://{READ_TOKEN}@127.0.0.1:{port}/missing", "x")
        with pytest.raises(arrowpool.IngestError, match="no answer .*flight\\+tls"):
            cb.ingest(f"flight://{READ_TOKEN}@127.0.0.1:{port}/source", "x")  # plain text to TLS
        with pytest.raises(arrowpool.IngestError, match="cannot ingest ftp:// URLs"):
            cb.ingest("ftp://bucket/key.parquet", "x")
        ca.close()
        cb.close()
    finally:
        a.stop()
        b.stop()


def test_a_put_of_compressed_batches_is_stored_uncompressed(served):
    s, client = served
    rng = np.random.default_rng(9)
    t = pa.table({"id": np.arange(200_000, dtype=np.int64), "x": rng.random(200_000), "s": [f"v{i}" for i in range(200_000)]})
    for codec in ("lz4", "zstd"):
        options = fl.FlightCallOptions(write_options=pa.ipc.IpcWriteOptions(compression=codec))
        put_flight(client, fl.FlightDescriptor.for_path(f"z-{codec}"), t, options=options)
        c = s.connect()
        got = c.get(f"z-{codec}")
        assert got.equals(t)
        # Zero-copy from the arena: the buffers are the arena's, not decoded copies.
        assert assert_in_arena(c, got) > 0
        assert client.do_get(fl.Ticket(f"z-{codec}".encode())).read_all().equals(t)
        c.close()
