"""Training runs and their files: a corrupted or hostile --resume checkpoint is refused with one line, and the temp
files a killed run left are swept when it resumes (docs/reliability.md)."""

from __future__ import annotations

import os
import pickle
import struct
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
from ldm_tiny_config import tiny

from latent_diffusion.errors import CheckpointError, UnsafeCheckpointError
from latent_diffusion.train.ldm_config import LDMTrainConfig
from latent_diffusion.train.ldm_run import CKPT, EXPORT, train_ldm

pytestmark = pytest.mark.usefixtures("one_thread")


def _cfg(out: Path, steps: int) -> LDMTrainConfig:
    return LDMTrainConfig.from_dict(tiny(run={"out_dir": str(out), "max_steps": steps, "epoch_steps": 2}))


def _dead_pid() -> int:
    return int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout)


def _flip_bytes_in_largest_tensor(path: Path, count: int = 64) -> None:
    """XOR ``count`` bytes in the middle of the biggest tensor record of a torch zip file (its CRC stays stale)."""
    with zipfile.ZipFile(path) as z:
        info = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    raw = bytearray(path.read_bytes())
    name_len, extra_len = struct.unpack("<HH", raw[info.header_offset + 26:info.header_offset + 30])
    start = info.header_offset + 30 + name_len + extra_len + info.file_size // 2
    for k in range(start, start + count):
        raw[k] ^= 0xA5
    path.write_bytes(bytes(raw))


def test_resume_sweeps_temps_and_refuses_a_corrupted_checkpoint(tmp_path: Path) -> None:
    out = tmp_path / "run"
    train_ldm(_cfg(out, 2), echo=False, progress=False)
    pid = _dead_pid()  # a run killed during a save leaves its temp files
    stale = [out / "checkpoints" / f".last.ckpt.{pid}.0123abcd.tmp", out / f".{EXPORT}.{pid}.89abcdef.tmp"]
    for p in stale:
        p.write_bytes(b"\0" * 1000)
        os.utime(p, (time.time() - 7200, time.time() - 7200))  # an hour old or more: swept
    train_ldm(_cfg(out, 4), resume=str(out / CKPT), echo=False, progress=False)
    assert not any(p.exists() for p in stale)
    assert not [p for p in out.rglob(".*.tmp")]

    _flip_bytes_in_largest_tensor(out / CKPT)  # resumed with exit 0 before, and the bad weights went into the export
    with pytest.raises(CheckpointError, match="CRC"):
        train_ldm(_cfg(out, 6), resume=str(out / CKPT), echo=False, progress=False)


class _Hostile:
    def __reduce__(self):  # noqa: ANN204 - what a malicious checkpoint carries
        import os

        return (os.system, ("echo pwned",))


class _Unknown:  # a class no weights-only load accepts: our reader would make it an inert placeholder
    pass


def _autoencoder_cfg(out: Path):  # noqa: ANN202
    from latent_diffusion.train.autoencoder_config import AutoencoderTrainConfig

    return AutoencoderTrainConfig.from_dict({"run": {"out_dir": str(out), "max_steps": 2}})


@pytest.mark.parametrize("payload, match", [
    (_Hostile(), r"asks for `(os|posix)\.system`.*nothing from the file was executed"),
    (_Unknown(), r"holds objects of test_reliability_training\._Unknown, which a weights-only load does not"),
])
@pytest.mark.parametrize("stage", ["ldm", "autoencoder"])
def test_resume_with_a_forbidden_or_unknown_global_is_one_clear_error(tmp_path: Path, payload, match, stage) -> None:
    """A --resume pickle asking for a global that torch's weights-only load refuses surfaced as torch's
    UnpicklingError traceback from inside Lightning; our reader now refuses it first, before anything is built."""
    import torch

    bad = tmp_path / "last.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1), "batches_seen": torch.tensor(2)}, "x": payload}, bad,
               pickle_protocol=pickle.HIGHEST_PROTOCOL)
    with pytest.raises(UnsafeCheckpointError, match=match):
        if stage == "ldm":
            train_ldm(_cfg(tmp_path / "run", 2), resume=str(bad), echo=False, progress=False)
        else:
            from latent_diffusion.train.autoencoder_run import train_autoencoder

            train_autoencoder(_autoencoder_cfg(tmp_path / "run"), resume=str(bad), echo=False, progress=False)
    assert not (tmp_path / "run").exists()  # refused before the run folder was touched


def test_resume_with_plain_data_torch_would_refuse_is_refused_before_work(tmp_path: Path) -> None:
    """Our reader loads an argparse.Namespace as plain data; torch's weights-only load (Lightning's) does not: the
    resume check must refuse it too, before the run folder is touched."""
    import argparse

    import torch

    bad = tmp_path / "last.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1), "batches_seen": torch.tensor(2)},
                "hparams": argparse.Namespace(lr=1e-4)}, bad)
    with pytest.raises(UnsafeCheckpointError, match=r"argparse\.Namespace, which a weights-only load does not"):
        train_ldm(_cfg(tmp_path / "run", 2), resume=str(bad), echo=False, progress=False)
    assert not (tmp_path / "run").exists()
