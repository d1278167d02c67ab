"""Lightning plumbing shared by both stages. ``fit``: a resume file (already read through our allow-list reader,
CRCs checked) is loaded by Lightning with ``weights_only=True``; what torch still refuses there is one clear error,
not a traceback. ``save_lightning_atomic``: the resumable checkpoint written atomically."""

from __future__ import annotations

import os
import pickle
import warnings
from pathlib import Path

import lightning as L

from ..errors import UnsafeCheckpointError
from ..fileio import temp_path


def fit(trainer: L.Trainer, module: L.LightningModule, resume: str | None) -> None:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*IterableDataset.*")
        try:
            trainer.fit(module, ckpt_path=resume, weights_only=True)
        except pickle.UnpicklingError as exc:  # only the resume file is unpickled here
            if resume is None:
                raise
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UnsafeCheckpointError(f"refused to resume from {resume}: a weights-only load refuses it ({first}); "
                                        "nothing from the file was executed") from None


def save_lightning_atomic(trainer: L.Trainer, path: Path) -> None:
    """``trainer.save_checkpoint`` (all ranks call it; rank 0 writes) to a temp file of rank 0's (``fileio``'s
    names, so a killed run's is swept), fsync, ``os.replace``; a failed write leaves no temp file."""
    name = None
    if trainer.is_global_zero:
        path.parent.mkdir(parents=True, exist_ok=True)
        name = str(temp_path(path))
    name = trainer.strategy.broadcast(name)
    try:
        trainer.save_checkpoint(name)
        if trainer.is_global_zero:
            with open(name, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(name, path)
    finally:
        if trainer.is_global_zero:
            Path(name).unlink(missing_ok=True)  # gone after os.replace; the debris of a failed write
