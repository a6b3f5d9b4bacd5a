"""The spine end to end, in process: real Dagster runs, MLflow on SQLite, a real KServe server on loopback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import requests

from mlops_platform.core.spec import EstimatorSpec, GateSpec, StepSpec
from tests.support import breast_cancer, check_results, fast, landing, materialized, registry, run_job, seed, serving

SPEC = fast(breast_cancer())
NAME = SPEC.registered_name


@pytest.fixture(scope="module")
def first_run_and_after(platform_home) -> tuple:
    """The first run, and what it left behind read at once: later tests, in any order, move the champion on."""
    seed(SPEC)
    result = run_job(SPEC)
    assert result.success, [e.message for e in result.all_events if e.is_failure]
    rows, _ = holdout_rows()
    return result, {"champion": champion_version(), "served": served_version(), "predict": predict_v1(rows)}


@pytest.fixture(scope="module")
def first_run(first_run_and_after):
    return first_run_and_after[0]


@pytest.fixture(scope="module")
def right_after_first_run(first_run_and_after) -> dict:
    return first_run_and_after[1]


def champion_version() -> str | None:
    return registry().version_for(NAME, "champion")


def served_version() -> list[str]:
    base = serving().base_url
    return requests.get(f"{base}/v2/models/{NAME}", timeout=5).json()["versions"]


def predict_v1(rows: list[list[float]]) -> requests.Response:
    return requests.post(f"{serving().base_url}/v1/models/{NAME}:predict", json={"instances": rows}, timeout=10)


def holdout_rows(n: int = 4) -> tuple[list[list[float]], list[int]]:
    from mlops_platform.core import data

    frame = data.bundled_batches(SPEC.dataset, 1)[0].head(n)
    return frame[SPEC.dataset.feature_names].to_numpy(dtype=float).tolist(), frame[SPEC.dataset.target].tolist()


def test_first_run_trains_registers_promotes_and_serves(first_run, right_after_first_run):
    checks = check_results(first_run)
    assert all(check.passed for check in checks.values())
    assert set(checks) == {"batches_valid", "quality_gate", "canary_analysis", "slo_guard"}
    assert "no champion yet" in checks["canary_analysis"].description
    meta = materialized(first_run)
    assert set(meta) == {"landing_batches", "training_dataset", "trained_model", "challenger", "evaluation", "canary",
                         "champion", "endpoint"}
    version = meta["challenger"]["model_version"]
    assert right_after_first_run["champion"] == version == meta["endpoint"]["model_version"]
    assert meta["trained_model"]["holdout_f1"] >= SPEC.gate.min_value
    assert "data:image/png;base64," in meta["trained_model"]["confusion_matrix"]
    assert meta["trained_model"]["mlflow_run"].endswith(f"/runs/{meta['trained_model']['mlflow_run_id']}")

    client = registry().client()
    run = client.get_run(meta["trained_model"]["mlflow_run_id"])
    assert run.data.tags["dagster_run_id"] == first_run.run_id
    assert {"holdout_f1", "holdout_accuracy", "holdout_roc_auc"} <= set(run.data.metrics)
    assert run.data.params["step0.class"] == "sklearn.linear_model.LogisticRegression"
    assert client.get_model_version(NAME, version).tags["quality_gate"] == "passed"

    _, expected = holdout_rows()
    response = right_after_first_run["predict"]
    assert response.status_code == 200
    assert response.json()["predictions"] == expected
    assert right_after_first_run["served"] == [version]


def test_logged_model_requirements_are_minimal(first_run):
    import mlflow

    meta = materialized(first_run)
    mlflow.set_tracking_uri(registry().tracking_uri)
    mlflow.set_registry_uri(registry().tracking_uri)  # never another test's registry
    uri = f"models:/{NAME}/{meta['challenger']['model_version']}"
    requirements = Path(mlflow.artifacts.download_artifacts(f"{uri}/requirements.txt")).read_text()
    assert "scikit-learn==" in requirements
    assert "torch" not in requirements
    info = mlflow.models.get_model_info(uri)
    assert info.signature.inputs.input_names() == SPEC.dataset.feature_names
    assert info.saved_input_example_info is not None


def test_v2_protocol_and_metadata(first_run):
    base = serving().base_url
    assert requests.get(f"{base}/v2/health/ready", timeout=5).json() == {"ready": True}
    metadata = requests.get(f"{base}/v2/models/{NAME}", timeout=5).json()
    assert metadata["inputs"] == [{"name": "input-0", "datatype": "FP64", "shape": [-1, 30]}]
    assert [o["name"] for o in metadata["outputs"]] == ["predict", "probabilities"]
    rows, expected = holdout_rows(2)
    body = {"inputs": [{"name": "input-0", "shape": [2, 30], "datatype": "FP64", "data": rows}]}
    answer = requests.post(f"{base}/v2/models/{NAME}/infer", json=body, timeout=10).json()
    assert answer["outputs"][0]["data"] == expected
    assert answer["model_version"] == metadata["versions"][0]


ROW = [0.5] * 30
BAD_REQUESTS = [
    ("v1", {"instances": [[1, 2, 3]]}, "json", 400, "each row needs 30 features, got 3"),
    ("v1", {"instances": [ROW, ROW[:5]]}, "json", 400, "rows have different lengths"),
    ("v1", {"instances": [["x"] * 30]}, "json", 400, "every value must be a number"),
    ("v1", {"rows": [ROW]}, "json", 400, "must contain 'instances'"),
    ("v1", b'{"instances": [[1, 2', "json", 400, "Unrecognized request format"),
    ("v1", {"instances": [ROW]}, None, 415, "Content-Type must be application/json"),
    ("v1", {"instances": [ROW]}, "text/plain", 415, "Content-Type must be application/json"),
    ("v2", {"inputs": [{"name": "input-0", "shape": [2, 30], "datatype": "FP64", "data": ROW}]}, "json", 400,
     "shape [2, 30] needs 60 values, 'data' has 30"),
    ("v2", {"outputs": []}, "json", 400, "inputs"),
    ("v2", b'{"inputs": [', "json", 400, "JSON decode error"),
    ("v2", {"inputs": [{"name": "input-0", "shape": [1, 30], "datatype": "BYTES", "data": ["a"] * 30}]}, "json", 400,
     "datatype 'BYTES'"),
]


@pytest.mark.parametrize("protocol_version, body, content_type, status, message", BAD_REQUESTS)
def test_malformed_requests_get_a_4xx_with_a_message(first_run, protocol_version, body, content_type, status, message):
    base = serving().base_url
    url = f"{base}/v1/models/{NAME}:predict" if protocol_version == "v1" else f"{base}/v2/models/{NAME}/infer"
    payload = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"content-type": "application/json" if content_type == "json" else content_type} if content_type else {}
    session = requests.Session()
    request = requests.Request("POST", url, data=payload, headers=headers).prepare()
    if content_type is None:
        request.headers.pop("Content-Type", None)
    response = session.send(request, timeout=10)
    assert response.status_code == status, response.text
    assert message in response.json()["error"]
    assert predict_v1([ROW]).status_code == 200  # the server is still up and answering


def test_oversized_request_gets_413(first_run):
    huge = {"instances": [ROW] * 300_000}
    response = requests.post(f"{serving().base_url}/v1/models/{NAME}:predict", json=huge, timeout=60)
    assert response.status_code == 413
    assert "exceeds the limit" in response.json()["error"]


def test_worse_challenger_is_not_promoted(first_run):
    before = champion_version()
    worse = SPEC.model_copy(update={
        "estimator": EstimatorSpec(steps=[StepSpec(**{"class": "sklearn.dummy.DummyClassifier", "params": {"strategy": "most_frequent"}})]),
        "gate": GateSpec(metric="f1", min_value=0.5, max_regression=0.01),
    })
    result = run_job(worse)
    assert not result.success
    gate = check_results(result)["quality_gate"]
    assert not gate.passed
    assert "regresses against the champion" in gate.description
    assert {"canary", "champion", "endpoint"}.isdisjoint(materialized(result))
    rejected = materialized(result)["challenger"]["model_version"]
    assert champion_version() == before != rejected
    tags = registry().client().get_model_version(NAME, rejected).tags
    assert tags["quality_gate"] == "failed" and "regresses" in tags["quality_gate_reason"]
    assert served_version() == [before]


@pytest.mark.parametrize(
    "name, payload, reason",
    [
        ("wrong-schema.csv", b"mean_radius,target\n1.0,1\n", "missing columns"),
        ("empty.csv", b"", "file is empty"),
        ("null-target.csv", None, "null value(s) in target column"),
    ],
)
def test_bad_batch_is_quarantined_and_blocks_everything_downstream(first_run, platform_home, name, payload, reason):
    from mlops_platform.core import data

    if payload is None:
        frame = data.bundled_batches(SPEC.dataset, 3)[0].head(20).copy()
        frame[SPEC.dataset.target] = frame[SPEC.dataset.target].astype(float)
        frame.loc[3, SPEC.dataset.target] = None
        payload = data.encode_batch(frame)
    store = landing()
    store.write(SPEC.name, name, payload)
    before = champion_version()

    result = run_job(SPEC)

    assert not result.success
    check = check_results(result)["batches_valid"]
    assert not check.passed and reason in check.description
    assert set(materialized(result)) == {"landing_batches"}
    assert champion_version() == before
    assert name not in store.list_batches(SPEC.name)
    moved = list((platform_home / "quarantine" / SPEC.name).glob(f"*-{name}"))
    assert len(moved) == 1 and moved[0].read_bytes() == payload
    note = json.loads(moved[0].with_name(moved[0].name + ".reason.json").read_text())
    assert reason in note["reason"]


def test_redeploy_is_idempotent_and_serves_the_new_champion(first_run):
    backend = serving()
    pid = backend.process.running_pid()
    before = champion_version()
    result = run_job(SPEC)  # same data and estimator: equal quality passes the gate
    assert result.success
    new = materialized(result)["endpoint"]["model_version"]
    assert new != before and champion_version() == new
    assert backend.process.running_pid() == pid, "a second server was started"
    assert served_version() == [new]
    tags = registry().client().get_model_version(NAME, before).tags
    assert tags["superseded_by"] == new
    canary = check_results(result)["canary_analysis"]
    assert canary.passed and "canary healthy" in canary.description
    assert registry().client().get_model_version(NAME, new).tags["canary"] == "passed"
