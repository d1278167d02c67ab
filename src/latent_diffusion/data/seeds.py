"""``seed_of``: one 63-bit seed from a tuple of ints, for the per-item / per-step generators of the data streams and
the training loops (splitmix-style mixing; stable across runs, machines and Python versions, unlike ``hash()``).

A part may be a string, a domain tag that keeps the streams of different purposes apart (``seed_of(seed, "noise", p)``
vs ``seed_of(seed, "timestep", p)``); it enters as the first 8 bytes of its BLAKE2b digest (also stable)."""

from __future__ import annotations

import hashlib


def _part(x: int | str) -> int:
    if isinstance(x, str):
        return int.from_bytes(hashlib.blake2b(x.encode(), digest_size=8).digest(), "little")
    return int(x) & 0xFFFFFFFFFFFFFFFF


def seed_of(*xs: int | str) -> int:
    h = 0x9E3779B97F4A7C15
    for x in xs:
        h = (h ^ _part(x)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 31
    return h & 0x7FFFFFFFFFFFFFFF
