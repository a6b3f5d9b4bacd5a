"""PyTorch training for tabular tasks: an MLP (or the user's own module), a seeded loop with mixed precision and early
stopping, and scikit-learn-compatible estimators around it, so a network sits in the same pipeline as any other model.

The loss and output head follow the task: one logit and binary cross-entropy for two classes, one logit per class and
cross-entropy for more, one output and mean squared error on the standardized target for a regression.

Depends on torch, numpy and scikit-learn only (no Dagster, MLflow or pydantic), so it runs as is on a bare CUDA image.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from torch import nn


class TabularMLP(nn.Module):
    """Standardizes its inputs itself, so the logged model takes raw feature values."""

    def __init__(self, n_features: int, n_outputs: int, hidden_sizes: list[int], dropout: float,
                 mean: np.ndarray | None = None, std: np.ndarray | None = None):
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(mean if mean is not None else np.zeros(n_features), dtype=torch.float32))
        self.register_buffer("std", torch.as_tensor(std if std is not None else np.ones(n_features), dtype=torch.float32))
        layers: list[nn.Module] = []
        width = n_features
        for size in hidden_sizes:
            layers += [nn.Linear(width, size), nn.ReLU(), nn.Dropout(dropout)]
            width = size
        layers.append(nn.Linear(width, n_outputs))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std)


def choose_device(preferred: str | None = None) -> torch.device:
    """CUDA when there is one, else the CPU; `preferred` overrides."""
    if preferred:
        return torch.device(preferred)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass
class TrainReport:
    """What the loop did: for tracking, early-stopping diagnosis and throughput benchmarks."""

    device: str
    epochs_run: int
    best_epoch: int
    best_val_loss: float
    samples_seen: int
    train_seconds: float
    mixed_precision: bool
    history: list[float] = field(default_factory=list)

    @property
    def samples_per_second(self) -> float:
        return self.samples_seen / self.train_seconds if self.train_seconds else 0.0


def _seed(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


class _Standardized(nn.Module):
    """A user's module behind the same input standardization as the platform's MLP."""

    def __init__(self, inner: nn.Module, mean: np.ndarray, std: np.ndarray):
        super().__init__()
        self.inner = inner
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner((x - self.mean) / self.std)


def _import(path: str):
    import importlib

    module, _, name = path.partition(":") if ":" in path else path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def fit_network(
    features: np.ndarray,
    targets: np.ndarray,
    n_outputs: int,
    loss_fn: nn.Module,
    *,
    hidden_sizes: list[int],
    dropout: float = 0.1,
    epochs: int = 60,
    batch_size: int = 64,
    learning_rate: float = 1e-3,
    weight_decay: float = 1e-4,
    patience: int = 8,
    mixed_precision: bool = True,
    validation_fraction: float = 0.1,
    seed: int = 42,
    device: str | None = None,
    module: str | None = None,
    module_params: dict | None = None,
) -> tuple[nn.Module, TrainReport]:
    """Train a network on arrays; early stopping on a held-back validation slice restores the best weights.

    The whole data set sits on the device and batches are index slices, so the GPU is not starved by a loader;
    losses are summed on the device and read once per epoch, so there is no host sync per batch.
    """
    _seed(seed)
    dev = choose_device(device)
    n = len(features)
    order = np.random.default_rng(seed).permutation(n)
    n_val = max(1, int(round(n * validation_fraction))) if patience > 0 and n > 10 else 0
    val_idx, train_idx = order[:n_val], order[n_val:]
    mean = features[train_idx].mean(axis=0)
    std = features[train_idx].std(axis=0)
    std = np.where(std < 1e-6, 1.0, std)  # a constant column must not blow up when it varies later
    target_dtype = torch.long if isinstance(loss_fn, nn.CrossEntropyLoss) else torch.float32

    def on_device(rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        return (torch.as_tensor(features[rows], dtype=torch.float32, device=dev),
                torch.as_tensor(targets[rows], dtype=target_dtype, device=dev))

    x_train, y_train = on_device(train_idx)
    x_val, y_val = on_device(val_idx)

    if module is None:
        model: nn.Module = TabularMLP(features.shape[1], n_outputs, hidden_sizes, dropout, mean, std)
    else:
        model = _Standardized(_import(module)(n_inputs=features.shape[1], n_outputs=n_outputs, **(module_params or {})),
                              mean, std)
    model = model.to(dev)
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=weight_decay)
    amp = mixed_precision and dev.type == "cuda"
    generator = torch.Generator(device=dev).manual_seed(seed)

    def loss_of(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = model(x).float()
        return loss_fn(out.squeeze(-1) if target_dtype == torch.float32 else out, y)

    best_loss, best_epoch, best_state, history = float("inf"), -1, None, []
    samples = 0
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    started = time.perf_counter()
    epoch = -1
    for epoch in range(epochs):
        model.train()
        permutation = torch.randperm(len(x_train), device=dev, generator=generator)
        for start in range(0, len(x_train), batch_size):
            batch = permutation[start:start + batch_size]
            with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=amp):
                loss = loss_of(x_train[batch], y_train[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        samples += len(x_train)
        if n_val:
            model.eval()
            with torch.inference_mode(), torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=amp):
                val_loss = float(loss_of(x_val, y_val))
            history.append(val_loss)
            if val_loss < best_loss - 1e-6:
                best_loss, best_epoch = val_loss, epoch
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            elif epoch - best_epoch >= patience:
                break
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    seconds = time.perf_counter() - started
    if best_state is not None:
        model.load_state_dict(best_state)
    report = TrainReport(device=str(dev), epochs_run=epoch + 1, best_epoch=best_epoch, best_val_loss=best_loss,
                         samples_seen=samples, train_seconds=seconds, mixed_precision=amp, history=history)
    return model.cpu().float().eval(), report


class _TorchEstimator(BaseEstimator):
    """A network as a scikit-learn estimator: `settings` are the spec's `estimator.torch` fields."""

    def __init__(self, settings: dict | None = None, seed: int = 42, device: str | None = None):
        self.settings = settings
        self.seed = seed
        self.device = device

    def _fit(self, features: np.ndarray, targets: np.ndarray, n_outputs: int, loss_fn: nn.Module) -> None:
        settings: dict[str, Any] = {"hidden_sizes": [64, 32], **(self.settings or {})}
        self.module_, self.report_ = fit_network(np.asarray(features, dtype=np.float32), targets, n_outputs, loss_fn,
                                                 seed=self.seed, device=self.device, **settings)
        self.n_features_in_ = features.shape[1]

    def _forward(self, features: np.ndarray) -> torch.Tensor:
        with torch.inference_mode():
            return self.module_(torch.as_tensor(np.asarray(features, dtype=np.float32))).double()

    @property
    def report(self) -> TrainReport:
        return self.report_


class TorchClassifier(ClassifierMixin, _TorchEstimator):
    """Binary: one logit, binary cross-entropy. More classes: one logit each, cross-entropy."""

    def fit(self, features: np.ndarray, labels: np.ndarray) -> TorchClassifier:
        self.classes_, index = np.unique(labels, return_inverse=True)
        if len(self.classes_) == 2:
            self._fit(features, index.astype(np.float32), 1, nn.BCEWithLogitsLoss())
        else:
            self._fit(features, index, len(self.classes_), nn.CrossEntropyLoss())
        return self

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        logits = self._forward(features)
        if len(self.classes_) == 2:
            positive = torch.sigmoid(logits.reshape(-1)).numpy()
            return np.column_stack([1.0 - positive, positive])
        return torch.softmax(logits, dim=1).numpy()

    def predict(self, features: np.ndarray) -> np.ndarray:
        return self.classes_[np.argmax(self.predict_proba(features), axis=1)]


class TorchRegressor(RegressorMixin, _TorchEstimator):
    """One output, mean squared error on the standardized target; predictions are in the target's own units."""

    def fit(self, features: np.ndarray, targets: np.ndarray) -> TorchRegressor:
        targets = np.asarray(targets, dtype=np.float64)
        self.target_mean_, self.target_std_ = float(targets.mean()), float(targets.std()) or 1.0
        self._fit(features, ((targets - self.target_mean_) / self.target_std_).astype(np.float32), 1, nn.MSELoss())
        return self

    def predict(self, features: np.ndarray) -> np.ndarray:
        return self._forward(features).reshape(-1).numpy() * self.target_std_ + self.target_mean_


def fit_mlp(features: np.ndarray, labels: np.ndarray, *, seed: int = 42, device: str | None = None,
            **settings: Any) -> TorchClassifier:
    """A classifier MLP trained on arrays (for benchmarks and tests that need no spec)."""
    return TorchClassifier(settings=settings, seed=seed, device=device).fit(features, labels)
