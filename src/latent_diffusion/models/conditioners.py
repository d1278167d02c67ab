"""Conditioning stages (``cond_stage_model``): class labels, SD 1.x CLIP text, SD 2.x OpenCLIP text.

Attribute names give the CompVis / SD checkpoint keys directly:

* :class:`ClassEmbedder` -> ``cond_stage_model.embedding.weight``
* :class:`FrozenCLIPEmbedder` -> ``cond_stage_model.transformer.text_model.*`` (SD 1.x)
* :class:`FrozenOpenCLIPEmbedder` -> ``cond_stage_model.model.*`` (SD 2.x)

The text encoders are frozen: ``requires_grad_(False)`` and always in eval mode (``train()`` is a no-op),
as CompVis' ``LatentDiffusion`` did with ``disabled_train``.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import ConditionerConfig, DiffusionConfig
from ..errors import ConfigError
from ..tokenizer import clip_tokenize
from .clip_text import ACTIVATIONS, LAYERS, CLIPTextModel
from .open_clip_text import OpenCLIPTextModel

CONDITIONER_KINDS = ("none", "class", "clip", "open_clip", "bert", "layout", "minilm")
TEXT_KINDS = ("clip", "open_clip", "bert", "minilm")  # conditioners that take prompts


class ClassEmbedder(nn.Module):
    """CompVis ``ClassEmbedder``: class ids ``(B,)`` -> one context token ``(B, 1, embed_dim)``."""

    def __init__(self, n_classes: int = 1000, embed_dim: int = 512) -> None:
        super().__init__()
        self.embedding = nn.Embedding(n_classes, embed_dim)

    def forward(self, class_ids: torch.Tensor) -> torch.Tensor:
        return self.embedding(class_ids.long()[:, None])  # (B, 1, D)


class _FrozenTextEncoder(nn.Module):
    """Shared frozen behaviour: no gradients, eval mode forever, tokenizer call on the module's device."""

    layer: str
    max_length: int
    pad_with_zero: bool

    def _freeze(self) -> None:
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "_FrozenTextEncoder":
        return super().train(False)  # frozen: stays in eval mode whatever the parent asks

    def encode(self, texts: list[str]) -> torch.Tensor:
        """Tokenize ``texts`` and encode them: ``(B, max_length, width)``."""
        tokens = clip_tokenize(list(texts), max_length=self.max_length, pad_with_zero=self.pad_with_zero)
        device = next(self.parameters()).device
        return self(tokens.to(device))


class FrozenCLIPEmbedder(_FrozenTextEncoder):
    """SD 1.x text conditioning: OpenAI CLIP ViT-L/14 text model, tokens padded with the end token (49407).

    ``layer="last"`` is SD 1.x; ``"penultimate"`` is "CLIP skip 2" (see :class:`CLIPTextModel`).
    """

    def __init__(self, transformer: CLIPTextModel | None = None, *, layer: str = "last",
                 pad_with_zero: bool = False) -> None:
        super().__init__()
        if layer not in LAYERS:
            raise ConfigError(f"unknown CLIP layer {layer!r}; accepted: {list(LAYERS)}")
        self.transformer = transformer if transformer is not None else CLIPTextModel()
        self.layer = layer
        self.max_length = self.transformer.max_length
        self.pad_with_zero = pad_with_zero
        self._freeze()

    def set_position_ids_persistent(self, flag: bool) -> None:
        """See :meth:`CLIPTextModel.set_position_ids_persistent` (older SD 1.x files carry ``position_ids``)."""
        self.transformer.set_position_ids_persistent(flag)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.transformer(tokens, layer=self.layer)  # (B, 77, 768)


class FrozenOpenCLIPEmbedder(_FrozenTextEncoder):
    """SD 2.x text conditioning: OpenCLIP ViT-H-14 text tower, ``layer="penultimate"``, tokens padded with 0."""

    def __init__(self, model: OpenCLIPTextModel | None = None, *, layer: str = "penultimate") -> None:
        super().__init__()
        if layer not in LAYERS:
            raise ConfigError(f"unknown OpenCLIP layer {layer!r}; accepted: {list(LAYERS)}")
        self.model = model if model is not None else OpenCLIPTextModel()
        self.layer = layer
        self.max_length = self.model.max_length
        self.pad_with_zero = True  # open_clip.tokenize pads with 0
        self._freeze()

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model(tokens, layer=self.layer)  # (B, 77, 1024)


def num_class_labels(cfg: DiffusionConfig) -> int | None:
    """Labels a class-conditional model takes (ClassEmbedder or the UNet's label embedding); None if it takes none."""
    if cfg.conditioner.kind == "class":
        return cfg.conditioner.n_classes
    return cfg.unet.num_classes


def null_class(cfg: DiffusionConfig) -> int | None:
    """The label meaning "no class" (condition dropout in training, the unconditional half of guidance):
    ``conditioner.null_class`` when set, else the last of 1001 labels (CompVis cin256-v2), else None."""
    n = num_class_labels(cfg)
    if n is None:
        return None
    if cfg.conditioner.null_class is not None:
        return cfg.conditioner.null_class
    return n - 1 if n == 1001 else None


def _check_text_config(cfg: ConditionerConfig) -> None:
    if cfg.layer not in LAYERS:
        raise ConfigError(f"conditioner.layer={cfg.layer!r} is not accepted; accepted: {list(LAYERS)}")
    if cfg.act not in ACTIVATIONS:
        raise ConfigError(f"conditioner.act={cfg.act!r} is not accepted; accepted: {list(ACTIVATIONS)}")
    if cfg.width % cfg.heads:
        raise ConfigError(f"conditioner.width={cfg.width} must be divisible by conditioner.heads={cfg.heads}")
    if cfg.layers < 1 or cfg.max_length < 2:
        raise ConfigError(f"conditioner.layers={cfg.layers} must be >= 1 and max_length={cfg.max_length} >= 2")


def build_conditioner(cfg: ConditionerConfig) -> nn.Module | None:
    """The conditioning stage for ``cfg.kind``: ``None`` for ``"none"``, else a (frozen, for text) module.

    ``"open_clip"`` always pads tokens with 0 (OpenCLIP's tokenizer); ``cfg.pad_with_zero`` applies to ``"clip"``.
    """
    kind = cfg.kind
    if kind == "none":
        return None
    if kind == "class":
        return ClassEmbedder(cfg.n_classes, cfg.embed_dim)
    if kind in ("clip", "open_clip"):
        _check_text_config(cfg)
        tower = dict(vocab_size=cfg.vocab_size, max_length=cfg.max_length, width=cfg.width, layers=cfg.layers,
                     heads=cfg.heads, mlp_ratio=cfg.mlp_ratio, act=cfg.act)
        if kind == "clip":
            return FrozenCLIPEmbedder(CLIPTextModel(**tower), layer=cfg.layer, pad_with_zero=cfg.pad_with_zero)
        return FrozenOpenCLIPEmbedder(OpenCLIPTextModel(**tower, output_dim=cfg.output_dim), layer=cfg.layer)
    if kind in ("bert", "layout", "minilm"):
        return _build_trained_or_minilm(cfg)
    raise ConfigError(f"unknown conditioner kind {kind!r}; accepted kinds: {list(CONDITIONER_KINDS)}")


def _build_trained_or_minilm(cfg: ConditionerConfig) -> nn.Module:
    from .text_encoder import FourierLayoutEmbedder, LayoutTokenizer, TransformerEmbedder, WordTokenizer

    if cfg.kind == "minilm":
        from .minilm_text import FrozenMiniLMEmbedder

        vocab = len(cfg.pieces) if cfg.pieces else 30522 if cfg.vocab_size == 49408 else cfg.vocab_size  # (CLIP's
        # BPE size is the field's default)
        return FrozenMiniLMEmbedder(cfg.width, cfg.layers, cfg.heads, cfg.max_length, vocab, cfg.minilm_dir,
                                    tuple(cfg.pieces))
    if cfg.kind == "bert":
        from .text_encoder import SHAPES_WORDS

        tok = WordTokenizer(tuple(cfg.words) or SHAPES_WORDS, cfg.max_length)
    elif cfg.layout_boxes == "fourier":
        return FourierLayoutEmbedder(cfg.layout_classes, cfg.max_length, cfg.width, cfg.layers, cfg.heads,
                                     cfg.mlp_ratio)
    else:
        tok = LayoutTokenizer(cfg.layout_classes, cfg.layout_bins, cfg.max_length)
    return TransformerEmbedder(tok, cfg.width, cfg.layers, cfg.heads, cfg.mlp_ratio)
