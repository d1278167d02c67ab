"""diffusion.latent_cache_dir: the encoded latents are written once and read back by the next run."""

from __future__ import annotations

import pytest
import torch
from ldm_tiny_config import tiny

from latent_diffusion.checkpoint import save_checkpoint
from latent_diffusion.errors import ConfigError
from latent_diffusion.train.ldm import LatentDiffusionModule, build_training_model
from latent_diffusion.train.ldm_config import LDMTrainConfig
from latent_diffusion.train.ldm_data import latent_cache_file


@pytest.fixture(scope="module")
def first_stage(tmp_path_factory) -> str:
    """A tiny LDM file whose first_stage_model.* part serves as first_stage_path."""
    path = tmp_path_factory.mktemp("fs") / "tiny.safetensors"
    model = build_training_model(LDMTrainConfig.from_dict(tiny()))
    model.model_ema = None
    return str(save_checkpoint(model, path))


def _module(first_stage: str, cache_dir, **data) -> LatentDiffusionModule:
    d = tiny(diffusion={"cache_latents": True, "latent_cache_dir": str(cache_dir)}, data=data)
    m = LatentDiffusionModule(LDMTrainConfig.from_dict({**d, "first_stage_path": first_stage}))
    m.setup("fit")
    return m


def test_second_run_reads_the_cache_instead_of_encoding(first_stage, tmp_path, monkeypatch) -> None:
    cache = tmp_path / "new" / "cache"  # made by the first run
    first = _module(first_stage, cache)
    files = list(cache.glob("latents-*.safetensors"))
    assert len(files) == 1 and files[0] == latent_cache_file(first.cfg, first.first_stage_sha256)

    def no_encoding(*args, **kwargs):
        raise AssertionError("the cached latents should have been read, not encoded again")

    monkeypatch.setattr(LatentDiffusionModule, "_raw_latents", no_encoding)
    second = _module(first_stage, cache)
    torch.testing.assert_close(second.source.latents, first.source.latents, rtol=0, atol=0)
    assert float(second.model.scale_factor) == float(first.model.scale_factor)


def test_other_data_gets_its_own_file_and_bad_setups_are_errors(first_stage, tmp_path) -> None:
    _module(first_stage, tmp_path)
    _module(first_stage, tmp_path, seed=5)
    assert len(list(tmp_path.glob("latents-*.safetensors"))) == 2
    with pytest.raises(ConfigError, match="needs cache_latents"):
        LDMTrainConfig.from_dict(tiny(diffusion={"latent_cache_dir": str(tmp_path)}))
    with pytest.raises(ConfigError, match="needs first_stage_path"):  # tiny() draws a random first stage
        m = LatentDiffusionModule(LDMTrainConfig.from_dict(
            tiny(diffusion={"cache_latents": True, "latent_cache_dir": str(tmp_path)})))
        m.setup("fit")


def test_a_cache_of_another_length_is_refused(first_stage, tmp_path) -> None:
    from latent_diffusion.safe_load import save_safetensors_atomic

    m = _module(first_stage, tmp_path)
    path = latent_cache_file(m.cfg, m.first_stage_sha256)
    save_safetensors_atomic({"latents": m.source.latents[:3]}, path, overwrite=True)
    with pytest.raises(ConfigError, match="holds 3 items"):
        _module(first_stage, tmp_path)
    save_safetensors_atomic({"other": m.source.latents}, path, overwrite=True)
    with pytest.raises(ConfigError, match="no 'latents' tensor"):
        _module(first_stage, tmp_path)
    path.write_bytes(path.read_bytes()[:-16])  # cut short: the safe reader's clear error, not a crash
    with pytest.raises(ConfigError, match="(?s)cannot be read.*(truncated|cut short).*delete the file"):
        _module(first_stage, tmp_path)


def test_inpaint_caches_the_masked_images_latents_too(first_stage, tmp_path) -> None:
    """Cached and per-step encoding give the same latents and the same 9-channel-style condition (1e-5: the encoder
    sees batches of another size)."""
    from latent_diffusion.safe_load import read_state_dict, save_safetensors_atomic
    from latent_diffusion.train.ldm_data import StepWindow

    inpaint = {"task": "inpaint", "model": {"conditioning_key": "hybrid", "unet": {"in_channels": 7}}}
    modules = []
    for cache in (True, False, True):  # the second cached module reads the file the first wrote
        diffusion = {"cache_latents": True, "latent_cache_dir": str(tmp_path)} if cache else {}
        m = LatentDiffusionModule(LDMTrainConfig.from_dict({**tiny(diffusion=diffusion, **inpaint),
                                                            "first_stage_path": first_stage}))
        m.setup("fit")
        w = StepWindow(m.source, 0, 0, 1, 4)
        batch = torch.utils.data.default_collate([w[k] for k in range(len(w))])
        z = m.latents(batch, batch["position"])
        modules.append((m, z, m.condition(batch, z, batch["position"])))
    (cached, z1, c1), (_, z2, c2), (_, z3, c3) = modules
    torch.testing.assert_close(z1, z2, atol=1e-5, rtol=0)
    torch.testing.assert_close(c1["c_concat"], c2["c_concat"], atol=1e-5, rtol=0)
    assert torch.equal(z3, z1) and torch.equal(c3["c_concat"], c1["c_concat"])
    assert c1["c_concat"][:, 0].unique().tolist() == [0.0, 1.0]  # the mask channel
    stored = read_state_dict(latent_cache_file(cached.cfg, cached.first_stage_sha256), mmap=False)[0]
    assert set(stored) == {"latents", "masked_latents"}
    _module(first_stage, tmp_path)  # txt2img on the same data: its own file, without masked latents
    assert len(list(tmp_path.glob("latents-*.safetensors"))) == 2
    path = latent_cache_file(cached.cfg, cached.first_stage_sha256)
    save_safetensors_atomic({"latents": stored["latents"]}, path, overwrite=True)
    with pytest.raises(ConfigError, match="holds no 'masked_latents' tensor; delete the file"):
        LatentDiffusionModule(cached.cfg).setup("fit")
