"""``seed_of``: one 63-bit seed from a tuple of ints, for the per-item / per-step generators of the data streams and
the training loops (splitmix-style mixing; stable across runs, machines and Python versions, unlike ``hash()``)."""

from __future__ import annotations


def seed_of(*xs: int) -> int:
    h = 0x9E3779B97F4A7C15
    for x in xs:
        h = (h ^ (int(x) & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 31
    return h & 0x7FFFFFFFFFFFFFFF
