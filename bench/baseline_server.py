"""The naive baseline: a FastAPI endpoint that calls a transformers pipeline once per request."""

from __future__ import annotations

import argparse

import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel
from transformers import pipeline


class Body(BaseModel):
    text: str


def build(model_dir: str) -> FastAPI:
    clf = pipeline("text-classification", model=model_dir, tokenizer=model_dir, device=-1, truncation=True,
                   max_length=128)
    app = FastAPI()

    @app.post("/classify")
    def classify(body: Body) -> dict:
        out = clf(body.text)[0]
        return {"label": out["label"], "confidence": float(out["score"])}

    @app.get("/healthz")
    def healthz() -> dict:
        return {"status": "ok"}

    return app


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--port", type=int, required=True)
    args = ap.parse_args()
    uvicorn.run(build(args.model), host="127.0.0.1", port=args.port, log_level="warning", access_log=False)
