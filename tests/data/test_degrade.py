"""On-the-fly training conditions: bicubic ×4 SR inputs (vs PIL) and LaMa-style inpainting masks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from latent_diffusion.data.degrade import MASK_KINDS, MaskConfig, bicubic_downsample, make_mask, mask_for_item
from latent_diffusion.data.images import DataError
from latent_diffusion.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------------------------------------- super-resolution
def test_downsample_shapes_and_constant() -> None:
    x = torch.full((2, 3, 32, 48), 0.3)
    y = bicubic_downsample(x)
    assert y.shape == (2, 3, 8, 12)
    torch.testing.assert_close(y, torch.full_like(y, 0.3), atol=1e-6, rtol=0)
    assert bicubic_downsample(x[0], factor=2).shape == (3, 16, 24)
    assert bicubic_downsample(x[0], factor=1).shape == (3, 32, 48)


def test_downsample_clamps_overshoot() -> None:
    x = torch.where(torch.arange(64)[None, None, :] % 8 < 4, 1.0, -1.0).expand(3, 64, 64).contiguous()
    y = bicubic_downsample(x, factor=2)
    assert y.min() >= -1 and y.max() <= 1


@pytest.mark.parametrize("seed,h,w", [(0, 64, 64), (1, 48, 80), (2, 128, 96)])
def test_downsample_matches_pil_bicubic(seed: int, h: int, w: int) -> None:
    # Measured over 60 random uint8 images at x4: max |torch - PIL| = 0.90 8-bit levels, mean 0.27 (PIL works in
    # fixed point and rounds to uint8). Tolerance: 1.0 level max, 0.35 mean.
    a = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    ref = np.asarray(Image.fromarray(a).resize((w // 4, h // 4), Image.BICUBIC, reducing_gap=None), np.float64)
    x = torch.from_numpy(a.astype(np.float32) / 127.5 - 1.0).permute(2, 0, 1)
    y = (bicubic_downsample(x, 4).permute(1, 2, 0).double().numpy() + 1.0) * 127.5
    diff = np.abs(y - ref)
    assert diff.max() <= 1.0 and diff.mean() <= 0.35


def test_downsample_rejects_indivisible_size() -> None:
    with pytest.raises(DataError, match="30x64"):
        bicubic_downsample(torch.zeros(3, 30, 64), 4)
    with pytest.raises(DataError, match="factor"):
        bicubic_downsample(torch.zeros(3, 32, 32), 0)
    with pytest.raises(DataError, match="shape"):
        bicubic_downsample(torch.zeros(1, 32, 32))


# ---------------------------------------------------------------------------------------------- masks: basics
@pytest.mark.parametrize("kind", MASK_KINDS)
def test_mask_deterministic_binary(kind: str) -> None:
    cfg = MaskConfig(kind=kind)
    a, b = mask_for_item(cfg, 64, 64, seed=3, index=5), mask_for_item(cfg, 64, 64, seed=3, index=5)
    assert a.shape == (1, 64, 64) and a.dtype == torch.float32
    assert torch.equal(a, b)
    assert set(a.unique().tolist()) <= {0.0, 1.0}
    others = [mask_for_item(cfg, 64, 64, seed=3, index=i) for i in range(6, 10)]
    assert all(not torch.equal(a, o) for o in others)
    assert not torch.equal(a, mask_for_item(cfg, 64, 64, seed=4, index=5))


def test_make_mask_is_a_function_of_generator_state() -> None:
    cfg = MaskConfig()
    g = torch.Generator().manual_seed(11)
    state = g.get_state()
    first = make_mask(cfg, 48, 80, g)
    second = make_mask(cfg, 48, 80, g)  # the generator advanced
    g.set_state(state)
    assert torch.equal(make_mask(cfg, 48, 80, g), first)
    assert first.shape == (1, 48, 80) and not torch.equal(first, second)


@pytest.mark.parametrize("kind", MASK_KINDS)
@pytest.mark.parametrize("size", [(64, 64), (48, 80)])
def test_hole_fraction_within_bounds(kind: str, size: tuple[int, int]) -> None:
    cfg = MaskConfig(kind=kind)
    frac = np.array([float(mask_for_item(cfg, *size, seed=0, index=i).mean()) for i in range(200)])
    assert frac.min() >= cfg.min_hole and frac.max() <= cfg.max_hole
    assert frac.std() > 0.05  # not collapsed onto one size


@pytest.mark.parametrize("kind", MASK_KINDS)
def test_repair_meets_a_narrow_range(kind: str) -> None:
    # One try and a 1 %-wide window: nearly every mask goes through the grow / trim (or one-band) repair.
    cfg = MaskConfig(kind=kind, min_hole=0.30, max_hole=0.31, max_tries=1)
    for i in range(40):
        m = mask_for_item(cfg, 48, 80, seed=1, index=i)[0].numpy() > 0
        assert 0.30 <= m.mean() <= 0.31
        if kind == "outpaint":
            _assert_outpaint(m)


def test_impossible_range_for_size_is_an_error() -> None:
    with pytest.raises(DataError, match="8x8"):
        mask_for_item(MaskConfig(min_hole=0.52, max_hole=0.53), 8, 8, 0, 0)  # 33.3 .. 33.9 pixels
    with pytest.raises(DataError, match="height"):
        mask_for_item(MaskConfig(), 2, 64, 0, 0)


# ---------------------------------------------------------------------------------------------- masks: shapes
def _corners(m: np.ndarray) -> int:
    """Corners of the hole outline: 2×2 windows holding an odd number of hole pixels."""
    p = np.pad(m, 1).astype(int)
    return int(((p[:-1, :-1] + p[1:, :-1] + p[:-1, 1:] + p[1:, 1:]) % 2 == 1).sum())


def _covered_by_full_windows(m: np.ndarray, bh: int, bw: int) -> np.ndarray:
    """Pixels lying inside some all-hole bh×bw window."""
    c = np.pad(m.astype(int), ((1, 0), (1, 0))).cumsum(0).cumsum(1)
    full = (c[bh:, bw:] - c[:-bh, bw:] - c[bh:, :-bw] + c[:-bh, :-bw]) == bh * bw
    cov = np.zeros_like(m)
    for y, x in zip(*np.nonzero(full)):
        cov[y:y + bh, x:x + bw] = True
    return cov


@pytest.mark.parametrize("size", [(64, 64), (48, 80)])
def test_boxes_are_few_axis_aligned_rectangles(size: tuple[int, int]) -> None:
    h, w = size
    cfg = MaskConfig(kind="boxes", min_hole=0.0, max_hole=1.0)  # no repair: the raw union of boxes
    k = cfg.box_count[1]
    bh, bw = max(1, round(cfg.box_side[0] * h)), max(1, round(cfg.box_side[0] * w))
    my, mx = int(cfg.box_margin * h), int(cfg.box_margin * w)
    for i in range(50):
        m = mask_for_item(cfg, h, w, seed=2, index=i)[0].numpy() > 0
        # a union of k rectangles has at most 4k own corners + 4 per crossing pair
        assert 4 <= _corners(m) <= 4 * k + 2 * k * (k - 1)
        # every hole pixel is inside a full box of at least the minimum box size
        assert np.array_equal(_covered_by_full_windows(m, bh, bw), m)
        assert not m[:my].any() and not m[h - my:].any() and not m[:, :mx].any() and not m[:, w - mx:].any()


def test_strokes_and_boxes_differ_in_shape() -> None:
    def mean_corners(kind: str) -> float:
        cfg = MaskConfig(kind=kind, min_hole=0.0, max_hole=1.0)
        return float(np.mean([_corners(mask_for_item(cfg, 64, 64, 0, i)[0].numpy() > 0) for i in range(50)]))

    # measured: boxes ~9, strokes ~130 (slanted thick lines and discs outline as staircases)
    assert mean_corners("strokes") > 5 * mean_corners("boxes")


def _assert_outpaint(m: np.ndarray) -> None:
    keep = ~m
    assert m.any() and keep.any()
    assert m[0].any() or m[-1].any() or m[:, 0].any() or m[:, -1].any()
    rows, cols = np.flatnonzero(keep.any(1)), np.flatnonzero(keep.any(0))
    assert keep[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1].all()  # the kept part is one rectangle


@pytest.mark.parametrize("size", [(64, 64), (48, 80)])
def test_outpaint_complement_is_a_rectangle(size: tuple[int, int]) -> None:
    sides_seen = set()
    for i in range(50):
        m = mask_for_item(MaskConfig(kind="outpaint"), *size, seed=0, index=i)[0].numpy() > 0
        _assert_outpaint(m)
        sides_seen.add((bool(m[0].all()), bool(m[-1].all()), bool(m[:, 0].all()), bool(m[:, -1].all())))
    assert len(sides_seen) > 4  # various combinations of the four sides


def test_lama_mixes_strokes_and_boxes() -> None:
    cfg = MaskConfig(min_hole=0.0, max_hole=1.0)
    corners = [_corners(mask_for_item(cfg, 64, 64, 5, i)[0].numpy() > 0) for i in range(60)]
    box_like = sum(c <= 40 for c in corners)
    assert 10 <= box_like <= 50


# ---------------------------------------------------------------------------------------------- config errors
@pytest.mark.parametrize("kwargs,field", [
    ({"kind": "blobs"}, "kind"),
    ({"p_strokes": 1.5}, "p_strokes"),
    ({"stroke_count": (3, 1)}, "stroke_count"),
    ({"stroke_vertices": (0, 2)}, "stroke_vertices"),
    ({"stroke_length": (0.0, 0.5)}, "stroke_length"),
    ({"brush_width": (0.1, 1.5)}, "brush_width"),
    ({"brush_width": 0.1}, "brush_width"),
    ({"max_angle": 0.0}, "max_angle"),
    ({"box_count": (1.0, 2.0)}, "box_count"),
    ({"box_side": (0.1, 0.95)}, "box_side"),
    ({"box_margin": -0.1}, "box_margin"),
    ({"outpaint_width": (0.1, 0.5)}, "outpaint_width"),
    ({"p_side": -0.1}, "p_side"),
    ({"min_hole": -0.1}, "min_hole"),
    ({"max_hole": 1.2}, "max_hole"),
    ({"min_hole": 0.5, "max_hole": 0.4}, "min_hole"),
    ({"max_tries": 0}, "max_tries"),
])
def test_bad_config_names_field(kwargs: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=rf"MaskConfig\.{field} must"):
        MaskConfig(**kwargs)
