"""A per-classifier lease in the object store, so retrain jobs of one classifier run one at a time.

Works across processes and machines (the worker, the admin API and the CLI may all start jobs).
Taking the lease is a conditional create (``If-None-Match: *``), atomic on S3 and MinIO; the
read-back check after writing covers servers that ignore the condition. A lease expires
(``ttl_s``) unless the holder renews it, so a crashed job never blocks the classifier for good.
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
from typing import Any

from botocore.exceptions import ClientError

from infra.objectstore import ObjectStore
from retrain import paths

log = logging.getLogger(__name__)


class LockBusy(RuntimeError):
    """Another job holds the classifier's lease; the message names it."""


class ClassifierLease:
    def __init__(self, store: ObjectStore, classifier: str, *, ttl_s: float = 120.0, holder: str = "") -> None:
        self.store = store
        self.classifier = classifier
        self.key = paths.lock(classifier)
        self.ttl_s = ttl_s
        self.token = uuid.uuid4().hex
        self.holder = holder or f"{socket.gethostname()}:{os.getpid()}"
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    def _body(self) -> bytes:
        return json.dumps({"token": self.token, "holder": self.holder, "expires_at": time.time() + self.ttl_s}).encode()

    def current(self) -> dict[str, Any] | None:
        return self.store.get_json(self.key)

    def _create(self) -> bool:
        try:
            self.store.client.put_object(Bucket=self.store.bucket, Key=self.key, Body=self._body(),
                                         ContentType="application/json", IfNoneMatch="*")
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in {"PreconditionFailed", "412", "ConditionalRequestConflict"}:
                return False
            raise
        time.sleep(0.05)
        found = self.current()
        return bool(found and found.get("token") == self.token)

    def acquire(self) -> ClassifierLease:
        held = self.current()
        if held is not None:
            if held.get("expires_at", 0) > time.time():
                raise LockBusy(f"a retrain job of {self.classifier!r} is already running ({held.get('holder')}, "
                               f"job {held.get('job_id', '?')})")
            log.warning("taking over the expired retrain lease of %s from %s", self.classifier, held.get("holder"))
            self.store.delete(self.key)
        if not self._create():
            raise LockBusy(f"a retrain job of {self.classifier!r} just started elsewhere")
        self._renewer = threading.Thread(target=self._renew, name=f"lease-{self.classifier}", daemon=True)
        self._renewer.start()
        return self

    def _renew(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            found = self.current()
            if not found or found.get("token") != self.token:
                log.error("lost the retrain lease of %s", self.classifier)
                return
            self.store.put_bytes(self.key, self._body(), "application/json")

    def release(self) -> None:
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join(timeout=5)
        with contextlib.suppress(Exception):
            found = self.current()
            if found and found.get("token") == self.token:
                self.store.delete(self.key)

    def __enter__(self) -> ClassifierLease:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def is_locked(store: ObjectStore, classifier: str) -> bool:
    held = store.get_json(paths.lock(classifier))
    return bool(held and held.get("expires_at", 0) > time.time())
