"""The data, image and text files ``ldm inspect`` describes (``DATA_KINDS``): pre-encoded latents (a folder, its
index, one of its files, a training latent cache), webdataset shards, PNGs with or without generation parameters,
YAML configs (model configs and training recipes) and the CLIP tokenizer's BPE file."""

from __future__ import annotations

import gzip
import tarfile
from typing import Any

import yaml
from PIL import Image

from .checkpoint import family
from .data.latents import INDEX
from .errors import LDMError
from .file_probe import (FileKind, Probe, Rows, dtypes_of, field_rows, json_entry, name_list, number, one_line,
                         shape_text)
from .pipelines.metadata import parse_parameters
from .tokenizer import VOCAB_SIZE, read_merges
from .train.autoencoder_config import AutoencoderTrainConfig
from .train.ldm_config import LDMTrainConfig
from .yaml_compat import load_yaml_config

__all__ = ["DATA_KINDS"]

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_GZIP_MAGIC = b"\x1f\x8b"
_BPE_HEADER = b"#version"  # the first line of a CLIP BPE merges file
_YAML_SUFFIXES = (".yaml", ".yml")
_LATENT_FILE_KEYS = {"mean", "logvar", "label", "context"}  # one file of `ldm data encode` (data/latents.py)
_LATENT_CACHE_KEYS = {"latents", "masked_latents"}  # diffusion.latent_cache_dir (train/ldm_data.py)
_LATENTS = f"pre-encoded latents (a folder, its {INDEX} or one of its files; a latent cache)"
_SHARDS = f"webdataset shards (a folder, its {INDEX} or one .tar)"


# -- pre-encoded latents and shards ---------------------------------------------------------------------------
def _latents(p: Probe) -> dict[str, Any] | None:
    idx = p.index()
    if idx.get("kind") != "latents":
        return None
    files = [f for f in idx.get("files") or [] if isinstance(f, dict)]
    n = sum(number(f.get("count"), int) or 0 for f in files)
    shape = shape_text(idx.get("latent_shape") or []) or "?"
    text = idx.get("text_encoder")
    names = [str(c) for c in idx.get("class_names") or []]
    extra = [*(["captions"] if idx.get("captions") else []), *([f"{len(names)} classes"] if names else [])]
    what = (f"pre-encoded latents of {n:,} images ({shape} each, {str(idx.get('first_stage', '?')).upper()} first "
            f"stage{', ' + ', '.join(extra) if extra else ''}): train on them with --data")
    return {"path": p.source, "kind": "latents", "what": what, "format": idx.get("format"), "items": n,
            "files": len(files), "latent_shape": idx.get("latent_shape"), "first_stage": idx.get("first_stage"),
            "first_stage_file": idx.get("first_stage_file"), "size": idx.get("size"), "source": idx.get("source"),
            "captions": bool(idx.get("captions")), "class_names": names,
            "text_encoder": text.get("kind") if isinstance(text, dict) else None}


def _latents_rows(info: dict[str, Any]) -> Rows:
    rows = field_rows(("items", "items"), ("files", "files"), ("latent shape", "latent_shape", shape_text),
                      ("first stage", "first_stage"), ("first stage file", "first_stage_file"),
                      ("image size", "size"), ("captions", "captions"), ("text contexts", "text_encoder"),
                      ("source", "source"))(info)
    return rows + ([("classes", name_list(info["class_names"]))] if info["class_names"] else [])


def _latents_file(p: Probe) -> dict[str, Any] | None:
    read = p.tensors()
    if read is None or "mean" not in read[0] or not read[0].keys() <= _LATENT_FILE_KEYS:
        return None
    sd, meta = read
    n, shape = sd["mean"].shape[0], list(sd["mean"].shape[1:])
    captions = json_entry(meta, "captions")
    what = (f"one file of pre-encoded latents (`ldm data encode`): {n:,} latents of {shape_text(shape)}"
            f"{' with class labels' if 'label' in sd else ''}; its folder's {INDEX} describes the set")
    return {"path": p.source, "kind": "latents-file", "what": what, "items": n, "latent_shape": shape,
            "posterior": "mean, logvar (KL)" if "logvar" in sd else "mean", "labels": "label" in sd,
            "captions": len(captions) if isinstance(captions, list) else 0,
            "context_shape": list(sd["context"].shape[1:]) if "context" in sd else None, "dtypes": dtypes_of(sd)}


def _latent_cache(p: Probe) -> dict[str, Any] | None:
    read = p.tensors()
    if read is None or "latents" not in read[0] or not read[0].keys() <= _LATENT_CACHE_KEYS:
        return None
    sd = read[0]
    n, shape = sd["latents"].shape[0], list(sd["latents"].shape[1:])
    masked = "masked_latents" in sd
    what = (f"a training latent cache (diffusion.latent_cache_dir): {n:,} latents of {shape_text(shape)}"
            f"{' and of their masked images (inpainting)' if masked else ''}")
    return {"path": p.source, "kind": "latent-cache", "what": what, "items": n, "latent_shape": shape,
            "masked_latents": masked, "dtypes": dtypes_of(sd)}


def _shards(p: Probe) -> dict[str, Any] | None:
    idx = p.index()
    if idx.get("kind") != "shards":
        return None
    shards = [s for s in idx.get("shards") or [] if isinstance(s, dict)]
    n = sum(number(s.get("count"), int) or 0 for s in shards)
    names = [str(c) for c in idx.get("class_names") or []]
    captions = any(s.get("captions") for s in shards)
    extra = [*(["captions"] if captions else []), *([f"{len(names)} classes"] if names else [])]
    what = (f"webdataset shards (`ldm data shard`): {n:,} images in {len(shards)} shard(s)"
            + (f", {', '.join(extra)}" if extra else ""))
    return {"path": p.source, "kind": "shards", "what": what, "format": idx.get("format"), "items": n,
            "shards": len(shards), "captions": captions, "class_names": names, "source": idx.get("source")}


def _shard(p: Probe) -> dict[str, Any] | None:
    """One webdataset .tar: samples grouped by key (the member name up to its first dot), as webdataset does."""
    if p.suffix != ".tar" or not p.path.is_file():
        return None
    try:
        with tarfile.open(p.path) as tar:
            names = [m.name for m in tar.getmembers() if m.isfile()]
    except (tarfile.TarError, OSError, EOFError) as exc:
        p.why_not.append(f"not a readable tar archive ({one_line(exc)})")
        return None
    samples: dict[str, list[str]] = {}
    for name in names:
        folder, _, base = name.rpartition("/")
        key, _, ext = base.partition(".")
        samples.setdefault(f"{folder}/{key}", []).append(ext)
    exts = sorted({e for v in samples.values() for e in v})
    what = f"a webdataset shard: {len(samples):,} samples ({', '.join(exts) or 'no files'})"
    return {"path": p.source, "kind": "shard", "what": what, "items": len(samples), "extensions": exts,
            "files": len(names)}


# -- images, configs, the tokenizer ------------------------------------------------------------------------------
def _png(p: Probe) -> dict[str, Any] | None:
    if not p.head.startswith(_PNG_MAGIC):
        return None
    try:
        with Image.open(p.path) as im:
            (width, height), mode, text = im.size, im.mode, im.info.get("parameters")
    except Exception as exc:  # noqa: BLE001 - PIL raises many kinds for a broken file (and DecompressionBombError)
        p.why_not.append(f"it starts like a PNG but cannot be read ({type(exc).__name__}: {one_line(exc)})")
        return None
    info = {"path": p.source, "kind": "png", "width": width, "height": height, "mode": mode,
            "parameters": None if text is None else str(text), "prompt": None, "negative_prompt": None,
            "settings": {}}
    if text is not None:
        try:
            info["prompt"], info["negative_prompt"], info["settings"] = parse_parameters(str(text))
        except LDMError:
            pass  # not in the A1111 layout: shown as it is
    carries = "generation parameters (`ldm info` prints them)" if text is not None else "no generation parameters"
    return info | {"what": f"a PNG image, {width}x{height} {mode}, carrying {carries}"}


def _png_rows(info: dict[str, Any]) -> Rows:
    rows: Rows = [("size", f"{info['width']}x{info['height']}"), ("mode", info["mode"])]
    if info["parameters"] is None:
        return rows + [("parameters", "none")]
    if info["prompt"] is None:
        return rows + [("parameters", one_line(info["parameters"], 1000))]
    rows += [("prompt", info["prompt"])] + ([("negative prompt", info["negative_prompt"])]
                                            if info["negative_prompt"] else [])
    return rows + list(info["settings"].items())


def _config(p: Probe) -> dict[str, Any] | None:
    """A YAML config: a stage-2 or stage-1 training recipe, or a model config (ours or an original CompVis / SD
    inference YAML). A recipe or model config that does not parse is its own error, naming the bad key."""
    if p.suffix not in _YAML_SUFFIXES or not p.path.is_file():
        return None
    try:
        data = yaml.safe_load(p.path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        p.why_not.append(f"not valid YAML ({one_line(exc)})")
        return None
    if not isinstance(data, dict):
        p.why_not.append(f"YAML holding a {type(data).__name__}, not a mapping of config sections")
        return None
    info: dict[str, Any] = {"path": p.source, "kind": "config"}
    model = data.get("model")
    if (model == "from_init" or (isinstance(model, dict) and model.get("from_init"))) and not data.get("init_from"):
        run = data.get("run") or {}
        info |= {"config": "ldm fine-tuning recipe", "task": data.get("task"), "family": "the --init-from file's",
                 "max_steps": run.get("max_steps")}
        what = (f"a stage-2 fine-tuning recipe: {data.get('task')}, the model of the file given as --init-from "
                f"(`ldm train ldm --config {p.path.name} --init-from CKPT`)")
    elif {"task", "first_stage_path", "diffusion", "init_from"} & data.keys():
        cfg = LDMTrainConfig.from_dict(data, where=p.source)
        info |= {"config": "ldm training recipe", "task": cfg.task, "family": family(cfg.model),
                 "max_steps": cfg.run.max_steps, "first_stage_path": cfg.first_stage_path}
        what = (f"a stage-2 (LDM) training recipe: {cfg.task}, {info['family']}, {cfg.run.max_steps:,} steps "
                "(`ldm train ldm --config`)")
    elif "loss" in data or ("kind" in data and "model" in data):
        ae = AutoencoderTrainConfig.from_dict(data, where=p.source)
        info |= {"config": "autoencoder training recipe", "first_stage": ae.kind,
                 "downsample_factor": ae.model.downsample_factor, "max_steps": ae.run.max_steps}
        what = (f"a stage-1 (autoencoder) training recipe: {ae.kind.upper()}-f{ae.model.downsample_factor}, "
                f"{ae.run.max_steps:,} steps (`ldm train autoencoder --config`)")
    else:
        original = isinstance(data.get("model"), dict) and "params" in data["model"]
        cfg = load_yaml_config(p.path)
        info |= {"config": "original inference YAML" if original else "model config", "family": family(cfg),
                 "parameterization": cfg.parameterization}
        what = (f"a model config ({'an original CompVis / SD inference YAML' if original else 'ours'}): "
                f"{info['family']}; pass it as --config with a checkpoint")
    return info | {"what": what}


def _bpe(p: Probe) -> dict[str, Any] | None:
    """The CLIP tokenizer's merges (``bpe_simple_vocab_16e6.txt.gz``): gzip text whose first line is ``#version``."""
    if not p.head.startswith(_GZIP_MAGIC):
        return None
    try:
        with gzip.open(p.path) as f:
            first = f.readline(256)
    except (OSError, EOFError) as exc:
        p.why_not.append(f"gzip data that cannot be read ({one_line(exc)})")
        return None
    if _BPE_HEADER not in first:
        return None
    try:
        merges = read_merges(p.path)
    except LDMError as exc:
        p.why_not.append(one_line(exc).replace(p.source, "it"))
        return None
    what = (f"the CLIP tokenizer's BPE merges: {len(merges):,} merge rules, a vocabulary of {VOCAB_SIZE:,} tokens "
            "(SD 1.x / 2.x text encoders)")
    return {"path": p.source, "kind": "tokenizer", "what": what, "merges": len(merges), "vocab_size": VOCAB_SIZE,
            "version": first.split(_BPE_HEADER)[-1].lstrip(b":").decode("utf-8", "replace").strip()}


DATA_KINDS: list[FileKind] = [
    FileKind("png", "PNG images", _png, _png_rows),
    FileKind("config", "YAML configs (model configs, training recipes)", _config,
             field_rows(("config", "config"), ("task", "task"), ("family", "family"), ("first stage", "first_stage"),
                        ("downsample factor", "downsample_factor"), ("parameterization", "parameterization"),
                        ("max steps", "max_steps"), ("first stage file", "first_stage_path"))),
    FileKind("latents", _LATENTS, _latents, _latents_rows),
    FileKind("latents-file", _LATENTS, _latents_file,
             field_rows(("items", "items"), ("latent shape", "latent_shape", shape_text), ("posterior", "posterior"),
                        ("class labels", "labels"), ("captions", "captions"),
                        ("context shape", "context_shape", shape_text),
                        ("dtypes", "dtypes"))),
    FileKind("latent-cache", _LATENTS, _latent_cache,
             field_rows(("items", "items"), ("latent shape", "latent_shape", shape_text),
                        ("masked latents", "masked_latents"),
                        ("dtypes", "dtypes"))),
    FileKind("shards", _SHARDS, _shards,
             field_rows(("items", "items"), ("shards", "shards"), ("captions", "captions"), ("source", "source"))),
    FileKind("shard", _SHARDS, _shard,
             field_rows(("samples", "items"), ("files", "files"), ("extensions", "extensions"))),
    FileKind("tokenizer", "the CLIP tokenizer's BPE file", _bpe,
             field_rows(("merges", "merges"), ("vocabulary", "vocab_size"), ("version", "version"))),
]
