"""The ``data:`` section of a stage-2 training YAML: where the images come from and how they become items.

``source``: ``shapes`` (procedural ShapesWorld, every task's ground truth), ``folder`` (a user's image folder,
``data/folder.py``), ``shards`` (webdataset tar shards, ``data/shards.py``) or ``latents`` (pre-encoded by ``ldm data
encode``, ``data/latents.py``); ``root`` is that folder. ``ldm train ldm --data PATH`` sets both (``shards`` when PATH
holds ``.tar`` files, ``latents`` when it holds an encoded index).
"""

from __future__ import annotations

from dataclasses import dataclass

from .images import DataError
from .transforms import TransformConfig

SOURCES = ("shapes", "folder", "shards", "latents")
SHAPES_MASKS = ("box", "stroke", "both")


@dataclass
class DataConfig:
    source: str = "shapes"
    root: str | None = None  # folder / shards: the image folder or the folder of .tar shards
    size: int = 64  # the square crop (the model's image size)
    seed: int = 0
    # -- ShapesWorld
    length: int = 100_000  # distinct items; the stream reshuffles them every pass
    object_weights: tuple[float, ...] | None = None  # P(1, 2, 3 objects)
    backgrounds: tuple[str, ...] | None = None  # None = all
    # inpainting masks. shapes: box | stroke | both (alternating per item); folder / shards: lama (strokes and
    # boxes, data/degrade.py) | strokes | boxes | outpaint. None: both / lama
    mask: str | None = None
    # -- images (folder / shards)
    captions: str = "auto"  # auto | metadata (metadata.jsonl / .csv) | sidecar (name.txt) | none
    labels: str = "auto"  # class task: auto (a 'label' column, else sub-folders) | folders | column
    missing_caption: str = "error"  # error | empty (train those images with the empty caption)
    strict: bool = False  # an undecodable image is an error (default: skipped with one warning)
    resize: int | None = None  # shorter side resized to this before cropping; None: to `size`
    crop: str = "random"  # random | center
    flip: bool = True  # horizontal flips (off for text, digits, layouts with left/right words)
    small: str = "error"  # images smaller than the crop: error | upscale | skip
    sr_factor: int = 4  # superres: the low-res input is the crop bicubic-downsampled by this
    segmentation_root: str | None = None  # semantic: folder of label maps paired by file name
    num_segment_classes: int | None = None  # semantic: label values 0 .. n - 1 (ShapesWorld: 41)
    layout_json: str | None = None  # layout: COCO-style instances JSON (boxes + category names)
    max_objects: int = 8  # layout: boxes per image kept (largest first)
    # aspect-ratio bucketing (data/buckets.py): each image cut to the bucket of area <= size² nearest its aspect
    # ratio, batches drawn from one bucket; bucket sides are multiples of the model's total downsampling
    buckets: bool = False
    bucket_max_ratio: float = 2.0
    num_workers: int = 0  # DataLoader worker processes

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise DataError(f"data.source must be one of {list(SOURCES)}, got {self.source!r}")
        if self.source != "shapes" and not self.root:
            raise DataError(f"data.source={self.source!r} needs data.root (or --data PATH on the command line)")
        if self.source == "shapes" and self.mask is not None and self.mask not in SHAPES_MASKS:
            raise DataError(f"data.mask must be one of {list(SHAPES_MASKS)} for ShapesWorld, got {self.mask!r}")
        if self.source != "shapes" and self.mask is not None and self.mask not in SHAPES_MASKS:
            from .degrade import MASK_KINDS

            if self.mask not in MASK_KINDS:  # (a ShapesWorld recipe's box / stroke / both read as their real kinds)
                raise DataError(f"data.mask must be one of {list(MASK_KINDS)} for real images, got {self.mask!r}")
        if self.num_workers < 0:
            raise DataError(f"data.num_workers must be >= 0, got {self.num_workers}")
        if self.sr_factor < 1:
            raise DataError(f"data.sr_factor must be >= 1, got {self.sr_factor}")
        if self.source != "shapes":
            self.transform()  # validates size / resize / crop / small
        if self.buckets and self.source in ("shapes", "latents"):
            raise DataError(f"data.buckets sorts photos of mixed shapes by aspect ratio; it needs images (folder), "
                            f"not {self.source!r}")
        if self.buckets and self.source == "shards":
            raise DataError("data.buckets draws each batch from one bucket across the whole dataset, which reads tar "
                            "shards out of order (a whole shard per image); train buckets from the image folder")
        if self.bucket_max_ratio < 1:
            raise DataError(f"data.bucket_max_ratio must be >= 1, got {self.bucket_max_ratio}")

    def transform(self) -> TransformConfig:
        return TransformConfig(size=self.size, resize=self.size if self.resize is None else self.resize,
                               crop=self.crop, flip=self.flip, small=self.small)

    @property
    def shapes_mask(self) -> str:
        return self.mask or "both"
