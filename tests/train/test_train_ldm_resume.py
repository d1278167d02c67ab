"""Deterministic resume (SIGKILL mid-run, resume, bit-identical weights) and 2-process gloo DDP, in subprocesses."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from ldm_tiny_config import tiny

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _write(tmp_path: Path, name: str, **run) -> Path:
    d = tiny(run={"out_dir": str(tmp_path / name), **run})
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(d))
    return path


def _cmd(config: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "latent_diffusion.train.ldm_cli", "--config", str(config), "--quiet", *extra]


def _digest(out: Path) -> str:
    return json.loads((out / "summary.json").read_text())["digest"]


def _wait_for_checkpoint(out: Path, proc: subprocess.Popen, timeout: float = 240) -> None:
    log, t0 = out / "log.jsonl", time.time()
    while time.time() - t0 < timeout:
        if log.exists() and any("checkpoint" in line for line in log.read_text().splitlines()):
            return
        if proc.poll() is not None:
            raise AssertionError(f"training ended before it could be killed: {proc.stderr.read()[-2000:]}")
        time.sleep(0.05)
    raise AssertionError("no checkpoint appeared")


def test_sigkill_then_resume_is_bit_identical(tmp_path):
    run = {"max_steps": 20, "epoch_steps": 4}
    full = _write(tmp_path, "full", **run)
    killed = _write(tmp_path, "killed", **run)
    proc = subprocess.Popen(_cmd(killed), env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_checkpoint(tmp_path / "killed", proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "killed" / "summary.json").exists()  # it really died before the end
    ref = subprocess.run(_cmd(full), env=ENV, capture_output=True, text=True, timeout=600)
    assert ref.returncode == 0, ref.stderr[-3000:]
    ckpt = tmp_path / "killed" / "checkpoints" / "last.ckpt"
    res = subprocess.run(_cmd(killed, "--resume", str(ckpt)), env=ENV, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert _digest(tmp_path / "killed") == _digest(tmp_path / "full")


@pytest.mark.slow
def test_two_process_ddp_ranks_end_identical(tmp_path):
    cfg = _write(tmp_path, "ddp", max_steps=4, epoch_steps=2, devices=2)
    res = subprocess.run(_cmd(cfg), env=ENV, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    out = tmp_path / "ddp"
    d0, d1 = (out / "digest-rank0.txt").read_text(), (out / "digest-rank1.txt").read_text()
    assert d0 == d1
    assert json.loads((out / "summary.json").read_text())["world_size"] == 2


def test_resume_with_more_steps_after_a_mid_epoch_end(tmp_path):
    """A run whose max_steps is not a multiple of epoch_steps ends inside an epoch; extending it must still train to
    the new max_steps (it used to stop one epoch window short)."""
    from ldm_tiny_config import tiny

    from latent_diffusion.train.ldm_config import LDMTrainConfig
    from latent_diffusion.train.ldm_run import train_ldm

    run = {"out_dir": str(tmp_path / "run"), "max_steps": 3, "epoch_steps": 2}
    assert train_ldm(LDMTrainConfig.from_dict(tiny(run=run)), progress=False, echo=False)["steps"] == 3
    longer = LDMTrainConfig.from_dict(tiny(run=run | {"max_steps": 6}))
    summary = train_ldm(longer, resume=str(tmp_path / "run" / "checkpoints" / "last.ckpt"), progress=False, echo=False)
    assert summary["steps"] == 6


@pytest.mark.parametrize("accumulate", [1, 2])
def test_resumed_run_keeps_its_checkpoint_windows(tmp_path, accumulate):
    """Resuming from the checkpoint of step 4 (epoch_steps 2) checkpoints at 6 and 8, as the run would have without
    the stop; it used to end its first window one step late (5, 7, 8: Lightning restored the epoch-end checkpoint
    as an epoch not yet ended). With gradient accumulation too."""
    import json

    from latent_diffusion.train.ldm_config import LDMTrainConfig
    from latent_diffusion.train.ldm_run import kept_models, train_ldm

    out = tmp_path / "run"
    run = {"out_dir": str(out), "max_steps": 4, "epoch_steps": 2, "keep_epoch_models": True}
    optim = {"accumulate": accumulate}
    train_ldm(LDMTrainConfig.from_dict(tiny(run=run, optim=optim)), progress=False, echo=False)
    assert [step for step, _ in kept_models(out)] == [2, 4]
    longer = LDMTrainConfig.from_dict(tiny(run=run | {"max_steps": 8}, optim=optim))
    train_ldm(longer, resume=str(out / "checkpoints" / "last.ckpt"), progress=False, echo=False)
    assert [step for step, _ in kept_models(out)] == [2, 4, 6, 8]
    logged = [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines() if "checkpoint" in line]
    assert logged == [2, 4, 6, 8]
