"""The model server as a predictor pod runs it: the exact container arguments the cluster backend writes, with the
version's artifacts already in the model folder, where KServe's storage initializer puts what `STORAGE_URI` names."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
import requests

from mlops_platform.core import data
from mlops_platform.core.canary import Revision
from mlops_platform.integrations.serving.kserve import MODEL_DIR, RUNTIME_PORT, predictor_spec
from tests.support import breast_cancer, fast, free_port, materialized, registry, run_job, seed, serving


@pytest.fixture(scope="module")
def champion(platform_home) -> str:
    spec = fast(breast_cancer())
    seed(spec)
    result = run_job(spec)
    assert result.success
    serving().stop()  # the pod below is the only server this module needs
    return materialized(result)["champion"]["model_version"]


def test_a_canary_pod_serves_its_version_from_the_downloaded_artifacts(champion, tmp_path):
    import mlflow

    spec = fast(breast_cancer())
    name, mlflow_registry = spec.registered_name, registry()
    storage_uri = mlflow_registry.client().get_model_version_download_uri(name, champion)
    # What the storage initializer does in the pod: download STORAGE_URI into the model folder.
    model_dir = mlflow.artifacts.download_artifacts(artifact_uri=storage_uri, dst_path=str(tmp_path / "models"))

    predictor = predictor_spec(name, champion, Revision.CANARY, image="i", tracking_uri=mlflow_registry.tracking_uri,
                               service_account=None, storage_uris={champion: storage_uri})
    [container] = predictor.containers
    assert {e.name: e.value for e in container.env}["STORAGE_URI"] == storage_uri
    port = free_port()
    args = [model_dir if a == MODEL_DIR else a for a in container.args]
    args[args.index("--port") + 1], args[args.index("--host") + 1] = str(port), "127.0.0.1"
    assert str(RUNTIME_PORT) not in args
    log = open(tmp_path / "pod.log", "wb")  # noqa: SIM115 - the server writes to it until it is stopped
    pod = subprocess.Popen([sys.executable, "-m", "mlops_platform.serving", *args, "--grpc-port", str(free_port())],
                           stdout=log, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        while True:
            assert pod.poll() is None, (tmp_path / "pod.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the pod never became ready"
            try:
                if requests.get(f"{url}/v2/models/{name}/ready", timeout=1).ok:
                    break
            except requests.RequestException:
                pass
            time.sleep(0.2)
        rows = data.bundled_batches(spec.dataset, 1)[0][spec.dataset.feature_names].head(3).to_numpy().tolist()
        answer = requests.post(f"{url}/v1/models/{name}:predict", json={"instances": rows}, timeout=10)
        assert answer.ok and len(answer.json()["predictions"]) == 3, answer.text
        metrics = requests.get(f"{url}/metrics", timeout=5).text
        assert 'revision="canary"' in metrics and f'version="{champion}"' in metrics
    finally:
        pod.terminate()
        pod.wait(timeout=20)
        log.close()
