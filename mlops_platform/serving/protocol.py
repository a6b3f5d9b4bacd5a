"""KServe V1 and V2 request parsing and response building for tabular models: the protocol lives here.

Inputs follow the model's MLflow signature: when every column is a number, requests become a float matrix (the fast
path); otherwise each column is checked and converted to its type (text for categories, booleans, ISO datetimes)
and the model gets an object matrix. Outputs follow the signature too: V1 `predictions` as numbers or strings, V2
`predict` as FP64, INT64, BOOL or BYTES, and `probabilities` for classifiers only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse

from mlops_platform.core.data import as_category

_NUMERIC_KINDS = "iuf"
DEFAULT_MAX_ROWS = 2_000  # a maximum-size request holds the GIL for ~15 ms: health checks stay well under 50 ms


class TooManyRows(InvalidInput):
    """More rows in one request than the server takes (answered 413)."""
NUMERIC_V2_TYPES = frozenset({"FP16", "FP32", "FP64", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"})
_NUMBER_TYPES = frozenset({"double", "float", "long", "integer"})
_V2_OUTPUT = {"double": "FP64", "float": "FP64", "long": "INT64", "integer": "INT64", "boolean": "BOOL"}  # else BYTES


@dataclass(frozen=True)
class InputSchema:
    """The model's input columns and the kind of value each takes: number, string, boolean or datetime."""

    names: tuple[str, ...]
    kinds: tuple[str, ...]

    @classmethod
    def of(cls, schema: InputSchema | list[str] | tuple[str, ...]) -> InputSchema:
        """A schema as is, or a list of names standing for that many numeric columns."""
        if isinstance(schema, InputSchema):
            return schema
        return cls(tuple(schema), ("number",) * len(schema))

    @classmethod
    def from_signature(cls, names: list[str], mlflow_types: list[str]) -> InputSchema:
        kinds = tuple("number" if t in _NUMBER_TYPES else t if t in ("boolean", "datetime") else "string"
                      for t in (mlflow_types or ["double"] * len(names)))
        return cls(tuple(names), kinds)

    @property
    def numeric(self) -> bool:
        return all(k == "number" for k in self.kinds)

    def __len__(self) -> int:
        return len(self.names)

    def v2_datatype(self, kind: str) -> str:
        return {"number": "FP64", "boolean": "BOOL"}.get(kind, "BYTES")


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


def parse_v1(body: Any, schema: InputSchema | list[str], max_rows: int = DEFAULT_MAX_ROWS) -> np.ndarray:
    """`{"instances": [[...], ...]}` or `{"instances": [{"feature": value, ...}, ...]}`."""
    schema = InputSchema.of(schema)
    feature_names = schema.names
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
    if schema.numeric:
        return _matrix(instances, len(feature_names), "instances", max_rows)
    if not instances:
        raise InvalidInput("instances: no rows to predict")
    for i, row in enumerate(instances):
        if not isinstance(row, list) or len(row) != len(schema):
            raise InvalidInput(f"instances[{i}]: expected a list of {len(schema)} values in the order "
                               f"{list(feature_names)}, or an object keyed by feature")
    return _typed(list(zip(*instances, strict=True)), schema, "instances")


def parse_v2(request: InferRequest, schema: InputSchema | list[str], max_rows: int = DEFAULT_MAX_ROWS) -> np.ndarray:
    """One tensor of shape [rows, features] (BYTES holds every kind of value, row by row), or one tensor per feature
    named after it (BYTES for text and datetimes, BOOL for booleans, a numeric type for numbers)."""
    schema = InputSchema.of(schema)
    feature_names = schema.names
    inputs = request.inputs
    if not inputs:
        raise InvalidInput("request must contain at least one input tensor in 'inputs'")
    n_features = len(feature_names)
    if len(inputs) == 1 and inputs[0].name not in feature_names[1:]:
        tensor = inputs[0]
        if schema.numeric:
            return _matrix(_tensor(tensor, max_rows * n_features), n_features, f"input {tensor.name!r}", max_rows)
        flat = _tensor(tensor, max_rows * n_features, any_type=True)
        if flat.ndim != 2 or flat.shape[1] != n_features:
            raise InvalidInput(f"input {tensor.name!r}: shape {list(flat.shape)} must be [rows, {n_features}]")
        if flat.shape[0] > max_rows:
            raise TooManyRows(f"input {tensor.name!r}: {flat.shape[0]} rows in one request; this server takes at most {max_rows}")
        return _typed([flat[:, j] for j in range(n_features)], schema, f"input {tensor.name!r}", text_numbers=True)
    by_name = {tensor.name: tensor for tensor in inputs}
    missing = [f for f in feature_names if f not in by_name]
    unknown = [n for n in by_name if n not in feature_names]
    if missing or unknown:
        raise InvalidInput(f"named inputs must match the features: missing {missing}, unknown {unknown}")
    if schema.numeric:
        columns = [_tensor(by_name[f], max_rows).reshape(-1) for f in feature_names]
        if len({len(c) for c in columns}) != 1:
            raise InvalidInput("named input tensors have different lengths")
        return _matrix(np.stack(columns, axis=1), n_features, "inputs", max_rows)
    columns = [_tensor(by_name[f], max_rows, any_type=True).reshape(-1) for f in feature_names]
    if len({len(c) for c in columns}) != 1:
        raise InvalidInput("named input tensors have different lengths")
    return _typed(columns, schema, "inputs")


def _typed(columns: list, schema: InputSchema, where: str, text_numbers: bool = False) -> np.ndarray:
    """An object matrix from per-column values, each checked and converted to its column's kind."""
    out = np.empty((len(columns[0]), len(schema)), dtype=object)
    for j, (name, kind, values) in enumerate(zip(schema.names, schema.kinds, columns, strict=True)):
        out[:, j] = _column(values, kind, f"{where}: feature {name!r}", text_numbers)
    return out


def _decode(value: Any) -> Any:
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else value


def _column(values, kind: str, where: str, text_numbers: bool) -> list:
    values = [_decode(v.item() if isinstance(v, np.generic) else v) for v in values]
    if any(v is None for v in values):
        raise InvalidInput(f"{where}: null values are not accepted")
    if kind == "number":
        if text_numbers:
            try:
                values = [float(v) if isinstance(v, str) else v for v in values]
            except ValueError:
                raise InvalidInput(f"{where}: every value must be a number") from None
        if any(isinstance(v, bool) or not isinstance(v, int | float) for v in values):
            raise InvalidInput(f"{where}: every value must be a number")
        floats = [float(v) for v in values]
        if not np.isfinite(floats).all():
            raise InvalidInput(f"{where}: every value must be a finite number (no NaN or Infinity)")
        return floats
    if kind == "boolean":
        if text_numbers:
            values = [{"true": True, "false": False}.get(v.lower(), v) if isinstance(v, str) else v for v in values]
        if any(not isinstance(v, bool) for v in values):
            raise InvalidInput(f"{where}: every value must be true or false")
        return values
    if any(isinstance(v, list | dict) for v in values):
        raise InvalidInput(f"{where}: every value must be a single value")
    if kind == "datetime":
        stamps = pd.to_datetime(pd.Series([str(v) for v in values]), errors="coerce", utc=True, format="mixed")
        if stamps.isna().any():
            raise InvalidInput(f"{where}: {values[int(np.argmax(stamps.isna()))]!r} is not an ISO 8601 date or datetime")
        return list(stamps.dt.tz_localize(None))
    return [as_category(v) for v in values]


def _tensor(tensor: Any, max_values: int, any_type: bool = False) -> np.ndarray:
    if tensor.datatype not in NUMERIC_V2_TYPES and not (any_type and tensor.datatype in ("BYTES", "BOOL")):
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
            flat = (np.asarray(data, dtype=object) if any_type else np.asarray(data)).reshape(-1)
        except (ValueError, TypeError):
            raise InvalidInput(f"input {tensor.name!r}: rows of 'data' have different lengths") from None
    expected = int(np.prod(shape, dtype=object))  # exact: a product that overflows int64 is still just a mismatch
    if len(flat) != expected:
        raise InvalidInput(f"input {tensor.name!r}: shape {shape} needs {expected} values, 'data' has {len(flat)}")
    if expected == 0:  # a shape with a zero in it: nothing to predict, whatever its other sizes say
        raise InvalidInput(f"input {tensor.name!r}: no rows to predict (shape {shape} holds no values)")
    if len(flat) > max_values:
        raise TooManyRows(f"input {tensor.name!r}: {len(flat)} values in one request; this server takes at most {max_values}")
    if flat.dtype.kind not in _NUMERIC_KINDS and not any_type:
        raise InvalidInput(f"input {tensor.name!r}: every value must be a number")
    return flat.reshape(shape)


def v1_response(predictions: np.ndarray) -> dict:
    return {"predictions": predictions.tolist()}


def v2_predictions(predictions: np.ndarray, output_type: str) -> tuple[str, np.ndarray]:
    """The V2 datatype of the model's output (from its signature) and the predictions as that type."""
    datatype = _V2_OUTPUT.get(output_type, "BYTES")
    if datatype == "BYTES":
        return datatype, np.array([str(v) for v in predictions.tolist()], dtype=object)
    return datatype, predictions.astype({"FP64": np.float64, "INT64": np.int64, "BOOL": bool}[datatype])


def v2_response(model_name: str, version: str, request: InferRequest | None, predictions: np.ndarray,
                proba: np.ndarray | None, output_type: str = "long", request_id: str | None = None) -> InferResponse:
    """`predict`, and `probabilities` for a classifier, as JSON or, when the request asks for it
    (`binary_data_output`, or `binary_data` on a requested output), as raw tensors after the JSON header: the binary
    tensor data extension."""
    datatype, values = v2_predictions(predictions, output_type)
    predict = InferOutput(name="predict", shape=list(values.shape), datatype=datatype)
    predict.set_data_from_numpy(values, binary_data=False)
    outputs = [predict]
    if proba is not None:
        probabilities = InferOutput(name="probabilities", shape=list(proba.shape), datatype="FP64")
        probabilities.set_data_from_numpy(proba.astype(np.float64), binary_data=False)
        outputs.append(probabilities)
    return InferResponse(
        response_id=(request.id if request is not None else None) or request_id or "",
        model_name=model_name,
        model_version=version,
        infer_outputs=outputs,
        use_binary_outputs=bool(request is not None and request.use_binary_outputs),
        requested_outputs=request.request_outputs if request is not None else None,
    )


def input_metadata(schema: InputSchema | list[str]) -> list[dict]:
    schema = InputSchema.of(schema)
    if schema.numeric:
        return [{"name": "input-0", "datatype": "FP64", "shape": [-1, len(schema)]}]
    return [{"name": name, "datatype": schema.v2_datatype(kind), "shape": [-1]} for name, kind in zip(schema.names, schema.kinds, strict=True)]


def output_metadata(output_type: str, n_classes: int | None) -> list[dict]:
    outputs = [{"name": "predict", "datatype": _V2_OUTPUT.get(output_type, "BYTES"), "shape": [-1]}]
    if n_classes is not None:
        outputs.append({"name": "probabilities", "datatype": "FP64", "shape": [-1, n_classes]})
    return outputs
