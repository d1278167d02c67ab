"""``trainer.fit`` for both stages: a resume file (already read through our allow-list reader, CRCs checked) is
loaded by Lightning with ``weights_only=True``; what torch still refuses there is one clear error, not a traceback."""

from __future__ import annotations

import pickle
import warnings

import lightning as L

from ..errors import UnsafeCheckpointError


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
