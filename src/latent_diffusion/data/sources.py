"""Training items from a user's images, in the ShapesWorld item format, so every task trains on real data.

``FolderSource(index, transform, fields=...)`` turns record ``i`` into a dict with ``image`` (3, S, S) in [-1, 1]
and the requested condition fields, built as the paper built them:

==================  =====================================================================================
``caption``         the record's caption (metadata or sidecar)
``class_label``     int64 (): the record's class (sub-folder or ``label`` column)
``lowres``          (3, S/f, S/f): the crop bicubic-downsampled ×f with antialiasing (the paper's ImageNet SR)
``mask``            (1, S, S) {0, 1}, 1 = hole: drawn on the fly (``data.degrade.MaskConfig``: LaMa-like strokes
                    and boxes by default)
``segmentation``    int64 (S, S): the paired label map, cut with the image's window (nearest resampling)
``layout``          (max_objects, 5) rows ``(class, x0, y0, x1, y1)`` of the COCO boxes inside the crop
==================  =====================================================================================

All random choices (crop, flip, mask) come from the generator passed to ``get``, which the training stream seeds
from the item's stream position: the same position gives the same item on any machine and after any resume.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .annotations import Layouts, layout_rows, load_label_map
from .folder import FolderIndex
from .images import DataError
from .transforms import TransformConfig, apply_boxes, apply_image, apply_labels, is_small, plan

FIELDS = ("caption", "class_label", "lowres", "mask", "segmentation", "layout")


class FolderSource:
    """``get(i, generator)`` → the item dict of record ``i`` (see the module docstring)."""

    def __init__(self, index: FolderIndex, transform: TransformConfig, fields: tuple[str, ...] = (), *,
                 sr_factor: int = 4, mask=None, label_maps: list[Path] | None = None,  # noqa: ANN001
                 layouts: Layouts | None = None, max_objects: int = 8, buckets: list[tuple[int, int]] | None = None
                 ) -> None:
        unknown = sorted(set(fields) - set(FIELDS))
        if unknown:
            raise DataError(f"an image folder cannot supply {unknown}; it supplies {list(FIELDS)}")
        if "segmentation" in fields and label_maps is None:
            raise DataError("the semantic task needs label maps: set data.segmentation_root (a folder of label-map "
                            "PNGs paired with the images by file name)")
        if "layout" in fields and layouts is None:
            raise DataError("the layout task needs boxes: set data.layout_json (a COCO-style instances file)")
        if "class_label" in fields and len(index.class_names) < 2:
            raise DataError(f"{index.root}: a class-conditional model needs at least two classes; found "
                            f"{len(index.class_names)} ({list(index.class_names)}); class labels come from "
                            "sub-folders (root/CLASS/image) or a 'label' column in metadata.jsonl")
        if "lowres" in fields and transform.size % sr_factor:
            raise DataError(f"super-resolution: data.size={transform.size} must be a multiple of data.sr_factor="
                            f"{sr_factor}")
        self.index, self.transform, self.fields = index, transform, tuple(fields)
        self.sr_factor, self.mask, self.max_objects = sr_factor, mask, max_objects
        self.label_maps, self.layouts = label_maps, layouts
        self.keep = self._apply_small_policy()
        self.buckets = buckets  # aspect-ratio bucketing: item i is cut to buckets[bucket_of[i]]
        self.bucket_of: list[int] | None = None
        if buckets:
            from .buckets import assign_buckets

            recs = self.index.records
            self.bucket_of = assign_buckets([(recs[k].width, recs[k].height) for k in self.keep], buckets)

    def _apply_small_policy(self) -> list[int]:
        """The records to train on: undecodable shard samples (size 0, warned about when indexed) left out, images
        smaller than the crop an error naming them, upscaled, or skipped (``data.small``)."""
        t, recs = self.transform, self.index.records
        usable = [i for i, r in enumerate(recs) if r.width > 0]
        small = [i for i in usable if is_small(t, recs[i].width, recs[i].height)]
        if small and t.small == "error":
            names = [f"{self._name(i)} ({recs[i].width}x{recs[i].height})" for i in small[:5]]
            raise DataError(f"{self.index.root}: {len(small)} image(s) are smaller than the {t.size}x{t.size} crop, "
                            f"e.g. {names}; remove them, use a smaller data.size, or let them be upscaled "
                            "(data.small: upscale) or skipped (data.small: skip)")
        if small and t.small == "skip":
            import warnings

            warnings.warn(f"{self.index.root}: skipped {len(small)} image(s) smaller than the {t.size}x{t.size} "
                          f"crop (data.small: skip), e.g. {[self._name(i) for i in small[:5]]}", stacklevel=3)
            dropped = set(small)
            usable = [i for i in usable if i not in dropped]
            if not usable:
                raise DataError(f"{self.index.root}: every image is smaller than the {t.size}x{t.size} crop")
        return usable

    def with_view(self, **changes) -> "FolderSource":  # noqa: ANN003
        """The same items cut another way (``crop`` / ``flip``; the size stays, so the same records are kept)."""
        import copy
        import dataclasses

        other = copy.copy(self)
        other.transform = dataclasses.replace(self.transform, **changes)
        return other

    def _name(self, k: int) -> str:
        """Record ``k`` for a message: its path in the folder, or shard:position."""
        r = self.index.records[k]
        if r.path.is_dir() or r.path.suffix == ".tar":
            return f"{r.path.name}:#{k}"
        return str(r.path.relative_to(self.index.root))

    @property
    def class_names(self) -> tuple[str, ...]:
        if "layout" in self.fields and self.layouts is not None:
            return self.layouts.names
        return self.index.class_names

    def captions(self) -> list[str]:
        """The captions of the items (shards: read from the shards)."""
        return [self.index.fields(k)[0] or "" for k in self.keep]

    def batches(self, seed: int, epoch: int, batch: int) -> list[list[int]] | None:
        """With buckets: pass ``epoch``'s micro-batches, each inside one bucket (``data/buckets.py``); else None."""
        if self.bucket_of is None:
            return None
        from .buckets import bucket_batches

        return bucket_batches(self.bucket_of, batch, seed, epoch)

    def order(self, seed: int, epoch: int) -> torch.Tensor | None:
        """Pass ``epoch``'s item order when the storage needs one (shards: shard-major), else None (any)."""
        full = getattr(self.index, "order", None)
        if full is None:
            return None
        perm = full(seed, epoch)
        if len(self.keep) == len(self.index.records):
            return perm
        pos = torch.full((len(self.index.records),), -1, dtype=torch.long)
        pos[torch.tensor(self.keep)] = torch.arange(len(self.keep))
        mapped = pos[perm]
        return mapped[mapped >= 0]

    def __len__(self) -> int:
        return len(self.keep)

    def get(self, i: int, generator: torch.Generator | None, *, pixels: bool = True) -> dict:
        """Item ``i``; ``generator`` None gives the deterministic view (centre crop, no flip, mask from seed i).
        ``pixels=False``: the condition fields only (no ``image``; the image is not decoded unless a field is made
        from its pixels) — what training reads beside cached latents."""
        k = self.keep[i]
        r = self.index.records[k]
        bucket = None if self.bucket_of is None else self.buckets[self.bucket_of[i]]
        geo = plan(self.transform, r.width, r.height, generator, bucket)
        out: dict = {}
        if pixels or "lowres" in self.fields:
            pil, caption, label = self.index.load(k)
            image = apply_image(pil, geo)
            if pixels:
                out["image"] = image
        else:
            caption, label = self.index.fields(k)
        for f in self.fields:
            if f == "caption":
                out[f] = caption or ""
            elif f == "class_label":
                out[f] = torch.tensor(label, dtype=torch.int64)
            elif f == "lowres":
                from .degrade import bicubic_downsample

                out[f] = bicubic_downsample(image, self.sr_factor)
            elif f == "mask":
                from .degrade import MaskConfig, make_mask

                g = generator if generator is not None else torch.Generator().manual_seed(i)
                out[f] = make_mask(self.mask or MaskConfig(), geo.crop[1], geo.crop[0], g)
            elif f == "segmentation":
                out[f] = apply_labels(load_label_map(self.label_maps[k]), geo)
            elif f == "layout":
                boxes, kept = apply_boxes(self.layouts.boxes[r.path], r.width, r.height, geo)
                classes = self.layouts.classes[r.path][kept]
                out[f] = torch.from_numpy(layout_rows(boxes, classes, self.max_objects))
        return out


def index_images(source: str, root, *, captions: str = "none", labels: str = "none",  # noqa: ANN001
                 missing_caption: str = "error", strict: bool = False, need_captions: bool = False):  # noqa: ANN201
    """An image folder (``source="folder"``) or tar shards (``"shards"``) read and checked: a ``FolderIndex`` or a
    ``ShardIndex``. Shards must carry a caption / label in every sample when ``captions`` / ``labels`` is not
    ``"none"`` (or ``need_captions``); ``need_captions``: a folder without any caption is an error (``scan_folder``)."""
    if source == "shards":
        from .shards import index_shards

        need = tuple(k for k, on in (("txt", need_captions or captions != "none"), ("cls", labels != "none")) if on)
        return index_shards(root, need=need, strict=strict)
    from .folder import scan_folder

    return scan_folder(root, captions=captions, labels=labels, missing_caption=missing_caption, strict=strict,
                       need_captions=need_captions)


def caption_words(captions: list[str]) -> tuple[str, ...]:
    """The word vocabulary of a jointly trained text encoder (``conditioner.kind: bert``) from the data's captions:
    lower-case alphanumeric words, most frequent first (ties alphabetical), as the tokenizer splits them."""
    import re
    from collections import Counter

    counts = Counter(w for c in captions for w in re.findall(r"[a-z0-9]+", c.lower()))
    return tuple(w for w, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
