"""Pre-encoded latents: a dataset's posteriors (and frozen text encoders' caption embeddings) on disk, so training
needs neither the images nor the encoder (written by ``ldm data encode``, ``train/encode.py``).

Layout of ``OUT/``::

    index.json                    # format, first_stage_sha256, first_stage kind, size, the files and counts,
                                  # class_names, text_encoder (the conditioner config of the stored contexts or null)
    latents-000000.safetensors    # mean (N, C, h, w) float32, logvar (N, C, h, w) (KL only), label (N,) int64,
                                  # context (N, L, D) float16 (frozen text encoder only); captions: JSON in metadata

Each image is encoded once from its deterministic view (resize, centre crop, no flip). Training samples
``z = mean + exp(logvar / 2) · ε`` with ``diffusion.sample_posterior`` (else the mean), and is refused when its
``first_stage_path`` is not the file the latents were made with (``check_first_stage``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from .images import DataError

INDEX = "index.json"
FORMAT = 1


def is_latent_folder(path: str | os.PathLike) -> bool:
    p = Path(path) / INDEX
    if not p.is_file():
        return False
    try:
        return json.loads(p.read_text()).get("kind") == "latents"
    except (OSError, json.JSONDecodeError):
        return False


class LatentSource:
    """``get(i, generator)`` → ``latent_mean`` / ``latent_logvar`` (C, h, w) and the requested fields of item ``i``
    (``caption``, ``class_label``, ``context``)."""

    def __init__(self, root: str | os.PathLike, fields: tuple[str, ...] = ()) -> None:
        from safetensors import safe_open

        self.root = Path(root)
        if not (self.root / INDEX).is_file():
            raise DataError(f"{self.root} holds no pre-encoded latents ({INDEX} missing); write them with "
                            "`ldm data encode --first-stage AE --data IMAGES OUT/`")
        self.meta = json.loads((self.root / INDEX).read_text())
        if self.meta.get("kind") != "latents" or self.meta.get("format") != FORMAT:
            raise DataError(f"{self.root / INDEX} is not a format-{FORMAT} latent index")
        unsupported = sorted(set(fields) - {"caption", "class_label"})
        if unsupported:
            raise DataError(f"pre-encoded latents carry each image's latent, caption and class label; this task also "
                            f"needs {unsupported}, made from the pixels: train from the image folder instead")
        if "class_label" in fields and not self.meta.get("class_names"):
            raise DataError(f"{self.root} was encoded without class labels (ldm data encode --labels folders)")
        if "caption" in fields and not self.meta.get("captions"):
            raise DataError(f"{self.root} was encoded without captions")
        self.fields = fields
        self.files, self.starts, self.captions_of = [], [0], []
        for part in self.meta["files"]:
            path = self.root / part["name"]
            if not path.is_file():
                raise DataError(f"{self.root / INDEX} lists {part['name']}, which is missing")
            f = safe_open(str(path), framework="pt")
            n = f.get_slice("mean").get_shape()[0]
            if n != part["count"]:
                raise DataError(f"{path} holds {n} latents, its index {part['count']}; it changed since encoding")
            self.files.append(f)
            self.starts.append(self.starts[-1] + n)
            caps = (f.metadata() or {}).get("captions")
            self.captions_of.append(json.loads(caps) if caps else None)
        self.has_context = bool(self.meta.get("text_encoder"))

    def __getstate__(self) -> dict:  # DataLoader workers reopen the files (safe_open handles do not pickle)
        return {"root": self.root, "fields": self.fields}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["root"], state["fields"])

    def __len__(self) -> int:
        return self.starts[-1]

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(self.meta.get("class_names") or ())

    @property
    def first_stage_sha256(self) -> str:
        return self.meta["first_stage_sha256"]

    def captions(self) -> list[str]:
        return [c for caps in self.captions_of for c in (caps or [])]

    def order(self, seed: int, epoch: int) -> None:
        return None

    def _locate(self, i: int) -> tuple[int, int]:
        import bisect

        s = bisect.bisect_right(self.starts, i) - 1
        return s, i - self.starts[s]

    def get(self, i: int, generator: torch.Generator | None = None) -> dict:
        s, j = self._locate(i)
        f = self.files[s]
        out = {"latent_mean": f.get_slice("mean")[j:j + 1][0]}
        if "logvar" in f.keys():
            out["latent_logvar"] = f.get_slice("logvar")[j:j + 1][0]
        if "caption" in self.fields:
            out["caption"] = self.captions_of[s][j]
            if self.has_context:
                out["context"] = f.get_slice("context")[j:j + 1][0].float()
        if "class_label" in self.fields:
            out["class_label"] = f.get_slice("label")[j:j + 1][0]
        return out


def check_first_stage(source: LatentSource, sha256: str | None, path: str | None) -> None:
    """Refuse latents made by another first stage than the one the model will decode with."""
    if sha256 != source.first_stage_sha256:
        raise DataError(f"the latents in {source.root} were encoded by a first stage with sha256 "
                        f"{source.first_stage_sha256[:12]}..., but first_stage_path {path} is "
                        f"{(sha256 or 'none')[:12]}...; decode with the autoencoder that encoded them, or encode again")
