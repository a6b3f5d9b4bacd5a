"""The user's own files: read in place, never seeded or moved; the new-batch sensor fires only for data the champion has
not seen; a gate failure names the batches new since the champion's data; and a bad batch can be set aside (CLI and
Dagster job), after which training goes on without it."""

from __future__ import annotations

import os

import dagster as dg
import numpy as np
import pytest
import yaml
from sklearn import datasets

from mlops_platform import cli
from mlops_platform.core.spec import load_spec
from mlops_platform.definitions import build_definitions
from mlops_platform.defs.automation import build_new_batch_sensor
from mlops_platform.defs.model_assets import job_name
from mlops_platform.defs.profiles import load_profile
from tests.support import check_results, fast, landing, materialized, registry

FEATURES = ["mean_radius", "mean_texture", "mean_smoothness", "worst_concavity", "worst_area"]


def cancer():
    frame = datasets.load_breast_cancer(as_frame=True).frame
    frame.columns = [c.replace(" ", "_") for c in frame.columns]
    frame["diagnosis"] = np.where(frame["target"] == 0, "malignant", "benign")
    frame["patient"] = [f"P{i:04d}" for i in range(len(frame))]  # an ID column: allowed, never trained on
    return frame[["patient", *FEATURES, "diagnosis"]]


@pytest.fixture(scope="module")
def own(platform_home, tmp_path_factory):
    root = tmp_path_factory.mktemp("own")
    frame = cancer()
    half = len(frame) // 2
    (root / "data").mkdir()
    frame.iloc[:half].to_csv(root / "data" / "cancer-a.csv", index=False)
    frame.iloc[half:].to_csv(root / "data" / "cancer-b.csv", index=False)
    path = root / "cancer.yaml"
    path.write_text(yaml.safe_dump({
        "name": "cancer", "dataset": {"source": "data/cancer-*.csv", "features": FEATURES, "target": "diagnosis",
                                      "id_columns": ["patient"]},
        "estimator": {"steps": [{"class": "sklearn.linear_model.LogisticRegression", "params": {"max_iter": 500}}]},
        "gate": {"metric": "f1", "min_value": 0.85}}))
    spec = fast(load_spec(path))
    os.environ["MLOPS_MODELS_DIR"] = str(root)  # what the CLI and the exclude job read (platform_home restores it)
    return {"spec": spec, "root": root, "frame": frame, "defs": build_definitions(specs=[spec])}


def run(own) -> dg.ExecuteInProcessResult:
    with dg.DagsterInstance.get() as instance:
        return own["defs"].resolve_job_def(job_name(own["spec"])).execute_in_process(instance=instance, raise_on_error=False)


def sensor_tick(own, cursor=None):
    resources = load_profile().resources
    job = own["defs"].resolve_job_def(job_name(own["spec"]))
    context = dg.build_sensor_context(cursor=cursor, resources={"landing": resources["landing"], "mlflow": resources["mlflow"]})
    return build_new_batch_sensor(own["spec"], job)(context)


def test_own_data_from_a_bad_batch_to_setting_it_aside(own):
    spec = own["spec"]
    first = run(own)
    assert first.success, [e.message for e in first.all_events if e.is_failure][:3]
    assert sorted(b["name"] for b in materialized(first)["landing_batches"]["accepted_batches"]) == ["cancer-a.csv", "cancer-b.csv"]
    champion = registry().version_for(spec.registered_name, "champion")

    # A sensor starting afresh (new instance, reset cursor) does not retrain on what the champion was trained on.
    assert isinstance(sensor_tick(own), dg.SkipReason)

    flipped = own["frame"].assign(diagnosis=np.where(own["frame"]["diagnosis"] == "benign", "malignant", "benign"))
    flipped[FEATURES] = flipped[FEATURES] * 1.001  # new rows, not duplicates of the good ones
    landing().write(spec.name, "relabelled.csv", flipped.to_csv(index=False).encode())
    request = sensor_tick(own)
    assert isinstance(request, dg.RunRequest) and request.tags["batches"] == "relabelled.csv"

    second = run(own)
    gate = check_results(second)["quality_gate"]
    assert not gate.passed
    assert "Batches new since the champion's data: ['relabelled.csv']" in gate.description
    assert f"cli exclude --model {spec.name}" in gate.description
    assert registry().version_for(spec.registered_name, "champion") == champion, "a bad model never becomes champion"

    cli.main(["exclude", "--model", spec.name, "--batch", "relabelled.csv", "--reason", "labels flipped"])
    assert "relabelled.csv" not in landing().list_batches(spec.name)
    third = run(own)
    assert third.success and check_results(third)["quality_gate"].passed

    # The Dagster job sets a source file aside too: noted, not moved, and left out of the next run.
    excluded = own["defs"].resolve_job_def("exclude_batch").execute_in_process(
        run_config={"ops": {"exclude_batch_op": {"config": {"model": spec.name, "batch": "cancer-b.csv", "reason": "audit"}}}},
        instance=dg.DagsterInstance.get())
    assert excluded.success
    assert (own["root"] / "data" / "cancer-b.csv").exists()
    assert [b.name for b in load_profile().resources["landing"].get_catalog(spec).batches()] == ["cancer-a.csv"]


def test_cli_seed_and_predict_work_on_own_data(own, capsys):
    spec = own["spec"]
    cli.main(["seed", "--model", spec.name])
    assert "reads its own data from" in capsys.readouterr().out
    if registry().version_for(spec.registered_name, "champion") is None:
        assert run(own).success
    cli.main(["predict", "--model", spec.name, "--rows", "3"])
    out = capsys.readouterr().out
    assert "prediction for 3 rows" in out and ("benign" in out or "malignant" in out)
