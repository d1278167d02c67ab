"""Stage 2 on a user's files: every task trains from an image folder (with the files each task reads), shards
replay the same stream as the folder's order rule says, and a resumed shard run equals an uninterrupted one."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from latent_diffusion.checkpoint import load_checkpoint
from latent_diffusion.errors import ConfigError
from latent_diffusion.data.images import DataError
from latent_diffusion.train.ldm_config import LDMTrainConfig
from latent_diffusion.train.ldm_run import CKPT, train_ldm

from ldm_tiny_config import tiny

CLASSES = ("circle", "square", "triangle")


def make_folder(root, n_per_class: int = 4, size: tuple[int, int] = (40, 36)) -> None:
    """Class folders of random pictures with a sidecar caption each, label maps and a COCO file beside them."""
    rng = np.random.default_rng(0)
    labels, coco = root.parent / f"{root.name}-labels", {"images": [], "annotations": [], "categories": []}
    coco["categories"] = [{"id": 10 + k, "name": c} for k, c in enumerate(CLASSES)]
    w, h = size
    for k, c in enumerate(CLASSES):
        (root / c).mkdir(parents=True)
        (labels / c).mkdir(parents=True)
        for i in range(n_per_class):
            img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            Image.fromarray(img).save(root / c / f"{i}.png")
            (root / c / f"{i}.txt").write_text(f"a {c} on a noisy background")
            lab = np.zeros((h, w), np.uint8)
            lab[5:25, 8:30] = k + 1
            Image.fromarray(lab).save(labels / c / f"{i}.png")
            image_id = len(coco["images"])
            coco["images"].append({"id": image_id, "file_name": f"{c}/{i}.png", "width": w, "height": h})
            coco["annotations"].append({"image_id": image_id, "bbox": [8, 5, 22, 20], "category_id": 10 + k})
    (root.parent / f"{root.name}-coco.json").write_text(json.dumps(coco))


TASKS = {
    "unconditional": {"model": {"conditioning_key": None, "conditioner": {"kind": "none"},
                                "unet": {"context_dim": None, "use_spatial_transformer": False,
                                         "attention_resolutions": []}}},
    "class": {"model": {"conditioner": {"kind": "class", "n_classes": 4, "embed_dim": 16, "null_class": 3}}},
    "txt2img": {},
    "superres": {"model": {"conditioning_key": "concat", "conditioner": {"kind": "none"},
                           "unet": {"in_channels": 6, "context_dim": None, "use_spatial_transformer": False,
                                    "attention_resolutions": []}}},
    "inpaint": {"model": {"conditioning_key": "hybrid", "unet": {"in_channels": 7}}},
    "semantic": {"model": {"conditioning_key": "concat", "conditioner": {"kind": "none"},
                           "unet": {"in_channels": 7, "context_dim": None, "use_spatial_transformer": False,
                                    "attention_resolutions": []}},
                 "data": {"num_segment_classes": 4}},
    "layout": {"model": {"conditioner": {"kind": "layout", "width": 16, "layers": 1, "heads": 2, "max_length": 12,
                                         "layout_classes": 3}},
               "data": {"max_objects": 2}},
}


def task_config(task: str, root, out) -> LDMTrainConfig:
    extra = TASKS[task]
    data = {"source": "folder", "root": str(root), "size": 32, **extra.get("data", {})}
    if task == "semantic":
        data["segmentation_root"] = str(root.parent / f"{root.name}-labels")
    if task == "layout":
        data["layout_json"] = str(root.parent / f"{root.name}-coco.json")
    d = tiny(task=task, model=extra.get("model", {}), data=data, run={"out_dir": str(out), "max_steps": 2})
    d["data"].pop("length", None)
    return LDMTrainConfig.from_dict(d)


@pytest.mark.parametrize("task", list(TASKS))
def test_every_task_trains_from_an_image_folder(tmp_path, task) -> None:
    make_folder(tmp_path / "data")
    cfg = task_config(task, tmp_path / "data", tmp_path / "run")
    summary = train_ldm(cfg, echo=False, progress=False)
    assert summary["steps"] == 2
    model = load_checkpoint(tmp_path / "run" / "model.safetensors")
    if task in ("class", "layout"):
        assert model.cfg.class_names == CLASSES  # so that sampling can name them
    if task == "txt2img":
        assert {"circle", "square", "triangle", "noisy"} <= set(model.cfg.conditioner.words)


def test_folder_problems_stop_the_run_before_step_one(tmp_path) -> None:
    make_folder(tmp_path / "data")
    (tmp_path / "data" / "square" / "0.txt").unlink()
    cfg = task_config("txt2img", tmp_path / "data", tmp_path / "run")
    with pytest.raises(DataError, match=r"1 image\(s\) have no caption.*square/0.png"):
        train_ldm(cfg, echo=False, progress=False)
    assert not (tmp_path / "run" / "log.jsonl").exists() or not (tmp_path / "run" / "log.jsonl").read_text()
    bad = task_config("class", tmp_path / "data", tmp_path / "run2")
    bad = LDMTrainConfig.from_dict({**bad.to_dict(), "model": {**bad.to_dict()["model"],
                                                               "conditioner": {"kind": "class", "n_classes": 3,
                                                                               "embed_dim": 16, "null_class": 2}}})
    with pytest.raises(ConfigError, match="needs a 'no class' label outside the dataset's 3 classes"):
        train_ldm(bad, echo=False, progress=False)


def test_cli_data_flag_trains_a_class_model_and_samples_by_name(tmp_path, capsys) -> None:
    from latent_diffusion.cli import main

    make_folder(tmp_path / "data")
    import yaml

    d = tiny(task="class", model=TASKS["class"]["model"], run={"max_steps": 2})
    # 3 classes + a null label: not a valid ShapesWorld recipe (40 classes) until --data points it at the folder
    (tmp_path / "class.yaml").write_text(yaml.safe_dump(d))
    assert main(["train", "ldm", "--config", str(tmp_path / "class.yaml"), "--data", str(tmp_path / "data"),
                 "--out", str(tmp_path / "run"), "--quiet"]) == 0
    saved = LDMTrainConfig.from_yaml(tmp_path / "run" / "config.yaml")
    assert (saved.data.source, saved.data.root) == ("folder", str(tmp_path / "data"))
    assert main(["sample", "--ckpt", str(tmp_path / "run" / "model.safetensors"), "--class-label", "Square",
                 "--steps", "2", "--out", str(tmp_path / "img"), "--seed", "1"]) == 0
    assert main(["sample", "--ckpt", str(tmp_path / "run" / "model.safetensors"), "--class-label", "hexagon",
                 "--steps", "2", "--out", str(tmp_path / "img")]) == 2
    assert "this model's classes are 'circle', 'square', 'triangle'" in capsys.readouterr().err


def test_shards_resume_bit_exactly_on_another_process_count(tmp_path) -> None:
    """Shards made by `ldm data shard`; a run stopped at step 2 and resumed to step 4 equals a 4-step run, and the
    stream the data order defines does not depend on the number of processes (positions, not ranks, pick items)."""
    from latent_diffusion.cli import main
    from latent_diffusion.train.ldm import LatentDiffusionModule
    from latent_diffusion.train.ldm_data import StepWindow

    make_folder(tmp_path / "data", n_per_class=3)
    assert main(["data", "shard", str(tmp_path / "data"), str(tmp_path / "shards"), "--shard-size", "4"]) == 0
    assert sorted(p.name for p in (tmp_path / "shards").glob("*.tar")) == [f"shard-00000{i}.tar" for i in range(3)]

    def cfg(out, steps):
        d = tiny(data={"source": "shards", "root": str(tmp_path / "shards"), "size": 32},
                 run={"out_dir": str(out), "max_steps": steps})
        d["data"].pop("length", None)
        return LDMTrainConfig.from_dict(d)

    full = train_ldm(cfg(tmp_path / "full", 4), echo=False, progress=False)
    train_ldm(cfg(tmp_path / "part", 2), echo=False, progress=False)
    resumed = train_ldm(cfg(tmp_path / "part", 4), resume=str(tmp_path / "part" / CKPT), echo=False, progress=False)
    assert resumed["digest"] == full["digest"]

    m = LatentDiffusionModule(cfg(tmp_path / "x", 4))
    m.setup("fit")
    one = StepWindow(m.source, 0, 0, 4, 2)  # 1 process: micro-batches 0..3
    two = [StepWindow(m.source, 0, 0, 2, 2, rank=r, world_size=2) for r in range(2)]  # 2 processes
    order_one = [one.index(one.position(k)) for k in range(8)]
    order_two = sorted((w.position(k), w.index(w.position(k))) for w in two for k in range(4))
    assert order_one == [i for _, i in order_two]
    # shard-major: each pass visits a shard's samples together
    shard_of = [i // 4 for i in (one.index(p) for p in range(9))]
    assert sum(a != b for a, b in zip(shard_of, shard_of[1:])) == 2


def test_a_shard_missing_a_key_is_an_error_at_start(tmp_path) -> None:
    import webdataset as wds

    (tmp_path / "s").mkdir()
    with wds.TarWriter(str(tmp_path / "s" / "a.tar")) as w:
        buf = __import__("io").BytesIO()
        Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(buf, format="PNG")
        w.write({"__key__": "0", "png": buf.getvalue(), "txt": "a caption"})
        w.write({"__key__": "1", "png": buf.getvalue()})  # no caption
    d = tiny(data={"source": "shards", "root": str(tmp_path / "s"), "size": 32},
             run={"out_dir": str(tmp_path / "run")})
    with pytest.raises(DataError, match=r"shard a.tar: sample 1 has no \['txt'\]"):
        train_ldm(LDMTrainConfig.from_dict(d), echo=False, progress=False)


def test_shards_without_index_read_like_indexed_ones(tmp_path) -> None:
    from latent_diffusion.data.folder import scan_folder
    from latent_diffusion.data.shards import INDEX, index_shards, write_shards
    from latent_diffusion.data.sources import FolderSource
    from latent_diffusion.data.transforms import TransformConfig

    make_folder(tmp_path / "data", n_per_class=2)
    index = scan_folder(tmp_path / "data", labels="folders")
    write_shards(index, tmp_path / "sh", shard_size=4)
    with_index = index_shards(tmp_path / "sh", need=("txt", "cls"))
    (tmp_path / "sh" / INDEX).unlink()
    without = index_shards(tmp_path / "sh", need=("txt", "cls"))
    t = TransformConfig(size=32)
    a, b, f = (FolderSource(x, t, ("caption", "class_label")) for x in (with_index, without, index))
    for i in range(len(f)):
        g = lambda: torch.Generator().manual_seed(i)  # noqa: E731
        ia, ib, if_ = a.get(i, g()), b.get(i, g()), f.get(i, g())
        assert torch.equal(ia["image"], if_["image"]) and torch.equal(ib["image"], if_["image"])
        assert ia["caption"] == ib["caption"] == if_["caption"]
        assert int(ia["class_label"]) == int(ib["class_label"]) == int(if_["class_label"])


def test_aspect_ratio_buckets(tmp_path) -> None:
    """Buckets of equal pixel count with sides multiple of the model's downsampling; each image goes to the bucket
    nearest its aspect ratio; every batch holds one bucket; a run on photos of mixed shapes trains."""
    from latent_diffusion.data.buckets import assign_buckets, bucket_batches, make_buckets
    from latent_diffusion.train.ldm import LatentDiffusionModule
    from latent_diffusion.train.ldm_data import StepWindow

    buckets = make_buckets(64, 16, max_ratio=2.0)
    assert buckets[0] == (64, 64) and (96, 32) not in buckets  # ratio 3 > 2
    assert all(w % 16 == 0 and h % 16 == 0 and w * h <= 64 * 64 and max(w / h, h / w) <= 2 for w, h in buckets)
    assert (80, 48) in buckets and (48, 80) in buckets  # 80 x 48 = 3840 <= 4096: as large as the area allows
    assert assign_buckets([(400, 300), (300, 400), (500, 500), (1000, 480)], buckets) == [
        buckets.index((80, 48)), buckets.index((48, 80)), buckets.index((64, 64)), buckets.index((80, 48))]
    one = bucket_batches([0, 0, 1, 1, 1, 0, 1], 2, seed=0, epoch=0)
    assert len(one) == 3 and all(len({0 if i in (0, 1, 5) else 1 for i in b}) == 1 for b in one)
    assert one == bucket_batches([0, 0, 1, 1, 1, 0, 1], 2, seed=0, epoch=0)

    rng = np.random.default_rng(0)
    (tmp_path / "data").mkdir()
    rows = []
    for i, (w, h) in enumerate([(60, 40)] * 4 + [(40, 60)] * 4 + [(50, 50)] * 2):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(tmp_path / "data" / f"{i}.jpg")
        rows.append(json.dumps({"file_name": f"{i}.jpg", "text": "a wide picture" if w > h else "a tall picture"}))
    (tmp_path / "data" / "metadata.jsonl").write_text("\n".join(rows))
    d = tiny(data={"source": "folder", "root": str(tmp_path / "data"), "size": 32, "buckets": True},
             run={"out_dir": str(tmp_path / "run"), "max_steps": 3})
    d["data"].pop("length")
    cfg = LDMTrainConfig.from_dict(d)
    m = LatentDiffusionModule(cfg)
    m.setup("fit")
    w = StepWindow(m.source, 0, 0, 6, 2)
    shapes = [{tuple(w[2 * b + j]["image"].shape) for j in range(2)} for b in range(6)]
    assert all(len(s) == 1 for s in shapes)  # one bucket per batch
    seen = {next(iter(s))[1:] for s in shapes}  # (h, w); the tiny model's step is 2 (KL-f2, one UNet level)
    assert {(26, 38), (38, 26)} <= seen  # 3:2 and 2:3 pictures in their own buckets of ~32² pixels
    assert train_ldm(cfg, echo=False, progress=False)["steps"] == 3
    with pytest.raises(ConfigError, match="turn off diffusion.cache_latents"):
        LDMTrainConfig.from_dict({**d, "diffusion": {"cache_latents": True}})


def test_worker_processes_deliver_the_same_batches(tmp_path) -> None:
    """Random crops, flips and masks come from the stream position, not the process: 0 and 2 DataLoader workers
    give identical batches (folder and shards)."""
    from torch.utils.data import DataLoader

    from latent_diffusion.cli import main
    from latent_diffusion.train.ldm_data import StepWindow, TaskSource, build_items

    make_folder(tmp_path / "data", n_per_class=3)
    assert main(["data", "shard", str(tmp_path / "data"), str(tmp_path / "shards"), "--shard-size", "4"]) == 0
    for source in ("folder", "shards"):
        root = tmp_path / ("data" if source == "folder" else "shards")
        d = tiny(task="inpaint", model=TASKS["inpaint"]["model"], data={"source": source, "root": str(root),
                                                                         "size": 32})
        cfg = LDMTrainConfig.from_dict(d)
        window = StepWindow(TaskSource(build_items(cfg), cfg.task), 0, 3, 4, 2)
        runs = [list(DataLoader(window, batch_size=2, num_workers=w)) for w in (0, 2)]
        for a, b in zip(*runs):
            assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
            assert a["caption"] == b["caption"]


def test_every_task_gets_real_conditions_from_the_folder(tmp_path) -> None:
    """Not only that training runs: the conditions each task reads are there (boxes, labels, holes, low-res)."""
    from latent_diffusion.train.ldm_data import build_items

    make_folder(tmp_path / "data")
    for task, check in (("layout", lambda it: (it["layout"][:, 0] >= 0).sum() == 1),
                        ("semantic", lambda it: it["segmentation"].max() > 0 and it["segmentation"].min() == 0),
                        ("inpaint", lambda it: 0 < it["mask"].mean() < 1),
                        ("superres", lambda it: it["lowres"].shape == (3, 8, 8))):
        items = build_items(task_config(task, tmp_path / "data", tmp_path / "run"))
        assert all(check(items.get(i, torch.Generator().manual_seed(i))) for i in range(len(items))), task


def test_recipe_mistakes_with_user_data_are_errors(tmp_path) -> None:
    """ShapesWorld mask names map to real ones; cached latents with random crops, buckets on shards or latents,
    a COCO file naming none of the images, a folder holding both images and shards: each a clear error."""
    from latent_diffusion.train.ldm_cli import data_source_of
    from latent_diffusion.train.ldm_data import build_items

    make_folder(tmp_path / "data")
    inpaint = task_config("inpaint", tmp_path / "data", tmp_path / "run")
    d = inpaint.to_dict()
    d["data"]["mask"] = "both"  # what inpaint-shapes.yaml says; reads as LaMa-style on real images
    assert build_items(LDMTrainConfig.from_dict(d)).mask.kind == "lama"
    d = task_config("class", tmp_path / "data", tmp_path / "run").to_dict()
    with pytest.raises(ConfigError, match="cache_latents encodes one fixed view .* crop='random', flip=True"):
        LDMTrainConfig.from_dict({**d, "diffusion": {"cache_latents": True}})
    with pytest.raises(ConfigError, match="reads tar shards out of order"):
        LDMTrainConfig.from_dict({**d, "data": {**d["data"], "source": "shards", "buckets": True}})
    coco = json.loads((tmp_path / "data-coco.json").read_text())
    for im in coco["images"]:
        im["file_name"] = "elsewhere/" + im["file_name"]
    (tmp_path / "data-coco.json").write_text(json.dumps(coco))
    with pytest.raises(DataError, match="none of its 12 images is in"):
        build_items(task_config("layout", tmp_path / "data", tmp_path / "run"))
    (tmp_path / "data" / "backup.tar").write_bytes(b"")
    with pytest.raises(ConfigError, match=r"holds both images .* and .tar files \(e.g. backup.tar\)"):
        data_source_of(str(tmp_path / "data"))


def test_resume_refuses_data_whose_classes_changed(tmp_path) -> None:
    make_folder(tmp_path / "data")
    d = task_config("class", tmp_path / "data", tmp_path / "run").to_dict()
    d["model"]["conditioner"] |= {"n_classes": 5, "null_class": 4}
    d["run"]["max_steps"] = 2
    train_ldm(LDMTrainConfig.from_dict(d), echo=False, progress=False)
    (tmp_path / "data" / "aardvark").mkdir()  # a new class sorts first: every label would shift by one
    Image.fromarray(np.zeros((36, 40, 3), np.uint8)).save(tmp_path / "data" / "aardvark" / "0.png")
    d["run"]["max_steps"] = 4
    with pytest.raises(ConfigError, match="the data's class_names changed since the run started"):
        train_ldm(LDMTrainConfig.from_dict(d), resume=str(tmp_path / "run" / CKPT), echo=False, progress=False)


def test_shards_from_other_tools_json_captions_and_bad_labels(tmp_path) -> None:
    import io

    import webdataset as wds

    from latent_diffusion.data.shards import index_shards

    buf = io.BytesIO()
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(buf, format="PNG")
    (tmp_path / "s").mkdir()
    with wds.TarWriter(str(tmp_path / "s" / "a.tar")) as w:
        w.write({"__key__": "0", "png": buf.getvalue(), "json": json.dumps({"caption": "from json"})})
        w.write({"__key__": "1", "png": b"not a png", "txt": "broken"})
    with pytest.warns(UserWarning, match="skipped 1 unreadable/corrupt shard image"):
        index = index_shards(tmp_path / "s", need=("txt",))
    assert [r.caption for r in index.records] == ["from json", "broken"] and index.records[1].width == 0
    from latent_diffusion.data.sources import FolderSource
    from latent_diffusion.data.transforms import TransformConfig

    assert len(FolderSource(index, TransformConfig(size=32), ("caption",))) == 1  # the broken sample never trains
    with wds.TarWriter(str(tmp_path / "s" / "a.tar")) as w:
        w.write({"__key__": "0", "png": buf.getvalue(), "cls": "cat"})
    with pytest.raises(DataError, match=r"has cls 'cat'; a .cls holds an integer class id"):
        index_shards(tmp_path / "s", need=("cls",))


@pytest.mark.slow
def test_two_process_shard_run_resumes_bit_exactly(tmp_path) -> None:
    """Two gloo processes on shards: ranks end identical, and a 2-step run resumed to 4 steps equals a 4-step run."""
    import os
    import subprocess
    import sys

    import yaml

    from latent_diffusion.cli import main

    make_folder(tmp_path / "data", n_per_class=4)
    assert main(["data", "shard", str(tmp_path / "data"), str(tmp_path / "shards"), "--shard-size", "4"]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def run(name: str, steps: int, *extra: str) -> None:
        d = tiny(data={"source": "shards", "root": str(tmp_path / "shards"), "size": 32},
                 run={"out_dir": str(tmp_path / name), "max_steps": steps, "epoch_steps": 2, "devices": 2})
        d["data"].pop("length")
        (tmp_path / f"{name}-{steps}.yaml").write_text(yaml.safe_dump(d))
        cmd = [sys.executable, "-m", "latent_diffusion.train.ldm_cli", "--config", str(tmp_path / f"{name}-{steps}.yaml"),
               "--quiet", *extra]
        res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, res.stderr[-3000:]

    run("full", 4)
    run("part", 2)
    run("part", 4, "--resume", str(tmp_path / "part" / CKPT))
    digest = {(p, r): (tmp_path / p / f"digest-rank{r}.txt").read_text() for p in ("full", "part") for r in (0, 1)}
    assert digest["full", 0] == digest["full", 1]
    assert digest["part", 0] == digest["part", 1] == digest["full", 0]
