"""Training across processes: the Lightning settings of ``run`` pass through (and bad ones are one-line errors), the
data stream is the same global batch on any process layout, 2 processes x batch B train like 1 process x batch 2B
(the same samples, per-sample draws and estimated scale_factor), and a run resumes on another process count without
skipping or repeating a sample (the real training module; gloo on CPU, in subprocesses)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from ldm_tiny_config import tiny

from latent_diffusion.errors import ConfigError
from latent_diffusion.train.ldm_config import LDMTrainConfig
from latent_diffusion.train.ldm_data import StepWindow, TaskSource
from latent_diffusion.train.ldm_run import CKPT, EXPORT, build_trainer, check_resume, train_ldm

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
DRIVER = Path(__file__).with_name("scale_out_driver.py")
# 2 processes x batch 2 vs 1 process x batch 4 (fp32): every sample's timestep, noise, dropout and posterior sample
# are the same (drawn per stream position), so only the summation order differs. The first step's gradients: DDP's
# all-reduce averages two half-batch means, the same sum in another order: max |diff| / max |grad| (measured 1.0e-6).
GRAD_RTOL = 1e-5
# The weights (EMA included) after 4 AdamW steps of lr 1e-3: max |diff| (measured 2.3e-5; resumed from 2 processes
# on 1: 2.4e-5; up to 1.3e-4 with other draws). Adam divides each gradient by its own running RMS, so a parameter
# whose gradient is ~0 (a bias feeding a sum of zero-initialised outputs) moves by up to lr in a direction fp rounding
# decides; 468 of the 493 tensors agree to 1e-6, the largest differences are output-block biases.
WEIGHT_TOL = 5e-4


class _Items:
    """An item source of ``n`` items whose item is its own index."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def order(self, seed: int, epoch: int) -> None:
        return None

    def get(self, i: int, generator=None, *, pixels: bool = True) -> dict:  # noqa: ANN001
        return {"image": torch.full((1,), float(i))}


def _global_batches(world: int, batch: int, start: int, count: int, n: int = 10) -> list[list[int]]:
    """Sample ids of each global micro-batch (ranks' slices in rank order) of micro-batches start .. start+count-1."""
    source = TaskSource(_Items(n), "unconditional")
    windows = [StepWindow(source, 7, start, count, batch, rank=r, world_size=world) for r in range(world)]
    return [[windows[r][m * batch + j]["sample_id"] for r in range(world) for j in range(batch)] for m in range(count)]


def test_the_global_batch_is_the_same_samples_on_any_process_layout():
    one = _global_batches(1, 4, 0, 6)  # 24 positions over 10 items: passes wrap inside a batch
    assert _global_batches(2, 2, 0, 6) == one == _global_batches(4, 1, 0, 6)
    assert _global_batches(2, 2, 0, 3) + _global_batches(1, 4, 3, 3) == one  # stopped at 3 on 2, resumed on 1
    flat = [i for b in one for i in b]
    assert sorted(flat[:10]) == sorted(flat[10:20]) == list(range(10))  # each pass: every sample once
    item = StepWindow(TaskSource(_Items(10), "unconditional"), 7, 0, 1, 4)[2]
    assert float(item["image"]) == item["sample_id"]  # the id is the item the step trains on


def test_each_sample_draws_by_its_stream_position_not_by_its_batch():
    """The real module's step on 1 x batch 4 = the mean of ranks 0 and 1 of 2 x batch 2 (the same samples, timesteps,
    noise, offset noise, dropout and posterior samples); fp32 sums in another order: 1e-6 relative."""
    from latent_diffusion.train.ldm import LatentDiffusionModule

    diffusion = {"cond_drop_prob": 0.5, "sample_posterior": True, "offset_noise": 0.1}
    m = LatentDiffusionModule(LDMTrainConfig.from_dict(tiny(run={"batch_size": 4}, diffusion=diffusion)))
    m.setup("fit")

    def loss(micro: int, batch: int, rank: int = 0, world: int = 1) -> float:
        w = StepWindow(m.source, m.cfg.run.seed, micro, 1, batch, rank, world)
        with torch.no_grad():
            return float(m.training_step(torch.utils.data.default_collate([w[k] for k in range(batch)]), 0))

    for micro in (0, 3):
        halves = [loss(micro, 2, r, 2) for r in (0, 1)]
        assert loss(micro, 4) == pytest.approx(sum(halves) / 2, rel=1e-6, abs=0)


def _ckpt(**run) -> dict:
    return {"ldm_train_config": LDMTrainConfig.from_dict(tiny(run=run)).to_dict(),
            "state_dict": {"batches_seen": torch.tensor(6)}}


def test_resume_on_another_process_count_needs_the_same_global_batch():
    saved, x = _ckpt(devices=2, batch_size=2), "run/checkpoints/last.ckpt"
    assert check_resume(LDMTrainConfig.from_dict(tiny(run={"devices": 1, "batch_size": 4})), x, saved) == 6
    two_nodes = {"devices": 1, "num_nodes": 2, "batch_size": 2}
    assert check_resume(LDMTrainConfig.from_dict(tiny(run=two_nodes)), x, saved) == 6
    with pytest.raises(ConfigError, match=r"run\.batch_size: checkpoint 2, config 3"):
        check_resume(LDMTrainConfig.from_dict(tiny(run={"devices": 1, "batch_size": 3})), x, saved)
    photos = {"source": "folder", "root": "photos", "buckets": True}
    saved = {**saved, "ldm_train_config": LDMTrainConfig.from_dict(
        tiny(run={"devices": 2, "batch_size": 2}, data=photos)).to_dict()}
    with pytest.raises(ConfigError, match=r"run\.devices"):  # bucket batches are cut at the per-process size
        check_resume(LDMTrainConfig.from_dict(tiny(run={"devices": 1, "batch_size": 4}, data=photos)), x, saved)


@pytest.mark.parametrize("run, message", [
    ({"strategy": "fsdp"}, r"^run\.strategy 'fsdp' runs on GPUs only \(Lightning refuses FSDP on CPU\); use ddp on "
                           r"CPU$"),
    ({"precision": "16-mixed"}, r"^run\.precision '16-mixed' is not supported on CPU; use bf16-mixed \(or 32\)$"),
    ({"strategy": "horovod"}, r"^run\.strategy 'horovod' is not a Lightning strategy; use auto, ddp, ddp_spawn"),
])
def test_bad_trainer_settings_are_one_line_errors_before_any_data_is_read(tmp_path, run, message):
    cfg = LDMTrainConfig.from_dict(tiny(run={"out_dir": str(tmp_path / "run"), **run}))
    with pytest.raises(ConfigError, match=message):
        train_ldm(cfg, progress=False, echo=False)
    assert not (tmp_path / "run").exists()


def test_an_unknown_precision_is_a_config_error():
    with pytest.raises(ConfigError, match=r"run\.precision must be one of \['32', '32-true', 'bf16-mixed'"):
        LDMTrainConfig.from_dict(tiny(run={"precision": "fp16"}))


def test_run_settings_reach_the_lightning_trainer(tmp_path):
    from lightning.pytorch.strategies import DDPStrategy

    run = {"devices": 2, "num_nodes": 3, "precision": "bf16-mixed", "strategy": "ddp_spawn"}
    t = build_trainer(LDMTrainConfig.from_dict(tiny(run=run)), tmp_path, False, [])
    assert (t.num_devices, t.num_nodes, t.precision) == (2, 3, "bf16-mixed")
    assert type(t.strategy) is DDPStrategy and t.strategy._start_method == "spawn"
    assert type(t.accelerator).__name__ == "CPUAccelerator"
    t = build_trainer(LDMTrainConfig.from_dict(tiny(run={"devices": 2})), tmp_path, False, [])
    assert type(t.strategy) is DDPStrategy and t.strategy._process_group_backend == "gloo"


# -- multi-process runs (gloo on CPU) --------------------------------------------------------------------------------
def _run(tmp_path: Path, name: str, steps: int, devices: int, batch: int, resume: bool = False) -> Path:
    out = tmp_path / name
    d = tiny(run={"out_dir": str(out), "max_steps": steps, "epoch_steps": 2, "devices": devices, "batch_size": batch},
             diffusion={"cond_drop_prob": 0.25, "sample_posterior": True, "offset_noise": 0.1})  # every kind of draw
    cfg = tmp_path / f"{name}-{steps}.yaml"
    cfg.write_text(yaml.safe_dump(d))
    cmd = [sys.executable, str(DRIVER), str(cfg), *([str(out / CKPT)] if resume else [])]
    res = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return out


def _ids(out: Path, key: str = "ids") -> list[list[int]]:
    """Sample ids (or stream positions) of each global micro-batch (ranks' rows joined in rank order)."""
    rows: dict[int, dict[int, list[int]]] = {}
    for f in sorted(out.glob("ids-rank*.jsonl")):
        rank = int(f.stem.removeprefix("ids-rank"))
        for line in f.read_text().splitlines():
            r = json.loads(line)
            assert rank not in rows.setdefault(r["micro_batch"], {}), "a micro-batch trained twice on one rank"
            rows[r["micro_batch"]][rank] = r[key]
    return [[i for rank in sorted(rows[m]) for i in rows[m][rank]] for m in sorted(rows)]


def _summary(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


def _max_diff(a: Path, b: Path) -> float:
    from safetensors.torch import load_file

    wa, wb = load_file(str(a / EXPORT)), load_file(str(b / EXPORT))
    assert wa.keys() == wb.keys()
    return max(float((wa[k].double() - wb[k].double()).abs().max()) for k in wa if wa[k].is_floating_point())


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> Path:
    """The reference: 1 process x batch 4, 4 steps."""
    return _run(tmp_path_factory.mktemp("one"), "one", 4, devices=1, batch=4)


@pytest.mark.slow
def test_two_processes_of_batch_b_train_like_one_of_batch_2b(tmp_path, one_process):
    two = _run(tmp_path, "two", 4, devices=2, batch=2)
    assert _ids(two) == _ids(one_process)  # the same samples in each step, in the same order
    assert _ids(two, "positions") == _ids(one_process, "positions") == [list(range(4 * m, 4 * m + 4)) for m in range(4)]
    assert _summary(two)["scale_factor"] == _summary(one_process)["scale_factor"]  # the first global batch's, exactly
    g1, g2 = (torch.load(two / f"grads-rank{r}.pt") for r in (0, 1))
    ref = torch.load(one_process / "grads-rank0.pt")
    assert g1.keys() == ref.keys() and all(torch.equal(g1[k], g2[k]) for k in g1)  # all-reduced: the same on both
    scale = max(float(g.abs().max()) for g in ref.values())
    assert max(float((g1[k] - ref[k]).abs().max()) for k in ref) <= GRAD_RTOL * scale
    assert _max_diff(two, one_process) <= WEIGHT_TOL


@pytest.mark.slow
def test_a_run_resumed_on_one_process_continues_the_sample_stream_of_two(tmp_path, one_process):
    _run(tmp_path, "part", 2, devices=2, batch=2)
    out = _run(tmp_path, "part", 4, devices=1, batch=4, resume=True)
    ids, ref = _ids(out), _ids(one_process)
    assert len(ids) == 4 and ids == ref  # steps 0-1 on 2 ranks, 2-3 on 1: none repeated, none skipped
    flat = [i for b in ids for i in b]
    assert len(set(flat)) == len(flat) == 16  # 16 of ShapesWorld's 64 items, each once
    assert _summary(out)["scale_factor"] == _summary(one_process)["scale_factor"]  # the checkpoint's: 2 processes'
    assert _max_diff(out, one_process) <= WEIGHT_TOL
