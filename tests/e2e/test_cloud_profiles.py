"""The cloud profiles end to end against moto's S3 server, Azurite and the GCS emulator on loopback: the same
resources, IO managers and storage paths as in the cloud, with only the two documented switches
(`MLOPS_EXECUTOR=in_process`, `MLOPS_SERVING=local`) because there is no Kubernetes here. Credentials and endpoints
come from the environment, as in the cloud.

Dagster's run, event and schedule storage and MLflow's backend store are a real PostgreSQL server on loopback.
Azurite has no Data Lake Gen2 (dfs) endpoint: the platform's `abfss://` paths go through adlfs's blob API, which it
serves, and MLflow's artifacts through `wasbs://`, as `infra_cdktf` sets them in the cloud."""

from __future__ import annotations

import time

import dagster as dg
import fsspec
import pytest
import requests
import yaml

from mlops_platform.core import data
from mlops_platform.definitions import build_definitions
from mlops_platform.defs.automation import build_new_batch_sensor
from mlops_platform.defs.model_assets import job_name
from mlops_platform.defs.profiles import load_profile, required_env
from tests.emulators import AZURITE_ACCOUNT, azure_server, environment, gcs_server, new_bucket, postgres_server, s3_server
from tests.support import REPO, breast_cancer, fast, free_port


def azure_roots(container: str) -> tuple[str, str]:
    """As in the cloud: the Data Lake URI for the platform's storage (adlfs reaches it through the blob API, which
    Azurite serves) and the blob URI for MLflow's artifacts (MLflow's `abfss://` client needs the dfs API)."""
    return (f"abfss://{container}@{AZURITE_ACCOUNT}.dfs.core.windows.net",
            f"wasbs://{container}@{AZURITE_ACCOUNT}.blob.core.windows.net/mlflow")


CLOUDS = {
    # profile: (emulator, bucket name → (the platform's object root, MLflow's artifact root), the SDK's own variables)
    "aws": (s3_server, lambda name: (f"s3://{name}", f"s3://{name}/mlflow"),
            lambda emulator: {"MLFLOW_S3_ENDPOINT_URL": emulator.url}),
    "azure": (azure_server, azure_roots, lambda emulator: {}),
    "gcp": (gcs_server, lambda name: (f"gs://{name}", f"gs://{name}/mlflow"), lambda emulator: {}),
}


@pytest.mark.parametrize("cloud", sorted(CLOUDS))
def test_a_cloud_profile_runs_the_whole_job_on_its_object_store(platform_home, cloud):
    spec = fast(breast_cancer())
    server, roots, sdk_env = CLOUDS[cloud]
    workdir = platform_home / cloud
    workdir.mkdir()
    with server(workdir) as emulator, postgres_server(workdir / "postgres") as postgres:
        bucket, artifact_root = roots(new_bucket(emulator).split("://")[1])
        dagster_home = workdir / "dagster_home"
        dagster_home.mkdir()
        # The cloud instance's own storage block (runs, events, schedules), pointed at this server without TLS.
        cloud_instance = yaml.safe_load((REPO / "deploy" / "dagster" / "instance.yaml").read_text())
        storage = cloud_instance["storage"]
        storage["postgres"]["postgres_db"].update(port=int(postgres.rsplit(":", 1)[1]), params={"sslmode": "disable"})
        instance_config = {**yaml.safe_load((REPO / "dagster.yaml").read_text()), "storage": storage}
        (dagster_home / "dagster.yaml").write_text(yaml.safe_dump(instance_config))
        env = {**emulator.env, **sdk_env(emulator), "MLOPS_PROFILE": cloud, "MLOPS_EXECUTOR": "in_process",
               "MLOPS_SERVING": "local", "MLOPS_LANDING_URI": f"{bucket}/landing",
               "MLOPS_QUARANTINE_URI": f"{bucket}/quarantine", "MLOPS_CAPTURE_URI": f"{bucket}/capture",
               "MLOPS_IO_URI": f"{bucket}/dagster-io",
               "MLFLOW_TRACKING_URI": f"{postgres.replace('postgresql://', 'postgresql+psycopg2://')}/mlflow",
               "MLOPS_MLFLOW_UI_URL": "http://127.0.0.1:5000",
               "DAGSTER_HOME": str(dagster_home), "DAGSTER_PG_HOST": "127.0.0.1", "DAGSTER_PG_DB": "dagster",
               "DAGSTER_PG_USER": postgres.split("//")[1].split("@")[0], "DAGSTER_PG_PASSWORD": "",
               "MLOPS_MLFLOW_ARTIFACT_ROOT": artifact_root,
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
            assert {"MLOPS_PROFILE", *required_env(cloud, "local")} <= set(env), "the run sets what the table requires"
            import psycopg2

            with psycopg2.connect(f"{postgres}/dagster") as connection, connection.cursor() as cursor:
                cursor.execute("SELECT status FROM runs ORDER BY id")
                assert [row[0] for row in cursor.fetchall()] == ["FAILURE", "SUCCESS"], "the run history is in PostgreSQL"
            with psycopg2.connect(f"{postgres}/mlflow") as connection, connection.cursor() as cursor:
                cursor.execute("SELECT name, version FROM model_versions")
                assert cursor.fetchall() == [(spec.registered_name, 1)], "the registry is in PostgreSQL"

            # The new-batch sensor reads the bucket: quiet on the champion's own data, firing for a batch uploaded since.
            sensor = build_new_batch_sensor(spec, job)
            resources = {"landing": profile.resources["landing"], "mlflow": profile.resources["mlflow"]}
            with dg.DagsterInstance.get() as instance:
                with dg.build_sensor_context(instance=instance, resources=resources) as context:
                    assert isinstance(sensor(context), dg.SkipReason), "the champion was trained on every batch there"
                    cursor = context.cursor
                store.write(spec.name, "later.csv", data.encode_batch(data.bundled_batches(spec.dataset, 4)[0]))
                with dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources) as context:
                    fired = sensor(context)
                assert isinstance(fired, dg.RunRequest) and fired.tags["batches"] == "later.csv"

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


def read_its_batches(instance: dg.DagsterInstance) -> bool:
    """Whether the newest run's landing step has finished: the run is past reading the bucket, into training."""
    runs = instance.get_runs(limit=1)
    if not runs:
        return False
    return any(e.dagster_event.event_type_value == "STEP_SUCCESS" and e.dagster_event.step_key.endswith("landing_batches")
               for e in instance.all_logs(runs[0].run_id) if e.dagster_event)


def test_s3_lost_mid_run_fails_cleanly_and_the_rerun_succeeds(platform_home):
    """moto is killed as soon as the run has read its batches; the run fails with the connection error, no champion
    appears, and once storage is back (same endpoint, data uploaded again) a rerun promotes."""
    import threading

    spec = fast(breast_cancer())
    workdir = platform_home / "lost"
    workdir.mkdir()
    with s3_server(workdir) as s3:
        port = s3.url.rsplit(":", 1)[1]
        bucket = new_bucket(s3)
        env = {**s3.env, "MLOPS_PROFILE": "aws", "MLOPS_EXECUTOR": "in_process", "MLOPS_SERVING": "local",
               "MLOPS_IO_URI": f"{bucket}/dagster-io", "MLOPS_LANDING_URI": f"{bucket}/landing",
               "MLOPS_QUARANTINE_URI": f"{bucket}/quarantine", "MLOPS_CAPTURE_URI": f"{bucket}/capture",
               "MLFLOW_TRACKING_URI": f"sqlite:///{workdir}/mlflow.db", "MLOPS_MLFLOW_UI_URL": "http://127.0.0.1:5000",
               "MLOPS_MLFLOW_ARTIFACT_ROOT": f"{bucket}/mlflow", "MLFLOW_S3_ENDPOINT_URL": s3.url,
               "AWS_MAX_ATTEMPTS": "2", "MLOPS_SERVING_PORT": str(free_port()), "MLOPS_GRPC_PORT": str(free_port())}
        with environment(env):
            profile = load_profile()

            def seed() -> None:
                with dg.build_resources({"landing": profile.resources["landing"]}) as built:
                    store = built.landing.get_store()
                for i, batch in enumerate(data.bundled_batches(spec.dataset, 3)):
                    store.write(spec.name, f"seed-{i}.csv", data.encode_batch(batch))

            seed()
            job = build_definitions(specs=[spec], profile="aws").resolve_job_def(job_name(spec))
            with dg.DagsterInstance.get() as instance:
                outcome: dict = {}
                worker = threading.Thread(target=lambda: outcome.update(
                    result=job.execute_in_process(instance=instance, raise_on_error=False)))
                worker.start()
                deadline = time.monotonic() + 60
                while not read_its_batches(instance):
                    assert time.monotonic() < deadline and worker.is_alive()
                    time.sleep(0.05)
                s3.stop()  # storage disappears mid-run
                worker.join(timeout=300)
                failed = outcome["result"]
                assert not failed.success
                errors = " ".join(str(e.step_failure_data.error) for e in failed.all_events if e.is_step_failure)
                assert "Could not connect" in errors or "EndpointConnectionError" in errors or "Connection" in errors, errors
                with dg.build_resources({"mlflow": profile.resources["mlflow"]}) as built:
                    registry = built.mlflow.get_registry()
                assert registry.version_for(spec.registered_name, "champion") is None, "nothing half-made became champion"

                # Storage comes back at the same endpoint, empty: the data is uploaded again and the rerun promotes.
                restarted = s3_server(workdir, port=int(port))
                with restarted as again:
                    assert again.url == s3.url
                    new_bucket(again, name=bucket.split("://")[1])
                    seed()
                    rerun = job.execute_in_process(instance=instance, raise_on_error=False)
                    assert rerun.success, [e.message for e in rerun.all_events if e.is_failure][:3]
                    assert registry.version_for(spec.registered_name, "champion") is not None
                    with dg.build_resources({"serving": profile.resources["serving"]}) as built:
                        built.serving.get_backend().stop()


def test_a_server_that_cannot_start_says_which_and_why(tmp_path, monkeypatch):
    """What `make e2e-*` prints, and why it exits non-zero, when its servers cannot start."""
    import socket

    from tests import emulators

    def refused(server, match: str) -> None:
        with pytest.raises(emulators.EmulatorUnavailable, match=match), server:
            pass

    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        refused(s3_server(tmp_path, port=port), f"moto S3 server: port {port} on 127.0.0.1 is taken")
    monkeypatch.setattr(emulators, "_bin", lambda tool: str(tmp_path / "missing" / tool))
    refused(gcs_server(tmp_path), "GCS emulator: .*gcp-storage-emulator is not installed")
    monkeypatch.setattr(emulators, "_postgres_bin", lambda tool: "/bin/false")  # an initdb that fails
    refused(postgres_server(tmp_path / "postgres"), "PostgreSQL: initdb failed")
