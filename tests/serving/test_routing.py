"""Stable/canary routing: the split is exact, bad routings are refused, and the persisted routing survives a restart."""

from __future__ import annotations

import threading

import pytest

from mlops_platform.serving.routing import Routing, RoutingStore, Splitter


@pytest.mark.parametrize("percent", [0, 1, 10, 25, 50, 100])
def test_split_is_exact_in_every_hundred_requests(percent):
    splitter = Splitter(percent)
    for _ in range(3):
        assert sum(splitter.next_is_canary() for _ in range(100)) == percent


def test_split_stays_exact_under_concurrent_requests():
    splitter, hits = Splitter(10), []
    lock = threading.Lock()

    def worker():
        mine = sum(splitter.next_is_canary() for _ in range(1000))
        with lock:
            hits.append(mine)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(hits) == 800


@pytest.mark.parametrize("kwargs, message", [
    ({"stable": "1", "canary": "2", "canary_percent": 101}, "within 0..100"),
    ({"stable": "1", "canary": None, "canary_percent": 10}, "need a canary version"),
])
def test_impossible_routings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Routing(**kwargs)


def test_routing_store_persists_per_endpoint_and_forgets_removed_ones(tmp_path):
    path = tmp_path / "serving" / "routing.json"
    store = RoutingStore(path)
    assert store.load() == {}
    store.save("a", Routing("3", "4", 10))
    store.save("b", Routing("1"))
    store.save("b", None)
    assert RoutingStore(path).load() == {"a": Routing("3", "4", 10)}
    assert not list(path.parent.glob("*.partial")), "the replacement file was left behind"


def test_a_store_without_a_path_keeps_nothing():
    store = RoutingStore(None)
    store.save("a", Routing("1"))
    assert store.load() == {}
