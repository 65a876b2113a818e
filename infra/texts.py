"""One identity for a text within a classifier, used wherever texts are compared: review dedupe
(one review task per text), the fixed evaluation set's membership, near-duplicate and leakage checks.

Case- and whitespace-insensitive, so texts that differ only there are one text everywhere: they
share one review task and always land on the same side of the train/eval split.
"""

from __future__ import annotations

import hashlib


def normalize(text: str) -> str:
    return " ".join(text.split()).casefold()


def text_hash(classifier: str, text: str) -> str:
    return hashlib.sha256(f"{classifier}\x1f{normalize(text)}".encode()).hexdigest()[:24]
