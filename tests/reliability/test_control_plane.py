"""The control plane of the local server: routing and repository changes need the bearer token, only judged version
numbers may serve unless forced, and a refused change changes nothing."""

from __future__ import annotations

import stat

import pytest
import requests

from tests.support import breast_cancer, fast, register_copy_of_champion, registry, serve_model, serving

SPEC = fast(breast_cancer())
NAME = SPEC.registered_name


@pytest.fixture(scope="module")
def champion(platform_home) -> str:
    serve_model(SPEC)
    return registry().version_for(NAME, "champion")


def routing_url() -> str:
    return f"{serving().base_url}/mlops/v1/endpoints/{NAME}/routing"


def current() -> dict:
    return requests.get(routing_url(), timeout=5).json()


def auth() -> dict:
    return {"Authorization": f"Bearer {serving().process.control_token()}"}


def test_the_token_is_readable_by_its_owner_only(champion):
    mode = stat.S_IMODE(serving().process.token_file.stat().st_mode)
    assert mode == 0o600


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic x"}])
def test_routing_changes_without_the_token_are_refused_and_change_nothing(champion, headers):
    before = current()
    other = register_copy_of_champion(SPEC)
    response = requests.put(routing_url(), json={"stable": other, "force": True}, headers=headers, timeout=10)
    assert response.status_code == 401 and "bearer token" in response.json()["error"]
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert current() == before


def test_repository_unload_without_the_token_is_refused(champion):
    base = serving().base_url
    response = requests.post(f"{base}/v2/repository/models/{NAME}/unload", timeout=10)
    assert response.status_code == 401
    assert requests.get(f"{base}/v2/models/{NAME}/ready", timeout=5).status_code == 200


@pytest.mark.parametrize("stable, status, message", [
    ("latest", 400, "registered version numbers"),
    ("champion", 400, "registered version numbers"),
    ("99999", 409, "not passed the quality gate"),
])
def test_only_numbered_versions_that_passed_the_gate_may_serve(champion, stable, status, message):
    before = current()
    response = requests.put(routing_url(), json={"stable": stable}, headers=auth(), timeout=10)
    assert response.status_code == status and message in response.json()["error"]
    assert current() == before


def test_an_ungated_version_serves_only_when_forced_and_the_force_is_logged(champion):
    other = register_copy_of_champion(SPEC)
    refused = requests.put(routing_url(), json={"stable": other}, headers=auth(), timeout=10)
    assert refused.status_code == 409 and current()["stable"] == champion
    forced = requests.put(routing_url(), json={"stable": other, "force": True}, headers=auth(), timeout=60)
    assert forced.status_code == 200 and current()["stable"] == other
    assert "forced past the quality gate" in serving().process.log_tail(200)
    serving().deploy(NAME, champion)
