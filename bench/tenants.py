"""Many classifiers on one replica (issue 15 point 3): resident memory and cold-start latency of the
serving engine with a memory budget, against the same engine without one, in one run.

Every classifier resolves to the same model directory (the shipped MiniLM with a fresh 8-way head,
as ``bench/classify.py``), but each is loaded as its own model, exactly as 100 tenants with 100
fine-tuned models would be; the registry download is left out (a local directory), so a cold start
here is the load itself: reading the weights, opening the serving graph, the agreement check and
warm-up. The directory ships its int8 ONNX graph, as every version a retrain job promotes does
(``package_serving_graph``), so no cold load exports. Default serving settings (ONNX Runtime,
int8). Each phase runs in a process of its own, so their RSS do not mix.

1. ``unbounded``: no budget; LOADED classifiers loaded one after another, RSS after each (the
   per-model cost, projected to 100), then the hot classifier's latency alone (HOT_REQUESTS
   sequential single-text requests): the reference for 2.
2. ``budget``: SIFT_MODEL_MEMORY_MB = --budget-mb, 100 classifiers; two hot classifiers under a
   closed loop of one client each, first alone for QUIET_S s (the reference), then while COLD first
   requests go to random other classifiers one after another (each a load, and an eviction once the
   budget is full). Reported: RSS (max sampled, and the process high-water mark), resident models at
   the end, first-request latency of a cold classifier p50/p99, and the hot classifiers' latency
   p50/p99 without and during the cold loads.

3. ``onnx_cache``: what a load costs by where its graph comes from: a folder without a graph
   (exported and quantised at load, the state before packaging), the same version in a model-cache
   folder (``<cache>/<classifier>/<version>/model`` with ``.complete``, as ``Registry.download``
   leaves it) twice (the first load exports and keeps the graph, the second opens it), and the
   packaged folder (opens the shipped graph).

``--profile DIR`` records the budget phase's process with py-spy (``bench/pyspy.py`` summarises it):
where a cold load's time goes while the hot classifiers serve.

    .venv/bin/python bench/tenants.py [--classifiers 100] [--loaded 4] [--cold 12] [--budget-mb 600] [--profile DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

HOT_REQUESTS = 200
QUIET_S = 8.0  # the budget phase's hot clients alone, before the cold loads


def rss_mb() -> tuple[float, float]:
    """(VmRSS, VmHWM) of this process in MB."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return 1000 * s[min(len(s) - 1, int(q * len(s)))] if s else float("nan")


def engine_for(model_dir: Path, budget_mb: float):  # noqa: ANN201 - classifier.engine imported late (torch)
    from classifier.engine import ServingEngine
    from infra.settings import Settings

    s = Settings()
    return ServingEngine(lambda name: ("1", str(model_dir)), max_batch=s.batch_max_size,
                         max_wait_s=s.batch_max_wait_ms / 1000, torch_threads=s.torch_threads,
                         quantize=s.quantize, runtime=s.serving_runtime, long_text=s.long_text_strategy,
                         memory_budget_mb=budget_mb)


async def timed(engine, name: str, text: str) -> float:  # noqa: ANN001
    t0 = time.perf_counter()
    await engine.classify(name, [text])
    return time.perf_counter() - t0


async def unbounded(model_dir: Path, args: argparse.Namespace, texts: list[str]) -> dict:
    engine = engine_for(model_dir, 0)
    rss0 = rss_mb()[0]
    import torch  # noqa: F401 - imported by the engine's first load anyway: RSS before counts it

    rss = [rss_mb()[0]]
    cold: list[float] = []
    for i in range(args.loaded):
        cold.append(await timed(engine, f"c{i}", texts[i]))
        rss.append(rss_mb()[0])
    per_model = (rss[-1] - rss[1]) / max(1, args.loaded - 1)  # the first load also pays for the runtimes
    hot = [await timed(engine, "c0", texts[i % len(texts)]) for i in range(HOT_REQUESTS)]
    return {"loaded": args.loaded, "rss_mb_before": rss0, "rss_mb_after_each": rss, "rss_mb_per_model": per_model,
            "rss_mb_projected_100": rss[1] + per_model * 99, "estimate_mb_per_model":
            sum(engine.resident().values()) / len(engine.resident()) / 2**20,
            "cold_ms": [1000 * c for c in cold], "hot_p50_ms": pct(hot, 0.5), "hot_p99_ms": pct(hot, 0.99)}


async def budget(model_dir: Path, args: argparse.Namespace, texts: list[str]) -> dict:
    engine = engine_for(model_dir, args.budget_mb)
    names = [f"c{i}" for i in range(args.classifiers)]
    hot_names, others = names[:2], names[2:]
    for n in hot_names:
        await engine.classify(n, [texts[0]])
    rng = random.Random(0)
    hot: list[float] = []
    rss_max = rss_mb()[0]
    stop = asyncio.Event()

    async def hot_client(name: str, seed: int) -> None:
        i = seed
        while not stop.is_set():
            hot.append(await timed(engine, name, texts[i % len(texts)]))
            i += 1

    clients = [asyncio.create_task(hot_client(n, k * 7)) for k, n in enumerate(hot_names)]
    cold: list[float] = []
    try:
        await asyncio.sleep(QUIET_S)  # the same two hot clients without cold loads: the reference
        quiet, hot[:] = list(hot), []
        for name in rng.sample(others, args.cold):
            cold.append(await timed(engine, name, texts[rng.randrange(len(texts))]))
            rss_max = max(rss_max, rss_mb()[0])
    finally:
        stop.set()
        await asyncio.gather(*clients)
    resident = engine.resident()
    return {"classifiers": args.classifiers, "budget_mb": args.budget_mb, "cold_requests": len(cold),
            "cold_p50_ms": pct(cold, 0.5), "cold_p99_ms": pct(cold, 0.99), "cold_ms": [1000 * c for c in cold],
            "hot_requests": len(hot), "hot_p50_ms": pct(hot, 0.5), "hot_p99_ms": pct(hot, 0.99),
            "hot_quiet_requests": len(quiet), "hot_quiet_p50_ms": pct(quiet, 0.5), "hot_quiet_p99_ms": pct(quiet, 0.99),
            "rss_mb_max_sampled": rss_max, "rss_mb_high_water": rss_mb()[1], "resident_at_end": len(resident),
            "hot_resident_at_end": all(n in resident for n in hot_names), "evictions": engine.evictions,
            "resident_estimate_mb": sum(resident.values()) / 2**20}


async def onnx_cache(model_dir: Path, args: argparse.Namespace, texts: list[str]) -> dict:
    engine = engine_for(model_dir, 0)
    version = Path(tempfile.mkdtemp(prefix="sift-bench-onnx-cache-")) / "c" / "1"
    (version / "model").mkdir(parents=True)
    plain = version.parent.parent / "plain"
    plain.mkdir()
    for f in model_dir.iterdir():
        if f.name != "onnx":  # the same weights without the packaged graph
            (plain / f.name).symlink_to(f)
            (version / "model" / f.name).symlink_to(f)
    (version / ".complete").touch()
    out = {}
    for label, folder in (("plain_folder_ms", plain), ("first_load_ms", version / "model"),
                          ("cached_reload_ms", version / "model"), ("packaged_ms", model_dir)):
        started = time.perf_counter()
        model = engine.load_model("c", "1", str(folder))
        out[label] = (time.perf_counter() - started) * 1000
        out[f"{label}_backend"] = model.backend
    out["reload_speedup"] = out["first_load_ms"] / out["cached_reload_ms"]
    out["packaged_speedup"] = out["plain_folder_ms"] / out["packaged_ms"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--classifiers", type=int, default=100)
    ap.add_argument("--loaded", type=int, default=4, help="classifiers loaded in the unbounded phase")
    ap.add_argument("--cold", type=int, default=12, help="cold first requests in the budget phase")
    ap.add_argument("--budget-mb", type=float, default=600)
    ap.add_argument("--note", default="")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "tenants.json")
    ap.add_argument("--profile", type=Path, default=None, help="py-spy recording of the budget phase into DIR")
    ap.add_argument("--phase", choices=["unbounded", "budget", "onnx_cache"], help=argparse.SUPPRESS)
    ap.add_argument("--model-dir", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.phase:
        from bench.classify import bench_texts

        texts = bench_texts(200)
        run = {"unbounded": unbounded, "budget": budget, "onnx_cache": onnx_cache}[args.phase]
        print(json.dumps(asyncio.run(run(args.model_dir, args, texts))))
        return

    from bench.classify import make_model_dir
    from bench.common import machine
    from bench.pyspy import record_pid, summarize
    from bench.pyspy import stop as stop_spy
    from model.onnx_export import package_serving_graph

    model_dir = make_model_dir(Path(tempfile.mkdtemp(prefix="sift-bench-tenants-")) / "model")
    package_serving_graph(model_dir, quantize=True)  # what a retrain job ships with a promoted version
    out: dict = {}
    for phase in ("unbounded", "budget", "onnx_cache"):
        cmd = [sys.executable, __file__, "--phase", phase, "--model-dir", str(model_dir),
               "--classifiers", str(args.classifiers), "--loaded", str(args.loaded), "--cold", str(args.cold),
               "--budget-mb", str(args.budget_mb)]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
        spy = None
        if args.profile and phase == "budget":
            spy = record_pid(proc.pid, args.profile / "tenants-budget.raw", 600)
        stdout, stderr = proc.communicate(timeout=1800)
        if spy is not None:
            stop_spy(spy, grace_s=30)  # the phase's process has exited: py-spy ends by itself
            raw = args.profile / "tenants-budget.raw"
            if raw.exists():
                (args.profile / "tenants-budget.txt").write_text(summarize(
                    raw, header=f"# {raw.name}: py-spy --threads --nonblocking, the budget phase "
                                f"({args.cold} cold loads beside two hot classifiers)"))
        if proc.returncode:
            raise SystemExit(f"{phase} failed: {stderr[-3000:]}")
        out[phase] = json.loads(stdout.strip().splitlines()[-1])
        print(phase, json.dumps(out[phase]), flush=True)
    u, b = out["unbounded"], out["budget"]
    lines = [
        f"tenants benchmark: MiniLM (6 layers, fresh 8-way head) per classifier, ONNX Runtime int8; "
        f"{b['classifiers']} classifiers, SIFT_MODEL_MEMORY_MB={b['budget_mb']:g}",
        "",
        "| metric | no budget | budget |",
        "|---|---|---|",
        f"| RSS per loaded model (MB) | {u['rss_mb_per_model']:.0f} "
        f"(engine's estimate {u['estimate_mb_per_model']:.0f}) | |",
        f"| RSS with {b['classifiers']} classifiers (MB) | {u['rss_mb_projected_100']:,.0f} (projected from "
        f"{u['loaded']} loaded) | {b['rss_mb_max_sampled']:,.0f} max sampled, "
        f"{b['rss_mb_high_water']:,.0f} high-water |",
        f"| models resident at the end | {u['loaded']} | {b['resident_at_end']} (evictions {b['evictions']}) |",
        f"| cold first request p50 / p99 (ms) | {pct([c / 1000 for c in u['cold_ms'][1:]], 0.5):.0f} / "
        f"{pct([c / 1000 for c in u['cold_ms'][1:]], 0.99):.0f} | {b['cold_p50_ms']:.0f} / {b['cold_p99_ms']:.0f} |",
        f"| hot classifier p50 / p99 (ms) | {u['hot_p50_ms']:.1f} / {u['hot_p99_ms']:.1f} (one client, alone) | "
        f"{b['hot_p50_ms']:.1f} / {b['hot_p99_ms']:.1f} (two hot clients, during the cold loads) |",
        f"| the same two hot clients without cold loads p50 / p99 (ms) | | {b['hot_quiet_p50_ms']:.1f} / "
        f"{b['hot_quiet_p99_ms']:.1f} (p99 during / without: {b['hot_p99_ms'] / b['hot_quiet_p99_ms']:.2f}x) |",
        "",
        f"load of one version (ms): no graph (export at load) {out['onnx_cache']['plain_folder_ms']:.0f}, "
        f"first load into the model cache {out['onnx_cache']['first_load_ms']:.0f}, cached reload "
        f"{out['onnx_cache']['cached_reload_ms']:.0f} ({out['onnx_cache']['reload_speedup']:.1f}x), packaged graph "
        f"{out['onnx_cache']['packaged_ms']:.0f} ({out['onnx_cache']['packaged_speedup']:.1f}x)",
    ]
    print("\n".join(lines))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({**out, "table": lines, "machine": machine(args.note)}, indent=2))


if __name__ == "__main__":
    main()
