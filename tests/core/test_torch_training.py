"""PyTorch training in the pure core: seeded, with early stopping, on the CPU here."""

from __future__ import annotations

import numpy as np
import pandas as pd

from mlops_platform.core import data
from mlops_platform.core.spec import load_specs
from mlops_platform.core.torch_training import choose_device, fit_mlp

SPEC = next(s for s in load_specs() if s.name == "digits")


def _arrays():
    frame = pd.concat(data.bundled_batches(SPEC.dataset, 1))
    return data.model_input(frame, SPEC.dataset), frame[SPEC.dataset.target].to_numpy()


def test_training_is_seeded_and_stops_early():
    x, y = _arrays()
    settings = dict(hidden_sizes=[32], epochs=200, batch_size=128, learning_rate=0.01, patience=3, seed=3)
    first, second = fit_mlp(x, y, **settings), fit_mlp(x, y, **settings)
    np.testing.assert_allclose(first.predict_proba(x[:50]), second.predict_proba(x[:50]))
    assert first.report.epochs_run < 200, "early stopping never triggered"
    assert first.report.epochs_run - 1 - first.report.best_epoch == 3
    assert first.report.device == str(choose_device()) == "cpu"
    assert not first.report.mixed_precision, "autocast is for CUDA only"
    assert np.allclose(first.predict_proba(x[:5]).sum(axis=1), 1.0)
