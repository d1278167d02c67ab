"""``ldm data encode``: pre-encode a dataset's latents (and frozen text encoders' caption embeddings) once.

Reads an image folder or shards through the data layer (deterministic view: resize, centre crop, no flip), runs
the first stage's encoder, and writes the posteriors as ``data/latents.py`` describes. A frozen text encoder
(``minilm``, ``clip``, ``open_clip``; taken from a training recipe's ``model.conditioner``) also stores each caption's
context, so training runs neither network.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from ..data.images import DataError
from ..errors import ConfigError

FROZEN_TEXT = ("minilm", "clip", "open_clip")


def text_encoder_from_recipe(recipe: str | os.PathLike):  # noqa: ANN201 - (conditioner module, its record)
    """The frozen text encoder of a stage-2 training recipe, with the weights a training run of it starts from
    (seeded init, ``init_from``, the pretrained MiniLM), and a record of it: kind and a digest of its weights."""
    from .ldm import build_training_model
    from .ldm_config import LDMTrainConfig
    from .ldm_run import weights_digest

    cfg = LDMTrainConfig.from_yaml(recipe)
    if cfg.model.conditioner.kind not in FROZEN_TEXT:
        raise ConfigError(f"{recipe}: only a frozen text encoder's contexts can be stored ({list(FROZEN_TEXT)}); its "
                          f"conditioner is {cfg.model.conditioner.kind!r}, which trains with the model")
    module = build_training_model(cfg).cond_stage_model.eval()
    return module, {"kind": cfg.model.conditioner.kind, "weights_sha256": weights_digest(module)}


@torch.no_grad()
def encode_dataset(first_stage: str | os.PathLike, data: str | os.PathLike, out: str | os.PathLike, *,
                   size: int, resize: int | None = None, small: str = "error", captions: str = "auto",
                   labels: str = "none", text_recipe: str | None = None, batch_size: int = 32,
                   per_file: int = 4096, strict: bool = False, overwrite: bool = False,
                   progress: bool = False) -> dict:
    """Encode every image of ``data`` with ``first_stage`` into ``out`` (see ``data/latents.py``); the index."""
    from safetensors.torch import save_file

    from ..autoencoder_io import autoencoder_kind, load_autoencoder
    from ..data.latents import FORMAT, INDEX
    from ..data.sources import FolderSource
    from ..data.transforms import TransformConfig
    from ..safe_load import file_sha256

    from ..data.latents import is_latent_folder

    target = Path(out)
    if target.exists() and not target.is_dir():
        raise DataError(f"{target} exists and is not a folder; give a folder for the latents")
    if target.exists() and any(target.iterdir()):
        if not is_latent_folder(target):
            raise DataError(f"{target} exists and holds other files; choose a new or empty folder")
        if not overwrite:
            raise DataError(f"{target} already holds encoded latents; pass --force to replace them")
    from ..data.sources import index_images
    from .ldm_cli import data_source_of

    index = index_images(data_source_of(os.fspath(data)), data, captions=captions, labels=labels, strict=strict)
    has_captions = captions != "none" and index.has_captions
    if text_recipe and not has_captions:
        raise DataError(f"--text-config encodes captions, but {data} has none (metadata.jsonl / .csv or sidecar .txt)")
    fields = tuple(f for f, on in (("caption", has_captions), ("class_label", labels != "none")) if on)
    source = FolderSource(index, TransformConfig(size=size, resize=size if resize is None else resize, crop="center",
                                                 flip=False, small=small), fields)
    ae = load_autoencoder(first_stage)
    kind = autoencoder_kind(ae)
    text, text_cfg = text_encoder_from_recipe(text_recipe) if text_recipe else (None, None)
    tmp = target.parent / f".{target.name}.encoding"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    files = []
    for start in range(0, len(source), per_file):
        stop = min(start + per_file, len(source))
        part: dict[str, list[torch.Tensor]] = {"mean": [], "logvar": [], "label": [], "context": []}
        caps: list[str] = []
        for b in range(start, stop, batch_size):
            items = [source.get(i, None) for i in range(b, min(b + batch_size, stop))]
            x = torch.stack([it["image"] for it in items])  # (B, 3, S, S)
            if kind == "kl":
                post = ae.encode(x)
                part["mean"].append(post.mean.float())
                part["logvar"].append(post.logvar.float())
            else:
                part["mean"].append(ae.encode(x).float())
            if "class_label" in fields:
                part["label"].append(torch.stack([it["class_label"] for it in items]))
            if "caption" in fields:
                batch_caps = [it["caption"] for it in items]
                caps += batch_caps
                if text is not None:
                    part["context"].append(text.encode(batch_caps).half())
            if progress:
                print(f"encoded {min(b + batch_size, stop)} / {len(source)}", flush=True)
        tensors = {k: torch.cat(v).contiguous() for k, v in part.items() if v}
        name = f"latents-{len(files):06d}.safetensors"
        save_file(tensors, str(tmp / name), metadata={"captions": json.dumps(caps)} if caps else None)
        files.append({"name": name, "count": stop - start})
    meta = {"kind": "latents", "format": FORMAT, "first_stage_sha256": file_sha256(os.fspath(first_stage)),
            "first_stage": kind, "first_stage_file": os.fspath(first_stage), "size": size, "resize": resize,
            "source": os.fspath(data), "files": files, "class_names": list(index.class_names) if labels != "none"
            else [], "captions": "caption" in fields, "text_encoder": text_cfg,
            "latent_shape": list(tensors["mean"].shape[1:])}
    (tmp / INDEX).write_text(json.dumps(meta, indent=1))
    if target.exists():
        shutil.rmtree(target)
    os.replace(tmp, target)
    return meta
