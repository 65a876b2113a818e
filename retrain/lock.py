"""A per-classifier lease in the object store, so retrain jobs and rollbacks of one classifier run
one at a time wherever they start (the worker, the admin API, the CLI, on any machine).

Every write is a conditional PUT decided by the S3 server: ``If-None-Match: *`` creates the lease,
``If-Match: <etag>`` takes over an expired one and renews it. Of two jobs racing for the same
lease exactly one write succeeds; the other gets 412 and backs off. A lease expires (``ttl_s``)
unless its holder renews it, so a crashed job never blocks the classifier for good.

The renewer survives transient S3 errors (it retries on its next tick); the lease counts as lost
once a renewal is refused (someone took it over) or no renewal succeeded before the lease's own
expiry. A holder calls ``check()`` (a renewal on the spot) before any step that must not run twice:
promotion.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
import uuid

from infra.objectstore import ObjectStore, PreconditionFailed
from retrain import paths

log = logging.getLogger(__name__)


class LockBusy(RuntimeError):
    """Another job holds the classifier's lease; the message names it."""


class LeaseLost(RuntimeError):
    """This holder's lease expired or was taken over; whatever it was about to do must not happen."""


class ClassifierLease:
    def __init__(self, store: ObjectStore, classifier: str, *, ttl_s: float = 120.0, holder: str = "",
                 renew_every_s: float | None = None) -> None:
        self.store = store
        self.classifier = classifier
        self.key = paths.lock(classifier)
        self.ttl_s = ttl_s
        self.renew_every_s = renew_every_s or ttl_s / 3
        self.renewals = 0
        self.renew_failures = 0
        self.token = uuid.uuid4().hex
        self.holder = holder or f"{socket.gethostname()}:{os.getpid()}"
        self._etag: str | None = None
        self._expires_at = 0.0  # of our last successful write, by our clock
        self._lost = threading.Event()
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    def _write(self, etag: str | None) -> None:
        expires = time.time() + self.ttl_s
        body = json.dumps({"token": self.token, "holder": self.holder, "expires_at": expires}).encode()
        self._etag = self.store.put_if(self.key, body, etag=etag)
        self._expires_at = expires

    def acquire(self) -> ClassifierLease:
        try:
            self._write(None)
        except PreconditionFailed:
            self._take_over()
        self._renewer = threading.Thread(target=self._renew, name=f"lease-{self.classifier}", daemon=True)
        self._renewer.start()
        return self

    def _take_over(self) -> None:
        found = self.store.get_with_etag(self.key)
        if found is None:  # released between our create and this read: one more create, same race rules
            try:
                return self._write(None)
            except PreconditionFailed:
                raise LockBusy(f"a retrain job of {self.classifier!r} just started elsewhere") from None
        data, etag = found
        held = json.loads(data)
        if held.get("expires_at", 0) > time.time():
            raise LockBusy(f"a retrain job of {self.classifier!r} is already running ({held.get('holder')})")
        try:
            self._write(etag)
        except PreconditionFailed:
            raise LockBusy(f"the expired retrain lease of {self.classifier!r} was just taken over elsewhere") from None
        log.warning("took over the expired retrain lease of %s from %s", self.classifier, held.get("holder"))

    def renew(self) -> bool:
        """Extend the lease once; False once it is lost. A transient S3 error only counts a failure."""
        if self._lost.is_set():
            return False
        try:
            self._write(self._etag)
            self.renewals += 1
        except PreconditionFailed:
            if self._adopt_own_write():
                return self.renew()
            log.error("lost the retrain lease of %s: another holder took it over", self.classifier)
            self._lost.set()
        except Exception:  # S3 briefly unreachable: the lease is still ours until it expires
            self.renew_failures += 1
            log.warning("could not renew the retrain lease of %s; retrying", self.classifier, exc_info=True)
            if time.time() >= self._expires_at:
                log.error("the retrain lease of %s expired before it could be renewed", self.classifier)
                self._lost.set()
        return not self._lost.is_set()

    def _adopt_own_write(self) -> bool:
        """A renewal whose response was lost may still have been applied: then the stored lease is
        ours under a new ETag, not someone else's."""
        try:
            found = self.store.get_with_etag(self.key)
        except Exception:
            return False
        if found is None or json.loads(found[0]).get("token") != self.token or found[1] == self._etag:
            return False
        self._etag = found[1]
        return True

    def _renew(self) -> None:
        while not self._stop.wait(self.renew_every_s) and self.renew():
            pass

    @property
    def held(self) -> bool:
        return self._etag is not None and not self._lost.is_set() and time.time() < self._expires_at

    def check(self) -> None:
        """Raise ``LeaseLost`` unless the lease is still ours: a renewal now, so a takeover since the
        last tick is seen (the server refuses our stale ETag), not only an expiry by our clock."""
        if not (self.renew() and self.held):
            raise LeaseLost(f"the retrain lease of {self.classifier!r} was lost (expired or taken over)")

    def release(self) -> None:
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join(timeout=5)
        if not self.held:
            return
        with contextlib.suppress(Exception):  # best effort: an unreleased lease expires by itself
            found = self.store.get_with_etag(self.key)
            if found is not None and found[1] == self._etag:
                self.store.delete(self.key)
        self._etag = None

    def __enter__(self) -> ClassifierLease:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
