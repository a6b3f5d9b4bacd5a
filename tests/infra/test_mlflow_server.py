"""The MLflow tracking server the platform's release runs, run here for real: the platform's image's MLflow (the
clients' own version) against a real PostgreSQL, started the way the pinned chart (mlflow 1.11.5) starts it with
the values the stacks give it: the chart's migration script first, then `mlflow server` with the libpq environment
the chart sets, the bucket as the (unproxied) artifact root, and our extra arguments."""

from __future__ import annotations

import importlib.metadata
import os
import re
import subprocess
import sys
from pathlib import Path

import requests

from tests.emulators import Emulator, postgres_server, start_server
from tests.infra.conftest import releases, values
from tests.support import REPO, free_port


def backend_store_uri(release: dict) -> str:
    """`postgresql{{ $dbConnectionDriver }}://`: the chart appends `+<driver>` when one is set."""
    driver = release["backendStore"]["postgres"].get("driver")
    return f"postgresql{'+' + driver if driver else ''}://"


def chart_migration(release: dict) -> str:
    """The pinned chart's templates/configmap.yaml (`migrations.py`) for a PostgreSQL backend store."""
    return ("from mlflow.store.db import utils\n"
            f"engine = utils.create_sqlalchemy_engine_with_retry({backend_store_uri(release)!r})\n"
            "utils._initialize_tables(engine)\n")


def chart_server_args(release: dict, port: int) -> list[str]:
    """templates/deployment.yaml's `mlflow server` arguments for these values: the backend store through libpq's
    environment, `--default-artifact-root` (no `--serve-artifacts` unless proxied), uvicorn's log level (`log` is
    on by default, its level `info`), then each of `extraArgs` as `--<kebab-case key>=<value>`. `--host` is loopback
    here, where the chart binds all addresses."""
    artifacts = release["artifactRoot"]
    args = ["server", "--host=127.0.0.1", f"--port={port}", f"--backend-store-uri={backend_store_uri(release)}",
            f"--default-artifact-root={artifacts['defaultArtifactRoot']}"]
    if artifacts["proxiedArtifactStorage"]:
        args.append("--serve-artifacts")
    log = {"enabled": True, "level": "info", **release.get("log", {})}
    if log["enabled"]:
        args.append(f"--uvicorn-opts='--log-level={log['level']}'")
    return args + [f"--{re.sub(r'(?<!^)(?=[A-Z])', '-', key).lower()}={value}"
                   for key, value in release.get("extraArgs", {}).items()]


def test_the_mlflow_image_is_the_clients_mlflow_with_the_drivers_the_server_needs():
    dockerfile = (REPO / "deploy" / "Dockerfile.mlflow").read_text()
    [install] = re.findall(r"pip install --no-cache-dir -c constraints.txt \\\n\s+(.+)", dockerfile)
    pins = dict(line.split("==", 1) for line in (REPO / "constraints.txt").read_text().splitlines()
                if "==" in line and not line.startswith("#"))
    packages = install.split()
    assert {"mlflow", "psycopg2-binary", "boto3", "azure-storage-blob", "azure-identity",
            "google-cloud-storage"} <= set(packages)
    assert all(p in pins for p in packages), [p for p in packages if p not in pins]
    assert pins["mlflow"] == importlib.metadata.version("mlflow"), "the server runs the clients' MLflow"


def test_the_release_runs_the_platforms_mlflow_image_and_migrates_before_it_starts(synthesized):
    for stack_id, doc in synthesized.items():
        mlflow, dagster = values(releases(doc)["mlflow"]), values(releases(doc)["dagster"])
        tag = dagster["dagster-user-deployments"]["deployments"][0]["image"]["tag"]
        assert mlflow["image"]["repository"].endswith("/mlops-mlflow") and mlflow["image"]["tag"] == tag, stack_id
        assert mlflow["initImages"]["mlflowDbMigration"] == mlflow["image"]
        assert mlflow["backendStore"]["databaseMigration"] is True


def test_the_server_answers_the_clients_in_cluster_name_on_postgresql(synthesized, tmp_path):
    """MLflow's server refuses Host headers it does not allow (403), and by default allows only localhost and
    private IPs: the in-cluster name every run and predictor dials must be on our list. Requests go to loopback; the
    Host header is what the cluster's clients send."""
    from mlops_infra.outputs import MLFLOW_IN_CLUSTER

    release = values(releases(synthesized["aws-dev"])["mlflow"])
    in_cluster = MLFLOW_IN_CLUSTER.split("//", 1)[1]  # host:port, as the clients' Host header has it
    with postgres_server(tmp_path / "postgres", databases=("mlflow",)) as url:
        user, address = url.split("//", 1)[1].split("@")
        env = {**os.environ, "PGHOST": address.split(":")[0], "PGPORT": address.split(":")[1], "PGUSER": user,
               "PGDATABASE": "mlflow", "PGPASSWORD": ""}
        env = {k: v for k, v in env.items() if not k.startswith("MLFLOW_")}
        migrated = subprocess.run([sys.executable, "-c", chart_migration(release)], env=env, capture_output=True, text=True,
                                  timeout=300)
        assert migrated.returncode == 0, migrated.stderr[-2000:]
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        server = Emulator("mlflow", base, process=start_server(
            "MLflow server", [str(Path(sys.executable).parent / "mlflow"), *chart_server_args(release, port)],
            f"{base}/health", tmp_path / "mlflow.log", timeout=120, env=env))
        try:
            def call(host: str) -> requests.Response:
                return requests.post(f"{base}/api/2.0/mlflow/experiments/create", headers={"Host": host},
                                     json={"name": f"from-{host}"}, timeout=10)

            for host in (in_cluster, in_cluster.split(":")[0], "127.0.0.1:5000", "localhost:5000"):
                created = call(host)
                assert created.status_code == 200, (host, created.status_code, created.text[:300])
                experiment = requests.get(f"{base}/api/2.0/mlflow/experiments/get",
                                          params={"experiment_id": created.json()["experiment_id"]}, timeout=10)
                location = experiment.json()["experiment"]["artifact_location"]
                assert location.startswith(release["artifactRoot"]["defaultArtifactRoot"]), location
            refused = call("attacker.example")
            assert refused.status_code == 403, "the allow-list is what admits the cluster's clients"
        finally:
            server.stop()
