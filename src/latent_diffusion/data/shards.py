"""webdataset tar shards: written from a folder (``ldm data shard``), read in a step-addressed order.

A shard holds samples ``KEY.jpg|png|webp`` (the image file's own bytes; other formats re-encoded as PNG) with
``KEY.txt`` (caption), ``KEY.cls`` (class id) and ``KEY.json`` (``width``, ``height`` after EXIF orientation, the
source ``file``). ``index.json`` beside the shards lists each shard's sample count and sizes and the class names;
shards made by other tools (no ``index.json``) are indexed when training starts, each image decoded once, so a
sample that cannot be used is found at step 0.

Reading (``shard_records``) turns shards into the same records an image folder gives; the data order over them is
*shard-major* (``shard_order``): each pass permutes the shards, and the samples inside each shard, from
``(seed, pass)``. Consecutive stream positions then stay inside one shard, which a reader holds in memory
(``ShardCache``), and the order stays a pure function of (seed, position): a resume — on any number of
processes — replays it exactly. Every process reads the shards its positions fall in; samples are decoded only by
the process that trains on them.
"""

from __future__ import annotations

import bisect
import io
import json
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from .decode import DECODE_ERRORS, to_rgb
from .folder import FolderIndex, Record
from .images import DataError
from .seeds import seed_of

INDEX = "index.json"
FORMAT = 1
IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")
KEEP_AS_IS = {".jpg": "jpg", ".jpeg": "jpg", ".png": "png", ".webp": "webp"}


def _wds():
    try:
        import webdataset
    except ImportError as e:  # pragma: no cover - a declared dependency of the [data] extra
        raise DataError("reading or writing tar shards needs the webdataset package: pip install webdataset") from e
    return webdataset


def read_shard(path: str | os.PathLike) -> list[dict]:
    """Every sample of one tar shard, as webdataset groups it (``__key__`` and one bytes value per extension)."""
    wds = _wds()
    try:
        with open(path, "rb") as f:  # opened here so that it is closed here (webdataset leaves its own open)
            files = wds.tariterators.tar_file_expander([{"url": str(path), "stream": f}])
            return list(wds.tariterators.group_by_keys(files))
    except Exception as e:  # noqa: BLE001 - webdataset / tarfile raise many kinds for a broken archive
        raise DataError(f"shard {path} cannot be read ({type(e).__name__}: {e})") from e


def sample_caption(s: dict, where: str) -> str | None:
    """A sample's caption: its ``txt``, else a ``caption`` / ``text`` field of its ``json``; None if it has neither."""
    try:
        if "txt" in s:
            return s["txt"].decode("utf-8-sig").strip()
        if "json" in s:
            meta = json.loads(s["json"].decode("utf-8-sig"))
            for key in ("caption", "text"):
                if isinstance(meta, dict) and isinstance(meta.get(key), str):
                    return meta[key]
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{where}: sample {s.get('__key__')}'s caption is not UTF-8 text / JSON ({e})") from e
    return None


def sample_label(s: dict, where: str) -> int | None:
    if "cls" not in s:
        return None
    text = s["cls"].decode("utf-8", "replace").strip()
    if not text.lstrip("-").isdigit():
        raise DataError(f"{where}: sample {s.get('__key__')} has cls {text!r}; a .cls holds an integer class id (the "
                        "class names go in index.json, as `ldm data shard --labels folders` writes them)")
    return int(text)


def _sample_image(s: dict) -> tuple[str, bytes] | None:
    for k in IMAGE_KEYS:
        if k in s:
            return k, s[k]
    return None


def decode_sample_image(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as im:
        return to_rgb(im)


def write_shards(index: FolderIndex, out_dir: str | os.PathLike, shard_size: int = 1000,
                 overwrite: bool = False) -> Path:
    """Write ``index``'s records as ``out_dir/shard-NNNNNN.tar`` and ``index.json``; returns ``out_dir``."""
    wds = _wds()
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise DataError(f"{out} exists and is not a folder; give a folder for the shards")
    if shard_size < 1:
        raise DataError(f"--shard-size must be >= 1, got {shard_size}")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise DataError(f"{out} exists and is not empty; choose a new folder or pass --force")
    out.mkdir(parents=True, exist_ok=True)
    shards: list[dict] = []
    for start in range(0, len(index.records), shard_size):
        name = f"shard-{len(shards):06d}.tar"
        chunk = index.records[start:start + shard_size]
        with wds.TarWriter(str(out / f".{name}.tmp")) as w:
            for k, r in enumerate(chunk):
                w.write(_sample_of(r, start + k, index.root))
        os.replace(out / f".{name}.tmp", out / name)
        shards.append({"name": name, "count": len(chunk), "sizes": [[r.width, r.height] for r in chunk],
                       "captions": any(r.caption is not None for r in chunk)})
    meta = {"kind": "shards", "format": FORMAT, "shards": shards, "class_names": list(index.class_names),
            "source": str(index.root)}
    tmp = out / f".{INDEX}.tmp"
    tmp.write_text(json.dumps(meta))
    os.replace(tmp, out / INDEX)
    return out


def _sample_of(r: Record, n: int, root: Path) -> dict:
    ext = KEEP_AS_IS.get(r.path.suffix.lower())
    if ext is not None:
        data = r.path.read_bytes()
    else:  # a format webdataset's image keys do not name: re-encoded losslessly
        from .decode import load_rgb

        buf = io.BytesIO()
        load_rgb(r.path).save(buf, format="PNG")
        ext, data = "png", buf.getvalue()
    sample = {"__key__": f"{n:09d}", ext: data,
              "json": json.dumps({"width": r.width, "height": r.height, "file": str(r.path.relative_to(root))})}
    if r.caption is not None:
        sample["txt"] = r.caption
    if r.label is not None:
        sample["cls"] = str(r.label)
    return sample


@dataclass
class ShardIndex:
    """The samples of a set of shards as records (``path`` = the shard), loaded through a ``ShardCache``."""

    root: Path
    paths: tuple[Path, ...]
    counts: tuple[int, ...]
    records: list[Record]
    class_names: tuple[str, ...]
    has_captions: bool = False

    def __post_init__(self) -> None:
        self._cache: ShardCache | None = None

    def __len__(self) -> int:
        return len(self.records)

    def __getstate__(self) -> dict:  # DataLoader workers start with an empty cache of their own
        return {**self.__dict__, "_cache": None}

    def load(self, k: int) -> tuple[Image.Image, str | None, int | None]:
        if self._cache is None:
            self._cache = ShardCache(self)
        return self._cache.image(k), *self._cache.fields(k)

    def fields(self, k: int) -> tuple[str | None, int | None]:
        if self._cache is None:
            self._cache = ShardCache(self)
        return self._cache.fields(k)

    def order(self, seed: int, epoch: int) -> torch.Tensor:
        return shard_order(self.counts, seed, epoch)


def find_shards(root: str | os.PathLike) -> list[Path]:
    p = Path(root)
    if not p.exists():
        raise DataError(f"shard folder {p} does not exist")
    paths = [p] if p.is_file() else sorted(x for x in p.glob("*.tar") if not x.name.startswith("."))
    if not paths:
        raise DataError(f"{p} holds no .tar shards")
    return paths


def index_shards(root: str | os.PathLike, *, need: tuple[str, ...] = (), strict: bool = False) -> ShardIndex:
    """Records of every sample in the shards under ``root`` (``index.json`` when present, else read from the
    shards); ``need``: the keys each sample must carry (``txt`` for captions, ``cls`` for labels)."""
    paths = find_shards(root)
    meta_path = Path(root) / INDEX
    if meta_path.is_file():
        return _from_index(Path(root), json.loads(meta_path.read_text()), need)
    records, counts, bad = [], [], []
    labels: set[int] = set()
    for p in paths:
        n = 0
        for s in read_shard(p):
            img = _sample_image(s)
            caption, label = sample_caption(s, f"shard {p.name}"), sample_label(s, f"shard {p.name}")
            missing = [k for k, have in (("txt", caption is not None), ("cls", label is not None)) if k in need
                       and not have]
            if img is None or missing:
                what = missing + (["image (jpg|png|webp)"] if img is None else [])
                raise DataError(f"shard {p.name}: sample {s.get('__key__')} has no {what}; every sample needs an "
                                f"image{' and ' + ', '.join(need) if need else ''} (a caption may also be a json "
                                "'caption' / 'text' field)")
            try:
                w, h = decode_sample_image(img[1]).size
            except DECODE_ERRORS as e:
                bad.append(f"{p.name}:{s['__key__']} ({type(e).__name__})")
                w = h = 0  # kept in place (positions inside the shard), never trained on (FolderSource skips it)
            if label is not None:
                labels.add(label)
            records.append(Record(p, w, h, caption, label))
            n += 1
        counts.append(n)
    if bad and strict:
        raise DataError(f"{root}: {len(bad)} shard image(s) cannot be decoded (--strict-data), e.g. {bad[:5]}")
    if bad:
        import warnings

        warnings.warn(f"{root}: skipped {len(bad)} unreadable/corrupt shard image(s), e.g. {bad[:5]}", stacklevel=2)
    if len(bad) == len(records):
        raise DataError(f"{root}: no shard image can be decoded ({len(bad)} corrupt, e.g. {bad[:3]})")
    names = tuple(str(i) for i in range(max(labels) + 1)) if labels else ()
    return ShardIndex(Path(root), tuple(paths), tuple(counts), records, names,
                      any(r.caption is not None for r in records))


def _from_index(root: Path, meta: dict, need: tuple[str, ...]) -> ShardIndex:
    if meta.get("format") != FORMAT:
        raise DataError(f"{root / INDEX} has format {meta.get('format')!r}; this version reads format {FORMAT}")
    paths, counts, records = [], [], []
    for sh in meta["shards"]:
        p = root / sh["name"]
        if not p.is_file():
            raise DataError(f"{root / INDEX} lists {sh['name']}, which is missing")
        if "txt" in need and not sh.get("captions"):
            raise DataError(f"shard {sh['name']} has no captions (txt); the task needs them")
        paths.append(p)
        counts.append(int(sh["count"]))
        records += [Record(p, w, h) for w, h in sh["sizes"]]
    if "cls" in need and not meta.get("class_names"):
        raise DataError(f"{root} holds no class labels (cls); the task needs them")
    return ShardIndex(root, tuple(paths), tuple(counts), records, tuple(meta.get("class_names", ())),
                      any(sh.get("captions") for sh in meta["shards"]))


def shard_order(counts: tuple[int, ...], seed: int, epoch: int) -> torch.Tensor:
    """Pass ``epoch``'s order of the global sample indices: shards permuted, samples permuted inside each."""
    g = torch.Generator().manual_seed(seed_of(seed, 17, epoch))
    starts = torch.tensor([0, *counts]).cumsum(0)
    parts = [starts[s] + torch.randperm(counts[s], generator=g) for s in torch.randperm(len(counts), generator=g)]
    return torch.cat(parts)


class ShardCache:
    """The samples of the most recently used shards (two), keyed by shard path."""

    def __init__(self, index: ShardIndex, keep: int = 2) -> None:
        self.index, self.keep = index, keep
        self.starts = [0]
        for c in index.counts:
            self.starts.append(self.starts[-1] + c)
        self._cache: OrderedDict[int, list[dict]] = OrderedDict()

    def sample(self, i: int) -> dict:
        s = bisect.bisect_right(self.starts, i) - 1
        if s not in self._cache:
            samples = read_shard(self.index.paths[s])
            if len(samples) != self.index.counts[s]:
                raise DataError(f"shard {self.index.paths[s].name} holds {len(samples)} samples, its index "
                                f"{self.index.counts[s]}; it changed since it was indexed")
            self._cache[s] = samples
            while len(self._cache) > self.keep:
                self._cache.popitem(last=False)
        self._cache.move_to_end(s)
        return self._cache[s][i - self.starts[s]]

    def image(self, i: int) -> Image.Image:
        s = self.sample(i)
        img = _sample_image(s)
        if img is None:
            raise DataError(f"shard sample {s.get('__key__')} has no image")
        return decode_sample_image(img[1])

    def fields(self, i: int) -> tuple[str | None, int | None]:
        s = self.sample(i)
        where = f"shard {self.index.paths[bisect.bisect_right(self.starts, i) - 1].name}"
        return sample_caption(s, where), sample_label(s, where)

