"""The Dash example against a real server: its callback bodies, then its callbacks
through Dash's HTTP endpoint (no browser)."""

import importlib.util
import json

import dash  # noqa: F401 - installed by scripts/python-tests.sh; missing dash is a failure
import pytest

from conftest import REPO


def load_example():
    spec = importlib.util.spec_from_file_location("dash_app", REPO / "examples" / "dash_app.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def app_module():
    return load_example()


@pytest.fixture
def loaded(app_module, client, name):
    prefix = name + "-"
    versions = app_module.load_sources(client, rows=20_000, prefix=prefix)
    return prefix, versions


def test_sources_are_put(app_module, client, loaded):
    prefix, versions = loaded
    assert set(versions) == {"company_a", "company_b"}
    for source in versions:
        table = client.get(prefix + source)
        assert table.num_rows == 20_000
        assert table.column_names == ["order_id", "region", "product", "price", "quantity"]


def test_summary_groups_by_region(app_module, client, loaded):
    prefix, _ = loaded
    rows = app_module.summary(client, prefix + "company_a")
    assert [r["region"] for r in rows] == sorted(app_module.REGIONS)
    assert sum(r["orders"] for r in rows) == 20_000
    table = client.get(prefix + "company_a")
    assert sum(r["units"] for r in rows) == sum(table.column("quantity").to_pylist())
    # The two companies are different data.
    assert rows != app_module.summary(client, prefix + "company_b")


def test_price_multiplier_publishes_a_new_version(app_module, client, loaded):
    prefix, versions = loaded
    name = prefix + "company_b"
    before = app_module.summary(client, name)
    old_table = client.get(name)
    version = app_module.apply_price_multiplier(client, name, 2.0)
    assert version == versions["company_b"] + 1
    assert app_module.current_version(client, name) == version
    after = app_module.summary(client, name)
    for b, a in zip(before, after, strict=True):
        assert a["orders"] == b["orders"]
        assert a["revenue"] == pytest.approx(2 * b["revenue"], rel=1e-3)
    # A reader of the old version still sees the old prices.
    assert old_table.column("price").to_pylist()[:5] == [
        round(p / 2, 2) for p in client.get(name).column("price").to_pylist()[:5]
    ]
    # Company A is untouched.
    assert app_module.current_version(client, prefix + "company_a") == versions["company_a"]


def dash_call(flask_client, output, outputs, inputs, state=()):
    payload = {
        "output": output,
        "outputs": outputs,
        "inputs": inputs,
        "state": list(state),
        "changedPropIds": [f"{i['id']}.{i['property']}" for i in inputs],
    }
    response = flask_client.post("/_dash-update-component", json=payload)
    assert response.status_code == 200, response.get_data(as_text=True)
    return json.loads(response.get_data(as_text=True))["response"]


def test_callbacks_through_dash(app_module, client, loaded):
    prefix, versions = loaded
    app = app_module.build_app(client, prefix=prefix)
    http = app.server.test_client()
    assert http.get("/").status_code == 200

    version = dash_call(
        http,
        "version.children",
        {"id": "version", "property": "children"},
        [
            {"id": "source", "property": "value", "value": "company_a"},
            {"id": "published", "property": "data", "value": None},
            {"id": "tick", "property": "n_intervals", "value": None},
        ],
    )
    assert version["version"]["children"] == f"Company A: version {versions['company_a']}"

    summary = dash_call(
        http,
        "summary.children",
        {"id": "summary", "property": "children"},
        [
            {"id": "source", "property": "value", "value": "company_a"},
            {"id": "published", "property": "data", "value": None},
        ],
    )
    rows = summary["summary"]["children"]
    assert len(rows) == 1 + len(app_module.REGIONS)  # header + one row per region

    published = dash_call(
        http,
        "..published.data...apply-status.children..",
        [{"id": "published", "property": "data"}, {"id": "apply-status", "property": "children"}],
        [{"id": "apply", "property": "n_clicks", "value": 1}],
        state=[
            {"id": "source", "property": "value", "value": "company_a"},
            {"id": "multiplier", "property": "value", "value": 1.5},
        ],
    )
    new_version = versions["company_a"] + 1
    assert published["published"]["data"] == {"source": "company_a", "version": new_version}
    assert published["apply-status"]["children"] == f"published version {new_version}"
    assert client.version(prefix + "company_a") == new_version
