"""A new user's specs, as YAML files the project has never seen, taken through train, gate, canary and serve to a V1 and
a V2 prediction: binary with string labels, multiclass, regression with scikit-learn and with torch, categorical and
numeric features from the user's own CSV with an ID column, and the same from Parquet files through an fsspec glob."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import numpy as np
import pytest
import requests
import yaml
from sklearn import datasets

from mlops_platform.core.spec import SloSpec, load_spec
from mlops_platform.definitions import ALL_MODELS_JOB, build_definitions
from tests.support import CHURN_FEATURES, churn_frame, fast, materialized, registry, seed, serving

CANCER_FEATURES = ["mean_radius", "mean_texture", "mean_smoothness", "worst_concavity", "worst_area"]


def specs(data_dir: Path) -> dict[str, dict]:
    return {
        "cancer_labels": {
            "dataset": {"source": str(data_dir / "cancer.csv"), "features": CANCER_FEATURES, "target": "diagnosis"},
            "estimator": {"steps": [{"class": "sklearn.linear_model.LogisticRegression", "params": {"max_iter": 500}}]},
            "gate": {"metric": "f1", "min_value": 0.85},
        },
        "wine": {
            "dataset": {"source": "sklearn:wine", "features": [c for c in _wine_columns()], "target": "target",
                        "task": "multiclass"},
            # A nested estimator: the bagged trees are declared inside the bagging classifier's params.
            "estimator": {"steps": [{"class": "sklearn.ensemble.BaggingClassifier", "params": {
                "estimator": {"class": "sklearn.tree.DecisionTreeClassifier", "params": {"max_depth": 4}},
                "n_estimators": 15, "random_state": 0}}]},
            "metrics": ["accuracy", "f1"],
            "gate": {"metric": "accuracy", "min_value": 0.8},
        },
        "diabetes_gbr": {
            "dataset": {"source": "sklearn:diabetes", "features": _diabetes_columns(), "target": "target"},
            "estimator": {"steps": [{"class": "sklearn.ensemble.GradientBoostingRegressor",
                                     "params": {"n_estimators": 80, "max_depth": 2, "random_state": 0}}]},
            "metrics": ["r2", "rmse", "mae", "mape"],
            "gate": {"metric": "rmse", "max_value": 75.0, "max_regression": 1.0},
        },
        "diabetes_torch": {
            "dataset": {"source": "sklearn:diabetes", "features": _diabetes_columns(), "target": "target",
                        "task": "regression"},
            "estimator": {"framework": "torch", "torch": {"hidden_sizes": [32], "epochs": 150, "learning_rate": 0.01,
                                                          "patience": 15}},
            "gate": {"metric": "r2", "min_value": 0.2},
        },
        "churn_csv": {
            "dataset": {"source": str(data_dir / "churn.csv"), "features": CHURN_FEATURES, "target": "churned",
                        "id_columns": ["customer_id"]},
            "estimator": {"steps": [{"class": "sklearn.linear_model.LogisticRegression", "params": {"max_iter": 1000}}]},
            "gate": {"metric": "roc_auc", "min_value": 0.7},
        },
        "churn_parquet": {
            "dataset": {"source": str(data_dir / "churn-parts" / "*.parquet"), "features": CHURN_FEATURES,
                        "target": "churned", "id_columns": ["customer_id"]},
            "estimator": {"steps": [{"class": "sklearn.ensemble.HistGradientBoostingClassifier",
                                     "params": {"max_iter": 60, "random_state": 0}}]},
            "gate": {"metric": "roc_auc", "min_value": 0.7},
        },
    }


def _wine_columns() -> list[str]:
    from mlops_platform.core.data import load_bundled

    return [c for c in load_bundled("sklearn:wine").columns if c != "target"]


def _diabetes_columns() -> list[str]:
    from mlops_platform.core.data import load_bundled

    return [c for c in load_bundled("sklearn:diabetes").columns if c != "target"]


def write_user_data(data_dir: Path) -> None:
    cancer = datasets.load_breast_cancer(as_frame=True).frame
    cancer.columns = [c.replace(" ", "_") for c in cancer.columns]
    cancer["diagnosis"] = np.where(cancer["target"] == 0, "malignant", "benign")
    cancer[[*CANCER_FEATURES, "diagnosis"]].to_csv(data_dir / "cancer.csv", index=False)
    churn = churn_frame()
    churn.to_csv(data_dir / "churn.csv", index=False)
    (data_dir / "churn-parts").mkdir()
    for i, part in enumerate(np.array_split(churn.assign(autopay=churn["autopay"]), 2)):
        part.to_parquet(data_dir / "churn-parts" / f"part-{i}.parquet", index=False)


@pytest.fixture(scope="module")
def matrix(platform_home, tmp_path_factory) -> dict:
    """Every spec loaded from its own YAML file, then the all-models job run twice: the first run promotes each model
    straight away, the second takes a new version of each through gate and canary."""
    root = tmp_path_factory.mktemp("user")
    (root / "data").mkdir()
    write_user_data(root / "data")
    loaded = {}
    for name, body in specs(root / "data").items():
        path = root / "models" / f"{name}.yml"
        path.parent.mkdir(exist_ok=True)
        path.write_text(yaml.safe_dump({"name": name, **body}))
        # The SLO watch is not what these tests are about: a loaded CI box must not roll a healthy model back.
        # Nor are latency verdicts: a 1 ms model jitters past twice its canary's compute time on a loaded box.
        loaded[name] = fast(load_spec(path), max_latency_ratio=20.0, min_latency_increase_ms=500.0).model_copy(
            update={"slo": SloSpec(watch_seconds=1.5, min_requests=20, max_p95_ms=5000)})
    for spec in loaded.values():
        if spec.dataset.bundled:
            seed(spec)
    defs = build_definitions(specs=list(loaded.values()))
    runs = []
    with dg.DagsterInstance.get() as instance:
        for _ in range(2):
            result = defs.resolve_job_def(ALL_MODELS_JOB).execute_in_process(instance=instance, raise_on_error=False)
            assert result.success, [e.message for e in result.all_events if e.is_failure][:3]
            runs.append(result)
    return {"specs": loaded, "runs": runs}


def rows_of(spec, n=5) -> tuple[list[dict], list]:
    from mlops_platform.core import data

    if spec.dataset.bundled:
        frame = data.bundled_batches(spec.dataset, 1)[0]
    else:
        files = spec.dataset.local_files()
        raw = files[0].read_bytes()
        frame, report = data.validate_batch(files[0].name, raw, spec.dataset)
        assert frame is not None, report.problems
    head = frame.head(n)
    return data.json_rows(head, spec.dataset), head[spec.dataset.target].tolist()


def v2_inputs(spec, rows: list[dict]) -> list[dict]:
    """One named tensor per feature, typed as V2 clients send them."""
    types = {"numeric": "FP64", "categorical": "BYTES", "boolean": "BOOL", "datetime": "BYTES"}
    return [{"name": f.name, "datatype": types[f.type], "shape": [len(rows)], "data": [r[f.name] for r in rows]}
            for f in spec.dataset.features]


EXPECTED = {  # model → (task, V2 predict datatype, has probabilities)
    "cancer_labels": ("binary", "BYTES", True),
    "wine": ("multiclass", "INT64", True),
    "diabetes_gbr": ("regression", "FP64", False),
    "diabetes_torch": ("regression", "FP64", False),
    "churn_csv": ("binary", "BYTES", True),
    "churn_parquet": ("binary", "BYTES", True),
}


@pytest.mark.parametrize("model", sorted(EXPECTED))
def test_each_spec_goes_from_its_own_data_through_gate_and_canary_to_v1_and_v2_predictions(matrix, model):
    spec = matrix["specs"][model]
    task, datatype, has_proba = EXPECTED[model]
    first, second = (materialized(run, model) for run in matrix["runs"])
    assert first["training_dataset"]["task"] == task
    assert second["canary"]["outcome"] == "promote", second["canary"]["reason"]
    assert second["canary"]["stable_version"] == first["champion"]["model_version"]
    name = spec.registered_name
    assert registry().version_for(name, "champion") == second["champion"]["model_version"]

    base = serving().base_url
    rows, expected = rows_of(spec)
    v1 = requests.post(f"{base}/v1/models/{name}:predict", json={"instances": rows}, timeout=10)
    assert v1.status_code == 200, v1.text
    predictions = v1.json()["predictions"]
    assert len(predictions) == len(rows)
    if task == "regression":
        assert all(isinstance(p, float) for p in predictions)
        assert np.mean(np.abs(np.array(predictions) - np.array(expected))) < 80
    else:
        assert {type(p) for p in predictions} == {type(e) for e in expected}
        assert sum(p == e for p, e in zip(predictions, expected, strict=True)) >= 3

    v2 = requests.post(f"{base}/v2/models/{name}/infer", json={"inputs": v2_inputs(spec, rows)}, timeout=10)
    assert v2.status_code == 200, v2.text
    outputs = {o["name"]: o for o in v2.json()["outputs"]}
    assert outputs["predict"]["datatype"] == datatype
    assert outputs["predict"]["data"] == predictions
    assert ("probabilities" in outputs) is has_proba
    metadata = requests.get(f"{base}/v2/models/{name}", timeout=5).json()
    assert [o["datatype"] for o in metadata["outputs"]][0] == datatype


def test_typed_columns_are_checked_when_served(matrix):
    spec = matrix["specs"]["churn_csv"]
    rows, _ = rows_of(spec, 1)
    url = f"{serving().base_url}/v1/models/{spec.registered_name}:predict"
    for bad, message in [({"tenure": "long"}, "must be a number"), ({"autopay": "maybe"}, "true or false"),
                         ({"signup": "someday"}, "not an ISO 8601"), ({"plan": None}, "null")]:
        response = requests.post(url, json={"instances": [{**rows[0], **bad}]}, timeout=10)
        assert response.status_code == 400 and message in response.text, response.text
    unseen = requests.post(url, json={"instances": [{**rows[0], "region": "atlantis"}]}, timeout=10)
    assert unseen.status_code == 200, "a category unseen in training is encoded as unknown, not refused"


def test_the_registry_records_the_exact_data_behind_each_model(matrix):
    spec = matrix["specs"]["churn_parquet"]
    first = materialized(matrix["runs"][0], spec.name)
    version = registry().version_for(spec.registered_name, "champion")
    batches = registry().trained_batches(spec.registered_name, version)
    assert sorted(b["name"] for b in batches) == ["part-0.parquet", "part-1.parquet"]
    assert all(len(b["sha256"]) == 64 and b["origin"] == "source" for b in batches)
    run_id = registry().client().get_model_version(spec.registered_name, version).run_id
    run = registry().client().get_run(run_id)
    assert run.inputs.dataset_inputs, "the training rows are the run's MLflow dataset input"
    assert run.data.tags["data_version"] == first["trained_model"]["data_version"]


def test_a_task_that_does_not_fit_the_target_is_refused_with_a_reason(platform_home, tmp_path):
    """A continuous target declared as classification: the run fails before training, saying what to change."""
    frame = datasets.load_diabetes(as_frame=True).frame
    frame.to_csv(tmp_path / "diabetes.csv", index=False)
    path = tmp_path / "wrong.yaml"
    path.write_text(yaml.safe_dump({
        "name": "wrong_task",
        "dataset": {"source": "diabetes.csv", "features": ["age", "bmi", "bp"], "target": "s5", "task": "multiclass",
                    "ignore_columns": ["sex", "s1", "s2", "s3", "s4", "s6", "target"]},
        "estimator": {"steps": [{"class": "sklearn.linear_model.LogisticRegression"}]},
        "gate": {"metric": "accuracy", "min_value": 0.5}}))
    spec = load_spec(path)
    result = build_definitions(specs=[spec]).resolve_job_def("wrong_task_train_and_deploy").execute_in_process(
        instance=dg.DagsterInstance.get(), raise_on_error=False)
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert failure.step_key.endswith("training_dataset")
    assert "is continuous" in str(failure.step_failure_data) and "set dataset.task: regression" in str(failure.step_failure_data)
