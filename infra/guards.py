"""Request guards that run before any work: body-size limits, rate limits, Unicode checks.

Everything here answers ``{"detail": "<reason>"}`` like the rest of the API, and never reads
more of a request than its limit allows.
"""

from __future__ import annotations

import json
import math
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# multipart uploads of files to review; they get the larger cap (SIFT_MAX_UPLOAD_BYTES)
UPLOAD_PATH = re.compile(r"^/v1/classifiers/[^/]+/feedback/batch$")


def bad_unicode_at(text: str) -> int | None:
    """Index of the first character UTF-8 cannot encode (a lone surrogate, which JSON's ``\\ud800``
    escapes can produce), else None. Such text would fail later in the tokenizer or the broker."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return exc.start
    return None


def unicode_problem(where: str, text: str) -> str | None:
    at = bad_unicode_at(text)
    if at is None:
        return None
    return f"{where} is not valid Unicode: lone surrogate {text[at]!r} at position {at}"


def schema_extra(**extra: Any) -> Callable[[dict[str, Any]], None]:
    """``json_schema_extra`` for request models whose optional fields default to None but refuse
    ``null``: drops the ``"default": null`` the schema would otherwise show, adds ``extra``."""

    def apply(schema: dict[str, Any]) -> None:
        for prop in schema.get("properties", {}).values():
            if "default" in prop and prop["default"] is None:
                del prop["default"]
        schema.update(extra)

    return apply


class BodyLimit:
    """ASGI middleware: 413 for a body over its limit, before the app parses any of it.

    A declared Content-Length over the limit is refused without reading; a body streamed without
    one (or lying about it) is counted chunk by chunk and cut off the moment it passes the limit.
    """

    def __init__(self, app: ASGIApp, max_body_bytes: int, max_upload_bytes: int,
                 is_upload: Callable[[str], bool] = lambda path: UPLOAD_PATH.match(path) is not None) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.max_upload_bytes = max_upload_bytes
        self.is_upload = is_upload

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        upload = self.is_upload(scope["path"])
        limit = self.max_upload_bytes if upload else self.max_body_bytes
        what = "upload" if upload else "request body"
        setting = "SIFT_MAX_UPLOAD_BYTES" if upload else "SIFT_MAX_BODY_BYTES"
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await _send_413(send, f"{what} of {declared} bytes; the limit is {limit} ({setting})")
            return
        seen = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise HTTPException(413, f"{what} over the limit of {limit} bytes ({setting})")
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except HTTPException as exc:  # raised outside a route (no exception handler saw it)
            if exc.status_code != 413 or started:
                raise
            await _send_413(send, str(exc.detail))


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _send_413(send: Send, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


class RateLimiter:
    """Token buckets by key (an API key's hash, a client address), at most ``max_keys`` of them (LRU).

    Thread-safe: dependencies run both on the event loop and in the thread pool.
    """

    def __init__(self, max_keys: int = 50_000, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_keys = max_keys
        self.clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key -> (tokens, updated)
        self._lock = threading.Lock()

    def _level(self, key: str, rate: float, burst: float, now: float) -> float:
        tokens, updated = self._buckets.get(key, (burst, now))
        return min(burst, tokens + (now - updated) * rate)

    def take(self, key: str, rate: float, burst: float) -> float:
        """Take one token: 0.0 when allowed, else the seconds until one is available."""
        with self._lock:
            now = self.clock()
            tokens = self._level(key, rate, burst, now)
            allowed = tokens >= 1
            self._buckets[key] = (tokens - 1 if allowed else tokens, now)
            self._buckets.move_to_end(key)
            while len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
            return 0.0 if allowed else (1 - tokens) / rate

    def wait(self, key: str, rate: float, burst: float) -> float:
        """Like ``take`` without taking: seconds until a token is available (0.0: one is)."""
        with self._lock:
            tokens = self._level(key, rate, burst, self.clock())
            return 0.0 if tokens >= 1 else (1 - tokens) / rate


def too_many(detail: str, wait_s: float) -> HTTPException:
    return HTTPException(429, detail, headers={"Retry-After": str(max(1, math.ceil(wait_s)))})


class AuthFailures:
    """Per client address limit on failed key checks (unknown, invalid or another tenant's key).

    A client that spent its budget gets 429 instead of a key lookup, so guessing keys costs the
    object store nothing and yields nothing; a key already known good is never refused here.
    """

    def __init__(self, per_s: float, burst: float, limiter: RateLimiter | None = None) -> None:
        self.per_s = per_s
        self.burst = burst
        self.limiter = limiter or RateLimiter()

    def check(self, client: str) -> None:
        wait = self.limiter.wait(f"fail:{client}", self.per_s, self.burst)
        if wait:
            raise too_many("too many requests with invalid keys from this address; slow down", wait)

    def failed(self, client: str) -> None:
        self.limiter.take(f"fail:{client}", self.per_s, self.burst)


def client_address(scope_or_request: Any) -> str:
    client = getattr(scope_or_request, "client", None)
    return client.host if client else "unknown"


async def run_checked(check: Callable[[], Awaitable[Any]], on_fail: Callable[[], None]) -> Any:
    """Run a key check; count a 401/403 against the caller before re-raising it."""
    try:
        return await check()
    except HTTPException as exc:
        if exc.status_code in (401, 403):
            on_fail()
        raise


class Guards:
    """The app's limiters (``app.state.guards``); absent on an app that does not set them."""

    def __init__(self, auth_failure_per_s: float, auth_failure_burst: float, max_keys: int = 50_000) -> None:
        self.auth_failures = AuthFailures(auth_failure_per_s, auth_failure_burst, RateLimiter(max_keys))
        self.keys = RateLimiter(max_keys)
