"""Stage-1 data: image folders (formats, corrupt files, bad sizes), bundled photos, the resumable stream."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from latent_diffusion.data.autoencoder_data import FixedDataset, ImageDataConfig, StreamDataset, build_sources
from latent_diffusion.data.images import DataError, ImageFolder, random_crop_flip


def _write(path, w: int, h: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)


def test_folder_reads_formats_and_skips_corrupt(tmp_path) -> None:
    _write(tmp_path / "a.png", 40, 30)
    _write(tmp_path / "b.jpg", 32, 48, 1)
    (tmp_path / "sub").mkdir()
    _write(tmp_path / "sub" / "c.bmp", 33, 33, 2)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (tmp_path / "notes.txt").write_text("ignored")
    with pytest.warns(UserWarning, match="skipped 1 unreadable"):
        ds = ImageFolder(tmp_path, 24)
    assert len(ds) == 3 and ds.skipped_corrupt == 1
    x = ds.get(0, torch.Generator().manual_seed(0))
    assert x.shape == (3, 24, 24) and x.min() >= -1 and x.max() <= 1
    assert torch.equal(x, ds.get(0, torch.Generator().manual_seed(0)))  # the generator decides crop and flip


def test_folder_errors(tmp_path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        ImageFolder(tmp_path / "nope", 16)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="has no images"):
        ImageFolder(tmp_path / "empty", 16)
    _write(tmp_path / "small.png", 20, 12)
    with pytest.raises(DataError, match=r"smaller than the 16x16 crop.*small.png \(20x12\)"):
        ImageFolder(tmp_path, 16)
    ds = ImageFolder(tmp_path, 16, resize=16)  # resize policy: shorter side 12 → 16 first
    assert ds.get(0, torch.Generator()).shape == (3, 16, 16)
    with pytest.raises(DataError, match="resize=8 is smaller"):
        ImageFolder(tmp_path, 16, resize=8)


def test_random_crop_flip_by_hand() -> None:
    img = torch.arange(2 * 4 * 5, dtype=torch.float32).view(2, 4, 5)
    out = random_crop_flip(img, 3, torch.Generator().manual_seed(0), flip=False)
    # the crop is a contiguous window of the input
    found = any(torch.equal(out, img[:, t:t + 3, l:l + 3]) for t in range(2) for l in range(3))
    assert found


def test_photos_bundled_and_heldout() -> None:
    train, held = build_sources(ImageDataConfig(source="photos", size=64))
    assert len(train) == 7 and len(held) == 2
    x = train.get(3, torch.Generator().manual_seed(1))
    assert x.shape == (3, 64, 64) and -1 <= x.min() and x.max() <= 1


def test_stream_is_a_function_of_position() -> None:
    pytest.importorskip("latent_diffusion.data.shapes")
    src, _ = build_sources(ImageDataConfig(source="shapes", size=16, shapes_length=10))
    full = StreamDataset(src, seed=3, start=0, length=25)
    tail = StreamDataset(src, seed=3, start=12, length=13)
    for j in range(13):
        assert torch.equal(full[12 + j], tail[j])
    epoch0 = [int((full[k] * 1000).sum()) for k in range(10)]
    assert len(set(epoch0)) == 10  # one epoch visits every source item once
    fixed = FixedDataset(src, 4, seed=0)
    assert torch.equal(fixed[2], fixed[2])


def test_data_config_errors() -> None:
    with pytest.raises(ValueError, match="source"):
        ImageDataConfig(source="imagenet")
    with pytest.raises(ValueError, match="needs data.root"):
        ImageDataConfig(source="folder")
