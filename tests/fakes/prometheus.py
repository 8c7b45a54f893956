"""A fake Prometheus HTTP API: the two calls prometheus-adapter makes, answered from a scenario.

The scenario is a list of series (their labels, as Prometheus stores them after scraping and
relabelling) with the per-second rate the test says each one has. Routes, like Prometheus's:

  GET|POST /api/v1/series?match[]=SELECTOR        the series the selector matches
  GET|POST /api/v1/query?query=sum(rate(SELECTOR[W])) by (L, ...)   the summed rates, grouped

A selector is `name{label="v", label!="v", label=~"re", label!~"re", ...}`. Any other query shape
is answered 400 with Prometheus's error body, so a rule that asks something else fails loudly
instead of matching by accident. What is answered comes from the scenario only: the selector
picks series, the numbers are the test's.

In-process: `with FakePrometheus(series, host=...) as prom: prom.url; prom.rates[i] = 35.0`.
"""

from __future__ import annotations

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

SELECTOR = re.compile(r"^\s*(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)\s*(\{(?P<matchers>[^}]*)\})?\s*$")
MATCHER = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"\s*(,|$)')
SUM_RATE = re.compile(r"^\s*sum\s*\(\s*rate\s*\((?P<selector>[^\[]+)\[(?P<window>\d+[smh])\]\s*\)\s*\)"
                      r"\s*by\s*\((?P<by>[^)]*)\)\s*$")


class QueryError(ValueError):
    pass


def parse_selector(text: str) -> tuple[str, list[tuple[str, str, str]]]:
    found = SELECTOR.match(text)
    if not found:
        raise QueryError(f"cannot parse selector {text!r}")
    matchers, rest = [], found.group("matchers") or ""
    while rest.strip():
        m = MATCHER.match(rest)
        if not m:
            raise QueryError(f"cannot parse label matchers {rest!r}")
        matchers.append((m.group(1), m.group(2), m.group(3).replace('\\"', '"').replace("\\\\", "\\")))
        rest = rest[m.end():]
    return found.group("name"), matchers


def matches(labels: dict[str, str], name: str, matchers: list[tuple[str, str, str]]) -> bool:
    if labels.get("__name__") != name:
        return False
    for label, op, value in matchers:
        have = labels.get(label, "")
        ok = {"=": have == value, "!=": have != value,
              "=~": re.fullmatch(value, have) is not None, "!~": re.fullmatch(value, have) is None}[op]
        if not ok:
            return False
    return True


class FakePrometheus:
    def __init__(self, series: list[dict[str, str]], rates: list[float] | None = None, host: str = "127.0.0.1",
                 port: int = 0):
        self.series = series
        self.rates = list(rates or [0.0] * len(series))
        self.queries: list[str] = []  # every query and series selector asked, in order
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer((host, port), _handler_for(self))

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> FakePrometheus:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def find_series(self, selector: str) -> list[dict[str, str]]:
        name, matchers = parse_selector(selector)
        return [s for s in self.series if matches(s, name, matchers)]

    def query(self, text: str) -> list[dict]:
        found = SUM_RATE.match(text)
        if not found:
            raise QueryError(f"the fake answers only sum(rate(<selector>[<window>])) by (<labels>), not {text!r}")
        name, matchers = parse_selector(found.group("selector"))
        by = [b.strip() for b in found.group("by").split(",") if b.strip()]
        groups: dict[tuple, float] = {}
        with self.lock:
            for labels, rate in zip(self.series, self.rates):
                if matches(labels, name, matchers):
                    key = tuple(labels.get(b, "") for b in by)
                    groups[key] = groups.get(key, 0.0) + rate
        now = time.time()
        return [{"metric": {b: v for b, v in zip(by, key) if v}, "value": [now, repr(total)]}
                for key, total in groups.items()]


def _handler_for(prom: FakePrometheus):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            self._serve(parse_qs(urlparse(self.path).query))

        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
            params = parse_qs(urlparse(self.path).query)
            for key, values in parse_qs(body).items():
                params.setdefault(key, []).extend(values)
            self._serve(params)

        def _serve(self, params: dict[str, list[str]]):
            path = urlparse(self.path).path
            try:
                if path == "/api/v1/series":
                    asked = params.get("match[]", [])
                    prom.queries.extend(asked)
                    data = [s for selector in asked for s in prom.find_series(selector)]
                elif path == "/api/v1/query":
                    (text,) = params.get("query", [""])
                    prom.queries.append(text)
                    data = {"resultType": "vector", "result": prom.query(text)}
                else:
                    self._send(404, {"status": "error", "errorType": "not_found", "error": path})
                    return
            except QueryError as e:
                self._send(400, {"status": "error", "errorType": "bad_data", "error": str(e)})
                return
            self._send(200, {"status": "success", "data": data})

        def _send(self, status: int, doc: dict):
            body = json.dumps(doc).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler
