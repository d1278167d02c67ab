"""Driver of ``test_scale_out.py``, run as a script (Lightning's DDP launcher starts it again once per rank).

``python scale_out_driver.py CONFIG [RESUME_CKPT]``: trains with the real ``train_ldm`` and ``LatentDiffusionModule``
(nothing replaced) plus two recording callbacks: ``out_dir/ids-rank{r}.jsonl``, one row per micro-batch with the
sample ids (``sample_id``, the data layer's own) and stream positions the rank trained on, and ``grads-rank{r}.pt``,
the gradients of the first optimiser step (when the run starts at step 0). What the test compares is only observable
inside the ranks, hence a script rather than ``ldm train``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import lightning as L
import torch

from latent_diffusion.train.ldm_config import LDMTrainConfig
from latent_diffusion.train.ldm_run import train_ldm


class RecordIds(L.Callback):
    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        row = {"micro_batch": int(module.batches_seen) - 1, "world_size": trainer.world_size,
               "ids": batch["sample_id"].tolist(), "positions": batch["position"].tolist()}
        with open(self.out_dir / f"ids-rank{trainer.global_rank}.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")

    def on_before_optimizer_step(self, trainer, module, optimizer) -> None:  # noqa: ANN001
        """The first step's gradients (DDP's all-reduced mean over the ranks) as ``grads-rank{r}.pt``."""
        if int(module.batches_seen) == 1:
            grads = {n: p.grad.detach().clone() for n, p in module.named_parameters() if p.grad is not None}
            torch.save(grads, self.out_dir / f"grads-rank{trainer.global_rank}.pt")


def main(argv: list[str]) -> None:
    cfg = LDMTrainConfig.from_yaml(argv[0])
    train_ldm(cfg, resume=argv[1] if len(argv) > 1 else None, progress=False, echo=False,
              callbacks=[RecordIds(Path(cfg.run.out_dir))])


if __name__ == "__main__":
    main(sys.argv[1:])
