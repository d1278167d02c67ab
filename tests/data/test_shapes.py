"""ShapesWorld: determinism, caption ↔ drawn content, segmentation ↔ boxes ↔ image, disk writers."""

import json
import tarfile

import numpy as np
import pytest
import torch

from latent_diffusion.data.shapes import (
    COLOURS, NUM_CLASSES, SHAPES, ShapesWorld, ShapesWorldConfig, class_index, class_name, vocabulary,
)
from latent_diffusion.data.shapes_io import write_shapes_folder, write_shapes_shards
from latent_diffusion.errors import ConfigError, LDMError


def _assert_items_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], torch.Tensor):
            assert torch.equal(a[k], b[k]), k
        else:
            assert a[k] == b[k], k


def test_deterministic_per_seed_and_index():
    a, b = ShapesWorld(seed=3, length=10), ShapesWorld(seed=3, length=10)
    _assert_items_equal(a[7], b[7])
    _assert_items_equal(a[7], a[7])  # no hidden state between calls
    assert not torch.equal(a[7]["image"], ShapesWorld(seed=4, length=10)[7]["image"])
    assert not torch.equal(a[7]["image"], a[6]["image"])


def test_item_shapes_and_ranges():
    item = ShapesWorld(size=(48, 64), length=4)[1]
    assert item["image"].shape == (3, 48, 64) and item["image"].dtype == torch.float32
    assert item["image"].min() >= -1 and item["image"].max() <= 1
    assert item["lowres"].shape == (3, 12, 16)
    assert item["segmentation"].shape == (48, 64) and item["segmentation"].dtype == torch.int64
    assert item["layout"].shape == (3, 5)
    for k in ("mask_box", "mask_stroke"):
        m = item[k]
        assert m.shape == (1, 48, 64) and set(m.unique().tolist()) <= {0.0, 1.0} and m.sum() > 0


def test_lowres_is_area_downsample():
    item = ShapesWorld(size=64, length=2)[0]
    ref = torch.nn.functional.avg_pool2d(item["image"][None], 4)[0]
    torch.testing.assert_close(item["lowres"], ref, atol=1e-6, rtol=0)


def _centre(seg: torch.Tensor, cls: int) -> tuple[float, float]:
    ys, xs = torch.nonzero(seg == 1 + cls, as_tuple=True)
    return xs.float().mean().item(), ys.float().mean().item()


@pytest.mark.parametrize("index", range(40))
def test_caption_matches_drawn_content(index):
    ds = ShapesWorld(seed=1, length=40)
    item = ds[index]
    words = item["caption"].split()
    n = int(item["num_objects"])
    layout = item["layout"]
    seg, img = item["segmentation"], (item["image"] + 1) / 2
    # every named object is drawn, in its named colour, and matches its layout row
    named = [(words[i + 1], words[i + 2]) for i, w in enumerate(words) if w in ("a", "an")]
    assert len(named) == n
    for row, (colour, shape) in zip(layout[:n], named):
        cls = int(row[0])
        assert class_name(cls) == f"{colour} {shape}"
        pix = img[:, seg == 1 + cls]  # (3, P)
        assert pix.shape[1] > 0
        torch.testing.assert_close(pix.mean(1), torch.tensor(COLOURS[colour]), atol=0.05, rtol=0)
    assert int(item["class_label"]) == int(layout[0, 0])
    assert (layout[n:, 0] == -1).all()
    if n >= 2:  # the stated relation holds between the drawn objects' centres
        (ax, ay), (bx, by) = _centre(seg, int(layout[0, 0])), _centre(seg, int(layout[1, 0]))
        rel = " ".join(words[3:5]) if words[3] in ("left", "right") else words[3]
        assert {"above": ay < by, "below": ay > by, "left of": ax < bx, "right of": ax > bx}[rel], item["caption"]


@pytest.mark.parametrize("index", range(20))
def test_segmentation_matches_boxes(index):
    item = ShapesWorld(seed=2, size=(40, 56), length=20)[index]
    seg, layout, n = item["segmentation"], item["layout"], int(item["num_objects"])
    h, w = seg.shape
    labels = set(seg.unique().tolist()) - {0}
    assert labels == {1 + int(r[0]) for r in layout[:n]}
    for row in layout[:n]:
        ys, xs = torch.nonzero(seg == 1 + int(row[0]), as_tuple=True)
        box = (xs.min() / w, ys.min() / h, (xs.max() + 1) / w, (ys.max() + 1) / h)
        torch.testing.assert_close(row[1:], torch.tensor(box, dtype=torch.float32), atol=1e-6, rtol=0)


def test_classes_and_vocabulary():
    assert NUM_CLASSES == len(SHAPES) * len(COLOURS) and len(COLOURS) >= 6
    assert class_name(class_index("star", "blue")) == "blue star"
    assert class_index("circle", "red") == 0
    vocab = set(vocabulary())
    for i in range(50):
        assert set(ShapesWorld(length=50)[i]["caption"].split()) <= vocab
    with pytest.raises(ConfigError, match="class must be"):
        class_name(NUM_CLASSES)


def test_config_errors():
    with pytest.raises(ConfigError, match="background"):
        ShapesWorldConfig(backgrounds=("sky",))
    with pytest.raises(ConfigError, match="max_objects"):
        ShapesWorldConfig(max_objects=4)
    with pytest.raises(IndexError):
        ShapesWorld(length=3)[3]


def test_dataloader_collates():
    loader = torch.utils.data.DataLoader(ShapesWorld(size=32, length=8), batch_size=4)
    batch = next(iter(loader))
    assert batch["image"].shape == (4, 3, 32, 32) and len(batch["caption"]) == 4


def test_write_folder_and_shards(tmp_path):
    ds = ShapesWorld(size=32, length=5)
    out = write_shapes_folder(ds, tmp_path / "png", 5, with_maps=True)
    caps = json.loads((out / "captions.json").read_text())
    assert caps["00000002.png"] == ds[2]["caption"]
    meta = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    assert meta[2]["class_label"] == int(ds[2]["class_label"])
    from PIL import Image

    arr = np.asarray(Image.open(out / "00000002.png"), dtype=np.float32) / 127.5 - 1
    np.testing.assert_allclose(arr.transpose(2, 0, 1), ds[2]["image"].numpy(), atol=1 / 127.5)
    with pytest.raises(LDMError, match="not empty"):
        write_shapes_folder(ds, out, 1)
    shards = write_shapes_shards(ds, tmp_path / "tar", 5, per_shard=2)
    assert len(shards) == 3
    with tarfile.open(shards[1]) as tar:
        assert tar.extractfile("00000002.txt").read().decode() == ds[2]["caption"]
