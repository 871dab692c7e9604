"""The per-process TTL map behind the key, collection and routing-configuration caches."""
from __future__ import annotations

from core.recent import Recent
from tests.conftest import ManualClock


def test_remember_computes_once_per_lifetime_and_keeps_a_missing_row_too():
    clock, calls = ManualClock(), []
    recent: Recent[str, object] = Recent(lambda: 5.0, clock=clock)

    def compute() -> None:
        calls.append(1)
        return None  # "no such row" is an answer worth keeping

    assert recent.remember("spec", compute) is None
    assert recent.remember("spec", compute) is None
    assert len(calls) == 1
    clock.now += 5.0
    recent.remember("spec", compute)
    assert len(calls) == 2


def test_a_lifetime_of_zero_keeps_nothing():
    calls = []
    recent: Recent[str, int] = Recent(lambda: 0)
    for _ in range(3):
        recent.remember("policy", lambda: calls.append(1) or len(calls))
    assert len(calls) == 3


def test_forget_drops_everything():
    recent: Recent[str, int] = Recent(lambda: 60)
    recent.put("a", 1)
    recent.remember("b", lambda: 2)
    recent.forget(sender=object)  # as a signal receiver
    assert recent.get("a") is None and recent.remember("b", lambda: 3) == 3
