"""The PyTorch model takes the same platform path as scikit-learn, up to serving."""

from __future__ import annotations

import numpy as np
import pytest
import requests

from mlops_platform.core import data
from mlops_platform.core.spec import load_specs
from tests.support import check_results, materialized, registry, run_job, seed, serving

SPEC = next(s for s in load_specs() if s.name == "digits")


@pytest.fixture(scope="module")
def digits_run(platform_home):
    seed(SPEC)
    result = run_job(SPEC)
    assert result.success, [e.message for e in result.all_events if e.is_failure]
    return result


def test_torch_model_is_logged_gated_promoted_and_served(digits_run):
    assert check_results(digits_run)["quality_gate"].passed
    meta = materialized(digits_run)
    version = meta["endpoint"]["model_version"]
    assert meta["trained_model"]["holdout_f1"] > 0.9

    client = registry().client()
    run = client.get_run(meta["trained_model"]["mlflow_run_id"])
    assert run.data.tags["framework"] == "torch" and run.data.params["torch.hidden_sizes"] == "[128, 64]"

    base = serving().base_url
    metadata = requests.get(f"{base}/v2/models/digits", timeout=5).json()
    assert metadata["platform"] == "mlflow-pytorch" and metadata["versions"] == [version]
    assert metadata["inputs"][0]["shape"] == [-1, 64]

    frame = data.bundled_batches(SPEC.dataset, 1)[0].head(8)
    rows = frame[SPEC.dataset.feature_names].to_numpy(dtype=float).tolist()
    answer = requests.post(f"{base}/v1/models/digits:predict", json={"instances": rows}, timeout=10).json()
    accuracy = np.mean(np.array(answer["predictions"]) == frame[SPEC.dataset.target].to_numpy())
    assert accuracy >= 0.75
    bad = requests.post(f"{base}/v1/models/digits:predict", json={"instances": [[1.0] * 30]}, timeout=10)
    assert bad.status_code == 400 and "needs 64 features" in bad.json()["error"]
