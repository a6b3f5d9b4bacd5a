"""Request metrics the canary analysis reads: counts by model, revision, version and status, latency by revision.

KServe's own metrics time preprocess/predict/postprocess but count no requests or errors and miss the HTTP and JSON
work around them; these are measured end to end in an ASGI middleware.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

# Sub-millisecond to seconds: a tabular model answers in about a millisecond, a broken one may take seconds.
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

REQUESTS = Counter(
    "mlops_inference_requests_total",
    "Inference requests by endpoint, revision, model version and HTTP status code.",
    ["model", "revision", "version", "code"],
)
LATENCY = Histogram(
    "mlops_inference_request_duration_seconds",
    "End-to-end inference request latency, from the request's arrival to the last byte of the answer.",
    ["model", "revision"],
    buckets=LATENCY_BUCKETS,
)
COMPUTE = Histogram(
    "mlops_inference_compute_seconds",
    "Time the model itself spends on a request (predict_proba), by revision: free of queueing, so revisions sharing a "
    "process locally compare as fairly as revisions in separate pods.",
    ["model", "revision"],
    buckets=(0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)

# Published by the drift report (`PUT /mlops/v1/endpoints/NAME/monitoring`) and scraped with the request metrics.
FEATURE_DRIFT = Gauge("mlops_feature_drift", "Population stability index of a feature's live values against the "
                      "champion's training data, from the latest drift report", ["model", "feature"])
LIVE_QUALITY = Gauge("mlops_live_quality", "A live quality metric on labelled predictions of the champion, from the "
                     "latest drift report", ["model", "metric", "version"])
