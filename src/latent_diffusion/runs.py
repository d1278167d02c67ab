"""Where a stage-2 training run keeps the models of its epochs (``run.keep_epoch_models``): ``out_dir/models/
step-NNNNNN.safetensors``. Shared by training (writes them) and evaluation (judges each), neither importing the other."""

from __future__ import annotations

from pathlib import Path

KEPT = "models"


def kept_model_path(out_dir: Path, step: int) -> Path:
    return Path(out_dir) / KEPT / f"step-{step:06d}.safetensors"


def kept_models(out_dir: Path) -> list[tuple[int, Path]]:
    """(step, file) of the models kept in ``out_dir``, in step order."""
    found = []
    for p in (Path(out_dir) / KEPT).glob("step-*.safetensors"):
        step = p.name.removeprefix("step-").removesuffix(".safetensors")
        if step.isdigit():
            found.append((int(step), p))
    return sorted(found)
