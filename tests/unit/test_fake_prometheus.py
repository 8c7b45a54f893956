"""The fake Prometheus the custom-metrics loop runs against (tests/fakes/prometheus.py): it must
pick series by the selector it is given and refuse what it cannot evaluate, never guess."""

from __future__ import annotations

import pytest
import requests

from tests.fakes.prometheus import FakePrometheus

SERIES = [{"__name__": "reqs_total", "svc": "a", "ns": "x", "code": "200"},
          {"__name__": "reqs_total", "svc": "a", "ns": "x", "code": "500"},
          {"__name__": "reqs_total", "svc": "b", "ns": "x", "code": "200"},
          {"__name__": "reqs_total", "code": "200"},
          {"__name__": "other_total", "svc": "a", "ns": "x"}]


@pytest.fixture
def prom():
    with FakePrometheus(SERIES, rates=[1.0, 2.0, 4.0, 8.0, 16.0]) as p:
        yield p


def test_series_are_picked_by_the_selector(prom):
    got = requests.get(f"{prom.url}/api/v1/series", params={"match[]": 'reqs_total{svc!="",ns=~"x|y"}'}, timeout=5)
    assert got.json() == {"status": "success", "data": SERIES[:3]}


def test_rates_are_summed_by_the_grouping_labels(prom):
    query = 'sum(rate(reqs_total{ns="x",svc=~"a|b"}[2m])) by (svc)'
    got = requests.post(f"{prom.url}/api/v1/query", data={"query": query}, timeout=5).json()
    assert {r["metric"]["svc"]: float(r["value"][1]) for r in got["data"]["result"]} == {"a": 3.0, "b": 4.0}
    assert prom.queries == [query]


@pytest.mark.parametrize("query", ["reqs_total", 'sum(reqs_total) by (svc)', 'avg(rate(reqs_total[2m])) by (svc)',
                                   'sum(rate(reqs_total{svc~"a"}[2m])) by (svc)'])
def test_a_query_it_cannot_evaluate_is_refused(prom, query):
    got = requests.get(f"{prom.url}/api/v1/query", params={"query": query}, timeout=5)
    assert got.status_code == 400 and got.json()["status"] == "error"
