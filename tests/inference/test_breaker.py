"""The circuit breaker alone: counting, opening, one probe at a time, shared per name."""
from __future__ import annotations

import itertools

import pytest

from inference.breaker import Call, CircuitBreaker, CircuitOpen, breaker_for
from tests.conftest import ManualClock

_names = itertools.count()


def test_a_success_resets_the_count_of_consecutive_failures():
    breaker = CircuitBreaker(name="unit", threshold=3, clock=ManualClock())
    for _ in range(2):
        breaker.admit()
        breaker.record_failure()
    breaker.admit()
    breaker.record_success()
    for _ in range(2):
        breaker.admit()
        breaker.record_failure()
    assert breaker.state == CircuitBreaker.CLOSED and breaker.failures == 2


def test_a_probe_that_never_reports_frees_its_slot_after_a_cooldown():
    clock = ManualClock()
    breaker = CircuitBreaker(name="unit", threshold=1, cooldown=10.0, clock=clock)
    breaker.admit()
    breaker.record_failure()
    clock.now += 10.0
    assert breaker.admit() is True  # the probe, which never reports back
    clock.now += 5.0
    with pytest.raises(CircuitOpen, match="in flight"):
        breaker.admit()
    clock.now += 5.0
    assert breaker.admit() is True
    breaker.record_success(probe=True)
    assert breaker.state == CircuitBreaker.CLOSED and breaker.admit() is False


def test_reset_closes_an_open_circuit():
    breaker = CircuitBreaker(name="unit", threshold=1, clock=ManualClock())
    breaker.admit()
    breaker.record_failure()
    assert breaker.state == CircuitBreaker.OPEN
    breaker.reset()
    assert breaker.state == CircuitBreaker.CLOSED and breaker.admit() is False


def test_breakers_are_shared_per_provider_name():
    name = f"test-registry-{next(_names)}"
    first = breaker_for(name, threshold=5, cooldown=30.0)
    second = breaker_for(name, threshold=3, cooldown=10.0)
    assert first is second
    assert (second.threshold, second.cooldown) == (3, 10.0)
    assert breaker_for(f"{name}-other") is not first


def test_a_call_reports_once_and_only_retryable_failures_count():
    breaker = CircuitBreaker(name="unit", threshold=1, clock=ManualClock())
    call = Call(breaker)
    call.failed(retryable=False)  # the other side answered (a 400): it is up
    call.failed(retryable=True)  # already reported: ignored
    assert breaker.state == CircuitBreaker.CLOSED
    Call(breaker).failed(retryable=True)
    assert breaker.state == CircuitBreaker.OPEN
    with pytest.raises(CircuitOpen) as refused:
        Call(breaker)
    assert refused.value.name == "unit" and refused.value.retry_after == pytest.approx(30.0)
