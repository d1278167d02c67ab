"""Data for stage-2 training: a step-addressed stream, so that data order is a pure function of the step.

Sample ``j`` of micro-batch ``b`` on rank ``r`` of ``W`` is stream position ``p = (b·W + r)·B + j``; pass
``e = p // N`` over the ``N`` items uses the permutation ``randperm(N, seed_of(seed, e))``. Resuming at micro-batch
``b`` therefore replays exactly what an uninterrupted run would have seen, on any number of processes.

A source may fix each pass's order itself (tar shards: shard-major, ``data/shards.py``); item ``p``'s random crop, flip
and mask come from a generator seeded with ``(seed, p)``.

``build_items`` reads ``cfg.data`` (ShapesWorld, an image folder or shards) into an item source; ``TaskSource`` hands
the training step what the task needs (the image, or a cached latent, plus the condition fields); cached latents are
the posterior means of the items' deterministic views (centre crop, no flip), encoded once (and kept on disk with
``diffusion.latent_cache_dir``).

Prior preservation (``prior:``) adds a second stream over the class images (``ClassItems``; its own order, from
``seed_of(seed, "prior")``): ``PairedWindow`` gives the class item at the same stream position ``p`` beside each
instance item, under ``prior``, so that the class stream follows the step exactly as the instance stream does.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from torch.utils.data import Dataset

from ..config import to_dict
from ..data.seeds import seed_of
from ..data.shapes import ShapesWorld, ShapesWorldConfig
from ..errors import CheckpointError, ConfigError
from ..safe_load import read_state_dict, save_safetensors_atomic
from .ldm_config import LDMTrainConfig, check_class_count, class_image_dir

# condition fields each task reads from an item
TASK_FIELDS: dict[str, tuple[str, ...]] = {
    "unconditional": (),
    "class": ("class_label",),
    "txt2img": ("caption",),
    "layout": ("layout",),
    "semantic": ("segmentation",),
    "superres": ("lowres",),
    "inpaint": ("caption", "mask"),
}


def build_world(cfg: LDMTrainConfig) -> ShapesWorld:
    d = cfg.data
    kw = {} if d.backgrounds is None else {"backgrounds": tuple(d.backgrounds)}
    if d.object_weights is not None:
        kw["object_weights"] = tuple(d.object_weights)
    return ShapesWorld(ShapesWorldConfig(size=d.size, seed=d.seed, length=d.length, **kw))


class ShapesItems:
    """ShapesWorld as an item source: ``get(i, generator)`` → ``image`` and the task's fields (item ``i`` is the same
    whatever the generator: the world is seeded per item and symmetric, so no crop or flip is drawn)."""

    def __init__(self, world: ShapesWorld, fields: tuple[str, ...], mask: str = "both") -> None:
        self.world, self.fields, self.mask = world, fields, mask

    def __len__(self) -> int:
        return len(self.world)

    @property
    def class_names(self) -> tuple[str, ...]:
        from ..data.shapes import NUM_CLASSES, class_name

        return tuple(class_name(c) for c in range(NUM_CLASSES))

    def order(self, seed: int, epoch: int) -> None:
        return None

    def get(self, i: int, generator: torch.Generator | None = None, *, pixels: bool = True) -> dict:
        item = self.world[i]
        out = {"image": item["image"]} if pixels else {}
        for k in self.fields:
            out[k] = self._mask(item, i) if k == "mask" else item[k]
        return out

    def _mask(self, item: dict, i: int) -> torch.Tensor:
        """Item ``i``'s inpainting mask (1, H, W), 1 = hole: ``data.mask``'s kind, box and stroke alternating."""
        use_box = self.mask == "box" or (self.mask == "both" and i % 2 == 0)
        return item["mask_box" if use_box else "mask_stroke"]


def build_items(cfg: LDMTrainConfig):  # noqa: ANN201 - ShapesItems | FolderSource
    """The task's item source for ``cfg.data`` (ShapesWorld, an image folder or tar shards), checked at step 0."""
    fields = TASK_FIELDS[cfg.task]
    d = cfg.data
    if d.source == "shapes":
        return ShapesItems(build_world(cfg), fields, d.shapes_mask)
    if d.source == "latents":
        from ..data.latents import LatentSource

        items = LatentSource(d.root, fields)
        check_class_count(cfg, items.class_names)
        check_latent_shape(cfg, items)
        return items
    from ..data.sources import FolderSource, index_images

    index = index_images(d.source, d.root, captions=d.captions if "caption" in fields else "none",
                         labels=d.labels if cfg.task == "class" else "none", missing_caption=d.missing_caption,
                         strict=d.strict, need_captions="caption" in fields)
    extra: dict = {}
    if "segmentation" in fields:
        from ..data.annotations import pair_label_maps

        extra["label_maps"] = pair_label_maps(index, d.segmentation_root, int(d.num_segment_classes))
    if "layout" in fields:
        from ..data.annotations import read_coco_layouts

        extra["layouts"] = read_coco_layouts(index, d.layout_json)
    if "mask" in fields:
        from ..data.degrade import MaskConfig

        extra["mask"] = MaskConfig(kind=real_mask_kind(d.mask))
    if d.buckets:
        from ..data.buckets import make_buckets

        step = model_downsampling(cfg)
        if "lowres" in fields and step % d.sr_factor:
            raise ConfigError(f"data.buckets: bucket sides are multiples of {step} (the model's downsampling), not of "
                              f"data.sr_factor={d.sr_factor}; the low-res input could not be cut from them")
        extra["buckets"] = make_buckets(d.size, step, d.bucket_max_ratio)
    items = FolderSource(index, d.transform(), fields, sr_factor=d.sr_factor, max_objects=d.max_objects, **extra)
    check_class_count(cfg, items.class_names)
    return items


def real_mask_kind(mask: str | None) -> str:
    """``data.mask`` for real images: a ShapesWorld recipe's box / stroke / both read as boxes / strokes / lama."""
    return {None: "lama", "box": "boxes", "stroke": "strokes", "both": "lama"}.get(mask, mask)  # type: ignore[arg-type]


def check_latent_shape(cfg: LDMTrainConfig, items) -> None:  # noqa: ANN001 - data.latents.LatentSource
    """Pre-encoded latents must be the size and channels this recipe trains on."""
    meta, d = items.meta, cfg.data
    channels = cfg.model.unet.out_channels
    if meta.get("size") != d.size or meta.get("latent_shape", [channels])[0] != channels:
        raise ConfigError(f"the latents in {d.root} were encoded from {meta.get('size')} px images to "
                          f"{tuple(meta.get('latent_shape', ()))}; this recipe trains on {d.size} px (data.size) with "
                          f"{channels} latent channels: encode again with --size {d.size} and this recipe's first stage")


def model_downsampling(cfg: LDMTrainConfig) -> int:
    """Pixels per latent pixel times the UNet's own downsampling: image sides must be multiples of this."""
    m = cfg.model
    f = 1 if m.first_stage == "none" else 2 ** (len(m.autoencoder.ch_mult) - 1)
    return f * 2 ** (len(m.unet.channel_mult) - 1)


class TaskSource:
    """``get(i, generator)`` → dict with ``image`` (3, H, W) or ``latent`` (C, h, w), and the task's condition
    fields, from an item source (``build_items``)."""

    def __init__(self, items, task: str) -> None:  # noqa: ANN001
        self.items, self.task = items, task
        self.latents: torch.Tensor | None = None  # (N, C, h, w) unscaled posterior means when cached
        self.masked_latents: torch.Tensor | None = None  # inpaint: the same of each item's masked image

    def __len__(self) -> int:
        return len(self.items)

    def order(self, seed: int, epoch: int) -> torch.Tensor | None:
        return self.items.order(seed, epoch)

    def batches(self, seed: int, epoch: int, batch: int) -> list[list[int]] | None:
        fn = getattr(self.items, "batches", None)
        return None if fn is None else fn(seed, epoch, batch)

    def get(self, i: int, generator: torch.Generator | None = None) -> dict:
        if self.latents is None:
            return self.items.get(i, generator)
        # the view the cache encoded (centre crop, no flip, the item's own mask), without decoding the image again
        out = self.items.get(i, None, pixels=False)
        out["latent"] = self.latents[i]
        if self.masked_latents is not None:
            out["masked_latent"] = self.masked_latents[i]
        return out

    @torch.no_grad()
    def cache(self, encode, batch_size: int = 64, path: Path | None = None) -> None:  # noqa: ANN001
        """Encode every item once (``encode``: images (B, 3, H, W) -> latents; inpaint: its masked image too); with
        ``path``, read the latents from that file when it exists, else write them there (atomically) for the next
        run."""
        names = ("latents", "masked_latents") if self.task == "inpaint" else ("latents",)
        if path is not None and path.is_file():
            try:
                stored = read_state_dict(path, mmap=False)[0]  # header and sizes checked
            except CheckpointError as exc:
                raise ConfigError(f"latent cache {path} cannot be read ({exc}); delete the file to rebuild it") from exc
            for name in names:
                if name not in stored:
                    raise ConfigError(f"latent cache {path} holds no {name!r} tensor; delete the file to rebuild it")
                if stored[name].shape[0] != len(self):
                    raise ConfigError(f"latent cache {path} holds {stored[name].shape[0]} items, the data has "
                                      f"{len(self)}; delete the file to rebuild it")
            self.latents, self.masked_latents = stored["latents"], stored.get("masked_latents")
            return
        if path is not None:  # before the encoding, so that a path that cannot be made fails at once
            path.parent.mkdir(parents=True, exist_ok=True)
        chunks: dict[str, list[torch.Tensor]] = {name: [] for name in names}
        for start in range(0, len(self), batch_size):
            items = [self.items.get(i, None) for i in range(start, min(start + batch_size, len(self)))]
            imgs = torch.stack([it["image"] for it in items])  # (B, 3, H, W)
            chunks["latents"].append(encode(imgs).float())
            if self.task == "inpaint":
                masks = torch.stack([it["mask"] for it in items])  # (B, 1, H, W)
                chunks["masked_latents"].append(encode(imgs * (1 - masks)).float())
        stored = {name: torch.cat(c) for name, c in chunks.items()}
        self.latents, self.masked_latents = stored["latents"], stored.get("masked_latents")
        if path is not None:  # overwrite: another rank may have written the same latents meanwhile
            save_safetensors_atomic(stored, path, overwrite=True)


# part of the cache key: raise it when ShapesWorld's rendering or the encoding of cached latents changes, so that
# old files are not read as if they were current
LATENT_CACHE_FORMAT = 1


def latent_cache_file(cfg: LDMTrainConfig, first_stage_sha256: str | None) -> Path | None:
    """``diffusion.latent_cache_dir / latents-<key>.safetensors``, the key a hash of the cache format, the first stage
    file's sha256, the first-stage kind and the data config (None when no cache folder is set)."""
    folder = cfg.diffusion.latent_cache_dir
    if folder is None:
        return None
    if first_stage_sha256 is None:
        raise ConfigError("diffusion.latent_cache_dir needs first_stage_path: the cache file is named after the first "
                          "stage file's sha256 (a random first stage has no file to name it after)")
    fields = {"format": LATENT_CACHE_FORMAT, "first_stage_sha256": first_stage_sha256,
              "first_stage": cfg.model.first_stage, "data": to_dict(cfg.data)}
    if cfg.data.source != "shapes":  # the files themselves, not only the folder's name
        fields["files"] = data_fingerprint(cfg.data.root)
    if cfg.task == "inpaint":  # its file holds the masked images' latents too
        fields["masked"] = True
    key = json.dumps(fields, sort_keys=True)
    return Path(folder) / f"latents-{hashlib.sha256(key.encode()).hexdigest()[:16]}.safetensors"


def data_fingerprint(root: str | None) -> str:
    """A hash of every file's relative path, size and modification time under ``root``."""
    h = hashlib.sha256()
    base = Path(root or ".")
    for p in sorted(base.rglob("*")) if base.is_dir() else [base]:
        if p.is_file():
            st = p.stat()
            h.update(f"{p.relative_to(base) if base.is_dir() else p.name}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


class StepWindow(Dataset):
    """Micro-batches ``start .. start + count - 1`` of rank ``rank`` (see module docstring), flattened to items."""

    def __init__(self, source: TaskSource, seed: int, start: int, count: int, batch_size: int, rank: int = 0,
                 world_size: int = 1) -> None:
        self.source, self.seed = source, seed
        self.start, self.count, self.b = start, count, batch_size
        self.rank, self.world_size = rank, world_size
        self._perm: tuple[int, torch.Tensor] | None = None
        self._batches_per_pass: int | None = None
        self._bucket: tuple[int, list[list[int]] | None] = (0, None)

    def __len__(self) -> int:
        return self.count * self.b

    def position(self, k: int) -> int:
        micro, j = divmod(k, self.b)
        return ((self.start + micro) * self.world_size + self.rank) * self.b + j

    def index(self, p: int) -> int:
        micro, j = divmod(p, self.b)
        if self._batches_per_pass is None:
            first = self.source.batches(self.seed, 0, self.b)
            self._batches_per_pass = 0 if first is None else len(first)
            self._bucket = (0, first)
        if self._batches_per_pass:  # aspect-ratio buckets: the pass's micro-batches, each inside one bucket
            epoch, k = divmod(micro, self._batches_per_pass)
            if self._bucket[0] != epoch:
                self._bucket = (epoch, self.source.batches(self.seed, epoch, self.b))
            return self._bucket[1][k][j]
        n = len(self.source)
        epoch = p // n
        if self._perm is None or self._perm[0] != epoch:
            order = self.source.order(self.seed, epoch)
            if order is None:
                order = torch.randperm(n, generator=torch.Generator().manual_seed(seed_of(self.seed, epoch)))
            self._perm = (epoch, order)
        return int(self._perm[1][p % n])

    def __getitem__(self, k: int) -> dict:
        """The item at this window's ``k``-th place, with ``sample_id`` (its index in the source: which sample the
        step trained on, e.g. to check that a resumed run skips or repeats none) and ``position`` (its stream
        position ``p``, which seeds the training step's draws for it: ``ldm.py``)."""
        p = self.position(k)
        i = self.index(p)
        item = self.source.get(i, torch.Generator().manual_seed(seed_of(self.seed, 1_000_003, p)))
        return {**item, "sample_id": i, "position": p}


def count_images(folder: Path) -> int:
    """Image files under ``folder`` (as the folder reader finds them; 0 when it does not exist)."""
    from ..data.decode import is_image_file

    if not folder.is_dir():
        return 0
    return sum(1 for p in folder.rglob("*") if p.is_file() and is_image_file(p)
               and not any(part.startswith(".") for part in p.relative_to(folder).parts[:-1]))


class ClassItems:
    """The first ``prior.num_class_images`` images of the class folder (sorted by path, as diffusers' DreamBooth takes
    the first ones), each captioned ``prior.class_prompt`` whatever caption files lie beside them."""

    fields = ("caption",)

    def __init__(self, source, limit: int, prompt: str) -> None:  # noqa: ANN001 - data.sources.FolderSource
        self.source, self.n, self.prompt = source, min(limit, len(source)), prompt

    def __len__(self) -> int:
        return self.n

    def order(self, seed: int, epoch: int) -> None:
        return None

    def get(self, i: int, generator: torch.Generator | None = None, *, pixels: bool = True) -> dict:
        return {**self.source.get(i, generator, pixels=pixels), "caption": self.prompt}


def build_class_items(cfg: LDMTrainConfig) -> ClassItems:
    """The class stream's items (``prior``), cut with the instance data's transform (size, crop, flip)."""
    from ..data.sources import FolderSource, index_images

    p = cfg.prior
    assert p is not None
    folder = class_image_dir(cfg)
    index = index_images("folder", folder, captions="none", strict=cfg.data.strict)
    items = ClassItems(FolderSource(index, cfg.data.transform(), ()), p.num_class_images, p.class_prompt)
    if len(items) < p.num_class_images:
        raise ConfigError(f"prior: {folder} holds {len(items)} usable class images, prior.num_class_images is "
                          f"{p.num_class_images}; add images or lower num_class_images")
    return items


class PairedWindow(Dataset):
    """``instance[k]`` with ``prior``: the class stream's item at the same place (the same stream position)."""

    def __init__(self, instance: StepWindow, prior: StepWindow) -> None:
        assert len(instance) == len(prior)
        self.instance, self.prior = instance, prior

    def __len__(self) -> int:
        return len(self.instance)

    def __getitem__(self, k: int) -> dict:
        return {**self.instance[k], "prior": self.prior[k]}
