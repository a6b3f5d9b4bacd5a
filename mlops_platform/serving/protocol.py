"""KServe V1 and V2 request parsing and response building for tabular classifiers: the protocol lives here."""

from __future__ import annotations

from typing import Any

import numpy as np
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse

_NUMERIC_KINDS = "iuf"
DEFAULT_MAX_ROWS = 2_000  # a maximum-size request holds the GIL for ~15 ms: health checks stay well under 50 ms


class TooManyRows(InvalidInput):
    """More rows in one request than the server takes (answered 413)."""
NUMERIC_V2_TYPES = frozenset({"FP16", "FP32", "FP64", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"})


def _matrix(rows: Any, n_features: int, where: str, max_rows: int = DEFAULT_MAX_ROWS) -> np.ndarray:
    """A finite float matrix from nested lists, with a message for each way it can be malformed."""
    try:
        array = np.asarray(rows)
    except (ValueError, TypeError):  # numpy refuses ragged nesting
        raise InvalidInput(f"{where}: rows have different lengths") from None
    if array.size == 0:
        raise InvalidInput(f"{where}: no rows to predict")
    if array.dtype.kind not in _NUMERIC_KINDS:
        raise InvalidInput(f"{where}: every value must be a number")
    if array.ndim == 1 and n_features == 1:
        array = array.reshape(-1, 1)
    if array.ndim != 2:
        raise InvalidInput(f"{where}: expected a list of rows, each a list of {n_features} numbers")
    if array.shape[1] != n_features:
        raise InvalidInput(f"{where}: each row needs {n_features} features, got {array.shape[1]}")
    if array.shape[0] > max_rows:
        raise TooManyRows(f"{where}: {array.shape[0]} rows in one request; this server takes at most {max_rows}")
    matrix = np.ascontiguousarray(array, dtype=np.float64)
    if not np.isfinite(matrix).all():  # NaN, ±Infinity, or an integer too large for a float
        raise InvalidInput(f"{where}: every value must be a finite number (no NaN or Infinity)")
    return matrix


def row_count(payload: Any) -> int:
    """How many rows a V1 body or V2 request claims, read without converting anything (0 when it cannot say)."""
    if isinstance(payload, dict):
        instances = payload.get("instances")
        return len(instances) if isinstance(instances, list) else 0
    inputs = getattr(payload, "inputs", None) or []
    shape = getattr(inputs[0], "shape", None) if inputs else None
    return shape[0] if shape and isinstance(shape[0], int) else 0


def parse_v1(body: Any, feature_names: list[str], max_rows: int = DEFAULT_MAX_ROWS) -> np.ndarray:
    """`{"instances": [[...], ...]}` or `{"instances": [{"feature": value, ...}, ...]}`."""
    if not isinstance(body, dict):
        raise InvalidInput("request body must be a JSON object with an 'instances' list")
    if "instances" not in body:
        raise InvalidInput("request body must contain 'instances': a list of rows")
    instances = body["instances"]
    if not isinstance(instances, list):
        raise InvalidInput("'instances' must be a list of rows")
    if instances and isinstance(instances[0], dict):
        rows = []
        for i, row in enumerate(instances):
            if not isinstance(row, dict):
                raise InvalidInput(f"instances[{i}]: mixes objects and lists")
            missing = [f for f in feature_names if f not in row]
            unknown = [k for k in row if k not in feature_names]
            if missing or unknown:
                raise InvalidInput(f"instances[{i}]: missing features {missing}, unknown features {unknown}")
            rows.append([row[f] for f in feature_names])
        instances = rows
    if len(instances) > max_rows:  # refused before any row is converted
        raise TooManyRows(f"instances: {len(instances)} rows in one request; this server takes at most {max_rows}")
    return _matrix(instances, len(feature_names), "instances", max_rows)


def parse_v2(request: InferRequest, feature_names: list[str], max_rows: int = DEFAULT_MAX_ROWS) -> np.ndarray:
    """One tensor of shape [rows, features], or one tensor per feature named after it."""
    inputs = request.inputs
    if not inputs:
        raise InvalidInput("request must contain at least one input tensor in 'inputs'")
    n_features = len(feature_names)
    if len(inputs) == 1 and inputs[0].name not in feature_names[1:]:
        return _matrix(_tensor(inputs[0], max_rows * n_features), n_features, f"input {inputs[0].name!r}", max_rows)
    by_name = {tensor.name: tensor for tensor in inputs}
    missing = [f for f in feature_names if f not in by_name]
    unknown = [n for n in by_name if n not in feature_names]
    if missing or unknown:
        raise InvalidInput(f"named inputs must match the features: missing {missing}, unknown {unknown}")
    columns = [_tensor(by_name[f], max_rows).reshape(-1) for f in feature_names]
    if len({len(c) for c in columns}) != 1:
        raise InvalidInput("named input tensors have different lengths")
    return _matrix(np.stack(columns, axis=1), n_features, "inputs", max_rows)


def _tensor(tensor: Any, max_values: int) -> np.ndarray:
    if tensor.datatype not in NUMERIC_V2_TYPES:
        raise InvalidInput(f"input {tensor.name!r}: datatype {tensor.datatype!r} is not one of {sorted(NUMERIC_V2_TYPES)}")
    shape = list(tensor.shape)
    if not shape or any(not isinstance(d, int) or d < 0 for d in shape):
        raise InvalidInput(f"input {tensor.name!r}: shape {shape} must be a list of non-negative sizes")
    data = tensor.data
    if getattr(tensor, "_raw_data", None) is not None:  # raw bytes: the binary extension over REST, raw contents over gRPC
        try:
            flat = tensor.as_numpy().reshape(-1)
        except Exception as exc:  # kserve's decoder checks sizes and datatypes; every failure is the request's
            raise InvalidInput(f"input {tensor.name!r}: binary data does not match shape {shape} and {tensor.datatype}: {exc}") from None
    elif not isinstance(data, list):
        raise InvalidInput(f"input {tensor.name!r}: 'data' must be a list")
    else:
        try:
            flat = np.asarray(data).reshape(-1)
        except (ValueError, TypeError):
            raise InvalidInput(f"input {tensor.name!r}: rows of 'data' have different lengths") from None
    expected = int(np.prod(shape, dtype=object))  # exact: a product that overflows int64 is still just a mismatch
    if len(flat) != expected:
        raise InvalidInput(f"input {tensor.name!r}: shape {shape} needs {expected} values, 'data' has {len(flat)}")
    if len(flat) > max_values:
        raise TooManyRows(f"input {tensor.name!r}: {len(flat)} values in one request; this server takes at most {max_values}")
    if flat.dtype.kind not in _NUMERIC_KINDS:
        raise InvalidInput(f"input {tensor.name!r}: every value must be a number")
    return flat.reshape(shape)


def v1_response(labels: np.ndarray) -> dict:
    return {"predictions": labels.tolist()}


def v2_response(model_name: str, version: str, request: InferRequest | None, labels: np.ndarray,
                proba: np.ndarray) -> InferResponse:
    """`predict` and `probabilities`, as JSON or, when the request asks for it (`binary_data_output`, or
    `binary_data` on a requested output), as raw tensors after the JSON header: the binary tensor data extension."""
    predict = InferOutput(name="predict", shape=list(labels.shape), datatype="INT64")
    predict.set_data_from_numpy(labels.astype(np.int64), binary_data=False)
    probabilities = InferOutput(name="probabilities", shape=list(proba.shape), datatype="FP64")
    probabilities.set_data_from_numpy(proba.astype(np.float64), binary_data=False)
    return InferResponse(
        response_id=(request.id if request is not None else None) or "",
        model_name=model_name,
        model_version=version,
        infer_outputs=[predict, probabilities],
        use_binary_outputs=bool(request is not None and request.use_binary_outputs),
        requested_outputs=request.request_outputs if request is not None else None,
    )


def input_metadata(feature_names: list[str]) -> list[dict]:
    return [{"name": "input-0", "datatype": "FP64", "shape": [-1, len(feature_names)]}]


def output_metadata(n_classes: int) -> list[dict]:
    return [
        {"name": "predict", "datatype": "INT64", "shape": [-1]},
        {"name": "probabilities", "datatype": "FP64", "shape": [-1, n_classes]},
    ]
