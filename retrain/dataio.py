"""Labeled text in and out: CSV, JSONL, Parquet or a Hugging Face ``datasets`` folder -> ``LabeledText`` rows.

Every loader fails with a ``DataError`` whose message names the file, the line and what is wrong,
because these messages reach operators running ``sift train`` on their own files.
"""

from __future__ import annotations

import csv
import json
import random
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path

from model.data import LabeledText, fingerprint, label_counts

TEXT_FORMATS = (".csv", ".jsonl", ".ndjson", ".parquet")
# the row type and its fingerprint belong to the model (model/data.py); re-exported for the loaders' callers
__all__ = ["DataError", "LabeledText", "fingerprint", "label_counts", "load_labeled", "write_jsonl",
           "stratified_split", "stratified_sample", "TEXT_FORMATS"]


class DataError(ValueError):
    """A labeled data file that cannot be used; the message is user-facing."""


def _require(value: object, what: str, where: str) -> str:
    if value is None:
        raise DataError(f"{where}: missing {what}")
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise DataError(f"{where}: {what} must be a string, got {type(value).__name__}")
    text = str(value)
    if not text.strip():
        raise DataError(f"{where}: empty {what}")
    return text


def _missing_columns(found: Iterable[str], text_column: str, label_column: str, path: Path) -> None:
    found = list(found)
    missing = [c for c in (text_column, label_column) if c not in found]
    if missing:
        raise DataError(
            f"{path}: missing column(s) {', '.join(repr(c) for c in missing)}; found columns {found}"
        )


def _load_csv(path: Path, text_column: str, label_column: str) -> list[LabeledText]:
    rows: list[LabeledText] = []
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames is None:
                raise DataError(f"{path}: file is empty")
            _missing_columns([c.strip() for c in reader.fieldnames], text_column, label_column, path)
            reader.fieldnames = [c.strip() for c in reader.fieldnames]
            for record in reader:
                where = f"{path} line {reader.line_num}"
                if None in record:
                    raise DataError(f"{where}: more fields than the header has columns")
                rows.append(
                    LabeledText(
                        text=_require(record[text_column], f"'{text_column}'", where),
                        label=_require(record[label_column], f"'{label_column}'", where).strip(),
                    )
                )
    except csv.Error as exc:
        raise DataError(f"{path}: broken CSV: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    return rows


def _load_jsonl(path: Path, text_column: str, label_column: str) -> list[LabeledText]:
    rows: list[LabeledText] = []
    try:
        with path.open(encoding="utf-8-sig") as f:
            for n, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                where = f"{path} line {n}"
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataError(f"{where}: invalid JSON: {exc.msg} (column {exc.colno})") from exc
                if not isinstance(record, dict):
                    raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
                if text_column not in record or label_column not in record:
                    _missing_columns(record.keys(), text_column, label_column, Path(where))
                rows.append(
                    LabeledText(
                        text=_require(record[text_column], f"'{text_column}'", where),
                        label=_require(record[label_column], f"'{label_column}'", where).strip(),
                    )
                )
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    return rows


def _from_columns(texts: Sequence[object], labels: Sequence[object], names: list[str] | None,
                  where: str) -> list[LabeledText]:
    rows = []
    for i, (text, label) in enumerate(zip(texts, labels, strict=True)):
        if names is not None and isinstance(label, int) and not isinstance(label, bool):
            if not 0 <= label < len(names):
                raise DataError(f"{where} row {i}: label id {label} outside the {len(names)} class names")
            label = names[label]
        rows.append(LabeledText(text=_require(text, "text", f"{where} row {i}"),
                                label=_require(label, "label", f"{where} row {i}").strip()))
    return rows


def _load_parquet(path: Path, text_column: str, label_column: str) -> list[LabeledText]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for a damaged file
        raise DataError(f"{path}: broken Parquet file: {exc}") from exc
    _missing_columns(table.column_names, text_column, label_column, path)
    return _from_columns(table.column(text_column).to_pylist(), table.column(label_column).to_pylist(),
                         None, str(path))


def _load_hf_dataset(path: Path, text_column: str, label_column: str, split: str | None) -> list[LabeledText]:
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as exc:  # FileNotFoundError or a datasets-specific error for a non-dataset folder
        raise DataError(f"{path}: not a Hugging Face datasets folder (save_to_disk output): {exc}") from exc
    if isinstance(ds, datasets.DatasetDict):
        chosen = split or ("train" if "train" in ds else None)
        if chosen not in ds:
            raise DataError(f"{path}: has splits {list(ds)}; choose one with split=")
        ds = ds[chosen]
    _missing_columns(ds.column_names, text_column, label_column, path)
    feature = ds.features[label_column]
    names = list(feature.names) if isinstance(feature, datasets.ClassLabel) else None
    return _from_columns(ds[text_column], ds[label_column], names, str(path))


def load_labeled(path: str | Path, *, text_column: str = "text", label_column: str = "label",
                 split: str | None = None) -> list[LabeledText]:
    """Read labeled texts from CSV, JSONL, Parquet or a ``datasets`` folder (int labels -> ClassLabel names)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    if path.is_dir():
        rows = _load_hf_dataset(path, text_column, label_column, split)
    else:
        suffix = path.suffix.lower()
        if suffix not in TEXT_FORMATS:
            raise DataError(
                f"{path}: unsupported format {suffix or '(no extension)'!r}; use .csv, .jsonl, .parquet "
                "or a Hugging Face datasets folder"
            )
        if path.stat().st_size == 0:
            raise DataError(f"{path}: file is empty")
        if suffix == ".csv":
            rows = _load_csv(path, text_column, label_column)
        elif suffix == ".parquet":
            rows = _load_parquet(path, text_column, label_column)
        else:
            rows = _load_jsonl(path, text_column, label_column)
    if not rows:
        raise DataError(f"{path}: no labeled rows")
    return rows


def write_jsonl(rows: Iterable[LabeledText], path: str | Path) -> int:
    """Write rows as JSONL (``{"text", "label"}`` per line); returns the count."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps({"text": row.text, "label": row.label}, ensure_ascii=False) + "\n")
            n += 1
    return n


def _by_label(rows: Iterable[LabeledText], seed: int) -> dict[str, list[LabeledText]]:
    """Group rows per label in an order that depends only on the data and the seed, not the input order."""
    groups: dict[str, list[LabeledText]] = defaultdict(list)
    for r in rows:
        groups[r.label].append(r)
    out = {}
    for label in sorted(groups):
        items = sorted(groups[label], key=lambda r: r.text)
        random.Random(f"{seed}:{label}").shuffle(items)
        out[label] = items
    return out


def stratified_split(rows: Sequence[LabeledText], eval_share: float = 0.2, *,
                     seed: int = 0) -> tuple[list[LabeledText], list[LabeledText]]:
    """Deterministic per-label split into (train, eval); a label with >= 2 rows has at least one on each side."""
    if not 0 < eval_share < 1:
        raise ValueError("eval_share must be between 0 and 1")
    train: list[LabeledText] = []
    held: list[LabeledText] = []
    for items in _by_label(rows, seed).values():
        k = round(len(items) * eval_share)
        k = min(max(k, 1), len(items) - 1) if len(items) >= 2 else 0
        held.extend(items[:k])
        train.extend(items[k:])
    rng = random.Random(seed)
    rng.shuffle(train)
    rng.shuffle(held)
    return train, held


def stratified_sample(rows: Sequence[LabeledText], n: int, *, seed: int = 0) -> list[LabeledText]:
    """Deterministic sample of ``n`` rows keeping label proportions (every label keeps at least one row)."""
    if n >= len(rows):
        return list(rows)
    groups = _by_label(rows, seed)
    total = len(rows)
    quota = {label: max(1, int(len(items) * n / total)) for label, items in groups.items()}
    # hand out what rounding down left, largest remainders first
    rest = n - sum(quota.values())
    by_remainder = sorted(groups, key=lambda lb: (len(groups[lb]) * n / total) % 1, reverse=True)
    for label in by_remainder:
        if rest <= 0:
            break
        if quota[label] < len(groups[label]):
            quota[label] += 1
            rest -= 1
    out = [r for label, items in groups.items() for r in items[: quota[label]]]
    random.Random(seed).shuffle(out)
    return out
