"""PyTorch training for tabular classifiers: an MLP, a seeded loop with mixed precision and early stopping.

Depends on torch and numpy only (no Dagster, MLflow or pydantic), so it runs as is on a bare CUDA image.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

if TYPE_CHECKING:
    from mlops_platform.core.spec import ModelSpec


class TabularMLP(nn.Module):
    """Standardizes its inputs itself, so the logged model takes raw feature values."""

    def __init__(self, n_features: int, n_classes: int, hidden_sizes: list[int], dropout: float,
                 mean: np.ndarray | None = None, std: np.ndarray | None = None):
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(mean if mean is not None else np.zeros(n_features), dtype=torch.float32))
        self.register_buffer("std", torch.as_tensor(std if std is not None else np.ones(n_features), dtype=torch.float32))
        layers: list[nn.Module] = []
        width = n_features
        for size in hidden_sizes:
            layers += [nn.Linear(width, size), nn.ReLU(), nn.Dropout(dropout)]
            width = size
        layers.append(nn.Linear(width, n_classes))
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


class TorchClassifier:
    """A trained network with the platform's classifier interface (`classes_`, `predict_proba`)."""

    def __init__(self, module: nn.Module, classes: np.ndarray, report: TrainReport | None = None):
        self.module = module.eval()
        self.classes_ = np.asarray(classes)
        self.report = report

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            logits = self.module(torch.as_tensor(features, dtype=torch.float32))
            proba = torch.softmax(logits.double(), dim=1).numpy()
        return proba

    def to_logged(self) -> nn.Module:
        """The module to log to MLflow; the classes travel with it as a buffer."""
        module = self.module.cpu()
        if not hasattr(module, "classes"):
            module.register_buffer("classes", torch.as_tensor(self.classes_))
        return module

    @classmethod
    def from_logged(cls, module: nn.Module) -> TorchClassifier:
        return cls(module.cpu(), module.classes.numpy())


def _seed(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def fit_mlp(
    features: np.ndarray,
    labels: np.ndarray,
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
) -> TorchClassifier:
    """Train an MLP on arrays; early stopping on a held-back validation slice restores the best weights.

    The whole data set sits on the device and batches are index slices, so the GPU is not starved by a loader;
    losses are summed on the device and read once per epoch, so there is no host sync per batch.
    """
    _seed(seed)
    dev = choose_device(device)
    classes, y_index = np.unique(labels, return_inverse=True)
    n = len(features)
    order = np.random.default_rng(seed).permutation(n)
    n_val = max(1, int(round(n * validation_fraction))) if patience > 0 and n > 10 else 0
    val_idx, train_idx = order[:n_val], order[n_val:]
    mean = features[train_idx].mean(axis=0)
    std = features[train_idx].std(axis=0)
    std = np.where(std < 1e-6, 1.0, std)  # a constant column must not blow up when it varies later

    def on_device(rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        return (torch.as_tensor(features[rows], dtype=torch.float32, device=dev),
                torch.as_tensor(y_index[rows], dtype=torch.long, device=dev))

    x_train, y_train = on_device(train_idx)
    x_val, y_val = on_device(val_idx)

    model = TabularMLP(features.shape[1], len(classes), hidden_sizes, dropout, mean, std).to(dev)
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=weight_decay)
    loss_fn = nn.CrossEntropyLoss()
    amp = mixed_precision and dev.type == "cuda"
    generator = torch.Generator(device=dev).manual_seed(seed)

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
                loss = loss_fn(model(x_train[batch]), y_train[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        samples += len(x_train)
        if n_val:
            model.eval()
            with torch.inference_mode(), torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=amp):
                val_loss = float(loss_fn(model(x_val).float(), y_val))
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
    return TorchClassifier(model.cpu().float(), classes, report)


def train_torch(spec: ModelSpec, features: np.ndarray, labels: np.ndarray, device: str | None = None) -> TorchClassifier:
    """The spec's network and loop settings applied to the training rows."""
    settings: dict[str, Any] = spec.estimator.torch.model_dump()
    return fit_mlp(features, labels, seed=spec.dataset.seed, device=device, **settings)
