"""Stage-2 training: bad input gives a clear error."""

import lightning as L
import pytest
import torch
from ldm_tiny_config import tiny

from latent_diffusion.config import AutoencoderConfig
from latent_diffusion.errors import ConfigError
from latent_diffusion.models.autoencoder import AutoencoderKL
from latent_diffusion.safe_load import read_pickle, save_safetensors_atomic
from latent_diffusion.train.ldm import LatentDiffusionModule, NonFiniteLossError
from latent_diffusion.train.ldm_config import LDMTrainConfig
from latent_diffusion.train.ldm_run import train_ldm


def test_unknown_keys_rejected():
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['learning_rate'\]"):
        LDMTrainConfig.from_dict(tiny(optim={"learning_rate": 1.0}))
    with pytest.raises(ConfigError, match="unknown key"):
        LDMTrainConfig.from_dict(tiny(extra=1))


def test_task_the_dataset_cannot_supply():
    with pytest.raises(ConfigError, match=r"unknown task 'depth'; tasks: \['unconditional'"):
        LDMTrainConfig.from_dict(tiny(task="depth"))
    with pytest.raises(ConfigError, match=r"task 'semantic' reads per-image annotations.*shards carry images"):
        LDMTrainConfig.from_dict(tiny(task="semantic", data={"source": "shards", "root": "x"}))
    with pytest.raises(ConfigError, match=r"needs data.segmentation_root and data.num_segment_classes"):
        LDMTrainConfig.from_dict(tiny(task="semantic", data={"source": "folder", "root": "x"}))


def test_legacy_dataset_key_reads_as_source():
    assert LDMTrainConfig.from_dict(tiny(data={"dataset": "shapes"})).data.source == "shapes"
    with pytest.raises(ConfigError, match="data.dataset='shapes' and data.source='folder' disagree"):
        LDMTrainConfig.from_dict(tiny(data={"dataset": "shapes", "source": "folder", "root": "x"}))
    with pytest.raises(ConfigError, match=r"data.source='folder' needs data.root \(or --data PATH"):
        LDMTrainConfig.from_dict(tiny(data={"source": "folder"}))


def test_task_and_model_disagree():
    with pytest.raises(ConfigError, match=r"task 'superres' needs model.conditioning_key in \['concat'\]"):
        LDMTrainConfig.from_dict(tiny(task="superres"))
    with pytest.raises(ConfigError, match="needs model.unet.in_channels = 6"):
        LDMTrainConfig.from_dict(tiny(task="superres", model={"conditioning_key": "concat",
                                                              "conditioner": {"kind": "none"}}))


@pytest.mark.parametrize("value", [0, float("nan"), -1.0])
def test_bad_scale_factor(value):
    with pytest.raises(ConfigError, match="scale_factor must be a finite number > 0"):
        LDMTrainConfig.from_dict(tiny(diffusion={"scale_factor": value}))
    with pytest.raises(ConfigError, match="scale_factor must be a finite number > 0"):
        LDMTrainConfig.from_dict(tiny(model={"scale_factor": value}))


def test_first_stage_with_other_latent_channels(tmp_path):
    ae = AutoencoderKL(AutoencoderConfig(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(), resolution=32,
                                         z_channels=4, embed_dim=4))
    path = save_safetensors_atomic(ae.state_dict(), tmp_path / "ae4.safetensors")
    cfg = LDMTrainConfig.from_dict(tiny(first_stage_path=str(path)))
    with pytest.raises(ConfigError, match=r"has 4 latent channels but the config's UNet works on 3"):
        LatentDiffusionModule(cfg)


def test_resume_from_other_config(tmp_path):
    cfg = LDMTrainConfig.from_dict(tiny(run={"out_dir": str(tmp_path / "a"), "max_steps": 2}))
    train_ldm(cfg, progress=False, echo=False)
    other = LDMTrainConfig.from_dict(tiny(run={"out_dir": str(tmp_path / "a"), "max_steps": 4},
                                          optim={"lr": 5e-4}, model={"parameterization": "v"}))
    with pytest.raises(ConfigError, match=r"2 field\(s\) differ: model.parameterization: checkpoint 'eps', config "
                                          r"'v'; optim.lr: checkpoint 0.001, config 0.0005"):
        train_ldm(other, resume=str(tmp_path / "a" / "checkpoints" / "last.ckpt"), progress=False, echo=False)


def test_resume_a_checkpoint_written_before_a_config_field_existed(tmp_path):
    """A field added to the config since (conditioner.pieces, init_skip) reads as its default, not as a change."""
    from latent_diffusion.train.ldm_run import check_resume

    cfg = LDMTrainConfig.from_dict(tiny(run={"out_dir": str(tmp_path / "a"), "max_steps": 2}))
    train_ldm(cfg, progress=False, echo=False)
    path = tmp_path / "a" / "checkpoints" / "last.ckpt"
    ckpt = torch.load(path, weights_only=False)
    del ckpt["ldm_train_config"]["model"]["conditioner"]["pieces"], ckpt["ldm_train_config"]["init_skip"]
    torch.save(ckpt, path)
    assert check_resume(cfg, str(path)) == 2


class _PoisonAt(L.Callback):
    """Makes the UNet's output NaN from micro-batch ``at`` on."""

    def __init__(self, at: int) -> None:
        self.at = at

    def on_train_batch_start(self, trainer, module, batch, batch_idx):  # noqa: ANN001
        if int(module.batches_seen) == self.at:
            with torch.no_grad():
                module.model.model.diffusion_model.out[-1].bias.fill_(float("nan"))


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    cfg = LDMTrainConfig.from_dict(tiny(run={"out_dir": str(tmp_path / "r"), "max_steps": 6}))
    with pytest.raises(NonFiniteLossError, match=r"loss is nan at step 2 .*last good checkpoint is .*last.ckpt "
                                                 r"\(step 2\)"):
        train_ldm(cfg, progress=False, echo=False, callbacks=[_PoisonAt(2)])
    ckpt = read_pickle(tmp_path / "r" / "checkpoints" / "last.ckpt")
    assert int(ckpt["state_dict"]["batches_seen"]) == 2
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())


def test_resume_refuses_a_changed_first_stage_file(tmp_path):
    ae_cfg = AutoencoderConfig(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(), resolution=32,
                               z_channels=3, embed_dim=3)
    torch.manual_seed(0)
    path = save_safetensors_atomic(AutoencoderKL(ae_cfg).state_dict(), tmp_path / "ae.safetensors")
    cfg = LDMTrainConfig.from_dict(tiny(first_stage_path=str(path), run={"out_dir": str(tmp_path / "r"),
                                                                          "max_steps": 2}))
    train_ldm(cfg, progress=False, echo=False)
    torch.manual_seed(1)
    save_safetensors_atomic(AutoencoderKL(ae_cfg).state_dict(), path, overwrite=True)
    with pytest.raises(ConfigError, match="is not the file this run started from"):
        train_ldm(cfg.replace_run(max_steps=4), resume=str(tmp_path / "r" / "checkpoints" / "last.ckpt"),
                  progress=False, echo=False)


def test_class_dropout_needs_a_null_label_outside_the_classes():
    cond = {"conditioner": {"kind": "class", "n_classes": 41, "embed_dim": 16}}
    with pytest.raises(ConfigError, match="null_class in \\[40, 41\\)"):
        LDMTrainConfig.from_dict(tiny(task="class", model=cond))
    with pytest.raises(ConfigError, match="null_class"):
        LDMTrainConfig.from_dict(tiny(task="class", model={"conditioner": {**cond["conditioner"], "null_class": 3}}))
    ok = LDMTrainConfig.from_dict(tiny(task="class", model={"conditioner": {**cond["conditioner"], "null_class": 40}}))
    assert ok.model.conditioner.null_class == 40
    assert LDMTrainConfig.from_dict(tiny(task="class", model=cond, diffusion={"cond_drop_prob": 0.0})).task == "class"


def test_export_vocab_needs_an_export_and_a_minilm(tmp_path):
    cfg = LDMTrainConfig.from_dict(tiny(run={"out_dir": str(tmp_path / "a")}))
    with pytest.raises(ConfigError, match="pass --export PATH too"):
        train_ldm(cfg, export_vocab="data", progress=False, echo=False)
    with pytest.raises(ConfigError, match="this config's conditioner is 'bert'"):
        train_ldm(cfg, export=str(tmp_path / "e.safetensors"), export_vocab="data", progress=False, echo=False)
    assert not (tmp_path / "a").exists()  # refused before anything was written
