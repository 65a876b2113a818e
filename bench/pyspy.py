"""py-spy recordings for the benchmarks: record a process, and summarise a raw recording.

A benchmark that misses its target says what limits it; this is where the evidence comes from.
``record`` attaches to a running server (``--pid``) or wraps a command (the load generator);
``summarize`` turns py-spy's raw format (``frame;frame;... count`` per line, root first) into the
two tables the README quotes: own time (the leaf frame) and inclusive time (any frame on the stack).

    .venv/bin/python bench/pyspy.py RAW.txt [--top 25]
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path


def py_spy() -> str:
    return str(Path(sys.executable).parent / "py-spy")


def record_pid(pid: int, out: Path, duration_s: float, *, subprocesses: bool = False) -> subprocess.Popen:
    """Start recording ``pid`` (all threads; its child processes too with ``subprocesses``) for
    ``duration_s``; wait on the returned process, or ``stop`` it earlier."""
    out.parent.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen([py_spy(), "record", "--pid", str(pid), "--threads", "--format", "raw", "--output",
                             str(out), "--duration", str(max(1, int(duration_s))), "--nonblocking",
                             *(["--subprocesses"] if subprocesses else [])],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop(spy: subprocess.Popen, timeout_s: float = 60, *, grace_s: float = 0) -> None:
    """End a recording: after ``grace_s`` for it to end by itself (py-spy stops and writes its file when
    the process it records exits), with SIGINT, on which py-spy writes what it has (as on Ctrl-C)."""
    if grace_s:
        with contextlib.suppress(subprocess.TimeoutExpired):
            spy.wait(timeout=grace_s)
    if spy.poll() is None:
        spy.send_signal(signal.SIGINT)
    spy.wait(timeout=timeout_s)


def wrap(cmd: list[str], out: Path) -> list[str]:
    """``cmd`` run under py-spy (its stdout is the command's)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    return [py_spy(), "record", "--threads", "--format", "raw", "--output", str(out), "--nonblocking", "--", *cmd]


def summarize(raw: Path, top: int = 25, header: str = "", under: str | None = None) -> str:
    """Own and inclusive time; with ``under`` (a frame's name, e.g. ``fine_tune``) also the split of that
    frame's samples by the frame it called (the line it was on), where "which step costs what" shows."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    below: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [f for f in stack.split(";") if f and not f.startswith("thread (")]
        if not frames:
            continue
        total += n
        own[frames[-1]] += n
        for f in set(frames):
            inclusive[f] += n
        if under:
            at = next((i for i, f in enumerate(frames) if f.startswith(f"{under} (")), None)
            if at is not None:
                below[frames[at + 1] if at + 1 < len(frames) else "(its own code)"] += n
    lines = [header] if header else []
    lines.append(f"# samples on CPU (all threads; idle ones are not recorded): {total}")
    for title, counts, k in (("own time", own, min(top, 15)), ("inclusive", inclusive, top)):
        lines.append(f"## {title} (top {k}): samples share frame")
        lines += [f"{n:>6} {n / max(total, 1):>6.1%}  {frame}" for frame, n in counts.most_common(k)]
    if under:
        lines.append(f"## under {under}: samples share (of all) the frame it called")
        lines += [f"{n:>6} {n / max(total, 1):>6.1%}  {frame}" for frame, n in below.most_common(top)]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("raw", type=Path)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--under", help="also split this frame's samples by what it called (e.g. fine_tune)")
    args = ap.parse_args()
    print(summarize(args.raw, args.top, under=args.under), end="")


if __name__ == "__main__":
    main()
