"""Bad landing data that used to pass validation and crash later: each case is quarantined with its reason, the run
stops at the blocking check, and nothing is registered."""

from __future__ import annotations

import json

import pytest

from mlops_platform.core import data
from tests.support import breast_cancer, check_results, fast, landing, materialized, registry, run_job, seed

SPEC = fast(breast_cancer())
NAME = SPEC.registered_name


@pytest.fixture(scope="module")
def seeded(platform_home):
    seed(SPEC)
    return platform_home


def good_rows(n: int = 20):
    return data.bundled_batches(SPEC.dataset, 3)[0].head(n).copy()


def versions() -> int:
    return len(registry().client().search_model_versions(f"name='{NAME}'"))


def with_infinity() -> bytes:
    frame = good_rows()
    frame.loc[2, SPEC.dataset.feature_names[0]] = float("inf")
    return data.encode_batch(frame)


def with_unknown_label() -> bytes:
    frame = good_rows()
    frame.loc[4, SPEC.dataset.target] = 7
    return data.encode_batch(frame)


CASES = [
    ("infinite.csv", with_infinity, "infinite value(s) in feature"),
    ("new-label.csv", with_unknown_label, "labels ['7'] in 'target' are not among the declared classes"),
    ("x" * 250 + ".csv", lambda: data.encode_batch(good_rows()), "is not allowed: use at most 128"),
    ("odd name;rm.csv", lambda: data.encode_batch(good_rows()), "is not allowed"),
]


@pytest.mark.parametrize("name, payload, reason", CASES, ids=["inf", "label", "long-name", "odd-name"])
def test_bad_batch_is_quarantined_with_its_reason_and_nothing_is_registered(seeded, name, payload, reason):
    store = landing()
    content = payload()
    (seeded / "landing" / SPEC.name / name).write_bytes(content)  # dropped in by hand, as users do
    before = versions()

    result = run_job(SPEC)

    assert not result.success
    check = check_results(result)["batches_valid"]
    assert not check.passed and reason in check.description
    assert set(materialized(result)) == {"landing_batches"} and versions() == before
    assert name not in store.list_batches(SPEC.name)
    notes = [json.loads(p.read_text()) for p in (seeded / "quarantine" / SPEC.name).glob("*.reason.json")]
    [note] = [n for n in notes if n["batch"] == name]
    assert reason in note["reason"]
    moved = (seeded / "quarantine" / SPEC.name)
    kept = [p for p in moved.iterdir() if not p.name.endswith(".reason.json") and p.read_bytes() == content]
    assert kept, "the batch itself was not kept"


def test_a_symlink_in_landing_is_refused_and_never_followed(seeded, tmp_path):
    secret = tmp_path / "outside.csv"
    secret.write_text("SECRET-FIRST-LINE\n1,2\n")
    link = seeded / "landing" / SPEC.name / "linked.csv"
    link.symlink_to(secret)

    result = run_job(SPEC)

    check = check_results(result)["batches_valid"]
    assert not result.success and "symbolic link: refused, never followed" in check.description
    moved = [p for p in (seeded / "quarantine" / SPEC.name).glob("*-linked.csv")]
    assert len(moved) == 1 and moved[0].is_symlink(), "the link itself is what moves"
    note = moved[0].with_name(moved[0].name + ".reason.json").read_text()
    assert "SECRET" not in note and "SECRET" not in check.description
    assert secret.read_text().startswith("SECRET-FIRST-LINE"), "the file outside landing is untouched"
    assert not link.exists()
