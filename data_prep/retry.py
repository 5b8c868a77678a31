"""Retrying hub requests: transient failures wait and try again, permanent ones stop at once.

A 10B-token run reads ~27 GB from the hub for hours; over that time connections get reset,
reads time out, the hub answers 429 (rate limit) or 5xx (overloaded, deploying). None of that
should cost a shard of redone work and a person to restart the job, so every hub request
(metadata and ranged reads) goes through `with_retries`: exponential backoff from `backoff`
seconds, doubling up to `max_backoff`, each wait jittered to 50-100% (many jobs that failed
together must not retry together), a 429/503's `Retry-After` honoured when it is longer, at
most `attempts` tries and `max_seconds` from the first failure. Each retry is one log line.

Permanent failures -- 401/403 (auth, gated), 404 (no such repo, revision or file), any other
4xx -- are raised at once: waiting does not fix them. The classification walks the exception
chain (`datasets` wraps the hub client's errors) and looks at class names, so it covers the
hub client's httpx2 as well as requests/aiohttp/stdlib errors without importing them.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Callable, TypeVar

T = TypeVar("T")

TRANSIENT_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
# Transport failures of httpx/httpx2 (TransportError covers connect/read/write/pool timeouts,
# ConnectError, ReadError, RemoteProtocolError: a body cut short), requests and aiohttp.
_TRANSIENT_NAMES = frozenset({"TransportError", "TimeoutException", "NetworkError", "ProtocolError",
                              "RemoteProtocolError", "ConnectionError", "Timeout", "ChunkedEncodingError",
                              "ClientConnectionError", "ServerDisconnectedError", "ClientPayloadError",
                              "IncompleteRead", "TruncatedRead"})


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 10         # tries per request, the first included
    max_seconds: float = 900.0  # give up once this long has passed since the request first failed
    backoff: float = 1.0       # first wait; doubles per retry
    max_backoff: float = 60.0  # longest single wait (a Retry-After may ask for more, up to max_seconds)
    timeout: float = 60.0      # seconds without a byte before a request counts as stalled


class TruncatedRead(Exception):
    """A ranged read that came back shorter than asked (a body cut mid-way): transient."""


def status_of(err: BaseException) -> int | None:
    """The HTTP status of the first error in the chain that has one."""
    for e in _chain(err):
        response = getattr(e, "response", None)
        code = getattr(response, "status_code", None) or getattr(response, "status", None)
        if isinstance(code, int):
            return code
    return None


def is_transient(err: BaseException) -> bool:
    """True for failures that may go away by waiting: timeouts, resets, cut bodies, 408/429/5xx."""
    status = status_of(err)
    if status is not None:
        return status in TRANSIENT_STATUS or status >= 500
    if any(type(e).__name__ == "OfflineModeIsEnabled" for e in _chain(err)):
        return False  # HF_HUB_OFFLINE=1: a setting, not a network failure
    for e in _chain(err):
        if isinstance(e, (ConnectionError, TimeoutError)):
            return True
        if any(cls.__name__ in _TRANSIENT_NAMES for cls in type(e).__mro__):
            return True
    return False


def retry_after(err: BaseException) -> float | None:
    for e in _chain(err):
        headers = getattr(getattr(e, "response", None), "headers", None)
        value = headers.get("Retry-After") if headers is not None else None
        if value is not None:
            try:
                return max(0.0, float(value))
            except ValueError:  # the HTTP-date form: fall back to our own backoff
                return None
    return None


def describe(err: BaseException) -> str:
    """One line: the status (if any) and the innermost message."""
    status = status_of(err)
    inner = list(_chain(err))[-1]
    text = " ".join(str(inner).split())[:300] or type(inner).__name__
    return f"{'HTTP %d: ' % status if status else ''}{type(inner).__name__}: {text}"


def _chain(err: BaseException):
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        yield err
        err = err.__cause__ or err.__context__


def with_retries(call: Callable[[], T], what: str, policy: RetryPolicy, log: Callable[[str], None],
                 transient: Callable[[BaseException], bool] = is_transient,
                 sleep: Callable[[float], None] = time.sleep, rng: random.Random | None = None) -> T:
    """call() until it succeeds, a permanent error (raised as is), or the budget is spent (the
    last error raised, with a note of how many tries it had)."""
    rng = rng or random.Random()
    first_failure = None
    for attempt in range(1, policy.attempts + 1):
        try:
            return call()
        except Exception as err:  # noqa: BLE001 - classified below; BaseException (Ctrl-C, Stopped) passes
            if not transient(err):
                raise
            now = time.monotonic()
            first_failure = first_failure or now
            wait = min(policy.max_backoff, policy.backoff * 2 ** (attempt - 1)) * rng.uniform(0.5, 1.0)
            wait = max(wait, retry_after(err) or 0.0)
            spent = now - first_failure
            if attempt == policy.attempts or spent + wait > policy.max_seconds:
                raise RetriesExhausted(what, attempt, spent, err) from err
            log(f"retry {attempt}/{policy.attempts - 1} in {wait:.1f} s: {what}: {describe(err)}")
            sleep(wait)
    raise AssertionError("unreachable")


class RetriesExhausted(Exception):
    """A transient failure that did not go away within the retry budget."""

    def __init__(self, what: str, attempts: int, seconds: float, err: BaseException):
        super().__init__(f"{what}: still failing after {attempts} tries over {seconds:.0f} s "
                         f"({describe(err)})")
        self.last = err
