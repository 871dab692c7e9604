"""Circuit breakers: stop calling what failed too often lately (a provider, a model server), and probe it
again after a cooldown."""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from inference.errors import InferenceError

logger = logging.getLogger("modelgate.breaker")

# Called as listener(name, state) when a breaker is created (closed) and whenever its state changes: how
# the web tier exports breaker states (core.metrics) without this library knowing of metrics.
state_listeners: list[Callable[[str, str], None]] = []


def _changed(name: str, state: str) -> None:
    for listener in state_listeners:
        try:
            listener(name, state)
        except Exception:  # a metric must never break a call
            logger.exception("breaker state listener failed", extra={"breaker": name})


class CircuitOpen(InferenceError):
    """Refused without calling: the other side failed too often lately. `retry_after` is in seconds."""

    code = "circuit_open"
    retryable = False  # not now: only after retry_after

    def __init__(self, message: str, *, name: str, retry_after: float):
        super().__init__(message)
        self.name = name
        self.retry_after = retry_after


class CircuitBreaker:
    """Closed → open after `threshold` consecutive failed calls → after `cooldown` seconds, half-open:
    one probe call goes through (the others are refused) → its success closes, its failure re-opens.

    A call is one provider call after the SDK's own retries. Only retryable failures count: a 400 is
    the caller's fault, and any answer at all shows the provider is up. A probe whose outcome never
    comes back (a stream dropped unread) frees its slot after another cooldown, so the circuit cannot
    stay stuck half-open. Thread-safe.
    """

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"

    def __init__(self, *, name: str, threshold: int = 5, cooldown: float = 30.0, clock: Callable[[], float] = time.monotonic):
        self.name = name
        self.clock = clock
        self._lock = threading.Lock()
        self.threshold = threshold
        self.cooldown = cooldown
        self._state = self.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._probe_since: float | None = None
        _changed(name, self.CLOSED)

    @property
    def state(self) -> str:
        """One of CLOSED, OPEN, HALF_OPEN; HALF_OPEN as soon as the cooldown is over (the next call is the probe)."""
        with self._lock:
            if self._state == self.OPEN and self.clock() >= self._opened_at + self.cooldown:
                return self.HALF_OPEN
            return self._state

    @property
    def failures(self) -> int:
        """Consecutive failed calls so far (while closed)."""
        with self._lock:
            return self._failures

    def configure(self, *, threshold: int, cooldown: float) -> None:
        with self._lock:
            self.threshold = threshold
            self.cooldown = cooldown

    def admit(self) -> bool:
        """Let a call through, or raise CircuitOpen. Returns True when this call is the half-open probe;
        report its outcome with `probe=True`."""
        with self._lock:
            now = self.clock()
            if self._state == self.CLOSED:
                return False
            if self._state == self.OPEN:
                wait = self._opened_at + self.cooldown - now
                if wait > 0:
                    raise CircuitOpen(
                        f"{self.name}: circuit open after {self.threshold} consecutive failures; "
                        f"the next attempt is allowed in {wait:.1f} s.",
                        name=self.name,
                        retry_after=wait,
                    )
                self._state = self.HALF_OPEN
                _changed(self.name, self.HALF_OPEN)
            elif self._probe_since is not None and now - self._probe_since < self.cooldown:
                wait = self._probe_since + self.cooldown - now
                raise CircuitOpen(
                    f"{self.name}: circuit half-open and a probe call is in flight; retry in {wait:.1f} s at the latest.",
                    name=self.name,
                    retry_after=wait,
                )
            self._probe_since = now
            return True

    def record_success(self, *, probe: bool = False) -> None:
        with self._lock:
            if probe and self._state == self.HALF_OPEN:
                logger.info("circuit closed", extra={"breaker": self.name})
                self._state, self._failures, self._probe_since = self.CLOSED, 0, None
                _changed(self.name, self.CLOSED)
            elif self._state == self.CLOSED:
                self._failures = 0

    def record_failure(self, *, probe: bool = False) -> None:
        with self._lock:
            now = self.clock()
            if probe and self._state == self.HALF_OPEN:
                self._state, self._opened_at, self._probe_since = self.OPEN, now, None
                logger.warning("circuit re-opened: the probe call failed", extra={"breaker": self.name})
                _changed(self.name, self.OPEN)
            elif self._state == self.CLOSED:
                self._failures += 1
                if self._failures >= self.threshold:
                    self._state, self._opened_at = self.OPEN, now
                    logger.warning("circuit opened", extra={"breaker": self.name, "failures": self._failures})
                    _changed(self.name, self.OPEN)
            # A call admitted before the circuit opened and failing afterwards changes nothing.

    def reset(self) -> None:
        """Close the circuit and forget past failures (tests, or an operator who knows the provider is back)."""
        with self._lock:
            changed = self._state != self.CLOSED
            self._state, self._failures, self._probe_since = self.CLOSED, 0, None
            if changed:
                _changed(self.name, self.CLOSED)


_breakers: dict[str, CircuitBreaker] = {}
_breakers_lock = threading.Lock()


def breaker_for(name: str, *, threshold: int = 5, cooldown: float = 30.0) -> CircuitBreaker:
    """The process-wide breaker called `name` (a provider, a model server); the latest threshold and cooldown apply."""
    with _breakers_lock:
        breaker = _breakers.get(name)
        if breaker is None:
            breaker = _breakers[name] = CircuitBreaker(name=name, threshold=threshold, cooldown=cooldown)
            return breaker
    breaker.configure(threshold=threshold, cooldown=cooldown)
    return breaker


class Call:
    """One call through a breaker: admitted at creation (or CircuitOpen), its outcome reported once."""

    __slots__ = ("breaker", "probe", "reported")

    def __init__(self, breaker: CircuitBreaker):
        self.breaker = breaker
        self.probe = breaker.admit()
        self.reported = False

    def succeeded(self) -> None:
        if not self.reported:
            self.reported = True
            self.breaker.record_success(probe=self.probe)

    def failed(self, *, retryable: bool) -> None:
        """A failure that may pass if tried again counts against the breaker; any other shows the
        other side answered, so it is up."""
        if self.reported:
            return
        self.reported = True
        if retryable:
            self.breaker.record_failure(probe=self.probe)
        else:
            self.breaker.record_success(probe=self.probe)
