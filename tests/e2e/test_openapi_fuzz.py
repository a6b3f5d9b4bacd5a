"""A bounded schemathesis run against the model server's own OpenAPI document: whatever the generated request,
the answer is never a 5xx."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from tests.support import breast_cancer, fast, serve_model, serving


@pytest.fixture(scope="module")
def api_schema(platform_home):
    serve_model(fast(breast_cancer()))
    return schemathesis.openapi.from_url(f"{serving().base_url}/openapi.json")


def test_no_generated_request_gets_a_5xx(api_schema):
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 10
    failures: list[str] = []
    calls = 0
    for operation in operations:

        @settings(max_examples=10, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        @given(case=operation.as_strategy())
        def call(case):
            nonlocal calls
            calls += 1
            response = case.call(timeout=15)
            if response.status_code >= 500:
                failures.append(f"{case.method} {case.formatted_path} → {response.status_code}: {response.text[:200]}")

        call()
    assert calls >= 50 and not failures, failures[:10]
