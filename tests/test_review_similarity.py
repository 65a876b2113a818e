"""Near-duplicate sketches: lightly edited copies are close, different texts on one topic are not."""

from __future__ import annotations

import random

from review.similarity import similarity, sketch

OIL = "Oil prices rose sharply on Monday after OPEC agreed to cut production by two million barrels a day."


def test_light_edits_are_near_duplicates_and_topical_neighbours_are_not() -> None:
    base = sketch(OIL)
    assert similarity(base, sketch(OIL.upper() + "!!")) == 1.0  # case, punctuation
    assert similarity(base, sketch(OIL.replace("Monday", "Tuesday").replace(" a day", " per day"))) >= 0.6
    assert similarity(base, sketch("Oil prices fell on Monday as traders doubted that OPEC would cut output.")) < 0.4
    assert similarity(base, sketch("The central bank left interest rates unchanged.")) < 0.1


def test_long_texts_are_sketched_in_bounded_size() -> None:
    rng = random.Random(3)
    words = [rng.choice(["alpha", "beta", "gamma", "delta", "oil", "rates", "goal", "chip"]) + str(rng.randint(0, 999))
             for _ in range(15_000)]
    text = " ".join(words)
    s = sketch(text)
    assert len(s) == 128
    edited = " ".join(words[:7_000] + ["changed"] + words[7_001:])
    assert similarity(s, sketch(edited)) > 0.9
    assert similarity(s, sketch(" ".join(reversed(words)))) < 0.9
