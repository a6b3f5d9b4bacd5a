"""Wrong specs fail when they load, each error naming the file and the field; a broken spec does not hide the others."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml

from mlops_platform.core.spec import SpecLoadError, load_models, load_spec

GOOD = {
    "name": "churn",
    "dataset": {"source": "churn.csv", "features": ["tenure", {"name": "plan", "type": "categorical"}],
                "target": "churned", "id_columns": ["customer_id"]},
    "estimator": {"steps": [{"class": "sklearn.ensemble.RandomForestClassifier", "params": {"n_estimators": 10}}]},
    "gate": {"metric": "f1", "min_value": 0.5},
}


def write(folder: Path, name: str, body: dict, suffix: str = ".yaml") -> Path:
    pd.DataFrame({"customer_id": ["a", "b"], "tenure": [1, 2], "plan": ["x", "y"], "churned": [0, 1]}).to_csv(
        folder / "churn.csv", index=False)
    path = folder / f"{name}{suffix}"
    path.write_text(yaml.safe_dump(body))
    return path


def merged(**changes) -> dict:
    body = yaml.safe_load(yaml.safe_dump(GOOD))
    for dotted, value in changes.items():
        target = body
        *parents, leaf = dotted.split("__")
        for key in parents:
            target = target[int(key)] if isinstance(target, list) else target[key]
        target[leaf] = value
    return body


@pytest.mark.parametrize("changes, field, message", [
    ({"estimator__steps": [{"class": "sklearn.ensemble.RandomForrestClassifier"}]}, "estimator.steps.0",
     "has no 'RandomForrestClassifier'; did you mean sklearn.ensemble.RandomForestClassifier?"),
    ({"estimator__steps": [{"class": "sklearn.ensemble.RandomForestClassifier", "params": {"n_estimator": 5}}]},
     "estimator.steps.0", "takes no parameter 'n_estimator' (did you mean 'n_estimators'?)"),
    ({"estimator__steps": [{"class": "sklearn.ensemble.BaggingClassifier", "params": {
        "estimator": {"class": "sklearn.tree.DecisionTreeClassifier", "params": {"max_dept": 3}}}}]},
     "estimator.steps.0", "sklearn.tree.DecisionTreeClassifier takes no parameter 'max_dept' (did you mean 'max_depth'?)"),
    ({"estimator__steps": [{"class": "nosuchpackage.Model"}]}, "estimator.steps.0",
     "cannot import module 'nosuchpackage'"),
    ({"metrics": ["accuracy", "acuracy"]}, "metrics", "unknown metric 'acuracy'"),
    ({"gate": {"metric": "rmse", "min_value": 0.5}}, "gate.min_value",
     "rmse is lower is better, so its gate is gate.max_value"),
    ({"gate": {"metric": "r2"}}, "gate.min_value", "r2 is higher is better; give the bound"),
    ({"dataset__features": ["tenur"]}, "dataset.features", "'tenur' (did you mean 'tenure'?) not among the columns of"),
    ({"dataset__target": "churn"}, "dataset.target", "'churn' (did you mean 'churned'?)"),
    ({"dataset__task": "regression", "gate": {"metric": "r2", "min_value": 0.1}}, "estimator.steps",
     "RandomForestClassifier is a classifier, but the task is regression"),
    ({"dataset__task": "regression", "estimator__steps": [{"class": "sklearn.linear_model.Ridge"}]}, "gate.metric",
     "f1 is not a regression metric"),
    ({"dataset__source": "sklearn:nope"}, "dataset.source", "scikit-learn bundles no data set"),
    ({"dataset__source": "missing/*.csv"}, "dataset.source", "no file matches"),
    ({"estimator__factory": "sklearn.linear_model:LogisticRegression"}, "estimator", "either steps or a factory"),
])
def test_each_mistake_names_the_file_and_the_field(tmp_path, changes, field, message):
    path = write(tmp_path, "churn", merged(**changes))
    with pytest.raises(SpecLoadError) as caught:
        load_spec(path)
    text = str(caught.value)
    assert text.startswith(f"{path}: "), text
    assert field in text and message in text, text


def test_relative_sources_are_read_from_the_spec_s_folder(tmp_path, monkeypatch):
    monkeypatch.chdir("/")
    spec = load_spec(write(tmp_path, "churn", GOOD))
    assert spec.dataset.source == str(tmp_path / "churn.csv")
    assert spec.dataset.feature_names == ["tenure", "plan"]
    assert spec.dataset.features[1].type == "categorical"


def test_a_broken_spec_does_not_hide_the_others_and_yml_is_read(tmp_path):
    write(tmp_path, "churn", GOOD, suffix=".yml")
    write(tmp_path, "broken", {**GOOD, "name": "broken", "metrics": ["nope"]})
    write(tmp_path, "twin", GOOD)  # declares the name churn a second time
    loaded = load_models(tmp_path)
    assert [s.name for s in loaded.specs] == ["churn"]
    by_file = {e.path.name: str(e) for e in loaded.errors}
    assert set(by_file) == {"broken.yaml", "twin.yaml"}
    assert "metrics: unknown metric 'nope'" in by_file["broken.yaml"]
    assert "already declared in" in by_file["twin.yaml"] and "churn.yml" in by_file["twin.yaml"]


def test_the_code_location_loads_with_a_broken_spec_and_shows_it_as_a_failing_asset(tmp_path, monkeypatch):
    import dagster as dg

    from mlops_platform.definitions import build_definitions

    write(tmp_path, "churn", GOOD)
    write(tmp_path, "broken", {**GOOD, "name": "broken", "gate": {"metric": "rmse", "min_value": 1}})
    monkeypatch.setenv("MLOPS_MODELS_DIR", str(tmp_path))
    defs = build_definitions(profile="local")
    assert defs.resolve_job_def("churn_train_and_deploy") is not None
    broken = defs.resolve_assets_def(dg.AssetKey(["spec_errors", "broken"]))
    assert "gate.min_value" in broken.descriptions_by_key[dg.AssetKey(["spec_errors", "broken"])]
    result = dg.materialize([broken], raise_on_error=False)
    assert not result.success
    assert "broken.yaml" in str(result.get_step_failure_events()[0].step_failure_data.error)
