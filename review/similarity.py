"""Near-duplicate texts, so that a handful of lightly edited copies cannot fill the review window.

A text's *sketch* is the bottom-k of the hashes of its character 5-grams (after ``normalize``
and dropping punctuation): one CRC32 per shingle, so a 100,000-character text costs milliseconds.
The Jaccard similarity of two shingle sets is estimated from the bottom-k of the union of their
sketches (Broder). Exact repeats never get here: review dedupe merges them into one item.
"""

from __future__ import annotations

import heapq
import re
import zlib

from infra.texts import normalize

SHINGLE = 5
SKETCH = 128
_PUNCT = re.compile(r"[^\w\s]+")


def sketch(text: str, k: int = SKETCH) -> frozenset[int]:
    norm = " ".join(_PUNCT.sub(" ", normalize(text)).split())
    shingles = {norm[i:i + SHINGLE] for i in range(max(1, len(norm) - SHINGLE + 1))}
    return frozenset(heapq.nsmallest(k, {zlib.crc32(s.encode()) for s in shingles}))


def similarity(a: frozenset[int], b: frozenset[int], k: int = SKETCH) -> float:
    """Estimated Jaccard similarity of the two texts' shingle sets (0..1)."""
    if not a or not b:
        return 0.0
    union = heapq.nsmallest(k, a | b)
    return sum(1 for h in union if h in a and h in b) / len(union)
