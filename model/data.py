"""The rows a model is trained and scored on, and the two facts recorded about them in every model."""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable

from pydantic import BaseModel, ConfigDict


class LabeledText(BaseModel):
    model_config = ConfigDict(frozen=True)

    text: str
    label: str


def fingerprint(rows: Iterable[LabeledText]) -> str:
    """Order-independent sha256 of ``text\\tlabel`` lines: the dataset version recorded with every model."""
    h = hashlib.sha256()
    for line in sorted(f"{r.text}\t{r.label}" for r in rows):
        h.update(line.encode())
        h.update(b"\n")
    return h.hexdigest()


def label_counts(rows: Iterable[LabeledText]) -> dict[str, int]:
    return dict(sorted(Counter(r.label for r in rows).items()))
