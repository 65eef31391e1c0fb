"""A Dash app whose callbacks share tables through arrowpool.

Two data sources (company A and company B, 200k order rows each) live in this
user's ``arrowpoold`` (``arrowpool.connect()`` starts it if none runs). Each worker
process asks for them with ``client.get_or_load(name, loader)``: the first one loads,
the others wait and share it. Every callback gets the table it needs from the store
(zero-copy, microseconds) instead of re-reading Parquet; the per-region summary is
memoized with Flask-Caching over arrowpool (``arrowpool.flask_caching``), keyed by
the table's version; and a callback that changes a column publishes a new version
that every other callback and worker process sees.

Run (``pip install ./python[dash]``)::

    python examples/dash_app.py                                    # http://127.0.0.1:8050
    gunicorn -w 2 -b 127.0.0.1:8050 --chdir examples 'dash_app:create_server()'

The callback bodies are plain functions of a client (``summary``,
``apply_price_multiplier``, ``current_version``) so they can be tested without a
browser (``python/tests/test_dash_app.py``); ``python/tests/test_dash_browser.py``
drives the gunicorn form in headless Chromium.
"""

from __future__ import annotations

import argparse
import os

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

import arrowpool

SOURCES = {"company_a": "Company A", "company_b": "Company B"}
REGIONS = ["north", "south", "east", "west", "central"]
PRODUCTS = [f"product-{i:02d}" for i in range(20)]


def make_source(rows: int, seed: int) -> pa.Table:
    """Orders of one company: ids, low-cardinality region/product, price, quantity."""
    rng = np.random.default_rng(seed)
    return pa.table(
        {
            "order_id": np.arange(rows, dtype=np.int64),
            "region": pa.array(np.asarray(REGIONS)[rng.integers(0, len(REGIONS), rows)]),
            "product": pa.array(np.asarray(PRODUCTS)[rng.integers(0, len(PRODUCTS), rows)]),
            "price": np.round(rng.gamma(2.0, 20.0 + 10.0 * seed, rows), 2),
            "quantity": rng.integers(1, 20, rows, dtype=np.int32),
        }
    )


def source_name(source: str, prefix: str = "") -> str:
    return f"{prefix}{source}"


def load_sources(client: arrowpool.Client, rows: int = 200_000, prefix: str = "") -> dict[str, int]:
    """Puts both companies' tables; returns the version of each."""
    return {
        source: client.put(source_name(source, prefix), make_source(rows, seed))
        for seed, source in enumerate(SOURCES, start=1)
    }


def share_sources(client: arrowpool.Client, rows: int = 200_000, prefix: str = "") -> dict[str, int]:
    """Both companies' tables, loaded by whichever worker asks first (the others
    wait for it and share the same copy); returns the version of each."""
    for seed, source in enumerate(SOURCES, start=1):
        client.get_or_load(source_name(source, prefix), lambda seed=seed: make_source(rows, seed))
    return {source: client.version(source_name(source, prefix)) for source in SOURCES}


def summary(client: arrowpool.Client, name: str) -> list[dict]:
    """Orders, units, revenue and mean price per region of the current version."""
    table = client.get(name, columns=["region", "price", "quantity"])
    revenue = pc.multiply(table.column("price"), pc.cast(table.column("quantity"), pa.float64()))
    table = table.append_column("revenue", revenue)
    grouped = table.group_by("region").aggregate(
        [("price", "count"), ("quantity", "sum"), ("revenue", "sum"), ("price", "mean")]
    )
    rows = [
        {
            "region": r["region"],
            "orders": r["price_count"],
            "units": r["quantity_sum"],
            "revenue": round(r["revenue_sum"], 2),
            "mean_price": round(r["price_mean"], 2),
        }
        for r in grouped.to_pylist()
    ]
    return sorted(rows, key=lambda r: r["region"])


def apply_price_multiplier(client: arrowpool.Client, name: str, multiplier: float) -> int:
    """Multiplies every price by ``multiplier`` and publishes the result as a new
    version; readers of the previous version keep it until they let go."""
    table = client.get(name)
    index = table.schema.get_field_index("price")
    prices = pc.round(pc.multiply(table.column("price"), float(multiplier)), 2)
    return client.put(name, table.set_column(index, "price", prices))


def current_version(client: arrowpool.Client, name: str) -> int:
    return client.version(name)


def build_app(client: arrowpool.Client, prefix: str = ""):
    """The Dash app: a source dropdown, a per-region summary, a price update, the
    current version."""
    import pandas as pd
    from dash import Dash, Input, Output, State, dcc, html
    from flask_caching import Cache

    app = Dash(__name__, title="arrowpool + Dash")
    # Dash's recommended pattern for sharing computed data between callbacks and
    # workers, with arrowpool as the cache: the summary frame is stored once, as a
    # table, for every worker. Keyed by version, so a new version is a new entry.
    cache = Cache(
        app.server,
        config={
            "CACHE_TYPE": "arrowpool.flask_caching.ArrowpoolCache",
            "CACHE_ARROWPOOL_SOCKET": client.path,
            "CACHE_KEY_PREFIX": f"{prefix}dash_cache_",
            "CACHE_DEFAULT_TIMEOUT": 600,
        },
    )

    @cache.memoize()
    def summary_frame(name: str, version: int) -> pd.DataFrame:
        return pd.DataFrame(summary(client, name))
    app.layout = html.Div(
        [
            html.H2("Orders by region"),
            dcc.Dropdown(
                id="source",
                options=[{"label": label, "value": key} for key, label in SOURCES.items()],
                value="company_a",
                clearable=False,
            ),
            html.Div(id="worker", style={"color": "#666", "fontSize": "small"}),
            html.Div(
                [
                    html.Label("Price multiplier "),
                    dcc.Input(
                        id="multiplier", type="number", value=1.1, step=0.05, style={"width": "6em"}
                    ),
                    html.Button(
                        "Apply and publish", id="apply", n_clicks=0, style={"marginLeft": "1em"}
                    ),
                    html.Span(id="apply-status", style={"marginLeft": "1em"}),
                ],
                style={"margin": "1em 0"},
            ),
            html.Div(id="version"),
            html.Table(id="summary"),
            # Versions published by other workers show up within a second.
            dcc.Interval(id="tick", interval=1000),
            dcc.Store(id="published"),
        ],
        style={"fontFamily": "sans-serif", "maxWidth": "50em", "margin": "2em auto"},
    )

    @app.callback(
        Output("summary", "children"),
        Input("source", "value"),
        Input("published", "data"),
    )
    def show_summary(source, _published):
        name = source_name(source, prefix)
        rows = summary_frame(name, current_version(client, name)).to_dict("records")
        cell = {"padding": "0.2em 0.8em", "textAlign": "right"}
        header = html.Tr(
            [html.Th(k, style=cell) for k in ("region", "orders", "units", "revenue", "mean price")]
        )
        body = [
            html.Tr(
                [
                    html.Td(r["region"], style={**cell, "textAlign": "left"}),
                    html.Td(f"{r['orders']:,}", style=cell),
                    html.Td(f"{r['units']:,}", style=cell),
                    html.Td(f"{r['revenue']:,.2f}", style=cell),
                    html.Td(f"{r['mean_price']:.2f}", style=cell),
                ]
            )
            for r in rows
        ]
        return [header, *body]

    @app.callback(
        Output("published", "data"),
        Output("apply-status", "children"),
        Input("apply", "n_clicks"),
        State("source", "value"),
        State("multiplier", "value"),
        prevent_initial_call=True,
    )
    def publish(_clicks, source, multiplier):
        if multiplier is None or multiplier <= 0:
            return None, "multiplier must be a positive number"
        version = apply_price_multiplier(client, source_name(source, prefix), multiplier)
        return {"source": source, "version": version}, f"published version {version}"

    @app.callback(
        Output("version", "children"),
        Input("source", "value"),
        Input("published", "data"),
        Input("tick", "n_intervals"),
    )
    def show_version(source, _published, _tick):
        return f"{SOURCES[source]}: version {current_version(client, source_name(source, prefix))}"

    @app.callback(
        Output("worker", "children"),
        Input("source", "value"),
        Input("published", "data"),
        Input("tick", "n_intervals"),
    )
    def show_worker(source, _published, _tick):
        version = current_version(client, source_name(source, prefix))
        return f"worker {os.getpid()} sees {SOURCES[source]} version {version}"

    return app


def create_server():
    """The WSGI app for gunicorn (``'dash_app:create_server()'``): each worker
    connects to this user's server (started by the first if none runs) and shares
    the sources. ``ARROWPOOL_DEMO_ROWS`` sets their size (default 200k)."""
    client = arrowpool.connect()
    share_sources(client, int(os.environ.get("ARROWPOOL_DEMO_ROWS", "200000")))
    return build_app(client).server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--socket", default=None, help="a server you run yourself (default: this user's, started if none runs)")
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8050)
    args = parser.parse_args()

    client = arrowpool.connect(args.socket)
    versions = share_sources(client, args.rows)
    print("loaded", ", ".join(f"{k} v{v}" for k, v in versions.items()))
    build_app(client).run(host=args.host, port=args.port, debug=False)


if __name__ == "__main__":
    main()
