"""Ingest from object storage: a real arrowpoold reads Parquet objects from a
local S3 emulator (moto's server, started here on loopback) with ranged GETs,
decodes them as it decodes local files, and publishes the same table a local
ingest of the same bytes publishes.

Credentials and the endpoint reach the server through its environment, the
usual AWS variables, as they would in production.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
from pathlib import Path
from unittest import mock

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import arrowpool
from conftest import Server, free_port, wait_for_port

boto3 = pytest.importorskip("boto3")

BUCKET = "data"
START_TIMEOUT_S = 30.0


def aws_env(endpoint: str) -> dict[str, str]:
    return {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ALLOW_HTTP": "true",
        # Never ask a cloud's instance metadata service (an address off this machine).
        "AWS_METADATA_ENDPOINT": "http://127.0.0.1:9",
        "AWS_EC2_METADATA_DISABLED": "true",
    }


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """moto's S3 server on a loopback port, with an empty bucket."""
    d = tmp_path_factory.mktemp("moto")
    log = d / "moto.log"
    port = free_port()
    moto = Path(sys.executable).parent / "moto_server"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(moto), "-H", "127.0.0.1", "-p", str(port)],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        wait_for_port(port, proc, log, "moto_server", START_TIMEOUT_S)
        env = aws_env(endpoint)
        client = boto3.client(
            "s3", endpoint_url=endpoint, region_name=env["AWS_REGION"],
            aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        )
        client.create_bucket(Bucket=BUCKET)
        yield client, endpoint
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture(scope="module")
def s3_server(s3, tmp_path_factory):
    """An arrowpoold whose environment points at the emulator."""
    _, endpoint = s3
    with mock.patch.dict(os.environ, aws_env(endpoint)):
        srv = Server(tmp_path_factory.mktemp("srv"), memory="1G")
    yield srv
    srv.stop()


def sample(rows: int, seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    floats = rng.random(rows)
    return pa.table({
        "id": pa.array(np.arange(rows, dtype=np.int64) + seed * 1_000_000),
        "x": pa.array(floats, mask=floats < 0.1),
        "name": pa.array([f"n{seed}-{i}" for i in range(rows)]),
        "region": pa.array(["north", "south", "east", "west"] * (rows // 4) + ["north"] * (rows % 4)),
    })


def upload(s3, key: str, table: pa.Table | None = None, raw: bytes | None = None,
           public: bool = False, **kw) -> bytes:
    client, _ = s3
    if raw is None:
        buf = io.BytesIO()
        pq.write_table(table, buf, **kw)
        raw = buf.getvalue()
    extra = {"ACL": "public-read"} if public else {}
    client.put_object(Bucket=BUCKET, Key=key, Body=raw, **extra)
    return raw


def got(c: arrowpool.Client, name: str) -> pa.Table:
    t = c.get(name)
    # Dictionary columns (low-cardinality strings) compare as their values.
    return pa.table({
        f.name: (col.cast(f.type.value_type) if pa.types.is_dictionary(f.type) else col)
        for f, col in zip(t.schema, t.columns)
    }).combine_chunks()


def test_an_object_ingests_like_the_same_local_file(s3, s3_server, tmp_path):
    table = sample(50_000, 1)
    raw = upload(s3, "one.parquet", table, row_group_size=10_000)
    local = tmp_path / "one.parquet"
    local.write_bytes(raw)
    with s3_server.connect() as c:
        remote = c.ingest(f"s3://{BUCKET}/one.parquet", "remote_one", timeout=120)
        here = c.ingest(local, "local_one", timeout=120)
        assert remote["rows"] == here["rows"] == 50_000
        assert remote["files"] == 1
        assert remote["parquet_bytes"] == here["parquet_bytes"]
        assert remote["reader"].startswith("object_store"), remote
        a, b = c.get("remote_one"), c.get("local_one")
        assert a.schema == b.schema  # the same dictionary decisions
        assert a.equals(b)
        assert got(c, "remote_one").equals(table)


def test_a_projection_reads_only_its_column_chunks(s3, s3_server, tmp_path):
    table = sample(40_000, 2)
    raw = upload(s3, "proj.parquet", table, row_group_size=8_000)
    meta = pq.ParquetFile(io.BytesIO(raw)).metadata
    wanted = ["id", "region"]
    chunk_bytes = sum(
        meta.row_group(g).column(i).total_compressed_size
        for g in range(meta.num_row_groups)
        for i in range(meta.num_columns)
        if meta.row_group(g).column(i).path_in_schema in wanted
    )
    with s3_server.connect() as c:
        r = c.ingest(f"s3://{BUCKET}/proj.parquet", "proj", columns=wanted, timeout=120)
        assert r["parquet_bytes"] == chunk_bytes < len(raw) / 2
        assert got(c, "proj").equals(table.select(wanted))


def test_a_prefix_reads_its_parquet_objects_in_name_order(s3, s3_server):
    parts = [sample(3_000 + 100 * i, 10 + i) for i in range(3)]
    for i, p in reversed(list(enumerate(parts))):
        upload(s3, f"many/part-{i}.parquet", p)
    upload(s3, "many/_SUCCESS", raw=b"")
    upload(s3, "many/.hidden.parquet", raw=b"not parquet")
    upload(s3, "many/notes.txt", raw=b"not parquet")
    upload(s3, "many/deeper/part-9.parquet", sample(10, 99))
    whole = pa.concat_tables(parts)
    with s3_server.connect() as c:
        for url in (f"s3://{BUCKET}/many/", f"s3://{BUCKET}/many"):
            r = c.ingest(url, "many", timeout=120)
            assert (r["files"], r["rows"]) == (3, whole.num_rows), url
            assert got(c, "many").equals(whole.combine_chunks()), url


def test_large_column_chunks_arrive_in_many_ranged_gets(s3, s3_server):
    # One row group of incompressible 8-byte values: column chunks of 24 MB,
    # each fetched as several pieces and joined.
    rng = np.random.default_rng(5)
    rows = 3_000_000
    table = pa.table({"a": rng.integers(0, 2**62, rows), "b": rng.random(rows)})
    upload(s3, "big.parquet", table, row_group_size=rows, compression="none")
    with s3_server.connect() as c:
        r = c.ingest(f"s3://{BUCKET}/big.parquet", "big", timeout=300)
        assert r["parquet_bytes"] > 40_000_000
        assert c.get("big").equals(table)


def test_plain_https_and_http_urls_read_one_object(s3, s3_server):
    # moto serves public-read objects path-style to anonymous GETs: an
    # http:// URL to a host that is no known cloud goes through the plain
    # HTTP store (HEAD for the length, ranged GETs).
    _, endpoint = s3
    table = sample(5_000, 3)
    upload(s3, "web.parquet", table, public=True)
    with s3_server.connect() as c:
        r = c.ingest(f"{endpoint}/{BUCKET}/web.parquet", "web", timeout=120)
        assert r["rows"] == 5_000
        assert got(c, "web").equals(table)


@pytest.mark.parametrize(
    "key, raw, message",
    [
        ("nothing/here.parquet", None, "no object there"),
        ("garbage.parquet", b"this is not parquet at all", "not a readable Parquet file"),
        ("cut.parquet", "truncate", "truncated"),
    ],
)
def test_bad_objects_are_clear_errors_and_publish_nothing(s3, s3_server, key, raw, message):
    if raw == "truncate":
        whole = upload(s3, "whole.parquet", sample(20_000, 4))
        raw = whole[: len(whole) // 2]
    if raw is not None:
        upload(s3, key, raw=raw)
    name = "bad_" + key.replace("/", "_").replace(".", "_")
    with s3_server.connect() as c:
        with pytest.raises(arrowpool.IngestError) as e:
            c.ingest(f"s3://{BUCKET}/{key}", name, timeout=120)
        assert message in str(e.value)
        assert f"s3://{BUCKET}/{key}" in str(e.value)
        assert name not in [o["name"] for o in c.list()]
        c.put("after_" + name, pa.table({"x": [1]}))  # the server still serves


def test_a_missing_bucket_is_a_clear_error(s3_server):
    with s3_server.connect() as c:
        with pytest.raises(arrowpool.IngestError) as e:
            c.ingest("s3://no-such-bucket/x.parquet", "nobucket", timeout=120)
        assert "s3://no-such-bucket/x.parquet" in str(e.value)


def test_an_unreachable_store_fails_instead_of_hanging(s3, tmp_path):
    table = sample(100, 6)
    upload(s3, "far.parquet", table)
    closed = f"http://127.0.0.1:{free_port()}"
    with mock.patch.dict(os.environ, aws_env(closed)):
        srv = Server(tmp_path)
    try:
        with srv.connect() as c:
            began = time.monotonic()
            with pytest.raises(arrowpool.IngestError) as e:
                c.ingest(f"s3://{BUCKET}/far.parquet", "far", timeout=120)
            assert time.monotonic() - began < 90  # retries are bounded, not endless
            assert "s3://data/far.parquet" in str(e.value)
            assert "far" not in [o["name"] for o in c.list()]
    finally:
        srv.stop()


def test_unknown_schemes_are_refused_with_the_ones_that_work(s3_server):
    with s3_server.connect() as c:
        with pytest.raises(arrowpool.IngestError) as e:
            c.ingest("ftp://host/x.parquet", "ftp", timeout=30)
        assert "s3://" in str(e.value) and "flight://" in str(e.value)


def test_the_flight_ingest_action_reads_object_storage(s3, tmp_path):
    # The Flight service runs ingests on tokio's blocking pool: the object
    # store's own runtime must start and stop there too.
    import json

    import pyarrow.flight as fl

    _, endpoint = s3
    table = sample(8_000, 7)
    upload(s3, "flight.parquet", table)
    with mock.patch.dict(os.environ, aws_env(endpoint)):
        srv = Server(tmp_path, extra=("--flight", "127.0.0.1:0"))
    try:
        with srv.connect() as c:
            addr = c.stats()["flight"]
        client = fl.connect(f"grpc://{addr}")
        body = json.dumps({
            "name": "viaflight", "path": f"s3://{BUCKET}/flight.parquet",
            "storage_options": {"aws_region": "us-east-1"},
        }).encode()
        [r] = list(client.do_action(fl.Action("ingest", body)))
        assert json.loads(r.body.to_pybytes())["rows"] == 8_000
        with srv.connect() as c:
            assert got(c, "viaflight").equals(table)
        client.close()
    finally:
        srv.stop()


def test_missing_credentials_are_a_clear_error(s3, tmp_path):
    # No keys: the store asks the instance metadata service, here a closed
    # loopback port (never the real one, off this machine).
    _, endpoint = s3
    env = {k: v for k, v in aws_env(endpoint).items() if not k.startswith("AWS_SECRET")}
    env.pop("AWS_ACCESS_KEY_ID")
    with mock.patch.dict(os.environ, env):
        saved = {k: os.environ.pop(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY") if k in os.environ}
        try:
            srv = Server(tmp_path)
        finally:
            os.environ.update(saved)
    try:
        with srv.connect() as c:
            with pytest.raises(arrowpool.IngestError) as e:
                c.ingest(f"s3://{BUCKET}/one.parquet", "nocreds", timeout=120)
            assert f"s3://{BUCKET}/one.parquet" in str(e.value)
    finally:
        srv.stop()


def test_storage_options_of_one_ingest_take_the_place_of_the_environment(s3, tmp_path):
    _, endpoint = s3
    table = sample(5_000, 11)
    upload(s3, "opts.parquet", table)
    # A server with no AWS settings but the one keeping it off the network.
    keep_off = {"AWS_METADATA_ENDPOINT": "http://127.0.0.1:9", "AWS_EC2_METADATA_DISABLED": "true"}
    saved = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith("AWS_")}
    try:
        with mock.patch.dict(os.environ, keep_off):
            (tmp_path / "srv").mkdir()
            srv = Server(tmp_path / "srv")
    finally:
        os.environ.update(saved)
    secret = "s3cr3t-only-in-this-request"
    options = {
        "aws_access_key_id": "testing",
        "aws_secret_access_key": secret,
        "aws_region": "us-east-1",
        "aws_endpoint": endpoint,
        "aws_allow_http": "true",
    }
    url = f"s3://{BUCKET}/opts.parquet"
    try:
        with srv.connect() as c:
            reply = c.ingest(url, "opts", storage_options=options)
            assert reply["rows"] == 5_000
            assert got(c, "opts").equals(table)
            # An unknown key is named; no value is ever quoted back.
            typo = dict(options, aws_secret_acess_key="typo-" + secret)
            with pytest.raises(arrowpool.IngestError) as e:
                c.ingest(url, "typo", storage_options=typo)
            assert "aws_secret_acess_key" in str(e.value) and secret not in str(e.value)
            # A local path takes none.
            local = tmp_path / "local.parquet"
            pq.write_table(table, local)
            with pytest.raises(arrowpool.IngestError, match="local path takes none"):
                c.ingest(local, "local", storage_options={"aws_region": "us-east-1"})
        assert secret not in srv.log()
    finally:
        srv.stop()
