"""A Dash app whose callbacks share tables through arrowpool.

Two data sources (company A and company B, 200k order rows each) are put into a
running ``arrowpoold`` at start. Every callback gets the table it needs from the store
(zero-copy, microseconds) instead of re-reading Parquet, and a callback that changes a
column publishes a new version that every other callback and worker process sees.

Run::

    arrowpoold --socket /tmp/arrowpool.sock --memory 2G &
    python examples/dash_app.py            # http://127.0.0.1:8050

The callback bodies are plain functions of a client (``summary``,
``apply_price_multiplier``, ``current_version``) so they can be tested without a
browser (``python/tests/test_dash_app.py``).
"""

from __future__ import annotations

import argparse

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
    from dash import Dash, Input, Output, State, dcc, html

    app = Dash(__name__, title="arrowpool + Dash")
    app.layout = html.Div(
        [
            html.H2("Orders by region"),
            dcc.Dropdown(
                id="source",
                options=[{"label": label, "value": key} for key, label in SOURCES.items()],
                value="company_a",
                clearable=False,
            ),
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
            # Versions published by other workers show up within a few seconds.
            dcc.Interval(id="tick", interval=3000),
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
        rows = summary(client, source_name(source, prefix))
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

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--socket", default=None, help="a server you run yourself (default: this user's, started if none runs)")
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8050)
    args = parser.parse_args()

    client = arrowpool.connect(args.socket)
    versions = load_sources(client, args.rows)
    print("loaded", ", ".join(f"{k} v{v}" for k, v in versions.items()))
    build_app(client).run(host=args.host, port=args.port, debug=False)


if __name__ == "__main__":
    main()
