"""GPU training benchmark: the platform's torch training function against a bare torch loop, same data and model.

Needs only torch and numpy (pynvml or nvidia-smi for utilization), so it runs on a plain CUDA image.
Both paths train the same MLP on the same synthetic rows with the same batch size, bf16 autocast and AdamW, for the
same number of epochs, after one warm-up epoch each. The platform path also does what training in the platform does:
a validation pass and early-stopping bookkeeping every epoch. Reports samples/s, the platform/bare ratio, GPU
utilization sampled every 100 ms while each path trains, and peak GPU memory. Ends with one JSON line.

    python bench/gpu_train.py            # sized for one H100/H200: about 3 minutes
    python bench/gpu_train.py --smoke    # tiny, on whatever device there is
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mlops_platform.core.torch_training import TabularMLP, choose_device, fit_mlp


class UtilizationSampler:
    """GPU busy percentage sampled in a background thread (NVML, else nvidia-smi)."""

    def __init__(self, index: int = 0, period_s: float = 0.1):
        self.index, self.period_s, self.samples = index, period_s, []
        self._stop = threading.Event()
        try:
            import pynvml

            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            self._read = lambda: pynvml.nvmlDeviceGetUtilizationRates(handle).gpu
            self.source = "nvml"
        except Exception:
            self._read = self._smi
            self.source = "nvidia-smi"

    def _smi(self) -> float:
        out = subprocess.run(["nvidia-smi", f"--id={self.index}", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=5).stdout
        return float(out.strip().splitlines()[0])

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.samples.append(float(self._read()))
            except Exception:
                pass
            self._stop.wait(self.period_s)

    def __enter__(self) -> UtilizationSampler:
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def mean(self) -> float | None:
        # The first and last samples straddle the start and end of the loop.
        trimmed = self.samples[1:-1] if len(self.samples) > 4 else self.samples
        return round(float(np.mean(trimmed)), 1) if trimmed else None


def synthetic(rows: int, features: int, classes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Rows labelled by a random linear teacher with noise: learnable, and as large as we like."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, features), dtype=np.float32)
    teacher = rng.standard_normal((features, classes), dtype=np.float32)
    y = np.argmax(x @ teacher + 0.5 * rng.standard_normal((rows, classes), dtype=np.float32), axis=1)
    return x, y


def bare_loop(x: np.ndarray, y: np.ndarray, *, hidden: list[int], epochs: int, batch_size: int, lr: float,
              device: torch.device, validation_fraction: float, seed: int) -> dict:
    """The same model and batches, written as plainly as torch allows: no validation, no bookkeeping."""
    torch.manual_seed(seed)
    order = np.random.default_rng(seed).permutation(len(x))
    train_idx = order[int(round(len(x) * validation_fraction)):]
    x_train = torch.as_tensor(x[train_idx], device=device)
    y_train = torch.as_tensor(y[train_idx], dtype=torch.long, device=device)
    model = TabularMLP(x.shape[1], int(y.max()) + 1, hidden, 0.1).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    loss_fn = nn.CrossEntropyLoss()
    amp = device.type == "cuda"
    generator = torch.Generator(device=device).manual_seed(seed)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    for _ in range(epochs):
        model.train()
        permutation = torch.randperm(len(x_train), device=device, generator=generator)
        for start in range(0, len(x_train), batch_size):
            batch = permutation[start:start + batch_size]
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
                loss = loss_fn(model(x_train[batch]), y_train[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "samples": epochs * len(x_train)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--features", type=int, default=256)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--hidden", type=int, nargs="+", default=[4096, 4096, 2048])
    parser.add_argument("--batch-size", type=int, default=8192)
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, for a CPU check of the script itself")
    args = parser.parse_args()
    if args.smoke:
        args.rows, args.features, args.hidden, args.batch_size, args.epochs = 4000, 32, [64], 256, 2

    device = choose_device()
    x, y = synthetic(args.rows, args.features, args.classes)
    common = dict(hidden_sizes=args.hidden, epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.lr)
    val_fraction = 0.1

    # Warm-up: cuBLAS heuristics, allocator pools and autocast caches, for both paths alike.
    fit_mlp(x[: args.batch_size * 4], y[: args.batch_size * 4], **{**common, "epochs": 1}, patience=1000)
    bare_loop(x[: args.batch_size * 4], y[: args.batch_size * 4], hidden=args.hidden, epochs=1, batch_size=args.batch_size,
              lr=args.lr, device=device, validation_fraction=val_fraction, seed=1)

    results = {}
    for path in ("bare", "platform"):
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        sampler = UtilizationSampler() if device.type == "cuda" else None
        if sampler:
            sampler.__enter__()
        try:
            if path == "platform":
                # patience above the epoch count: the validation pass runs every epoch but never stops the run early
                model = fit_mlp(x, y, **common, patience=args.epochs + 1, validation_fraction=val_fraction, seed=1)
                seconds, samples = model.report.train_seconds, model.report.samples_seen
                extra = {"best_val_loss": round(model.report.best_val_loss, 4), "mixed_precision": model.report.mixed_precision}
            else:
                run = bare_loop(x, y, hidden=args.hidden, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                                device=device, validation_fraction=val_fraction, seed=1)
                seconds, samples, extra = run["seconds"], run["samples"], {}
        finally:
            if sampler:
                sampler.__exit__()
        results[path] = {
            "samples_per_s": round(samples / seconds, 1),
            "seconds": round(seconds, 2),
            "gpu_util_mean_pct": sampler.mean() if sampler else None,
            "peak_gpu_mem_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None,
            **extra,
        }

    ratio = results["platform"]["samples_per_s"] / results["bare"]["samples_per_s"]
    util = results["platform"]["gpu_util_mean_pct"]
    figures = {
        "benchmark": "gpu_train",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "rows": args.rows, "features": args.features, "hidden": args.hidden, "batch_size": args.batch_size, "epochs": args.epochs,
        "bare": results["bare"],
        "platform": results["platform"],
        "platform_over_bare": round(ratio, 3),
        "targets": {"platform_over_bare": 0.9, "gpu_util_pct": 80},
        "meets_targets": bool(ratio >= 0.9 and util is not None and util >= 80),
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
