"""Metrics sources: the server's Prometheus exposition and Prometheus's query API read into the same snapshot."""

from __future__ import annotations

import math

from mlops_platform.core import canary
from mlops_platform.integrations.metrics import PrometheusMetrics, ServerMetrics, parse_prometheus
from tests.integrations.fake_servers import FakePrometheus

EXPOSITION = """
# TYPE mlops_inference_requests_total counter
mlops_inference_requests_total{code="200",model="m",revision="stable",version="3"} 90.0
mlops_inference_requests_total{code="500",model="m",revision="canary",version="4"} 4.0
mlops_inference_requests_total{code="200",model="m",revision="canary",version="4"} 6.0
mlops_inference_requests_total{code="200",model="other",revision="stable",version="1"} 7.0
# TYPE mlops_inference_request_duration_seconds histogram
mlops_inference_request_duration_seconds_bucket{le="0.001",model="m",revision="stable"} 50.0
mlops_inference_request_duration_seconds_bucket{le="0.01",model="m",revision="stable"} 90.0
mlops_inference_request_duration_seconds_bucket{le="+Inf",model="m",revision="stable"} 90.0
mlops_inference_request_duration_seconds_count{model="m",revision="stable"} 90.0
"""


def test_parse_prometheus_keeps_one_model():
    snap = parse_prometheus(EXPOSITION, "m")
    assert snap.requests == {("stable", "200", "3"): 90.0, ("canary", "500", "4"): 4.0, ("canary", "200", "4"): 6.0}
    assert snap.versions == {"stable": "3", "canary": "4"}
    assert snap.buckets["stable"] == {0.001: 50.0, 0.01: 90.0, math.inf: 90.0}


def test_compute_histograms_are_parsed_apart_from_end_to_end():
    text = EXPOSITION + 'mlops_inference_compute_seconds_bucket{le="0.001",model="m",revision="stable"} 90.0\n'
    snap = parse_prometheus(text, "m")
    assert snap.compute == {"stable": {0.001: 90.0}} and math.inf in snap.buckets["stable"]


def test_parsed_snapshots_feed_the_canary_window():
    before = parse_prometheus(EXPOSITION, "m")
    after = parse_prometheus(EXPOSITION.replace("} 4.0", "} 9.0").replace("} 6.0", "} 16.0"), "m")
    w = canary.window(before, after, "canary")
    assert (w.requests, w.errors) == (15, 5)


def test_server_metrics_reads_the_exposition_over_http():
    import http.server
    import threading

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            body = EXPOSITION.encode() if self.path == "/metrics" else b""
            self.send_response(200 if body else 404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        snap = ServerMetrics(f"http://127.0.0.1:{server.server_address[1]}").snapshot("m")
    finally:
        server.shutdown()
        server.server_close()
    assert snap == parse_prometheus(EXPOSITION, "m")


def test_prometheus_metrics_scopes_every_query_to_the_endpoint_and_namespace():
    def respond(query: str):
        if "requests_total" in query:
            return [{"metric": {"revision": "canary", "version": "4", "code": "200"}, "value": [0, "7"]}]
        return [{"metric": {"revision": "canary", "le": "+Inf"}, "value": [0, "7"]}]

    with FakePrometheus(respond) as prom:
        snap = PrometheusMetrics(prom.url, "models").snapshot("m")
    assert len(prom.queries) == 3 and all('model="m",namespace="models"' in q for q in prom.queries)
    assert snap.requests == {("canary", "200", "4"): 7.0} and snap.versions == {"canary": "4"}
    assert snap.buckets == snap.compute == {"canary": {math.inf: 7.0}}
