"""Property test of the V2 tensor parser: whatever the shape, datatype and data, the answer is a finite float matrix
of the right width or an InvalidInput (a 4xx), never any other exception (a 5xx)."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferInput, InferRequest

from mlops_platform.serving import protocol

FEATURES = ["a", "b", "c"]
DATATYPES = sorted(protocol.NUMERIC_V2_TYPES) + ["BYTES", "BOOL", "FP8", "", "fp32"]
scalars = st.one_of(st.integers(-(2**70), 2**70), st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=3),
                    st.booleans(), st.none())
flat = st.lists(scalars, max_size=12)
nested = st.lists(st.lists(scalars, max_size=4), max_size=4)
shapes = st.lists(st.integers(-3, 2**63), max_size=3)


@st.composite
def tensors(draw, name: str | None = None):
    return InferInput(name or draw(st.sampled_from(["input-0", *FEATURES, "x"])), draw(shapes),
                      draw(st.sampled_from(DATATYPES)), data=draw(st.one_of(flat, nested)))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(tensors(), min_size=0, max_size=4), st.integers(1, 50))
def test_v2_parser_gives_a_matrix_or_a_4xx(inputs, max_rows):
    request = InferRequest(model_name="m", infer_inputs=inputs)
    try:
        matrix = protocol.parse_v2(request, FEATURES, max_rows)
    except InvalidInput as exc:
        assert str(exc)  # always a message for the client
        return
    assert matrix.dtype == np.float64 and matrix.ndim == 2 and matrix.shape[1] == len(FEATURES)
    assert 1 <= matrix.shape[0] <= max_rows and np.isfinite(matrix).all()


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.floats(allow_nan=False, allow_infinity=False, width=64), min_size=3, max_size=3),
                min_size=1, max_size=20))
def test_well_formed_matrices_round_trip_exactly(rows):
    request = InferRequest(model_name="m", infer_inputs=[InferInput("input-0", [len(rows), 3], "FP64", data=rows)])
    matrix = protocol.parse_v2(request, FEATURES)
    assert all(math.isclose(a, b) or a == b for a, b in zip(matrix.reshape(-1).tolist(), np.ravel(rows), strict=True))
