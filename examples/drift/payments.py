"""Synthetic payments for the drift example: a reference regime the first model learns, and a shifted one in which
amounts double, most payments move to the app, and app payments become the risky ones (so the old model's accuracy
falls). `python examples/drift/payments.py` rewrites `data/reference.csv`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent


def payments(n: int, shifted: bool, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    channel = rng.choice(["web", "app", "store"], n, p=[0.15, 0.75, 0.10] if shifted else [0.5, 0.2, 0.3])
    amount = rng.gamma(2.0, 60.0 if shifted else 30.0, n).round(2)
    tenure = rng.exponential(3.0, n).round(2)
    weekend = rng.random(n) < (0.5 if shifted else 0.28)
    risky = "app" if shifted else "web"
    logit = -2.2 + 0.018 * amount - 0.6 * tenure + 2.2 * (channel == risky) + 0.4 * weekend
    fraud = np.where(rng.random(n) < 1 / (1 + np.exp(-logit)), "yes", "no")
    return pd.DataFrame({"amount": amount, "tenure_years": tenure, "channel": channel, "weekend": weekend,
                         "fraud": fraud})


if __name__ == "__main__":
    payments(3000, shifted=False, seed=0).to_csv(HERE / "data" / "reference.csv", index=False)
