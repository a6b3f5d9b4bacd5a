"""The HTTP contract of the model server, on both shipped models (scikit-learn and torch): every client mistake is a
4xx with a message, content types are matched as HTTP says, version paths serve the version they name, unknown
names stay out of the metrics' label set, and one large request stalls nobody."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest
import requests

from mlops_platform.core import data
from tests.support import breast_cancer, fast, registry, serve_model, serving, spec_named

SPECS = {"breast_cancer": fast(breast_cancer()), "digits": fast(spec_named("digits"))}


@pytest.fixture(scope="module")
def served(platform_home) -> dict[str, dict]:
    out = {}
    for key, spec in SPECS.items():
        serve_model(spec)
        frame = data.bundled_batches(spec.dataset, 1)[0].head(4)
        out[key] = {"name": spec.registered_name, "width": len(spec.dataset.feature_names),
                    "rows": frame[spec.dataset.feature_names].to_numpy(dtype=float).tolist(),
                    "labels": frame[spec.dataset.target].tolist(),
                    "version": registry().version_for(spec.registered_name, "champion")}
    return out


def post(path: str, body, content_type: str | None = "application/json", headers: dict | None = None) -> requests.Response:
    payload = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = requests.Request("POST", f"{serving().base_url}{path}", data=payload, headers=headers or {}).prepare()
    request.headers.pop("Content-Type", None)
    if content_type is not None:
        request.headers["Content-Type"] = content_type
    return requests.Session().send(request, timeout=30)


def malformed(width: int) -> list[tuple[str, object, str | None, int, str]]:
    """(protocol, body, content type, status, message fragment) for one model with `width` features."""
    row = [0.5] * width
    tensor = lambda **kw: {"inputs": [{"name": "input-0", "shape": [1, width], "datatype": "FP64", "data": row, **kw}]}
    return [
        ("v1", {"instances": [[1, 2, 3]]}, "application/json", 400, f"each row needs {width} features, got 3"),
        ("v1", {"instances": [row, row[:5]]}, "application/json", 400, "rows have different lengths"),
        ("v1", {"instances": [["x"] * width]}, "application/json", 400, "every value must be a number"),
        ("v1", {"instances": [[None] * width]}, "application/json", 400, "every value must be a number"),
        ("v1", {"rows": [row]}, "application/json", 400, "must contain 'instances'"),
        ("v1", {"instances": "abc"}, "application/json", 400, "'instances' must be a list"),
        ("v1", {"instances": []}, "application/json", 400, "no rows to predict"),
        ("v1", [row], "application/json", 400, "JSON object"),
        ("v1", b'{"instances": [[1, 2', "application/json", 400, "Unrecognized request format"),
        ("v1", b'{"instances": [[NaN]]}', "application/json", 400, ""),
        ("v1", {"instances": [row]}, None, 415, "Content-Type must be application/json"),
        ("v1", {"instances": [row]}, "text/plain", 415, "Content-Type must be application/json"),
        ("v1", {"instances": [[1e308 * 10] * width]}, "application/json", 400, ""),
        ("v1", {"instances": [{"nope": 1}]}, "application/json", 400, "missing features"),
        ("v1", {"instances": [row] * 2_001}, "application/json", 413, "at most 2000"),
        ("v2", tensor(shape=[2, width]), "application/json", 400, f"shape [2, {width}] needs {2 * width} values"),
        ("v2", {"outputs": []}, "application/json", 400, "inputs"),
        ("v2", b'{"inputs": [', "application/json", 400, "JSON decode error"),
        ("v2", tensor(datatype="BYTES", data=["a"] * width), "application/json", 400, "datatype 'BYTES'"),
        ("v2", tensor(data=[row, row[:2]], shape=[2, width]), "application/json", 400, "different lengths"),
        ("v2", tensor(shape=[-1, -1]), "application/json", 400, "non-negative sizes"),
        ("v2", tensor(shape=[0, width], data=[]), "application/json", 400, "no rows to predict"),
        ("v2", tensor(shape=[2**62, 4]), "application/json", 400, "needs"),
        ("v2", tensor(datatype="INT64", data=["1"] * width), "application/json", 400, "every value must be a number"),
        ("v2", tensor(data=[float("inf")] * width), "application/json", 400, "finite number"),
        ("v2", tensor(shape=[1, 3], data=[1, 2, 3]), "application/json", 400, f"each row needs {width} features"),
        ("v2", {"inputs": [{"name": "a", "shape": [1], "datatype": "FP64", "data": [1]},
                           {"name": "b", "shape": [1], "datatype": "FP64", "data": [1]}]}, "application/json", 400,
         "named inputs must match the features"),
        ("v2", tensor(), "text/csv", 415, "Content-Type must be application/json"),
    ]


CASES = [(model, *case) for model, width in (("breast_cancer", 30), ("digits", 64)) for case in malformed(width)]


@pytest.mark.parametrize("model, protocol, body, content_type, status, message", CASES,
                         ids=[f"{c[0]}-{c[1]}-{i}" for i, c in enumerate(CASES)])
def test_every_client_mistake_is_a_4xx_with_a_message(served, model, protocol, body, content_type, status, message):
    name = served[model]["name"]
    path = f"/v1/models/{name}:predict" if protocol == "v1" else f"/v2/models/{name}/infer"
    response = post(path, body, content_type)
    assert response.status_code == status, response.text
    assert message in response.json()["error"]


def server_errors() -> float:
    """All 5xx answers the server has counted so far."""
    exposition = requests.get(f"{serving().base_url}/metrics", timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in exposition.splitlines()
               if line.startswith("mlops_inference_requests_total") and 'code="5' in line)


def test_the_whole_corpus_adds_no_server_error_and_the_server_survives_it(served):
    assert len(CASES) >= 40
    before = server_errors()
    for model, protocol, body, content_type, status, _ in CASES:
        name = served[model]["name"]
        path = f"/v1/models/{name}:predict" if protocol == "v1" else f"/v2/models/{name}/infer"
        assert post(path, body, content_type).status_code == status
    assert server_errors() == before
    for info in served.values():
        answer = post(f"/v1/models/{info['name']}:predict", {"instances": info["rows"]})
        assert answer.status_code == 200 and answer.json()["predictions"] == info["labels"]


@pytest.mark.parametrize("content_type", ["application/json; charset=utf-8", "APPLICATION/JSON", "Application/Json ; q=1"])
def test_json_content_types_match_as_http_says(served, content_type):
    info = served["breast_cancer"]
    v1 = post(f"/v1/models/{info['name']}:predict", {"instances": info["rows"]}, content_type)
    v2 = post(f"/v2/models/{info['name']}/infer", {"inputs": [{"name": "input-0", "shape": [4, 30], "datatype": "FP64",
                                                              "data": info["rows"]}]}, content_type)
    assert v1.status_code == 200 and v1.json()["predictions"] == info["labels"]
    assert v2.status_code == 200 and v2.json()["outputs"][0]["data"] == info["labels"]


def test_a_v2_request_without_content_type_is_json(served):
    info = served["digits"]
    body = {"inputs": [{"name": "input-0", "shape": [4, 64], "datatype": "FP32", "data": info["rows"]}]}
    response = post(f"/v2/models/{info['name']}/infer", body, content_type=None)
    assert response.status_code == 200 and response.json()["outputs"][0]["data"] == info["labels"]


def test_version_paths_serve_a_loaded_version_or_say_it_is_not(served):
    info = served["breast_cancer"]
    body = {"inputs": [{"name": "input-0", "shape": [4, 30], "datatype": "FP64", "data": info["rows"]}]}
    base = f"/v2/models/{info['name']}/versions"
    answer = post(f"{base}/{info['version']}/infer", body)
    assert answer.status_code == 200 and answer.json()["model_version"] == info["version"]
    assert requests.get(f"{serving().base_url}{base}/{info['version']}/ready", timeout=5).status_code == 200
    missing = post(f"{base}/999/infer", body)
    assert missing.status_code == 404 and "version '999'" in missing.json()["error"]
    assert requests.get(f"{serving().base_url}{base}/999/ready", timeout=5).status_code == 404


def test_unsupported_paths_and_unknown_models_are_4xx(served):
    name = served["breast_cancer"]["name"]
    explain = post(f"/v1/models/{name}:explain", {"instances": served["breast_cancer"]["rows"]})
    assert explain.status_code == 404 and "no :explain" in explain.json()["error"]
    auth = {"Authorization": f"Bearer {serving().process.control_token()}"}
    load = post("/v2/repository/models/never-registered/load", b"", headers=auth)
    assert load.status_code == 404 and "never-registered" in load.json()["error"]
    assert post("/v1/models/never-registered:predict", {"instances": [[1]]}).status_code == 404


def test_unknown_model_names_share_one_metric_label(served):
    for i in range(300):
        post(f"/v1/models/made-up-{i}:predict", {"instances": [[1.0]]})
    exposition = requests.get(f"{serving().base_url}/metrics", timeout=10).text
    assert "made-up-" not in exposition
    assert 'model="__unknown__"' in exposition


def test_health_answers_while_a_maximum_size_request_computes(served):
    info = served["digits"]
    big = {"instances": (np.tile(np.asarray(info["rows"]), (500, 1))).tolist()}  # 2,000 rows: the default limit
    latencies, done = [], []

    def heavy():
        for _ in range(10):
            done.append(post(f"/v1/models/{info['name']}:predict", big).status_code)

    worker = threading.Thread(target=heavy)
    worker.start()
    session = requests.Session()
    while worker.is_alive():
        started = time.perf_counter()
        assert session.get(f"{serving().base_url}/v2/health/ready", timeout=5).ok
        latencies.append(time.perf_counter() - started)
        time.sleep(0.01)
    worker.join()
    assert done == [200] * 10 and len(latencies) >= 10
    assert np.percentile(latencies, 99) < 0.05, f"p99 {np.percentile(latencies, 99) * 1000:.1f} ms"


def test_batching_on_and_off_give_identical_predictions(served):
    info = served["breast_cancer"]
    backend = serving()
    rows = data.bundled_batches(SPECS["breast_cancer"].dataset, 1)[0][SPECS["breast_cancer"].dataset.feature_names]
    bodies = [{"instances": rows.iloc[i:i + 3].to_numpy(dtype=float).tolist()} for i in range(0, 120, 3)]

    def answers() -> list:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(16) as pool:
            return list(pool.map(lambda b: post(f"/v1/models/{info['name']}:predict", b).json()["predictions"], bodies))

    try:
        backend.set_routing(info["name"], info["version"], batching={"enabled": False})
        unbatched = answers()
        backend.set_routing(info["name"], info["version"], batching={"enabled": True, "max_batch_rows": 32,
                                                                     "max_delay_ms": 2.0, "max_queue_rows": 8192})
        assert requests.get(f"{serving().base_url}/mlops/v1/endpoints/{info['name']}/routing", timeout=5).json()["batching"]
        assert answers() == unbatched
    finally:
        backend.set_routing(info["name"], info["version"], batching=SPECS["breast_cancer"].serving.batching.model_dump())


def test_a_full_queue_answers_503_with_retry_after(served):
    info = served["digits"]
    backend = serving()
    big = {"instances": (np.tile(np.asarray(info["rows"]), (75, 1))).tolist()}  # 300 rows: predicted on the thread
    try:
        backend.set_routing(info["name"], info["version"], batching={"enabled": True, "max_batch_rows": 300,
                                                                     "max_delay_ms": 0.0, "max_queue_rows": 600})
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(12) as pool:
            responses = list(pool.map(lambda _: post(f"/v1/models/{info['name']}:predict", big), range(36)))
    finally:
        backend.set_routing(info["name"], info["version"], batching=SPECS["digits"].serving.batching.model_dump())
    statuses = [r.status_code for r in responses]
    assert set(statuses) == {200, 503}, statuses
    refused = next(r for r in responses if r.status_code == 503)
    assert int(refused.headers["retry-after"]) >= 1 and "rows waiting" in refused.json()["error"]
    exposition = requests.get(f"{serving().base_url}/metrics", timeout=10).text
    assert f'code="503",model="{info["name"]}"' in exposition


@pytest.mark.parametrize("binary_outputs", [False, True], ids=["json-outputs", "binary-outputs"])
def test_binary_tensor_extension_with_kserve_s_own_oip_client(served, binary_outputs):
    """KServe's Open Inference Protocol REST client, sending its input as raw little-endian bytes after the JSON
    header (`Inference-Header-Content-Length`) and asking for raw outputs too when `binary_data_output` is set."""
    import asyncio

    from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig

    info = served["digits"]
    matrix = np.asarray(info["rows"], dtype=np.float32)
    tensor = InferInput("input-0", list(matrix.shape), "FP32")
    tensor.set_data_from_numpy(matrix, binary_data=True)
    request = InferRequest(model_name=info["name"], infer_inputs=[tensor],
                           parameters={"binary_data_output": True} if binary_outputs else None)

    async def call():
        client = InferenceRESTClient(RESTConfig(protocol="v2", timeout=30))
        try:
            return await client.infer(serving().base_url, request, model_name=info["name"])
        finally:
            await client.close()

    response = asyncio.run(call())
    outputs = {o.name: o.as_numpy() for o in response.outputs}
    assert outputs["predict"].tolist() == info["labels"]
    assert outputs["probabilities"].shape == (4, 10)
    np.testing.assert_allclose(outputs["probabilities"].sum(axis=1), 1.0, rtol=1e-6)


def test_memory_comes_back_after_a_burst_of_large_requests(served):
    import psutil

    info = served["digits"]
    server = psutil.Process(json.loads((serving().process.state_dir / "server.child.json").read_text())["pid"])
    big = {"instances": (np.tile(np.asarray(info["rows"]), (500, 1))).tolist()}  # the 2,000-row limit
    for _ in range(3):  # warm: imports, allocator pools and caches settle before the baseline
        post(f"/v1/models/{info['name']}:predict", big)
    before = server.memory_info().rss
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(lambda _: post(f"/v1/models/{info['name']}:predict", big).status_code, range(40)))
    assert set(statuses) <= {200, 503} and 200 in statuses
    time.sleep(1.0)
    after = server.memory_info().rss
    assert after <= before * 1.2, f"resident memory {before / 2**20:.0f} MiB before the burst, {after / 2**20:.0f} MiB after"


def grpc_infer(model: str, inputs: list, parameters: dict | None = None):
    """One V2 inference over gRPC with KServe's Open Inference Protocol gRPC client; (response, None) or (None, error)."""
    import asyncio
    import os

    import grpc
    from kserve import InferenceGRPCClient, InferRequest

    async def call():
        client = InferenceGRPCClient(f"127.0.0.1:{os.environ['MLOPS_GRPC_PORT']}", timeout=30, retries=2)
        try:
            return await client.infer(InferRequest(model_name=model, infer_inputs=inputs, parameters=parameters)), None
        except grpc.aio.AioRpcError as error:
            return None, error
        finally:
            await client.close()

    return asyncio.run(call())


def test_v2_over_grpc_on_loopback(served):
    from kserve import InferInput

    info = served["breast_cancer"]
    tensor = InferInput("input-0", [4, 30], "FP64")
    tensor.set_data_from_numpy(np.asarray(info["rows"], dtype=np.float64))
    response, error = grpc_infer(info["name"], [tensor])
    assert error is None, error
    outputs = {o.name: o.as_numpy() for o in response.outputs}
    assert outputs["predict"].tolist() == info["labels"] and outputs["probabilities"].shape == (4, 2)


def grpc_cases():
    from kserve import InferInput

    def tensor(shape, datatype, values):
        t = InferInput("input-0", shape, datatype)
        dtype = np.float32 if datatype == "FP32" else np.float64
        t.set_data_from_numpy((np.asarray(values) if values is not None else np.zeros(shape)).reshape(shape).astype(dtype))
        return t

    return [
        ("breast-cancer", [tensor([1, 3], "FP64", [1.0, 2.0, 3.0])], "INVALID_ARGUMENT", "each row needs 30 features"),
        ("breast-cancer", [tensor([1, 30], "FP64", [float("nan")] * 30)], "INVALID_ARGUMENT", "finite number"),
        ("breast-cancer", [], "INVALID_ARGUMENT", "at least one input"),
        ("digits", [tensor([2, 64], "FP32", [1.0] * 128), tensor([2], "FP32", [1.0, 2.0])], "INVALID_ARGUMENT",
         "named inputs must match"),
        ("digits", [tensor([2001, 64], "FP32", None)], "INVALID_ARGUMENT", "at most"),
        ("never-registered", [tensor([1, 3], "FP64", [1.0, 2.0, 3.0])], "NOT_FOUND", "never-registered"),
    ]


def test_client_mistakes_over_grpc_are_invalid_argument_or_not_found(served):
    for model, inputs, code, message in grpc_cases():
        response, error = grpc_infer(model, inputs)
        assert response is None and error.code().name == code, (model, error)
        assert message in error.details(), (model, error.details())
    assert post(f"/v1/models/{served['digits']['name']}:predict", {"instances": served["digits"]["rows"]}).status_code == 200
