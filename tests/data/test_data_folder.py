"""A user's image folder: formats, captions, class labels, bad input found at step 0, aligned transforms."""

from __future__ import annotations

import io
import json
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from latent_diffusion.data.decode import check_image, load_rgb
from latent_diffusion.data.folder import scan_folder
from latent_diffusion.data.images import DataError
from latent_diffusion.data.sources import FolderSource, caption_words
from latent_diffusion.data.transforms import TransformConfig, apply_boxes, apply_image, apply_labels, plan


def _rgb(w: int, h: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def _png_with_broken_stream(path) -> None:
    """A PNG whose chunks all carry valid CRCs but whose compressed image stream is garbage: ``verify()`` passes,
    decoding fails."""
    buf = io.BytesIO()
    _rgb(16, 16).save(buf, format="PNG")
    data = buf.getvalue()
    out, pos = bytearray(data[:8]), 8
    while pos < len(data):
        n = struct.unpack(">I", data[pos:pos + 4])[0]
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + n]
        if kind == b"IDAT":
            body = body[:2] + bytes(b ^ 0x5A for b in body[2:])  # keep the zlib header, scramble the deflate data
        out += struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
        pos += 12 + n
    path.write_bytes(bytes(out))


def test_modes_and_exif_become_upright_rgb(tmp_path) -> None:
    base = _rgb(20, 10)
    base.convert("L").save(tmp_path / "gray.png")
    base.convert("P").save(tmp_path / "palette.png")
    rgba = base.convert("RGBA")
    rgba.putalpha(0)  # fully transparent: composited on white
    rgba.save(tmp_path / "clear.png")
    base.convert("CMYK").save(tmp_path / "cmyk.jpg")
    Image.fromarray((np.arange(200, dtype=np.uint16).reshape(10, 20) * 300)).save(tmp_path / "deep.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to display
    base.save(tmp_path / "rotated.jpg", exif=exif.tobytes(), quality=95)
    for name in ("gray.png", "palette.png", "clear.png", "cmyk.jpg", "deep.png"):
        im = load_rgb(tmp_path / name)
        assert im.mode == "RGB" and im.size == (20, 10), name
    assert np.asarray(load_rgb(tmp_path / "clear.png")).min() == 255
    deep = np.asarray(load_rgb(tmp_path / "deep.png"))[..., 0].astype(int)
    assert deep.max() > 200 and deep[0, 1] == round(300 / 65535 * 255)  # 16-bit scaled, not clipped
    assert load_rgb(tmp_path / "rotated.jpg").size == (10, 20)  # the EXIF orientation is applied
    assert check_image(tmp_path / "rotated.jpg") == (10, 20)


def test_corrupt_files_are_found_by_a_full_decode(tmp_path) -> None:
    _rgb(16, 16).save(tmp_path / "good.png")
    _png_with_broken_stream(tmp_path / "stream.png")
    with Image.open(tmp_path / "stream.png") as im:
        im.verify()  # the checksums are fine: only decoding finds it
    buf = io.BytesIO()
    _rgb(64, 64).save(buf, format="JPEG")
    (tmp_path / "cut.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.warns(UserWarning, match=r"skipped 2 unreadable/corrupt image\(s\), e\.g\. \['cut.jpg"):
        index = scan_folder(tmp_path)
    assert [r.path.name for r in index.records] == ["good.png"] and len(index.skipped) == 2
    with pytest.raises(DataError, match=r"2 image\(s\) cannot be decoded \(--strict-data\)"):
        scan_folder(tmp_path, strict=True)


def test_captions_from_metadata_jsonl_csv_and_sidecars(tmp_path) -> None:
    (tmp_path / "a").mkdir()
    for name in ("a/x.png", "y.png"):
        _rgb(8, 8).save(tmp_path / name)
    (tmp_path / "metadata.jsonl").write_text(json.dumps({"file_name": "y.png", "text": "a dog"}) + "\n")
    (tmp_path / "a" / "metadata.csv").write_text("file_name,caption\nx.png,\"a cat, sitting\"\n")
    index = scan_folder(tmp_path)
    assert {r.path.name: r.caption for r in index.records} == {"x.png": "a cat, sitting", "y.png": "a dog"}
    side = tmp_path / "side"
    side.mkdir()
    _rgb(8, 8).save(side / "p.jpg")
    (side / "p.txt").write_text("a photo of a bird\n")
    _rgb(8, 8).save(side / "q.jpg")
    with pytest.raises(DataError, match=r"1 image\(s\) have no caption \(a sidecar .txt file.*\['q.jpg'\]"):
        scan_folder(side)
    caps = {r.path.name: r.caption for r in scan_folder(side, missing_caption="empty").records}
    assert caps == {"p.jpg": "a photo of a bird", "q.jpg": ""}
    assert caption_words(["a dog", "a cat"]) == ("a", "cat", "dog")


def test_class_labels_from_folders_and_column(tmp_path) -> None:
    for c in ("10", "9", "2"):
        (tmp_path / c).mkdir()
        _rgb(8, 8).save(tmp_path / c / "i.png")
    index = scan_folder(tmp_path, labels="folders")
    assert index.class_names == ("2", "9", "10")  # numeric names sort as numbers
    assert {r.path.parent.name: r.label for r in index.records} == {"2": 0, "9": 1, "10": 2}
    col = tmp_path / "col"
    col.mkdir()
    rows = []
    for i, lab in enumerate(["zebra", "ant", "zebra"]):
        _rgb(8, 8).save(col / f"{i}.png")
        rows.append(json.dumps({"file_name": f"{i}.png", "text": "x", "label": lab}))
    (col / "metadata.jsonl").write_text("\n".join(rows))
    index = scan_folder(col, labels="auto")
    assert index.class_names == ("ant", "zebra") and [r.label for r in index.records] == [1, 0, 1]
    _rgb(8, 8).save(tmp_path / "loose.png")
    with pytest.raises(DataError, match=r"sit in the root itself, e.g. \['loose.png'\]"):
        scan_folder(tmp_path, labels="folders", captions="none")


def test_one_class_small_images_empty_and_missing_folders(tmp_path) -> None:
    (tmp_path / "only").mkdir()
    _rgb(40, 30).save(tmp_path / "only" / "a.png")
    _rgb(12, 20).save(tmp_path / "only" / "tiny.png")
    index = scan_folder(tmp_path, labels="folders")
    with pytest.raises(DataError, match=r"needs at least two classes; found 1 \(\['only'\]\)"):
        FolderSource(index, TransformConfig(size=16, resize=16), ("class_label",))
    with pytest.raises(DataError, match=r"1 image\(s\) are smaller than the 16x16 crop, e.g. \['only/tiny.png \(12x20\)'\]"):
        FolderSource(index, TransformConfig(size=16, resize=16))
    up = FolderSource(index, TransformConfig(size=16, resize=16, small="upscale"))
    assert len(up) == 2 and up.get(1, torch.Generator())["image"].shape == (3, 16, 16)
    with pytest.warns(UserWarning, match="skipped 1 image"):
        assert len(FolderSource(index, TransformConfig(size=16, resize=16, small="skip"))) == 1
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="has no images"):
        scan_folder(tmp_path / "empty")
    with pytest.raises(DataError, match="does not exist"):
        scan_folder(tmp_path / "nope")


def test_transform_keeps_image_labels_and_boxes_aligned() -> None:
    """A white box drawn into the image, the same box in a label map and as a COCO box: after a random resize /
    crop / flip all three still coincide."""
    w, h = 60, 40
    img = np.zeros((h, w, 3), np.uint8)
    img[10:30, 35:55] = 255
    lab = np.zeros((h, w), np.uint8)
    lab[10:30, 35:55] = 7
    box = np.array([[35, 10, 55, 30]], np.float64)
    cfg = TransformConfig(size=32, resize=32, crop="random", flip=True)
    flips = set()
    for seed in range(12):
        geo = plan(cfg, w, h, torch.Generator().manual_seed(seed))
        flips.add(geo.flip)
        x = apply_image(Image.fromarray(img), geo)
        y = apply_labels(Image.fromarray(lab), geo)
        b, kept = apply_boxes(box, w, h, geo)
        assert x.shape == (3, 32, 32) and y.shape == (32, 32) and set(y.unique().tolist()) <= {0, 7}
        if len(kept):
            x0, y0, x1, y1 = (b[0] * 32).round().astype(int)
            inside = y[y0:y1, x0:x1]
            assert inside.float().mean() > 0.9  # the box covers the labelled region
            assert (x[0][y == 7] > 0.5).float().mean() > 0.9  # the label map covers the white pixels
    assert flips == {True, False}


def test_items_are_a_pure_function_of_the_generator(tmp_path) -> None:
    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        for i in range(2):
            _rgb(48, 40, seed=i).save(tmp_path / c / f"{i}.png")
    index = scan_folder(tmp_path, labels="folders")
    src = FolderSource(index, TransformConfig(size=32), ("class_label", "lowres", "mask"))
    one = src.get(2, torch.Generator().manual_seed(5))
    two = src.get(2, torch.Generator().manual_seed(5))
    assert all(torch.equal(one[k], two[k]) for k in one)
    assert int(one["class_label"]) == 1 and one["lowres"].shape == (3, 8, 8) and one["mask"].shape == (1, 32, 32)
    fixed = src.get(2, None)  # the deterministic view: centre crop, no flip
    assert torch.equal(fixed["image"], src.get(2, None)["image"])


def test_shapes_exported_to_a_folder_read_back_as_the_same_items(tmp_path) -> None:
    """`ldm data shapes` + the folder path give the built-in ShapesWorld items, rounded to 8 bits: the folder route
    of the equivalence run sees the same scenes and captions in the same order."""
    from latent_diffusion.cli import main
    from latent_diffusion.data.shapes import ShapesWorld, ShapesWorldConfig

    assert main(["data", "shapes", str(tmp_path / "s"), "--count", "5", "--object-weights", "0.35", "0.5",
                 "0.15"]) == 0
    world = ShapesWorld(ShapesWorldConfig(size=64, seed=0, length=5, object_weights=(0.35, 0.5, 0.15)))
    src = FolderSource(scan_folder(tmp_path / "s"), TransformConfig(size=64, flip=False), ("caption",))
    for i in range(5):
        item = src.get(i, torch.Generator().manual_seed(i))
        assert item["caption"] == world[i]["caption"]
        torch.testing.assert_close(item["image"], world[i]["image"], rtol=0, atol=1 / 127.5)


def test_more_modes_text_encodings_and_paths(tmp_path) -> None:
    base = _rgb(12, 10)
    la = base.convert("LA")
    la.putalpha(0)
    la.save(tmp_path / "la.png")
    pal = base.convert("P")
    pal.info["transparency"] = 0
    pal.save(tmp_path / "pal.png", transparency=0)
    assert np.asarray(load_rgb(tmp_path / "la.png")).min() == 255  # transparent: white
    assert load_rgb(tmp_path / "pal.png").mode == "RGB"
    (tmp_path / "metadata.csv").write_bytes("\ufefffile_name,text\nla.png,grey\npal.png,colours\n".encode())
    assert {r.path.name: r.caption for r in scan_folder(tmp_path).records} == {"la.png": "grey", "pal.png": "colours"}
    side = tmp_path / "side"
    (side / "sub").mkdir(parents=True)
    _rgb(8, 8).save(side / "sub" / "a.png")
    (side / "sub" / "a.txt").write_bytes(b"caf\xe9")  # latin-1, not UTF-8
    with pytest.raises(DataError, match=r"caption file .*a.txt is not UTF-8"):
        scan_folder(side)
    win = tmp_path / "win"
    (win / "sub").mkdir(parents=True)
    _rgb(8, 8).save(win / "sub" / "z.png")
    (win / "metadata.jsonl").write_text(json.dumps({"file_name": "sub\\z.png", "text": "backslashes"}))
    assert scan_folder(win).records[0].caption == "backslashes"


def test_a_text_task_on_a_folder_without_captions_is_an_error(tmp_path) -> None:
    _rgb(8, 8).save(tmp_path / "a.png")
    with pytest.raises(DataError, match="has no captions: give each image a caption in metadata.jsonl"):
        scan_folder(tmp_path, need_captions=True)
    assert scan_folder(tmp_path).records[0].caption is None  # fine for tasks without text


def test_stage1_folder_skips_a_png_whose_stream_is_broken_and_names_it(tmp_path) -> None:
    """Autoencoder training crashed at step 1 with ``OSError: broken data stream`` (no file named): ``verify()`` had
    passed it. The stage-1 folder decodes every image up front: the file is skipped with its name, or refused."""
    from latent_diffusion.data.images import ImageFolder

    for k in range(2):
        _rgb(16, 16, seed=k).save(tmp_path / f"good{k}.png")
    _png_with_broken_stream(tmp_path / "stream.png")
    with pytest.warns(UserWarning, match=r"skipped 1 unreadable/corrupt image\(s\), e\.g\. \['stream.png"):
        folder = ImageFolder(tmp_path, 16)
    assert [p.name for p in folder.files] == ["good0.png", "good1.png"] and folder.skipped_corrupt == 1
    g = torch.Generator().manual_seed(0)
    assert all(folder.get(i, g).shape == (3, 16, 16) for i in range(len(folder.files)))
    with pytest.raises(DataError, match=r"1 image\(s\) cannot be decoded \(--strict-data\).*stream.png"):
        ImageFolder(tmp_path, 16, strict=True)
