"""``ldm inspect``: say which kind of file the project writes or reads a path is, and describe it.

``inspect_file(path)`` asks each ``FileKind`` of ``KINDS`` in turn; the first whose recogniser returns a dict
describes the path: ``kind``, a one-sentence ``what`` and the kind's own fields (JSON-ready). A path no kind
recognises is one ``LDMError`` saying what it is not and which kinds are accepted. ``format_report`` turns the
dict into the text ``ldm inspect`` prints. A new kind (a LoRA, a textual-inversion embedding) is one more
``FileKind`` in ``KINDS``: a recogniser reading the shared ``Probe`` (``file_probe.py``) and the rows it prints.

The model files are here (LDM, stage-1 autoencoder, layout planner, judges, Lightning training checkpoints); the
data, image and text files in ``inspect_data.py``.
"""

from __future__ import annotations

import json
import os
from typing import Any

from .autoencoder_io import AE_CONFIG_KEY, FORMAT as AE_FORMAT, SCALE_KEY, autoencoder_config
from .checkpoint import CONFIG_METADATA_KEY, describe_checkpoint, family
from .config import DiffusionConfig
from .data.latents import INDEX
from .errors import CheckpointError, ConfigError, LDMError
from .eval.digits import DIGIT_JUDGE_KIND
from .eval.judge import JUDGE_KIND
from .file_probe import (FileKind, Probe, Rows, dtypes_of, field_rows, human_count, json_entry, name_list, number,
                         one_line, parameter_count, trained_steps)
from .infer import UNET
from .inspect_data import DATA_KINDS
from .models.layout_planner import PLANNER_METADATA_KEY, PlannerConfig

__all__ = ["KINDS", "inspect_file", "format_report"]

_LDM_TRAIN, _AE_TRAIN = "ldm_train_config", "autoencoder_train_config"  # written by train/ldm.py, train/autoencoder.py


def inspect_file(path: str | os.PathLike, config: Any = None) -> dict[str, Any]:
    """What ``path`` is and its description (see ``KINDS``). ``config`` (a model YAML, dict or ``DiffusionConfig``)
    is the config of an LDM checkpoint, as ``inspect_checkpoint`` takes it; it is an error for any other kind."""
    probe = Probe(path, config)
    if not probe.path.exists():
        raise CheckpointError(f"file not found: {probe.source}")
    for kind in KINDS:
        info = kind.recognise(probe)
        if info is not None:
            if config is not None and info["kind"] != "ldm":
                raise ConfigError(f"--config (config=) is the model config of an LDM checkpoint; {probe.source} is "
                                  f"{info['what']}")
            return info
    raise LDMError(f"{probe.source} is not a file `ldm inspect` describes ({_refusal_reason(probe)}); accepted: "
                   + "; ".join(dict.fromkeys(k.accepted for k in KINDS)))


def format_report(info: dict[str, Any]) -> str:
    """The text ``ldm inspect`` prints: the path, then ``kind``, ``what`` and the kind's rows, one per line."""
    kind = next((k for k in KINDS if k.name == info["kind"]), None)
    rows: Rows = [("kind", info["kind"]), ("what", info["what"])] + (kind.rows(info) if kind is not None else [])
    return "\n".join([str(info["path"])] + [f"  {label + ':':20}{value}" for label, value in rows])


def _refusal_reason(probe: Probe) -> str:
    if probe.why_not:
        return "; ".join(dict.fromkeys(probe.why_not))
    if probe.path.is_dir():
        return f"a folder with no {INDEX} of pre-encoded latents or shards"
    read = probe.tensors()
    if read is not None:
        keys = list(read[0])
        return f"it holds {len(keys)} tensor(s), e.g. {keys[:4]}, in no layout this project writes or reads"
    return (f"a {probe.path.stat().st_size:,}-byte file with extension {probe.suffix or '(none)'!r} that is no PNG, "
            "tensor file, YAML or index")


# -- model files ------------------------------------------------------------------------------------------------
def _ldm(p: Probe) -> dict[str, Any] | None:
    read = p.tensors()
    if read is None or not (any(k.startswith(UNET) for k in read[0]) or CONFIG_METADATA_KEY in read[1]):
        return None
    info = describe_checkpoint(*read, p.source, p.config)
    total = sum(n for part, n in info["parameters"].items() if part != "ema")
    what = f"a latent diffusion model: {info['family']}, {human_count(total)} parameters"
    return {"path": p.source, "kind": "ldm", "what": what} | info | {"trained_steps": trained_steps(read[1])}


def _ldm_rows(info: dict[str, Any]) -> Rows:
    """The rows ``ldm inspect`` has always printed for an LDM checkpoint, and the training steps it records."""
    rows: Rows = [("family", info["family"]), ("parameterization", info["parameterization"]),
                  ("scale factor", info["scale_factor"])]
    rows += [(f"{part} params", f"{n:,}") for part, n in info["parameters"].items() if n]
    rows += [("dtypes", ", ".join(info["dtypes"])), ("EMA weights", "yes" if info["ema"] else "no"),
             ("tensors", info["tensors"]), ("config", info["config_source"])]
    if info["class_names"]:
        rows.append(("classes", name_list(info["class_names"])))
    if info.get("trained_steps") is not None:
        rows.append(("trained steps", f"{info['trained_steps']:,}"))
    return rows


def _autoencoder(p: Probe) -> dict[str, Any] | None:
    read = p.tensors()
    if read is None:
        return None
    sd, meta = read
    ours = meta.get("format") == AE_FORMAT or AE_CONFIG_KEY in meta
    if not ours and not {"encoder.conv_in.weight", "decoder.conv_in.weight"} <= sd.keys():
        return None
    weights = {k: v for k, v in sd.items() if not k.startswith("loss.")}  # CompVis stage-1 files carry their loss
    kind, cfg, origin = autoencoder_config(weights, meta, p.source)
    f, n = cfg.downsample_factor, parameter_count(weights)
    codebook = getattr(cfg, "n_embed", None) if kind == "vq" else None
    codes = f", a codebook of {codebook:,} {cfg.embed_dim}-dim codes" if codebook else ""
    what = (f"a stage-1 autoencoder ({kind.upper()}-f{f}): image -> {cfg.embed_dim}-channel latents at 1/{f} "
            f"size{codes}, {human_count(n)} parameters")
    return {"path": p.source, "kind": "autoencoder", "what": what, "first_stage": kind, "downsample_factor": f,
            "latent_channels": cfg.embed_dim, "z_channels": cfg.z_channels, "codebook_size": codebook,
            "channels": cfg.ch, "channel_mult": list(cfg.ch_mult), "scale_factor": number(meta.get(SCALE_KEY)),
            "parameters": n, "loss_parameters": parameter_count(sd, "loss.") or None, "dtypes": dtypes_of(sd),
            "tensors": len(sd), "config_source": origin, "trained_steps": trained_steps(meta)}


def _planner(p: Probe) -> dict[str, Any] | None:
    read = p.tensors()
    if read is None or PLANNER_METADATA_KEY not in read[1]:
        return None
    sd, meta = read
    try:
        cfg = PlannerConfig(**json.loads(meta[PLANNER_METADATA_KEY]))
    except (ValueError, TypeError, RecursionError) as exc:  # JSONDecodeError, ConfigError, unknown fields
        raise CheckpointError(f"{p.source}: its {PLANNER_METADATA_KEY} metadata is not a valid planner config: "
                              f"{one_line(exc)}") from None
    n = parameter_count(sd)
    what = (f"a layout planner: caption -> boxes (up to {cfg.max_objects} objects of {cfg.n_classes} classes), "
            f"{human_count(n)} parameters")
    return {"path": p.source, "kind": "planner", "what": what, "vocabulary": len(cfg.words),
            "n_classes": cfg.n_classes, "max_objects": cfg.max_objects, "bins": cfg.bins, "max_words": cfg.max_words,
            "width": cfg.width, "layers": cfg.layers, "heads": cfg.heads, "parameters": n, "dtypes": dtypes_of(sd),
            "tensors": len(sd)}


def _judge(p: Probe) -> dict[str, Any] | None:
    read = p.tensors()
    if read is None or read[1].get("kind") not in (JUDGE_KIND, DIGIT_JUDGE_KIND):
        return None
    sd, meta = read
    config, summary = json_entry(meta, "config") or {}, json_entry(meta, "summary") or {}
    config, summary = (d if isinstance(d, dict) else {} for d in (config, summary))
    n, accuracy = parameter_count(sd), number(summary.get("judge_test_accuracy"))
    if meta["kind"] == JUDGE_KIND:
        judge = "shapes"
        what = (f"a ShapesWorld judge: image -> per-pixel shape and colour labels (objects, counts, relations), "
                f"{human_count(n)} parameters")
    else:
        judge, size = "mnist-digits", config.get("size", "?")
        held_out = f" ({accuracy:.1%} on held-out digits)" if accuracy is not None else ""
        what = f"an MNIST digit judge: {size}x{size} image -> digit 0-9{held_out}, {human_count(n)} parameters"
    return {"path": p.source, "kind": "judge", "what": what, "judge": judge, "channels": config.get("channels"),
            "training_steps": number(summary.get("steps"), int), "final_loss": number(summary.get("final_loss")),
            "test_accuracy": accuracy, "parameters": n, "dtypes": dtypes_of(sd), "tensors": len(sd)}


def _training(p: Probe) -> dict[str, Any] | None:
    """A Lightning checkpoint: ours (stage 1 or 2, resumable with ``ldm train ... --resume``) or another one's."""
    read = p.tensors()
    if read is None or not {_LDM_TRAIN, _AE_TRAIN, "global_step", "epoch"} & read[1].keys():
        return None
    sd, extras = read
    step, epoch = number(extras.get("global_step"), int), number(extras.get("epoch"), int)
    seen = int(sd["batches_seen"]) if "batches_seen" in sd and sd["batches_seen"].numel() == 1 else None
    recipe = _section(extras, _LDM_TRAIN) or _section(extras, _AE_TRAIN)
    info = {"path": p.source, "kind": "training-checkpoint", "global_step": step, "epoch": epoch,
            "batches_seen": seen, "max_steps": number(_section(recipe, "run").get("max_steps"), int)}
    if _LDM_TRAIN in extras:
        info |= _stage2(sd, recipe, step if seen is None else seen // (
            number(_section(recipe, "optim").get("accumulate"), int) or 1))
    elif _AE_TRAIN in extras:
        info |= _stage1(sd, recipe, step if seen is None else seen)
    else:
        info |= {"stage": None, "step": step, "parameters": {"all": parameter_count(sd)},
                 "what": "a Lightning training checkpoint not written by this project's trainers"}
    at = [] if info["step"] is None else [f"step {info['step']:,}" + (
        f" of {info['max_steps']:,}" if info["max_steps"] else "")]
    at += [] if epoch is None else [f"epoch {epoch}"]
    info["what"] += ", " + ", ".join(at) if at else ""
    return info | {"tensors": len(sd), "dtypes": dtypes_of(sd)}


def _stage2(sd: dict[str, Any], recipe: dict[str, Any], step: int | None) -> dict[str, Any]:
    """What a stage-2 training checkpoint (``LatentDiffusionModule``, keys ``model.<LDM key>``) says of its run."""
    task, fam = recipe.get("task"), _family(recipe.get("model"))
    model = ", ".join(str(v) for v in (task, fam) if v)
    parts = (("unet", UNET), ("first_stage", "first_stage_model."), ("cond_stage", "cond_stage_model."),
             ("ema", "model_ema."))
    return {"stage": "ldm", "task": task, "family": fam, "step": step,
            "parameters": {part: parameter_count(sd, "model." + prefix) for part, prefix in parts},
            "first_stage_path": recipe.get("first_stage_path"),
            "what": f"a stage-2 (LDM) training checkpoint{': ' + model if model else ''}"}


def _stage1(sd: dict[str, Any], recipe: dict[str, Any], step: int | None) -> dict[str, Any]:
    """What a stage-1 training checkpoint (``AutoencoderModule``: ``model.*`` and ``loss.*``) says of its run."""
    mult = _section(recipe, "model").get("ch_mult")
    f = 2 ** (len(mult) - 1) if isinstance(mult, list) and mult else None
    kind = str(recipe.get("kind", "kl"))
    return {"stage": "autoencoder", "first_stage": kind, "downsample_factor": f, "step": step,
            "parameters": {"autoencoder": parameter_count(sd, "model."), "loss": parameter_count(sd, "loss.")},
            "what": f"a stage-1 (autoencoder) training checkpoint: {kind.upper()}-f{f or '?'}"}


def _section(data: dict[str, Any], name: str) -> dict[str, Any]:
    """``data[name]`` when it is a mapping, else {} (a recipe as stored, not validated)."""
    value = data.get(name)
    return value if isinstance(value, dict) else {}


def _family(model: Any) -> str | None:
    try:
        return family(DiffusionConfig.from_dict(model or {}))
    except (ValueError, TypeError, KeyError, AttributeError):  # ConfigError is a ValueError
        return None


def _training_rows(info: dict[str, Any]) -> Rows:
    rows = field_rows(("stage", "stage"), ("task", "task"), ("family", "family"), ("first stage", "first_stage"),
                      ("downsample factor", "downsample_factor"), ("step", "step"), ("max steps", "max_steps"),
                      ("epoch", "epoch"), ("global step", "global_step"), ("batches seen", "batches_seen"))(info)
    rows += [(f"{part} params", f"{n:,}") for part, n in info["parameters"].items() if n]
    tail = field_rows(("first stage file", "first_stage_path"), ("dtypes", "dtypes"), ("tensors", "tensors"))
    return rows + tail(info)


KINDS: list[FileKind] = [
    FileKind("ldm", "LDM checkpoints (.safetensors, .ckpt)", _ldm, _ldm_rows),
    FileKind("autoencoder", "stage-1 autoencoders (KL / VQ)", _autoencoder,
             field_rows(("first stage", "first_stage"), ("downsample factor", "downsample_factor"),
                        ("latent channels", "latent_channels"), ("z channels", "z_channels"),
                        ("codebook size", "codebook_size"), ("channels", "channels"),
                        ("channel mult", "channel_mult"), ("scale factor", "scale_factor"), ("params", "parameters"),
                        ("loss params", "loss_parameters"), ("dtypes", "dtypes"), ("tensors", "tensors"),
                        ("config", "config_source"), ("trained steps", "trained_steps"))),
    FileKind("planner", "layout planners", _planner,
             field_rows(("vocabulary", "vocabulary"), ("classes", "n_classes"), ("max objects", "max_objects"),
                        ("box bins", "bins"), ("max words", "max_words"), ("width", "width"), ("layers", "layers"),
                        ("heads", "heads"), ("params", "parameters"), ("dtypes", "dtypes"), ("tensors", "tensors"))),
    FileKind("judge", "judges (ShapesWorld, MNIST digits)", _judge,
             field_rows(("judge", "judge"), ("channels", "channels"), ("training steps", "training_steps"),
                        ("final loss", "final_loss"), ("test accuracy", "test_accuracy"), ("params", "parameters"),
                        ("dtypes", "dtypes"), ("tensors", "tensors"))),
    *DATA_KINDS,
    # last: an original CompVis .ckpt is a Lightning checkpoint too, and is described as the model it holds
    FileKind("training-checkpoint", "Lightning training checkpoints (.ckpt)", _training, _training_rows),
]
