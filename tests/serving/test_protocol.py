"""Request parsing for KServe V1 and V2: every malformed shape is an InvalidInput with a message."""

import re

import numpy as np
import pytest
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferInput, InferRequest

from mlops_platform.serving import protocol

FEATURES = ["a", "b", "c"]


def test_v1_lists_and_objects():
    assert protocol.parse_v1({"instances": [[1, 2, 3.5]]}, FEATURES).tolist() == [[1.0, 2.0, 3.5]]
    rows = {"instances": [{"c": 3, "a": 1, "b": 2}]}
    assert protocol.parse_v1(rows, FEATURES).tolist() == [[1.0, 2.0, 3.0]]


@pytest.mark.parametrize(
    "body, message",
    [
        ([1, 2], "must be a JSON object"),
        ({"inputs": []}, "must contain 'instances'"),
        ({"instances": "x"}, "'instances' must be a list"),
        ({"instances": []}, "no rows to predict"),
        ({"instances": [[1, 2]]}, "each row needs 3 features, got 2"),
        ({"instances": [[1, 2, 3], [1, 2]]}, "rows have different lengths"),
        ({"instances": [[1, "x", 3]]}, "every value must be a number"),
        ({"instances": [[1, None, 3]]}, "every value must be a number"),
        ({"instances": [{"a": 1, "b": 2}]}, "missing features ['c']"),
        ({"instances": [{"a": 1, "b": 2, "c": 3, "d": 4}]}, "unknown features ['d']"),
        ({"instances": [[1, float("nan"), 3]]}, "finite number"),
        ({"instances": [[1, float("inf"), 3]]}, "finite number"),
        ({"instances": [[1, 10**400, 3]]}, "every value must be a number"),
    ],
)
def test_v1_malformed(body, message):
    with pytest.raises(InvalidInput, match=None) as caught:
        protocol.parse_v1(body, FEATURES)
    assert message in str(caught.value)


def _request(*inputs):
    return InferRequest(model_name="m", infer_inputs=list(inputs))


def test_v2_matrix_and_named_columns():
    matrix = InferInput("input-0", [2, 3], "FP32", data=[1, 2, 3, 4, 5, 6])
    assert protocol.parse_v2(_request(matrix), FEATURES).shape == (2, 3)
    columns = [InferInput(name, [2], "FP64", data=[i, i]) for i, name in enumerate(FEATURES)]
    assert protocol.parse_v2(_request(*columns), FEATURES).tolist() == [[0, 1, 2], [0, 1, 2]]


@pytest.mark.parametrize(
    "inputs, message",
    [
        ([], "at least one input"),
        ([InferInput("x", [2, 3], "FP32", data=[1, 2, 3])], "shape [2, 3] needs 6 values"),
        ([InferInput("x", [1, 2], "FP32", data=[1, 2])], "each row needs 3 features"),
        ([InferInput("x", [1, 3], "BYTES", data=["a", "b", "c"])], "datatype 'BYTES'"),
        ([InferInput("a", [1], "FP32", data=[1]), InferInput("z", [1], "FP32", data=[1])], "unknown ['z']"),
        ([InferInput("x", [2, 3], "FP64", data=[[1, 2, 3], [1, 2]])], "different lengths"),
        ([InferInput("x", [-1, -1], "FP64", data=[1, 2, 3])], "non-negative sizes"),
        ([InferInput("x", [0, 3], "FP64", data=[])], "no rows to predict"),
        ([InferInput("x", [2**62, 4], "FP64", data=[1, 2, 3, 4])], "needs 18446744073709551616 values"),
        ([InferInput("x", [1, 3], "FP64", data=[1, float("nan"), 3])], "finite number"),
        ([InferInput("x", [1, 3], "INT64", data=["a", "b", "c"])], "every value must be a number"),
    ],
)
def test_v2_malformed(inputs, message):
    with pytest.raises(InvalidInput) as caught:
        protocol.parse_v2(_request(*inputs), FEATURES)
    assert message in str(caught.value)


def test_v2_response_carries_labels_probabilities_and_version():
    request = InferRequest(model_name="m", infer_inputs=[], request_id="r1")
    response = protocol.v2_response("m", "7", request, np.array([1, 0]), np.array([[0.2, 0.8], [0.9, 0.1]]))
    rest, _ = response.to_rest()
    assert rest["model_version"] == "7"
    assert [o["name"] for o in rest["outputs"]] == ["predict", "probabilities"]
    assert rest["outputs"][0]["data"] == [1, 0]


TYPED = protocol.InputSchema(("plan", "tenure", "autopay", "signup"), ("string", "number", "boolean", "datetime"))


def test_typed_rows_as_lists_objects_and_v2_tensors_give_the_same_matrix():
    row = ["pro", 12, True, "2025-03-01"]
    as_list = protocol.parse_v1({"instances": [row]}, TYPED)
    as_object = protocol.parse_v1({"instances": [dict(zip(TYPED.names, row, strict=True))]}, TYPED)
    per_column = protocol.parse_v2(InferRequest("m", infer_inputs=[
        InferInput("plan", [1], "BYTES", ["pro"]), InferInput("tenure", [1], "FP64", [12.0]),
        InferInput("autopay", [1], "BOOL", [True]), InferInput("signup", [1], "BYTES", ["2025-03-01"])]), TYPED)
    row_wise = protocol.parse_v2(InferRequest("m", infer_inputs=[
        InferInput("input-0", [1, 4], "BYTES", ["pro", "12", "true", "2025-03-01"])]), TYPED)
    for matrix in (as_list, as_object, per_column, row_wise):
        assert matrix.dtype == object and matrix.shape == (1, 4)
        assert list(matrix[0][:3]) == ["pro", 12.0, True] and str(matrix[0][3]).startswith("2025-03-01")
    assert protocol.parse_v1({"instances": [[94110, 1, False, "2025-01-01"]]}, TYPED)[0][0] == "94110", \
        "a number sent for a category is read as its text"


@pytest.mark.parametrize("value, column, message", [
    ("twelve", 1, "feature 'tenure': every value must be a number"),
    ("yes", 2, "feature 'autopay': every value must be true or false"),
    ("someday", 3, "'someday' is not an ISO 8601"),
    (None, 0, "feature 'plan': null values are not accepted"),
    (["nested"], 0, "every value must be a single value"),
])
def test_a_typed_value_of_the_wrong_kind_is_a_400_naming_the_feature(value, column, message):
    row = ["pro", 12, True, "2025-03-01"]
    row[column] = value
    with pytest.raises(InvalidInput, match=re.escape(message)):
        protocol.parse_v1({"instances": [row]}, TYPED)


def test_outputs_follow_the_signature_and_probabilities_are_for_classifiers():
    labels = np.array(["yes", "no"], dtype=object)
    response = protocol.v2_response("m", "1", None, labels, None, "string", request_id="abc")
    assert response.id == "abc"
    assert [(o.name, o.datatype, o.data) for o in response.outputs] == [("predict", "BYTES", ["yes", "no"])]
    values = protocol.v2_response("m", "1", None, np.array([1.5, 2.0]), None, "double").outputs[0]
    assert (values.datatype, values.data) == ("FP64", [1.5, 2.0])
    assert protocol.output_metadata("double", None) == [{"name": "predict", "datatype": "FP64", "shape": [-1]}]
