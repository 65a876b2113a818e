"""Load generator, run as its own process: closed loop (N clients) or open loop (fixed rate).

Bounded in request count and time. Prints one JSON object: texts/s, p50, p99, errors, and how many
answers said ``review_requested`` (Sift's routed share; the baseline never routes).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time

import httpx


def routed(body: bytes) -> bool:
    """Whether Sift's answer says the text was routed to review (a cheap test: no JSON parse)."""
    return b'"review_requested":true' in body or b'"review_requested": true' in body


async def closed_loop(url: str, headers: dict, texts: list[str], concurrency: int, duration: float,
                      max_requests: int) -> dict:
    latencies: list[float] = []
    errors = 0
    sent = 0
    n_routed = 0
    deadline = time.perf_counter() + duration
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:

        async def worker(seed: int) -> None:
            nonlocal errors, sent, n_routed
            rng = random.Random(seed)
            while time.perf_counter() < deadline and sent < max_requests:
                sent += 1
                t0 = time.perf_counter()
                try:
                    r = await client.post(url, json={"text": rng.choice(texts)}, headers=headers)
                    ok = r.status_code == 200
                except httpx.HTTPError:
                    ok = False
                if ok:
                    latencies.append(time.perf_counter() - t0)
                    n_routed += routed(r.content)
                else:
                    errors += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker(i) for i in range(concurrency)))
        elapsed = time.perf_counter() - started
    return summarize(latencies, errors, elapsed, n_routed)


async def open_loop(url: str, headers: dict, texts: list[str], rate: float, duration: float) -> dict:
    latencies: list[float] = []
    errors = 0
    n_routed = 0
    rng = random.Random(7)
    n = int(rate * duration)
    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=256), timeout=30) as client:

        async def one(text: str) -> None:
            nonlocal errors, n_routed
            t0 = time.perf_counter()
            try:
                r = await client.post(url, json={"text": text}, headers=headers)
                ok = r.status_code == 200
            except httpx.HTTPError:
                ok = False
            if ok:
                latencies.append(time.perf_counter() - t0)
                n_routed += routed(r.content)
            else:
                errors += 1

        started = time.perf_counter()
        tasks = []
        for i in range(n):
            target = started + i / rate
            delay = target - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(rng.choice(texts))))
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - started
    return summarize(latencies, errors, elapsed, n_routed)


def summarize(latencies: list[float], errors: int, elapsed: float, n_routed: int = 0) -> dict:
    lat = sorted(latencies)

    def pct(p: float) -> float:
        return lat[min(len(lat) - 1, int(p * len(lat)))] * 1000 if lat else float("nan")

    return {"requests": len(lat), "errors": errors, "seconds": elapsed, "routed": n_routed,
            "texts_per_s": len(lat) / elapsed if elapsed else 0.0, "p50_ms": pct(0.50), "p99_ms": pct(0.99)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--api-key", default="")
    ap.add_argument("--texts", required=True, help="JSON list of texts")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--rate", type=float, default=0.0, help="open loop at this many requests/s")
    ap.add_argument("--duration", type=float, default=20.0)
    ap.add_argument("--max-requests", type=int, default=20_000)
    args = ap.parse_args()
    with open(args.texts) as f:
        texts = json.load(f)
    headers = {"x-api-key": args.api_key} if args.api_key else {}
    if args.rate > 0:
        result = asyncio.run(open_loop(args.url, headers, texts, args.rate, min(args.duration, 60)))
    else:
        result = asyncio.run(closed_loop(args.url, headers, texts, args.concurrency, min(args.duration, 120),
                                         args.max_requests))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
