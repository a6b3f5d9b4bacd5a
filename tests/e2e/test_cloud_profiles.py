"""The `aws` and `gcp` profiles end to end against moto's S3 server and the GCS emulator on loopback: the same
resources, IO managers and storage paths as in the cloud, with only the two documented switches
(`MLOPS_EXECUTOR=in_process`, `MLOPS_SERVING=local`) because there is no Kubernetes here. Credentials and endpoints
come from the environment, as in the cloud.

Still local here (issue 14 goes on): Dagster's instance and MLflow's backend store are SQLite, not PostgreSQL; and
`azure` has no run here, because its IO manager speaks the Data Lake Gen2 (dfs) API, which Azurite does not emulate."""

from __future__ import annotations

import time

import dagster as dg
import fsspec
import pytest
import requests

from mlops_platform.core import data
from mlops_platform.definitions import build_definitions
from mlops_platform.defs.model_assets import job_name
from mlops_platform.defs.profiles import load_profile
from tests.emulators import environment, gcs_server, new_bucket, s3_server
from tests.support import breast_cancer, fast, free_port

CLOUDS = {
    # profile: (emulator, the profile's own storage variables beside the shared ones)
    "aws": (s3_server, lambda bucket, emulator: {"MLOPS_BUCKET": bucket.split("://")[1],
                                                 "MLFLOW_S3_ENDPOINT_URL": emulator.url}),
    "gcp": (gcs_server, lambda bucket, emulator: {"MLOPS_BUCKET": bucket.split("://")[1],
                                                  "MLOPS_GCP_PROJECT": "mlops-test"}),
}


@pytest.mark.parametrize("cloud", sorted(CLOUDS))
def test_a_cloud_profile_runs_the_whole_job_on_its_object_store(platform_home, cloud):
    spec = fast(breast_cancer())
    server, storage_env = CLOUDS[cloud]
    with server(platform_home) as emulator:
        bucket = new_bucket(emulator)
        env = {**emulator.env, **storage_env(bucket, emulator), "MLOPS_PROFILE": cloud, "MLOPS_EXECUTOR": "in_process",
               "MLOPS_SERVING": "local", "MLOPS_LANDING_URI": f"{bucket}/landing",
               "MLOPS_QUARANTINE_URI": f"{bucket}/quarantine", "MLOPS_CAPTURE_URI": f"{bucket}/capture",
               "MLFLOW_TRACKING_URI": f"sqlite:///{platform_home}/{cloud}-mlflow.db", "MLOPS_MLFLOW_UI_URL": "http://127.0.0.1:5000",
               "MLOPS_MLFLOW_ARTIFACT_ROOT": f"{bucket}/mlflow",
               "MLOPS_SERVING_PORT": str(free_port()), "MLOPS_GRPC_PORT": str(free_port())}
        with environment(env):
            profile = load_profile()
            with dg.build_resources({"landing": profile.resources["landing"]}) as built:
                store = built.landing.get_store()
            for i, batch in enumerate(data.bundled_batches(spec.dataset, 3)):
                store.write(spec.name, f"seed-{i}.csv", data.encode_batch(batch))
            store.write(spec.name, "broken.csv", b"not,a,batch\n1,2,3\n")
            defs = build_definitions(specs=[spec], profile=cloud)
            job = defs.resolve_job_def(job_name(spec))
            with dg.DagsterInstance.get() as instance:
                first = job.execute_in_process(instance=instance, raise_on_error=False)
                assert not first.success, "a bad batch fails the blocking check"
                second = job.execute_in_process(instance=instance, raise_on_error=False)
            assert second.success, [e.message for e in second.all_events if e.is_failure][:3]

            fs, root = fsspec.core.url_to_fs(bucket)
            quarantined = fs.find(f"{root}/quarantine/{spec.name}")
            assert any(p.endswith("broken.csv") for p in quarantined), "the bad batch was moved within the bucket"
            assert any(p.endswith(".reason.json") for p in quarantined)
            assert fs.find(f"{root}/dagster-io"), "IO manager outputs are in the bucket"
            assert any(p.endswith("MLmodel") for p in fs.find(f"{root}/mlflow")), "the MLflow model is in the bucket"

            # The serving runtime loaded the model from the bucket and answers; captured requests go to the bucket.
            with dg.build_resources({"serving": profile.resources["serving"], "mlflow": profile.resources["mlflow"]}) as built:
                serving, registry = built.serving.get_backend(), built.mlflow.get_registry()
            rows = data.bundled_batches(spec.dataset, 1)[0][spec.dataset.feature_names].head(3).to_numpy().tolist()
            try:
                serving.set_routing(spec.registered_name, registry.version_for(spec.registered_name, "champion"),
                                    capture_rate=1.0)
                answer = requests.post(f"{serving.base_url}/v1/models/{spec.registered_name}:predict",
                                       json={"instances": rows}, timeout=10)
                assert answer.ok, answer.text
                deadline = time.monotonic() + 20
                while not fs.exists(f"{root}/capture/{spec.registered_name}/inputs"):
                    assert time.monotonic() < deadline, "captured requests never reached the bucket"
                    time.sleep(0.5)
                    fs.invalidate_cache()
            finally:
                serving.stop()
