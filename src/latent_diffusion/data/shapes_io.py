"""Write ShapesWorld items to disk: a PNG folder with ``captions.json`` / ``metadata.jsonl``, or tar shards.

Folder layout (``write_shapes_folder``)::

    out/00000000.png          # RGB image
    out/00000000_seg.png      # segmentation (mode "L", value = 0 background / 1 + class)   [with_maps=True]
    out/captions.json         # {"00000000.png": "a red circle above a blue square", ...}
    out/metadata.jsonl        # one JSON per line: file_name, text (the imagefolder keys), file, caption, class_label,
                              #   layout [(class, x0, y0, x1, y1)]

Shards (``write_shapes_shards``) follow the webdataset convention: ``shard-000000.tar`` holding
``<key>.png``, ``<key>.txt`` (caption) and ``<key>.json`` (the metadata line), readable by ``webdataset`` or
plain ``tarfile``.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import LDMError
from .shapes import ShapesWorld


def _to_pil(image) -> Image.Image:
    arr = ((image.clamp(-1, 1) + 1) * 127.5).round().to(dtype=torch.uint8)  # (3, H, W)
    return Image.fromarray(arr.permute(1, 2, 0).numpy())


def _metadata(name: str, item: dict) -> dict:
    n = int(item["num_objects"])
    layout = item["layout"][:n].tolist()
    return {
        "file_name": name,  # the Hugging Face imagefolder keys, which `ldm train --data` reads
        "text": item["caption"],
        "file": name,
        "caption": item["caption"],
        "class_label": int(item["class_label"]),
        "layout": [[int(r[0]), *[round(float(v), 6) for v in r[1:]]] for r in layout],
    }


def _check_target(path: Path, force: bool) -> None:
    if path.exists() and any(path.iterdir()) and not force:
        raise LDMError(f"output folder {path} is not empty; pass force=True (--force) to write into it anyway")
    path.mkdir(parents=True, exist_ok=True)


def write_shapes_folder(dataset: ShapesWorld, out: str | Path, count: int, *, start: int = 0,
                        with_maps: bool = False, force: bool = False) -> Path:
    """Write items ``start .. start+count-1`` as PNGs plus ``captions.json`` and ``metadata.jsonl``."""
    out = Path(out)
    _check_target(out, force)
    captions: dict[str, str] = {}
    with open(out / "metadata.jsonl", "w") as meta:
        for i in range(start, start + count):
            item = dataset[i]
            name = f"{i:08d}.png"
            _to_pil(item["image"]).save(out / name)
            if with_maps:
                seg = item["segmentation"].numpy().astype(np.uint8)
                Image.fromarray(seg, mode="L").save(out / f"{i:08d}_seg.png")
            captions[name] = item["caption"]
            meta.write(json.dumps(_metadata(name, item)) + "\n")
    (out / "captions.json").write_text(json.dumps(captions, indent=1))
    return out


def write_shapes_shards(dataset: ShapesWorld, out: str | Path, count: int, *, per_shard: int = 1000,
                        force: bool = False) -> list[Path]:
    """Write ``count`` items into webdataset-style tar shards of ``per_shard`` samples each."""
    out = Path(out)
    _check_target(out, force)
    paths: list[Path] = []
    for s, first in enumerate(range(0, count, per_shard)):
        path = out / f"shard-{s:06d}.tar"
        with tarfile.open(path, "w") as tar:
            for i in range(first, min(first + per_shard, count)):
                item, key = dataset[i], f"{i:08d}"
                png = io.BytesIO()
                _to_pil(item["image"]).save(png, format="PNG")
                files = {f"{key}.png": png.getvalue(), f"{key}.txt": item["caption"].encode(),
                         f"{key}.json": json.dumps(_metadata(f"{key}.png", item)).encode()}
                for name, data in files.items():
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        paths.append(path)
    return paths
