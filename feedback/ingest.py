"""Batch feedback files: format detection, streaming row parsing and row validation. Pure: no I/O
beyond the file object it is given, so the API and the S3 drop-folder worker share it.

Accepted formats (one row = one text a user wants reviewed):

- CSV with a header row holding a ``text`` column, plus optional ``label`` (the correct label),
  ``predicted_label``, ``verdict`` (like/dislike), ``comment``, ``prediction_id``; or the
  header-less two-column ``label,text`` layout Comprehend uses for training data.
- JSONL: one object per line with the same keys.
- JSON in the shape of the Comprehend active-learning sample,
  ``{"classifier": "<name>", "sentences": ["text", ...]}``; a sentence may also be an object
  with the JSONL keys.

Everything streams (csv reader over bounded lines, ijson for the JSON document), so memory does
not grow with the number of rows. A file-level problem raises ``MalformedFile``; a bad row
yields a ``RowError`` and parsing carries on.

Every row is bounded before it is parsed (``RowLimits``): a JSONL line longer than
``max_line_bytes`` or nested deeper than ``max_depth`` is a row error without ``json.loads`` ever
seeing it (200,000 ``[`` used to raise RecursionError, a 500, and a drop-folder file retried
forever); a CSV line over the limit rejects the file (a CSV row may span lines, so it has no
per-row recovery). Then each field: text, labels and predicted labels by length, labels by the
classifier's label set, and every string must be valid Unicode (a ``\ud800`` escape decodes to a
lone surrogate that no encoder downstream accepts).
"""

from __future__ import annotations

import codecs
import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any, Literal

import ijson

from infra.tenants import ClassifierConfig

Format = Literal["csv", "jsonl", "json"]
FORMATS: tuple[Format, ...] = ("csv", "jsonl", "json")
SNIFF_BYTES = 64 * 1024
MAX_COMMENT_CHARS = 2000
MAX_ID_CHARS = 64
SKIP_CHUNK = 1 << 16  # reading past an over-long line, this much at a time


@dataclass(frozen=True)
class RowLimits:
    """Per-row bounds, from settings (``SIFT_MAX_TEXT_CHARS``, ``SIFT_MAX_LABEL_CHARS``, ...)."""

    max_text_chars: int = 10_000
    max_label_chars: int = 64
    max_line_bytes: int = 256 * 1024
    max_depth: int = 8

    @classmethod
    def from_settings(cls, settings: Any) -> RowLimits:
        return cls(max_text_chars=settings.max_text_chars, max_label_chars=settings.max_label_chars,
                   max_line_bytes=settings.max_upload_line_bytes, max_depth=settings.max_upload_json_depth)

# column / key aliases → canonical field
ALIASES = {
    "text": "text", "sentence": "text", "utterance": "text",
    "label": "label", "correct_label": "label", "suggested_label": "label",
    "predicted_label": "predicted_label", "prediction": "predicted_label",
    "verdict": "verdict", "comment": "comment", "prediction_id": "prediction_id",
}


class MalformedFile(ValueError):
    """The file as a whole cannot be read in the detected format; the message is user-facing."""


@dataclass(frozen=True)
class FeedbackRow:
    row: int  # 1-based data row (header excluded); JSONL: line number; JSON: sentence index + 1
    text: str
    label: str | None = None
    predicted_label: str | None = None
    verdict: Literal["like", "dislike"] | None = None
    comment: str | None = None
    prediction_id: str | None = None


@dataclass(frozen=True)
class RowError:
    row: int
    reason: str


def detect_format(filename: str | None, head: bytes) -> Format:
    """By extension first, then by content: the first bytes decide between JSON, JSONL and CSV."""
    name = (filename or "").lower()
    if name.endswith(".csv"):
        return "csv"
    if name.endswith((".jsonl", ".ndjson")):
        return "jsonl"
    text = head.decode("utf-8-sig", errors="replace").lstrip()
    if not text:
        raise MalformedFile("the file is empty")
    if text.startswith("{"):
        first, _, rest = text.partition("\n")
        try:
            obj = json.loads(first)
        except ValueError:
            return "json"  # a multi-line JSON document
        if isinstance(obj, dict) and "sentences" in obj:
            return "json"
        return "jsonl" if rest.strip() or not name.endswith(".json") else "json"
    if text.startswith("["):
        raise MalformedFile(
            "a top-level JSON array is not supported: send JSONL (one object per line) or "
            '{"classifier": ..., "sentences": [...]}'
        )
    if name.endswith(".json"):
        raise MalformedFile("the .json file does not start with '{'")
    return "csv"


def _bounded_lines(raw: IO[bytes], max_bytes: int) -> Iterator[bytes | None]:
    """Physical lines (with their b"\n"), or None for a line over ``max_bytes`` (its bytes skipped).

    Memory stays at one bounded line whatever the file holds.
    """
    while True:
        line = raw.readline(max_bytes + 1)
        if not line:
            return
        if len(line) <= max_bytes or line.endswith(b"\n"):
            yield line
            continue
        while True:  # an over-long line: read on to its end without keeping it
            rest = raw.readline(SKIP_CHUNK)
            if not rest or rest.endswith(b"\n"):
                break
        yield None


def json_depth_exceeds(line: str, limit: int) -> bool:
    """True when the JSON text nests deeper than ``limit`` (brackets inside strings do not count)."""
    if line.count("[") + line.count("{") <= limit:
        return False  # cheap, C-speed: cannot be deeper than the number of openers
    depth = 0
    in_string = escaped = False
    for ch in line:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            if depth > limit:
                return True
        elif ch in "]}":
            depth -= 1
    return False


def _canonical(obj: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in obj.items():
        field = ALIASES.get(str(key).strip().lower())
        if field and field not in out:
            out[field] = value
    return out


def iter_raw_rows(raw: IO[bytes], fmt: Format, classifier: str, limits: RowLimits = RowLimits()
                  ) -> Iterator[tuple[int, dict[str, Any] | str]]:
    """(row number, canonical fields) per row, or (row number, reason) for a row that is unreadable."""
    if fmt == "csv":
        yield from _csv_rows(raw, limits)
    elif fmt == "jsonl":
        yield from _jsonl_rows(raw, limits)
    elif fmt == "json":
        yield from _json_rows(raw, classifier, limits)
    else:
        raise MalformedFile(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")


def _csv_lines(raw: IO[bytes], max_bytes: int) -> Iterator[str]:
    decoder = codecs.getincrementaldecoder("utf-8-sig")()
    for n, line in enumerate(_bounded_lines(raw, max_bytes), 1):
        if line is None:
            raise MalformedFile(f"line {n} of the CSV file is longer than {max_bytes} bytes")
        yield decoder.decode(line)


def _csv_rows(raw: IO[bytes], limits: RowLimits) -> Iterator[tuple[int, dict[str, Any] | str]]:
    reader = csv.reader(_csv_lines(raw, limits.max_line_bytes))
    row_no = 0
    try:
        header = next(reader, None)
        if header is None:
            raise MalformedFile("the CSV file is empty")
        columns = [ALIASES.get(h.strip().lower()) for h in header]
        if "text" not in columns:
            if len(header) == 2:  # Comprehend training layout: label,text without a header
                columns = ["label", "text"]
                row_no = 1
                yield row_no, {"label": header[0], "text": header[1]}
            else:
                raise MalformedFile(
                    f"the CSV header {header[:10]} has no 'text' column (expected text, and optionally "
                    "label, predicted_label, verdict, comment, prediction_id)"
                )
        for values in reader:
            row_no += 1
            if not values or all(not v.strip() for v in values):
                yield row_no, "empty row"
                continue
            if len(values) > len(columns):
                yield row_no, f"{len(values)} fields, the header has {len(columns)}"
                continue
            yield row_no, {c: v for c, v in zip(columns, values, strict=False) if c}
    except UnicodeDecodeError as exc:
        raise MalformedFile(f"the file is not UTF-8 text (near data row {row_no + 1}): {exc.reason}") from exc
    except csv.Error as exc:
        raise MalformedFile(f"broken CSV near data row {row_no + 1}: {exc}") from exc


def _jsonl_rows(raw: IO[bytes], limits: RowLimits) -> Iterator[tuple[int, dict[str, Any] | str]]:
    decoder = codecs.getincrementaldecoder("utf-8-sig")()
    line_no = 0
    seen_object = False
    try:
        for line_bytes in _bounded_lines(raw, limits.max_line_bytes):
            line_no += 1
            if line_bytes is None:
                yield line_no, f"line longer than {limits.max_line_bytes} bytes"
                continue
            line = decoder.decode(line_bytes).strip()
            if not line:
                continue
            if json_depth_exceeds(line, limits.max_depth):
                yield line_no, f"JSON nested deeper than {limits.max_depth} levels"
                continue
            try:
                obj = json.loads(line)
            except ValueError as exc:
                if not seen_object:
                    raise MalformedFile(f"line {line_no} is not JSON ({exc}); expected one object per line") from exc
                yield line_no, f"invalid JSON: {exc}"
                continue
            if not isinstance(obj, dict):
                yield line_no, f"expected a JSON object, got {type(obj).__name__}"
                continue
            seen_object = True
            yield line_no, _canonical(obj)
    except UnicodeDecodeError as exc:
        raise MalformedFile(f"the file is not UTF-8 text (line {line_no}): {exc.reason}") from exc
    if not seen_object:
        raise MalformedFile("the JSONL file has no rows")


def _json_rows(raw: IO[bytes], classifier: str, limits: RowLimits) -> Iterator[tuple[int, dict[str, Any] | str]]:
    """Stream ``sentences`` items; checks ``classifier`` wherever it appears in the object."""
    row_no = 0
    saw_sentences = False
    depth_item: list[Any] = []
    try:
        parser = ijson.parse(raw, use_float=True)
        for prefix, event, value in parser:
            if prefix == "" and event not in ("start_map", "end_map", "map_key"):
                raise MalformedFile("the JSON document must be an object with a 'sentences' list")
            if prefix == "classifier" and event == "string" and value != classifier:
                raise MalformedFile(f"the file is for classifier {value!r}, not {classifier!r}")
            if prefix == "sentences":
                if event == "start_array":
                    saw_sentences = True
                elif event not in ("end_array",):
                    raise MalformedFile("'sentences' must be a list")
            elif prefix == "sentences.item":
                if event == "string":
                    row_no += 1
                    yield row_no, {"text": value}
                elif event in ("start_map", "start_array"):
                    depth_item = [_builder_start(event)]
                    row_no += 1
                    obj = _finish_item(parser, depth_item, limits.max_depth)
                    if obj is _TOO_DEEP:
                        yield row_no, f"JSON nested deeper than {limits.max_depth} levels"
                    else:
                        yield row_no, (_canonical(obj) if isinstance(obj, dict) else "expected a string or an object")
                elif event != "map_key":
                    row_no += 1
                    yield row_no, f"expected a string or an object, got {event}"
    except ijson.IncompleteJSONError as exc:
        raise MalformedFile(f"malformed or truncated JSON after {row_no} sentences: {_first_line(exc)}") from exc
    except ijson.JSONError as exc:
        raise MalformedFile(f"malformed JSON after {row_no} sentences: {_first_line(exc)}") from exc
    except UnicodeDecodeError as exc:
        raise MalformedFile(f"the file is not UTF-8 text: {exc.reason}") from exc
    if not saw_sentences:
        raise MalformedFile(
            'the JSON object has no "sentences" list (expected {"classifier": ..., "sentences": [...]})'
        )


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _builder_start(event: str) -> Any:
    return {} if event == "start_map" else []


_TOO_DEEP = object()


def _finish_item(parser: Iterator[tuple[str, str, Any]], stack: list[Any], max_depth: int) -> Any:
    """Assemble one nested sentence object from the remaining ijson events (bounded: one item).

    An item nested deeper than ``max_depth`` is read to its end and returned as ``_TOO_DEEP``.
    """
    key: str | None = None
    keys: list[str | None] = [None]
    while stack:
        _prefix, event, value = next(parser)
        if event == "map_key":
            key = value
            keys[-1] = key
            continue
        if event in ("start_map", "start_array") and len(stack) >= max_depth:
            _skip_item(parser, len(stack) + 1)
            return _TOO_DEEP
        if event in ("start_map", "start_array"):
            child = _builder_start(event)
            _attach(stack[-1], keys[-1], child)
            stack.append(child)
            keys.append(None)
            continue
        if event in ("end_map", "end_array"):
            done = stack.pop()
            keys.pop()
            if not stack:
                return done
            continue
        _attach(stack[-1], keys[-1], value)
    return None


def _skip_item(parser: Iterator[tuple[str, str, Any]], depth: int) -> None:
    """Consume events until ``depth`` open containers are closed, keeping nothing."""
    while depth:
        _prefix, event, _value = next(parser)
        if event in ("start_map", "start_array"):
            depth += 1
        elif event in ("end_map", "end_array"):
            depth -= 1


def _attach(container: Any, key: str | None, value: Any) -> None:
    if isinstance(container, dict):
        container[key] = value
    else:
        container.append(value)


def _check_unicode(name: str, value: str) -> None:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"{name}: invalid Unicode at character {exc.start} ({exc.reason})") from None


def _opt_str(fields: dict[str, Any], name: str) -> str | None:
    value = fields.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a string")
    _check_unicode(name, value)
    value = value.strip()
    return value or None


def _label(fields: dict[str, Any], name: str, cfg: ClassifierConfig, limits: RowLimits) -> str | None:
    value = _opt_str(fields, name)
    if value is None:
        return None
    if len(value) > limits.max_label_chars:
        raise ValueError(f"{name} has {len(value)} characters; the limit is {limits.max_label_chars}")
    if value not in cfg.labels:
        what = "unknown label" if name == "label" else f"{name}: unknown label"
        raise ValueError(f"{what} {value!r} (labels: {', '.join(cfg.labels)})")
    return value


def validate_row(row_no: int, fields: dict[str, Any], cfg: ClassifierConfig,
                 limits: RowLimits = RowLimits()) -> FeedbackRow:
    """A checked row, or ValueError with the reason shown to the uploader."""
    text = fields.get("text")
    if not isinstance(text, str):
        raise ValueError("missing text" if text is None else "text must be a string")
    if len(text) > limits.max_text_chars:
        raise ValueError(f"text has {len(text)} characters; the limit is {limits.max_text_chars}")
    _check_unicode("text", text)
    if not text.strip():
        raise ValueError("empty text")
    label = _label(fields, "label", cfg, limits)
    predicted = _label(fields, "predicted_label", cfg, limits)
    verdict = _opt_str(fields, "verdict")
    if verdict is not None:
        verdict = verdict.lower()
        if verdict not in ("like", "dislike"):
            raise ValueError(f"verdict must be 'like' or 'dislike', not {verdict!r}")
    comment = _opt_str(fields, "comment")
    if comment is not None and len(comment) > MAX_COMMENT_CHARS:
        raise ValueError(f"comment has {len(comment)} characters; the limit is {MAX_COMMENT_CHARS}")
    prediction_id = _opt_str(fields, "prediction_id")
    if prediction_id is not None and len(prediction_id) > MAX_ID_CHARS:
        raise ValueError(f"prediction_id longer than {MAX_ID_CHARS} characters")
    return FeedbackRow(row=row_no, text=text, label=label, predicted_label=predicted,
                       verdict=verdict, comment=comment, prediction_id=prediction_id)  # type: ignore[arg-type]


def iter_rows(
    raw: IO[bytes], fmt: Format, cfg: ClassifierConfig, limits: RowLimits = RowLimits()
) -> Iterator[FeedbackRow | RowError]:
    """Validated rows and row errors, in file order; raises MalformedFile for file-level problems."""
    for row_no, fields in iter_raw_rows(raw, fmt, cfg.name, limits):
        if isinstance(fields, str):
            yield RowError(row_no, fields)
            continue
        try:
            yield validate_row(row_no, fields, cfg, limits)
        except ValueError as exc:
            yield RowError(row_no, str(exc))
