"""Stage-2 LightningModule: objectives, scale factor, condition dropout, EMA, tasks as configuration, export."""

import json
import math
from pathlib import Path

import pytest
import torch
from ldm_tiny_config import tiny
from safetensors.torch import load_file

from latent_diffusion.checkpoint import load_checkpoint
from latent_diffusion.train.ldm import LatentDiffusionModule, snr_weight
from latent_diffusion.train.ldm_config import LDMTrainConfig
from latent_diffusion.train.ldm_data import StepWindow
from latent_diffusion.train.ldm_run import train_ldm


def _module(**sections) -> LatentDiffusionModule:
    m = LatentDiffusionModule(LDMTrainConfig.from_dict(tiny(**sections)))
    m.setup("fit")
    return m


def _batch(m: LatentDiffusionModule, micro: int = 0) -> dict:
    w = StepWindow(m.source, m.cfg.run.seed, micro, 1, m.cfg.run.batch_size)
    return torch.utils.data.default_collate([w[k] for k in range(len(w))])


def test_scale_factor_is_one_over_std_of_first_batch():
    m = _module()
    items = _batch(m)
    z = m._raw_latents(items["image"], None)
    torch.testing.assert_close(float(m.model.scale_factor), 1.0 / float(z.flatten().std()), rtol=1e-6, atol=0)
    m2 = _module(diffusion={"scale_factor": 0.5})
    assert float(m2.model.scale_factor) == 0.5


@pytest.mark.parametrize("parameterization", ["eps", "x0", "v"])
def test_objectives_give_finite_loss_and_gradients(parameterization):
    m = _module(model={"parameterization": parameterization}, diffusion={"min_snr_gamma": 5.0})
    loss = m.training_step(_batch(m), 0)
    loss.backward()
    assert math.isfinite(float(loss.detach()))
    assert m.model.model.diffusion_model.out[-1].weight.grad.abs().sum() > 0
    assert m.model.cond_stage_model.transformer.token_emb.weight.grad is not None  # text encoder trains jointly
    assert m.model.first_stage_model.encoder.conv_in.weight.grad is None  # first stage frozen


def test_min_snr_weights():
    alpha, sigma = torch.tensor([0.99, 0.5]), torch.tensor([0.141, 0.866])
    snr = (alpha / sigma) ** 2
    w = snr_weight(alpha, sigma, 5.0, "eps")
    torch.testing.assert_close(w, snr.clamp(max=5) / snr)
    torch.testing.assert_close(snr_weight(alpha, sigma, None, "v"), torch.ones(2))
    torch.testing.assert_close(snr_weight(alpha, sigma, 5.0, "v"), snr.clamp(max=5) / (snr + 1))


def test_min_snr_weighs_the_x0_error_alike_for_every_parameterization():
    """min(SNR, γ)·|x̂0 - x0|² whichever output the network predicts: switching ε -> v (txt2img-v-lowsnr recipes)
    changes what the network represents at high noise (≈ x_t vs ≈ -x0), not the loss."""
    from latent_diffusion.diffusion.parameterization import v_target, x0_to_eps

    g = torch.Generator().manual_seed(0)
    x0, eps, err = (torch.randn(3, 8, generator=g) for _ in range(3))
    alpha = torch.tensor([0.999, 0.5, 0.0024]).view(3, 1)  # SNR ≈ 500, 0.33, 5.8e-6
    sigma = (1 - alpha**2).sqrt()
    x_t, x0_hat = alpha * x0 + sigma * eps, x0 + 0.1 * err
    eps_hat = x0_to_eps(x0_hat, x_t, alpha, sigma)
    outputs = {"x0": (x0_hat, x0), "eps": (eps_hat, eps), "v": (v_target(x0_hat, eps_hat, alpha, sigma),
                                                                 v_target(x0, eps, alpha, sigma))}
    snr = (alpha / sigma).flatten() ** 2
    want = snr.clamp(max=5.0) * (x0_hat - x0).pow(2).mean(1)
    for p, (pred, target) in outputs.items():
        got = snr_weight(alpha.flatten(), sigma.flatten(), 5.0, p) * (pred - target).pow(2).mean(1)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-9, msg=p)


def test_condition_dropout_uses_empty_caption():
    m = _module(diffusion={"cond_drop_prob": 0.999})
    batch = _batch(m)
    z = m.latents(batch, batch["position"])
    c = m.condition(batch, z, batch["position"])["c_crossattn"]
    null = m.model.cond_stage_model.encode(["", ""])
    torch.testing.assert_close(c, null)


def test_training_step_is_deterministic_per_step():
    m = _module()
    a = m.training_step(_batch(m), 0)
    m.batches_seen.zero_()
    b = m.training_step(_batch(m), 0)
    assert torch.equal(a, b)


@pytest.mark.parametrize("task,model", [
    ("class", {"conditioner": {"kind": "class", "n_classes": 41, "embed_dim": 16, "null_class": 40}}),
    ("layout", {"conditioner": {"kind": "layout", "width": 16, "layers": 1, "heads": 2, "max_length": 17}}),
    ("semantic", {"conditioning_key": "concat", "conditioner": {"kind": "none"}, "unet": {"in_channels": 44,
                  "use_spatial_transformer": False, "context_dim": None}}),
    ("superres", {"conditioning_key": "concat", "conditioner": {"kind": "none"}, "unet": {"in_channels": 6,
                  "use_spatial_transformer": False, "context_dim": None}}),
    ("inpaint", {"conditioning_key": "hybrid", "unet": {"in_channels": 7}}),
    ("unconditional", {"conditioning_key": None, "conditioner": {"kind": "none"},
                       "unet": {"use_spatial_transformer": False, "context_dim": None}}),
])
def test_every_task_is_configuration(task, model):
    m = _module(task=task, model=model)
    loss = m.training_step(_batch(m), 0)
    assert math.isfinite(float(loss.detach()))


def test_pixel_space_training():
    m = _module(model={"first_stage": "none"}, diffusion={"scale_factor": 1.0})
    assert m.model.first_stage_model is None
    assert math.isfinite(float(m.training_step(_batch(m), 0)))


def test_train_export_and_load(tmp_path):
    cfg = LDMTrainConfig.from_dict(tiny(run={"out_dir": str(tmp_path / "run"), "keep_epoch_models": True},
                                        diffusion={"cache_latents": True}))
    summary = train_ldm(cfg, progress=False, echo=False, export=str(tmp_path / "m16.safetensors"),
                        export_dtype=torch.float16)
    assert summary["steps"] == 4
    kept = sorted(p.name for p in (tmp_path / "run" / "models").iterdir())  # one per checkpoint (epoch_steps 2)
    assert kept == ["step-000002.safetensors", "step-000004.safetensors"]
    assert load_checkpoint(tmp_path / "run" / "models" / kept[0]).model_ema.num_updates == 2
    last, final = (load_file(tmp_path / "run" / f) for f in ("models/" + kept[1], "model.safetensors"))
    assert last.keys() == final.keys() and all(torch.equal(last[k], final[k]) for k in last)
    full = load_checkpoint(tmp_path / "run" / "model.safetensors")
    assert full.model_ema is not None and float(full.model_ema.num_updates) == 4
    assert float(full.scale_factor) == pytest.approx(summary["scale_factor"])
    small = load_checkpoint(tmp_path / "m16.safetensors")  # fp16 storage, EMA weights in the UNet, cast to fp32
    assert small.model_ema is None and next(small.model.parameters()).dtype == torch.float32
    ema = load_checkpoint(tmp_path / "run" / "model.safetensors", use_ema=True)
    for (n, a), (_, b) in zip(ema.model.named_parameters(), small.model.named_parameters()):
        torch.testing.assert_close(a, b, atol=2e-3, rtol=1e-3, msg=n)
    words = small.cfg.conditioner.words
    assert "circle" in words and small.cond_stage_model.check_prompt("a red dragon") == ["dragon"]


def test_a_fresh_or_resumed_run_drops_kept_models_of_steps_it_will_redo(tmp_path):
    run = tmp_path / "run"
    cfg = LDMTrainConfig.from_dict(tiny(run={"out_dir": str(run), "keep_epoch_models": True}))
    train_ldm(cfg, progress=False, echo=False)
    (run / "models" / "step-000006.safetensors").write_bytes(b"an older run's")  # not in this run's steps
    train_ldm(cfg.replace_run(max_steps=2), progress=False, echo=False, force=True)
    assert sorted(p.name for p in (run / "models").iterdir()) == ["step-000002.safetensors"]


def test_log_rows_carry_the_window_mean_loss(tmp_path):
    rows = {}
    for every in (1, 2):
        cfg = LDMTrainConfig.from_dict(tiny(run={"out_dir": str(tmp_path / f"every{every}"), "log_every": every}))
        train_ldm(cfg, progress=False, echo=False)
        lines = (tmp_path / f"every{every}" / "log.jsonl").read_text().splitlines()
        rows[every] = [r for r in map(json.loads, lines) if "loss" in r]
    assert [r["step"] for r in rows[2]] == [2, 4]
    assert all(r["loss_mean"] == r["loss"] for r in rows[1])  # a window of one micro-batch
    for r in rows[2]:  # the same seeded steps: the mean of the two per-step losses (float32 sums: 1e-6)
        pair = [x["loss"] for x in rows[1] if r["step"] - 2 < x["step"] <= r["step"]]
        assert r["loss"] == pair[-1] and r["loss_mean"] == pytest.approx(sum(pair) / 2, rel=1e-6)


def test_yaml_recipe_parses():
    cfg = LDMTrainConfig.from_yaml("configs/ldm/txt2img-shapes.yaml")
    assert cfg.task == "txt2img" and cfg.model.conditioner.kind == "bert"


def test_max_minutes_stops_training_early_and_still_exports(tmp_path):
    cfg = LDMTrainConfig.from_dict(tiny(run={"out_dir": str(tmp_path / "run"), "max_steps": 400, "epoch_steps": 400,
                                             "max_minutes": 0.002}))  # 0.12 s of training
    summary = train_ldm(cfg, progress=False, echo=False)
    assert 0 < summary["steps"] < 400
    assert load_checkpoint(tmp_path / "run" / "model.safetensors").model_ema is not None
    with pytest.raises(ValueError, match="max_minutes must be > 0"):
        LDMTrainConfig.from_dict(tiny(run={"max_minutes": 0}))


def test_class_training_without_dropout_needs_no_null_label():
    m = _module(task="class", model={"conditioner": {"kind": "class", "n_classes": 40, "embed_dim": 16}},
                diffusion={"cond_drop_prob": 0.0})
    assert math.isfinite(float(m.training_step(_batch(m), 0).detach()))


def test_cli_overrides_reach_the_run(tmp_path):
    from latent_diffusion.cli import main

    LDMTrainConfig.from_dict(tiny()).to_yaml(tmp_path / "tiny.yaml")
    out = tmp_path / "run"
    assert main(["train", "ldm", "--config", str(tmp_path / "tiny.yaml"), "--out", str(out), "--max-steps", "2",
                 "--seed", "3", "--quiet"]) == 0
    saved = LDMTrainConfig.from_yaml(out / "config.yaml")
    assert (saved.run.seed, saved.run.max_steps) == (3, 2)
    assert json.loads((out / "summary.json").read_text())["steps"] == 2


CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.mark.parametrize("path", sorted(str(p.relative_to(CONFIGS)) for p in CONFIGS.glob("*/*.yaml")))
def test_every_shipped_config_parses(path, tmp_path):
    """Every recipe under configs/ reads with its config class (unknown keys and bad values are errors); a fine-tuning
    recipe (model: from_init) with a tiny file of its family as --init-from."""
    import yaml

    from latent_diffusion.checkpoint import save_checkpoint
    from latent_diffusion.tiny import tiny_model
    from latent_diffusion.train.autoencoder_config import AutoencoderTrainConfig

    path = CONFIGS / path
    raw = yaml.safe_load(path.read_text())
    model = raw.get("model")
    if model == "from_init" or (isinstance(model, dict) and model.get("from_init")):
        family = "sd2" if "sd2" in path.name else "sd1"
        init = save_checkpoint(tiny_model(family), tmp_path / f"{family}.safetensors")
        cfg = LDMTrainConfig.from_yaml(path, init_from=str(init))
    else:
        cfg = LDMTrainConfig.from_yaml(path) if "task" in raw else AutoencoderTrainConfig.from_yaml(path)
    assert cfg.run.out_dir.startswith("runs/")


def test_a_stop_inside_an_accumulation_waits_for_its_last_micro_batch(tmp_path):
    """accumulate 2: a stop asked for after micro-batch 3 (as the max_minutes timer can) takes effect after
    micro-batch 4, so the run ends on an optimiser step (2 steps, 4 micro-batches) and its checkpoint agrees."""
    import lightning as L

    from latent_diffusion.safe_load import read_pickle

    class StopAfterThree(L.Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):  # noqa: ANN001
            if int(module.batches_seen) == 3:
                trainer.should_stop = True

    out = tmp_path / "run"
    cfg = LDMTrainConfig.from_dict(tiny(run={"out_dir": str(out), "max_steps": 8, "epoch_steps": 4},
                                        optim={"accumulate": 2}))
    summary = train_ldm(cfg, progress=False, echo=False, callbacks=[StopAfterThree()])
    assert summary["steps"] == 2
    ckpt = read_pickle(out / "checkpoints" / "last.ckpt")
    assert int(ckpt["state_dict"]["batches_seen"]) == 4 and ckpt["global_step"] == 2
