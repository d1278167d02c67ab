"""Loading and saving checkpoints: fp16 / bf16 Stable Diffusion files, broken or oversized stored configs, and write
errors each end in a working model or in one ``CheckpointError`` that names the file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import latent_diffusion.models.ldm as ldm_module
from latent_diffusion.autoencoder_io import load_autoencoder, save_autoencoder
from latent_diffusion.checkpoint import CONFIG_METADATA_KEY, inspect_checkpoint, load_checkpoint, save_checkpoint
from latent_diffusion.config import AutoencoderConfig, to_dict
from latent_diffusion.errors import CheckpointError
from latent_diffusion.models.autoencoder import AutoencoderKL
from latent_diffusion.models.ldm import SCHEDULE_BUFFERS, LatentDiffusion
from latent_diffusion.models.low_scale import LOW_SCALE_BUFFERS
from latent_diffusion.tiny import tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")

SCHEDULE_FIELDS = ("timesteps", "beta_schedule", "linear_start", "linear_end", "scale_factor")
AE = dict(ch=32, ch_mult=(1, 2), num_res_blocks=1, z_channels=3, embed_dim=3, resolution=32)


def half_copy(sd: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Every float tensor in ``dtype``, schedule buffers included (A1111's "save as fp16")."""
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in sd.items()}


def schedule_state(model: LatentDiffusion) -> dict[str, torch.Tensor]:
    names = [*SCHEDULE_BUFFERS, "scale_factor"]
    if getattr(model, "low_scale_model", None) is not None:
        names += [f"low_scale_model.{n}" for n in LOW_SCALE_BUFFERS]
    state = {**dict(model.named_buffers())}
    return {n: state[n] for n in names}


def assert_bitwise_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype == torch.float32, k
        assert torch.equal(a[k], b[k]), k


# -- 1. fp16 / bf16 files -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["sd1", "sd-x4-upscaler"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_file_loads_without_config_with_the_fp32_schedule(family: str, dtype: torch.dtype,
                                                                tmp_path: Path) -> None:
    model = tiny_model(family)
    model.use_scale_factor_buffer()  # stored like every other tensor: 0.18215 / 0.08333 rounded to fp16 / bf16
    sd = model.state_dict()
    save_file(sd, str(tmp_path / "fp32.safetensors"))  # no metadata: the config is inferred from the weights
    save_file(half_copy(sd, dtype), str(tmp_path / "half.safetensors"))
    full = load_checkpoint(tmp_path / "fp32.safetensors", parameterization=model.cfg.parameterization)
    half = load_checkpoint(tmp_path / "half.safetensors", parameterization=model.cfg.parameterization)
    for name in SCHEDULE_FIELDS:
        assert getattr(half.cfg, name) == getattr(full.cfg, name) == getattr(model.cfg, name), name
    assert to_dict(half.cfg.low_scale) == to_dict(full.cfg.low_scale)
    assert_bitwise_equal(schedule_state(half), schedule_state(full))


def test_half_file_with_given_config_keeps_the_configs_exact_schedule(tmp_path: Path) -> None:
    model = tiny_model("sd1")
    sd = half_copy(model.state_dict(), torch.float16)
    save_file(sd, str(tmp_path / "half.safetensors"))
    loaded = load_checkpoint(tmp_path / "half.safetensors", model.cfg)
    assert_bitwise_equal({n: getattr(loaded, n) for n in SCHEDULE_BUFFERS},
                         {n: getattr(model, n) for n in SCHEDULE_BUFFERS})
    # a half file holding another schedule than the config's keeps its own values (in float32)
    other = {**sd, "betas": sd["betas"] * 1.5}
    save_file(other, str(tmp_path / "other.safetensors"))
    loaded = load_checkpoint(tmp_path / "other.safetensors", model.cfg)
    assert loaded.betas.dtype == torch.float32 and torch.equal(loaded.betas, other["betas"].float())


# -- 2. a stored config that is not valid -------------------------------------------------------------------------
def rewrite_config(src: Path, dst: Path, text: str) -> Path:
    with safe_open(str(src), framework="pt") as f:
        sd, meta = {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata())
    save_file(sd, str(dst), metadata=meta | {CONFIG_METADATA_KEY: text})
    return dst


def edited_config(model: LatentDiffusion, section: str | None, **changes: object) -> str:
    cfg = to_dict(model.cfg)
    (cfg[section] if section else cfg).update(changes)
    return json.dumps(cfg)


BAD_CONFIGS = {
    "not json": lambda m: "{'unet': {model_channels: 32",
    "a json list": lambda m: "[1, 2, 3]",
    "unknown field": lambda m: edited_config(m, "unet", channels=64),
    "wrong type": lambda m: edited_config(m, "unet", model_channels="32"),
    "section of wrong type": lambda m: edited_config(m, None, unet=[32]),
    "nan": lambda m: edited_config(m, None, linear_start=float("nan")),
}


@pytest.mark.parametrize("case", list(BAD_CONFIGS))
def test_stored_config_that_is_not_valid_is_one_error(case: str, tmp_path: Path) -> None:
    model = tiny_model("uncond-vq")
    good = save_checkpoint(model, tmp_path / "good.safetensors")
    bad = rewrite_config(good, tmp_path / "bad.safetensors", BAD_CONFIGS[case](model))
    for action in (lambda: load_checkpoint(bad), lambda: inspect_checkpoint(bad)):
        with pytest.raises(CheckpointError, match=r"bad\.safetensors.*ldm_config.*pass config=\.\.\. \(--config\)"):
            action()
    assert load_checkpoint(bad, model.cfg).cfg == model.cfg  # the way out the message names


def test_stored_autoencoder_config_that_is_not_json_is_one_error(tmp_path: Path) -> None:
    ae = AutoencoderKL(AutoencoderConfig(**AE))
    good = save_autoencoder(ae, tmp_path / "ae.safetensors")
    with safe_open(str(good), framework="pt") as f:
        sd, meta = {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata())
    save_file(sd, str(tmp_path / "bad.safetensors"), metadata=meta | {"ldm_autoencoder_config": "{not json"})
    with pytest.raises(CheckpointError, match=r"bad\.safetensors.*ldm_autoencoder_config.*pass config="):
        load_autoencoder(tmp_path / "bad.safetensors")
    assert load_autoencoder(tmp_path / "bad.safetensors", config=ae.cfg).cfg == ae.cfg


# -- 3. a stored config far bigger than the file ------------------------------------------------------------------
def test_huge_stored_config_is_one_error_naming_file_and_config_source(tmp_path: Path) -> None:
    model = tiny_model("uncond-vq")
    good = save_checkpoint(model, tmp_path / "good.safetensors")
    bad = rewrite_config(good, tmp_path / "huge.safetensors", edited_config(model, "unet", model_channels=10**12))
    with pytest.raises(CheckpointError, match=r"huge\.safetensors.*ldm_config metadata.*pass config=") as err:
        load_checkpoint(bad)
    assert "\n" not in str(err.value)


def test_huge_stored_autoencoder_config_is_one_error(tmp_path: Path) -> None:
    save_autoencoder(AutoencoderKL(AutoencoderConfig(**AE)), tmp_path / "ae.safetensors")
    with safe_open(str(tmp_path / "ae.safetensors"), framework="pt") as f:
        sd, meta = {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata())
    huge = json.dumps(to_dict(AutoencoderConfig(**AE | {"ch": 10**12})))
    save_file(sd, str(tmp_path / "huge.safetensors"), metadata=meta | {"ldm_autoencoder_config": huge})
    with pytest.raises(CheckpointError, match=r"huge\.safetensors.*config"):
        load_autoencoder(tmp_path / "huge.safetensors")


def test_longer_schedule_than_the_file_is_refused_before_it_is_computed(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The schedule is real memory even on the meta device: 10**7 steps are refused from the file's betas."""
    model = tiny_model("uncond-vq")
    good = save_checkpoint(model, tmp_path / "good.safetensors")
    bad = rewrite_config(good, tmp_path / "long.safetensors", edited_config(model, None, timesteps=10**7))
    make = ldm_module.make_beta_schedule

    def guarded(schedule: str, n: int, *args: object) -> torch.Tensor:
        assert n <= 100_000, f"a {n}-step schedule was computed for a file with 1000 betas"
        return make(schedule, n, *args)

    monkeypatch.setattr(ldm_module, "make_beta_schedule", guarded)
    with pytest.raises(CheckpointError, match=r"long\.safetensors.*timesteps=10000000.*1000"):
        load_checkpoint(bad)


def test_model_with_far_more_blocks_than_the_file_is_refused_while_built(tmp_path: Path) -> None:
    """A UNet of 300 res blocks per level is not built whole (on meta, but each module is real memory) for a file
    that holds a few hundred tensors."""
    model = tiny_model("uncond-vq")
    good = save_checkpoint(model, tmp_path / "good.safetensors")
    n_tensors = len(model.state_dict())
    bad = rewrite_config(good, tmp_path / "deep.safetensors", edited_config(model, "unet", num_res_blocks=300))
    registered = [0]

    def count(*_: object) -> None:
        registered[0] += 1

    hook = torch.nn.modules.module.register_module_parameter_registration_hook(count)
    try:
        with pytest.raises(CheckpointError, match=r"deep\.safetensors"):
            load_checkpoint(bad)
    finally:
        hook.remove()
    assert registered[0] <= 3 * n_tensors + 100


# -- 4. write errors ----------------------------------------------------------------------------------------------
@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0,
                    reason="root writes into read-only folders: permissions do not apply")
def test_save_into_read_only_folder_is_one_error(tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with pytest.raises(CheckpointError, match=r"cannot write .*ro/m\.safetensors: Permission denied"):
            save_checkpoint(tiny_model("uncond-vq"), folder / "m.safetensors")
        with pytest.raises(CheckpointError, match=r"cannot write .*ro/ae\.safetensors: Permission denied"):
            save_autoencoder(AutoencoderKL(AutoencoderConfig(**AE)), folder / "ae.safetensors")
        assert list(folder.iterdir()) == []
    finally:
        folder.chmod(0o755)


_FSIZE_SCRIPT = textwrap.dedent("""
    import json, resource, signal, sys
    from pathlib import Path
    from latent_diffusion.autoencoder_io import save_autoencoder
    from latent_diffusion.checkpoint import save_checkpoint
    from latent_diffusion.config import AutoencoderConfig
    from latent_diffusion.errors import CheckpointError
    from latent_diffusion.models.autoencoder import AutoencoderKL
    from latent_diffusion.tiny import tiny_model

    folder = Path(sys.argv[1])
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG, not a kill
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
    out = {}
    for name, save in (("m", lambda p: save_checkpoint(tiny_model("uncond-vq"), p)),
                       ("ae", lambda p: save_autoencoder(AutoencoderKL(AutoencoderConfig(**%r)), p))):
        try:
            save(folder / (name + ".safetensors"))
            out[name] = "written"
        except CheckpointError as e:
            out[name] = "CheckpointError: " + str(e)
        except BaseException as e:
            out[name] = type(e).__name__ + ": " + str(e)
    print(json.dumps(out))
""") % (AE,)


def test_save_past_a_file_size_limit_is_one_error_and_leaves_no_temp_file(tmp_path: Path) -> None:
    folder = tmp_path / "out"
    folder.mkdir()
    run = subprocess.run([sys.executable, "-c", _FSIZE_SCRIPT, str(folder)], capture_output=True, text=True,
                         timeout=120, env=os.environ | {"OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stderr[-2000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    for name in ("m", "ae"):
        assert out[name].startswith(f"CheckpointError: cannot write {folder / name}.safetensors: "), out[name]
        assert "\n" not in out[name] and "File too large" in out[name], out[name]
    assert list(folder.iterdir()) == []
