"""The feedback benchmark's baseline: the plain way to put feedback on Kafka over HTTP, with the
same durability promise as Sift (a 2xx only after the broker acked the event with acks=all).

Same routes and bodies as Sift's feedback API, the same event (``ReviewRequest``) and producer
configuration (``Bus.producer``); no API key, tenant, idempotency or prediction lookup, and no
spool: when the broker is down it answers 503. Single feedback waits for its own ack in a
worker thread; a batch upload is parsed whole, every row is sent, and the answer comes once all
are acked.

    .venv/bin/python bench/feedback_baseline.py --port 18100   # SIFT_KAFKA_BOOTSTRAP etc. from the env
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
from pathlib import Path

import uvicorn
from fastapi import FastAPI, HTTPException, UploadFile
from pydantic import BaseModel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from infra.bus import Bus  # noqa: E402
from infra.events import TOPIC_REVIEW_REQUESTS, ReviewRequest  # noqa: E402
from infra.settings import get_settings  # noqa: E402


class Feedback(BaseModel):
    text: str
    label: str
    verdict: str
    correct_label: str | None = None


def build() -> FastAPI:
    bus = Bus(get_settings())
    bus.ensure_topics()
    producer = bus.producer()
    topic = bus.topic(TOPIC_REVIEW_REQUESTS)
    app = FastAPI()

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/v1/classifiers/{name}/feedback", status_code=202)
    def feedback(name: str, body: Feedback) -> dict[str, str]:
        ev = ReviewRequest(classifier=name, text=body.text, predicted_label=body.label, source="user_feedback",
                           verdict=body.verdict, suggested_label=body.correct_label)
        try:
            producer.send(topic, ev.to_bytes(), key=ev.key()).get(timeout=30)
        except Exception as exc:  # noqa: BLE001 - any broker failure: not accepted
            raise HTTPException(503, f"not acked: {exc}") from exc
        return {"event_id": ev.event_id}

    @app.post("/v1/classifiers/{name}/feedback/batch", status_code=202)
    def batch(name: str, file: UploadFile) -> dict[str, int]:
        rows = csv.DictReader(io.TextIOWrapper(file.file, encoding="utf-8"))
        futures = []
        for row in rows:
            ev = ReviewRequest(classifier=name, text=row["text"], suggested_label=row["label"],
                               source="batch_feedback")
            futures.append(producer.send(topic, ev.to_bytes(), key=ev.key()))
        producer.flush(timeout=300)
        try:
            for f in futures:
                f.get(timeout=0)
        except Exception as exc:  # noqa: BLE001
            raise HTTPException(503, f"not acked: {exc}") from exc
        return {"rows_accepted": len(futures)}

    return app


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    args = ap.parse_args()
    uvicorn.run(build(), host="127.0.0.1", port=args.port, log_level="warning", access_log=False)
