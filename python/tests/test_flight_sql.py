"""Flight SQL (``--flight``): ADBC's Flight SQL driver, with no code of ours, reads
tables with ``SELECT * FROM name`` and ``SELECT column, ... FROM name``; anything else
is refused with a message saying what is answered. Bearer tokens apply as to any
Flight call."""

from __future__ import annotations

import warnings

import pyarrow as pa
import pytest

from test_flight import READ_TOKEN, flight_server, table, write_tokens

dbapi = pytest.importorskip("adbc_driver_flightsql.dbapi")
adbc_flightsql = pytest.importorskip("adbc_driver_flightsql")


def connect(addr: str, token: str | None = None):
    kwargs = {}
    if token is not None:
        kwargs["db_kwargs"] = {adbc_flightsql.DatabaseOptions.AUTHORIZATION_HEADER.value: f"Bearer {token}"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Cannot disable autocommit": there are no transactions
        return dbapi.connect(f"grpc://{addr}", **kwargs)


def query(conn, sql: str) -> pa.Table:
    with conn.cursor() as cur:
        cur.execute(sql)
        return cur.fetch_arrow_table()


def test_select_star_and_projections(tmp_path):
    s, addr = flight_server(tmp_path)
    try:
        t = table(1, rows=50_000).drop_columns(["cat"])
        with s.connect() as c:
            c.put("sales", t)
            c.put("my table", t.slice(0, 10))
        with connect(addr) as conn:
            assert query(conn, "SELECT * FROM sales").equals(t)
            cols = t.column_names[:2]
            assert query(conn, f"select {cols[1]}, {cols[0]} from sales;").equals(t.select([cols[1], cols[0]]))
            assert query(conn, 'SELECT * FROM "my table"').num_rows == 10
    finally:
        s.stop()


@pytest.mark.parametrize(
    "sql, message",
    [
        ("SELECT * FROM sales WHERE id > 3", "unsupported SQL"),
        ("SELECT count(*) FROM sales", "unsupported SQL"),
        ("DELETE FROM sales", "unsupported SQL"),
        ("SELECT * FROM missing", "no object named"),
        ("SELECT nope FROM sales", "no column"),
    ],
)
def test_other_statements_are_refused_clearly(tmp_path, sql, message):
    s, addr = flight_server(tmp_path)
    try:
        with s.connect() as c:
            c.put("sales", table(2, rows=100).drop_columns(["cat"]))
        with connect(addr) as conn:
            with pytest.raises(Exception, match=message):
                query(conn, sql)
            # The connection still serves.
            assert query(conn, "SELECT * FROM sales").num_rows == 100
    finally:
        s.stop()


def test_tokens_apply_to_sql(tmp_path):
    tokens = write_tokens(tmp_path / "tokens")
    s, addr = flight_server(tmp_path, "--flight-tokens", str(tokens))
    try:
        with s.connect() as c:
            c.put("sales", table(3, rows=100).drop_columns(["cat"]))
        with connect(addr, READ_TOKEN) as conn:
            assert query(conn, "SELECT * FROM sales").num_rows == 100
        with connect(addr) as conn:
            with pytest.raises(Exception, match="(?i)unauthenticated|token"):
                query(conn, "SELECT * FROM sales")
    finally:
        s.stop()
