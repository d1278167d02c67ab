"""Stage-1 training: config validation, a 30-step run lowers the reconstruction loss, bitwise resume on CPU,
the exported file loads, and the CLI. Tiny configs (16×16 patches of the bundled photos, ch 32, f = 2) keep it to
seconds."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from latent_diffusion.autoencoder_io import load_autoencoder
from latent_diffusion.cli import main
from latent_diffusion.errors import ConfigError
from latent_diffusion.safe_load import read_pickle
from latent_diffusion.train.autoencoder import AutoencoderModule
from latent_diffusion.train.autoencoder_config import AutoencoderTrainConfig, ch_mult_for
from latent_diffusion.train.autoencoder_run import train_autoencoder

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def tiny(out_dir, **run) -> dict:
    return {
        "kind": "kl", "f": 2,
        "model": {"ch": 32, "ch_mult": [1, 1], "num_res_blocks": 1, "z_channels": 2, "embed_dim": 2, "resolution": 16},
        "loss": {"disc_start": 2, "disc_ndf": 8, "disc_num_layers": 2, "perceptual_weight": 1.0, "disc_weight": 0.5},
        "data": {"source": "photos", "size": 16, "num_val": 4, "photo_downscale": 4},
        "optim": {"base_lr": 1e-4},
        "run": {"max_steps": 6, "batch_size": 4, "epoch_steps": 3, "log_every": 1, "num_threads": 1,
                "out_dir": str(out_dir)} | run,
    }


def test_config_rejects_unknown_keys_and_bad_f() -> None:
    with pytest.raises(ConfigError, match="unknown key"):
        AutoencoderTrainConfig.from_dict({"modle": {}})
    with pytest.raises(ConfigError, match=r"unknown key.*'chh'"):
        AutoencoderTrainConfig.from_dict({"model": {"chh": 3}})
    with pytest.raises(ConfigError, match="power of two"):
        AutoencoderTrainConfig.from_dict({"f": 3, "model": {"ch_mult": [1, 2]}})
    with pytest.raises(ConfigError, match="needs len\\(ch_mult\\)"):
        AutoencoderTrainConfig.from_dict({"f": 8, "model": {"ch_mult": [1, 2, 4]}})
    with pytest.raises(ConfigError, match="multiples of 32"):
        AutoencoderTrainConfig.from_dict({"model": {"ch": 24, "ch_mult": [1, 2]}})
    with pytest.raises(ConfigError, match="not divisible"):
        AutoencoderTrainConfig.from_dict({"model": {"ch_mult": [1, 2, 2, 2]}, "data": {"size": 12}})
    assert ch_mult_for(1) == (1,) and ch_mult_for(16) == (1, 2, 2, 4, 4)
    with pytest.raises(ValueError, match="power of two"):
        ch_mult_for(6)


def test_disc_start_beyond_max_steps_warns() -> None:
    with pytest.warns(UserWarning, match="never switch on"):
        AutoencoderTrainConfig.from_dict({"loss": {"disc_start": 500}, "run": {"max_steps": 100}})


def test_lr_scaling_recipe() -> None:
    cfg = AutoencoderTrainConfig.from_dict({"optim": {"base_lr": 1e-5, "accumulate": 2}, "run": {"batch_size": 6}})
    assert cfg.lr == pytest.approx(1e-5 * 6 * 2)
    assert AutoencoderTrainConfig.from_dict({"optim": {"base_lr": 1e-5, "scale_lr": False}}).lr == 1e-5


def test_30_steps_lower_the_reconstruction_loss(tmp_path) -> None:
    cfg = AutoencoderTrainConfig.from_dict(tiny(tmp_path / "run", max_steps=30, epoch_steps=15, batch_size=4)
                                           | {"optim": {"base_lr": 1e-4}})
    cfg.loss.disc_start = 20
    untrained = AutoencoderModule(cfg)
    untrained.setup("fit")
    before = untrained.evaluate_heldout()[0]["val_l1"]
    summary = train_autoencoder(cfg, progress=False, echo=False)
    rows = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert len([r for r in rows if "rec" in r]) == 30
    # held-out L1 of the posterior-mean reconstruction (fixed images): a clear drop, not convergence
    assert summary["val_l1"] < 0.8 * before, (before, summary["val_l1"])
    assert any(r.get("disc_loss") for r in rows) and any(r.get("d_weight", 0) > 0 for r in rows)
    assert summary["steps"] == 30 and (tmp_path / "run" / "loss_curves.png").exists()
    assert len(list((tmp_path / "run" / "grids").glob("*.png"))) == 2
    model = load_autoencoder(tmp_path / "run" / "autoencoder.safetensors")
    assert model.encode(torch.zeros(1, 3, 16, 16)).mean.shape == (1, 2, 8, 8)


@pytest.mark.parametrize("first_steps", [3, 4])  # 4: the first run ends mid-window (epoch_steps 3)
def test_resume_is_bitwise_identical(tmp_path, first_steps) -> None:
    straight = AutoencoderTrainConfig.from_dict(tiny(tmp_path / "a"))
    train_autoencoder(straight, progress=False, echo=False)
    first = AutoencoderTrainConfig.from_dict(tiny(tmp_path / "b", max_steps=first_steps))
    train_autoencoder(first, progress=False, echo=False)
    mid = tmp_path / "mid.ckpt"
    mid.write_bytes((tmp_path / "b" / "checkpoints" / "last.ckpt").read_bytes())
    assert int(read_pickle(mid)["state_dict"]["batches_seen"]) == first_steps
    resumed = AutoencoderTrainConfig.from_dict(tiny(tmp_path / "b"))
    train_autoencoder(resumed, resume=str(mid), progress=False, echo=False)
    a = read_pickle(tmp_path / "a" / "checkpoints" / "last.ckpt")
    b = read_pickle(tmp_path / "b" / "checkpoints" / "last.ckpt")
    assert int(b["state_dict"]["batches_seen"]) == 6
    for k, v in a["state_dict"].items():
        assert torch.equal(v, b["state_dict"][k]), k
    assert len(a["optimizer_states"]) == len(b["optimizer_states"]) == 2
    for oa, ob in zip(a["optimizer_states"], b["optimizer_states"]):
        assert oa["state"].keys() == ob["state"].keys() and oa["state"]
        for i in oa["state"]:
            for name, t in oa["state"][i].items():
                assert torch.equal(t, ob["state"][i][name]), (i, name)
    steps = [json.loads(line)["step"] for line in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    assert steps == sorted(steps)  # the resumed run's log continues, without duplicate rows


def test_existing_run_folder_needs_force_or_resume(tmp_path) -> None:
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "log.jsonl").write_text("")
    cfg = AutoencoderTrainConfig.from_dict(tiny(tmp_path / "run"))
    with pytest.raises(ConfigError, match="--force"):
        train_autoencoder(cfg, progress=False, echo=False)


def test_cli_train_then_eval(tmp_path, capsys) -> None:
    import yaml

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        (tmp_path / "c.yaml").write_text(yaml.safe_dump(tiny(tmp_path / "run", max_steps=2, epoch_steps=2)))
        assert main(["train", "autoencoder", "--config", str(tmp_path / "c.yaml"), "--quiet",
                     "--export", str(tmp_path / "ae16.safetensors"), "--export-dtype", "fp16"]) == 0
        sd = load_autoencoder(tmp_path / "ae16.safetensors").state_dict()
        assert all(v.dtype == torch.float32 for v in sd.values() if v.is_floating_point())
        assert main(["eval", "autoencoder", "--ckpt", str(tmp_path / "ae16.safetensors"), "--data", "photos", "--n", "4", "--size",
                     "32", "--json", str(tmp_path / "r.json"), "--markdown", str(tmp_path / "r.md")]) == 0
    rows = json.loads((tmp_path / "r.json").read_text())
    assert rows[0]["name"] == "ae16" and 0 < rows[0]["psnr"] < 100 and "rfid" in rows[0] and "ssim" in rows[0]
    assert "| PSNR (dB)" in (tmp_path / "r.md").read_text()
    (tmp_path / "bad.yaml").write_text("kind: kl\nmodel: {chh: 3}\n")
    assert main(["train", "autoencoder", "--config", str(tmp_path / "bad.yaml")]) == 2
    assert "unknown key" in capsys.readouterr().err
