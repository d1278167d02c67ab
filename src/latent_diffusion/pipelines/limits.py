"""Limits on the work one call may ask for, checked before any work: a huge input image, output size or image
count is refused with the limit in the message, not left to run out of memory part-way."""

from __future__ import annotations

import dataclasses

from ..errors import LDMError

DEFAULT_MAX_PIXELS = 2048 * 2048  # per image, input or output: an SD 2048² image is already minutes per step on a CPU
DEFAULT_MAX_IMAGES = 10_000  # per call
MAX_SEED = 2**64 - 1  # torch.Generator.manual_seed takes 64-bit seeds


@dataclasses.dataclass
class Limits:
    """``max_pixels``: width × height of any input image and of the images made; ``max_images``: images per call.
    The CLI sets them with ``--max-pixels`` / ``--max-images``; ``Pipeline.limits`` holds them."""

    max_pixels: int = DEFAULT_MAX_PIXELS
    max_images: int = DEFAULT_MAX_IMAGES

    def __post_init__(self) -> None:
        for name in ("max_pixels", "max_images"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise LDMError(f"{name} must be a positive integer, got {value!r}")

    def check_pixels(self, width: int, height: int, what: str) -> None:
        if width * height > self.max_pixels:
            raise LDMError(f"{what} is {width}x{height} = {width * height:,} pixels, over the limit of "
                           f"{self.max_pixels:,} ({_side(self.max_pixels)}); raise it with --max-pixels N "
                           "(Pipeline.limits.max_pixels) if this machine has the memory and time for it")

    def check_images(self, n: object, what: str = "n") -> None:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise LDMError(f"{what} (number of images) must be a positive integer, got {n!r}")
        if n > self.max_images:
            raise LDMError(f"{what}={n:,} images is over the limit of {self.max_images:,} per run; raise it with "
                           "--max-images N (Pipeline.limits.max_images)")


def check_seed(seed: object, n: int = 1) -> None:
    """Image i of a call gets seed ``seed + i``: all must be 64-bit seeds (0 .. 2**64 - 1)."""
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0 or seed + n - 1 > MAX_SEED:
        raise LDMError(f"seed must be an integer in 0 .. 2**64 - 1 (with seed + n - 1 in range too; n={n}), "
                       f"got {seed!r}")


def _side(pixels: int) -> str:
    side = int(pixels**0.5)
    return f"{side}x{side}" if side * side == pixels else f"about {side}x{side}"
