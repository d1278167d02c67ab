"""``inspect_file`` / ``ldm inspect``: every file kind the project writes or reads is recognised and described, the
bundled assets included; anything else is one clear error. Tiny files written by the package's own writers."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from PIL import Image

from latent_diffusion.autoencoder_io import save_autoencoder
from latent_diffusion.checkpoint import inspect_checkpoint, save_checkpoint
from latent_diffusion.cli import main
from latent_diffusion.config import AutoencoderConfig, to_dict
from latent_diffusion.errors import CheckpointError, ConfigError, LDMError, UnsafeCheckpointError
from latent_diffusion.file_probe import FileKind, field_rows
from latent_diffusion.inspect_file import KINDS, format_report, inspect_file
from latent_diffusion.models.autoencoder import AutoencoderKL
from latent_diffusion.pipelines.metadata import format_parameters, save_png
from latent_diffusion.safe_load import save_safetensors_atomic
from latent_diffusion.tiny import tiny_model
from latent_diffusion.train.autoencoder_config import AutoencoderTrainConfig, RunConfig
from latent_diffusion.train.ldm_config import LDMOptimConfig, LDMRunConfig, LDMTrainConfig

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / "src" / "latent_diffusion" / "assets"
# every bundled file but the folder's README; the kind each name prefix is (the rest are LDMs)
BUNDLED = sorted(p for p in ASSETS.iterdir() if p.is_file() and p.suffix != ".md")
PREFIX_KIND = {"kl-": "autoencoder", "vq-": "autoencoder", "planner-": "planner", "judge-": "judge",
               "bpe_": "tokenizer"}
AE = dict(ch=32, ch_mult=(1, 2), num_res_blocks=1, z_channels=3, embed_dim=3, resolution=32)


@pytest.fixture(scope="module")
def tiny_ldm() -> torch.nn.Module:
    return tiny_model("class")


@pytest.fixture(scope="module")
def ldm_file(tmp_path_factory: pytest.TempPathFactory, tiny_ldm: torch.nn.Module) -> Path:
    return save_checkpoint(tiny_ldm, tmp_path_factory.mktemp("ldm") / "class.safetensors")


@pytest.mark.parametrize("path", BUNDLED, ids=lambda p: p.name)
def test_every_bundled_asset_is_recognised(path: Path) -> None:
    info = inspect_file(path)
    want = next((kind for prefix, kind in PREFIX_KIND.items() if path.name.startswith(prefix)), "ldm")
    assert info["kind"] == want and info["what"]
    report = format_report(info).splitlines()
    assert report[0] == str(path) and report[1].split() == ["kind:", want] and report[2].startswith("  what:")
    json.dumps(info)  # --json prints it


def test_bundled_model_files_say_what_they_are() -> None:
    planner = inspect_file(ASSETS / "planner-shapes.safetensors")
    assert planner["what"].startswith("a layout planner: caption -> boxes") and planner["parameters"] > 0
    vq = inspect_file(ASSETS / "vq-f4-shapes.safetensors")
    assert (vq["first_stage"], vq["downsample_factor"], vq["latent_channels"]) == ("vq", 4, 3) and vq["codebook_size"]
    kl = inspect_file(ASSETS / "kl-f8-shapes.safetensors")
    assert (kl["first_stage"], kl["downsample_factor"], kl["codebook_size"]) == ("kl", 8, None) and kl["scale_factor"]
    digits = inspect_file(ASSETS / "judge-mnist.safetensors")
    assert digits["judge"] == "mnist-digits" and 0.9 < digits["test_accuracy"] <= 1
    shapes = inspect_file(ASSETS / "judge-shapes.safetensors")
    assert shapes["judge"] == "shapes" and shapes["parameters"] == 191_183  # its training summary's count


def test_ldm_keeps_everything_inspect_checkpoint_reports(ldm_file: Path, tiny_ldm: torch.nn.Module,
                                                         capsys: pytest.CaptureFixture) -> None:
    info = inspect_file(ldm_file)
    assert info["kind"] == "ldm" and info.items() >= inspect_checkpoint(ldm_file).items()
    assert main(["inspect", str(ldm_file)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == str(ldm_file) and lines[1].split() == ["kind:", "ldm"]
    for row in ("family:", "parameterization:", "scale factor:", "unet params:", "dtypes:", "EMA weights:",
                "tensors:", "config:"):
        assert any(line.strip().startswith(row) for line in lines), row
    assert inspect_file(ldm_file, config=to_dict(tiny_ldm.cfg))["config_source"] == "given"


def test_lightning_training_checkpoints(tmp_path: Path) -> None:
    """Stage 2 and stage 1 laid out as their LightningModules save them (``model.*`` keys, ``batches_seen``, the
    recipe in an extra entry; a real run takes seconds, most of them importing Lightning), another trainer's, and an
    original CompVis .ckpt (a Lightning file holding an LDM: described as the model)."""
    ldm = tiny_model("uncond-vq")
    sd = {"model." + k: v for k, v in ldm.state_dict().items()} | {"batches_seen": torch.tensor(40)}
    recipe = LDMTrainConfig(task="unconditional", model=ldm.cfg, optim=LDMOptimConfig(accumulate=2),
                            run=LDMRunConfig(max_steps=100)).to_dict()
    torch.save({"state_dict": sd, "global_step": 20, "epoch": 3, "ldm_train_config": recipe,
                "optimizer_states": [{"state": {0: {"exp_avg": torch.zeros(2)}}}]}, tmp_path / "ldm.ckpt")
    info = inspect_file(tmp_path / "ldm.ckpt")
    assert (info["kind"], info["stage"], info["task"], info["step"], info["epoch"]) == (
        "training-checkpoint", "ldm", "unconditional", 20, 3)
    assert info["what"].endswith("step 20 of 100, epoch 3") and info["parameters"]["unet"] > 0

    ae = AutoencoderKL(AutoencoderConfig(**AE))
    ae_recipe = AutoencoderTrainConfig(model=ae.cfg, run=RunConfig(max_steps=60_000)).to_dict()
    torch.save({"state_dict": {"model." + k: v for k, v in ae.state_dict().items()}, "global_step": 7, "epoch": 0,
                "autoencoder_train_config": ae_recipe}, tmp_path / "ae.ckpt")
    info = inspect_file(tmp_path / "ae.ckpt")
    assert (info["stage"], info["downsample_factor"], info["step"]) == ("autoencoder", 2, 7)
    assert "stage-1 (autoencoder) training checkpoint: KL-f2, step 7 of 60,000" in info["what"]

    torch.save({"state_dict": {"net.weight": torch.zeros(3)}, "global_step": 5, "epoch": 1}, tmp_path / "other.ckpt")
    assert inspect_file(tmp_path / "other.ckpt")["stage"] is None

    torch.save({"state_dict": ldm.state_dict(), "global_step": 470_000}, tmp_path / "compvis.ckpt")
    info = inspect_file(tmp_path / "compvis.ckpt")
    assert info["kind"] == "ldm" and info["trained_steps"] == 470_000


def test_autoencoder_written_by_save_autoencoder(tmp_path: Path) -> None:
    path = save_autoencoder(AutoencoderKL(AutoencoderConfig(**AE)), tmp_path / "ae.safetensors", scale_factor=0.5)
    info = inspect_file(path)
    assert (info["kind"], info["downsample_factor"], info["latent_channels"], info["scale_factor"]) == (
        "autoencoder", 2, 3, 0.5)


def test_png_with_and_without_parameters(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    text = format_parameters("a red circle", "blurry", {"Steps": 20, "Sampler": "ddim", "Seed": 42})
    with_params = save_png(Image.new("RGB", (32, 32)), tmp_path / "00000-42.png", text)
    info = inspect_file(with_params)
    assert (info["kind"], info["prompt"], info["negative_prompt"], info["settings"]["Seed"]) == (
        "png", "a red circle", "blurry", "42")
    assert main(["inspect", str(with_params)]) == 0
    out = capsys.readouterr().out
    assert "prompt:             a red circle" in out and "Steps:              20" in out

    Image.new("RGB", (64, 32)).save(tmp_path / "plain.png")
    info = inspect_file(tmp_path / "plain.png")
    assert info["parameters"] is None and "64x32" in info["what"] and "no generation parameters" in info["what"]


def test_latents_and_shards_written_by_the_data_commands(tmp_path: Path) -> None:
    from latent_diffusion.data.folder import scan_folder
    from latent_diffusion.data.shards import write_shards
    from latent_diffusion.train.encode import encode_dataset

    images = tmp_path / "images"
    images.mkdir()
    for i in range(2):
        Image.new("RGB", (32, 32), (100 * i, 0, 0)).save(images / f"{i}.png")
        (images / f"{i}.txt").write_text(f"a red circle {i}")
    encode_dataset(ASSETS / "kl-f4-mnist.safetensors", images, tmp_path / "latents", size=32)
    for path in (tmp_path / "latents", tmp_path / "latents" / "index.json"):
        info = inspect_file(path)
        assert (info["kind"], info["items"], info["latent_shape"], info["captions"]) == ("latents", 2, [4, 8, 8], True)
    info = inspect_file(tmp_path / "latents" / "latents-000000.safetensors")
    assert (info["kind"], info["items"], info["captions"]) == ("latents-file", 2, 2)
    cache = save_safetensors_atomic({"latents": torch.zeros(5, 4, 8, 8)}, tmp_path / "latents-0123.safetensors")
    assert (inspect_file(cache)["kind"], inspect_file(cache)["items"]) == ("latent-cache", 5)

    write_shards(scan_folder(images, captions="sidecar"), tmp_path / "shards")
    assert inspect_file(tmp_path / "shards")["items"] == 2
    shard = inspect_file(tmp_path / "shards" / "shard-000000.tar")
    assert (shard["kind"], shard["items"], shard["extensions"]) == ("shard", 2, ["json", "png", "txt"])


@pytest.mark.parametrize(("name", "kind"), [("configs/ldm/class-shapes.yaml", "ldm training recipe"),
                                            ("configs/autoencoder/kl-f4-shapes.yaml", "autoencoder training recipe"),
                                            ("tests/fixtures/v1-inference.yaml", "original inference YAML")])
def test_yaml_configs(name: str, kind: str) -> None:
    info = inspect_file(ROOT / name)
    assert (info["kind"], info["config"]) == ("config", kind)


@pytest.mark.parametrize("name", ["noise.bin", "noise.dat", "noise.safetensors"])
def test_random_bytes_are_one_clear_error(tmp_path: Path, name: str, capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / name
    path.write_bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0),
                                   dtype=torch.uint8).numpy().tobytes())
    with pytest.raises(LDMError, match=r"is not a file `ldm inspect` describes .*; accepted: LDM checkpoints") as e:
        inspect_file(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)
    assert main(["inspect", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ldm: error: ") and err.count("\n") == 1


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204 - what a malicious checkpoint pickles
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_that_would_run_code_is_refused_before_it_runs(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "global_step": 1, "hook": _Payload(marker)}, tmp_path / "x.ckpt")
    with pytest.raises(UnsafeCheckpointError):
        inspect_file(tmp_path / "x.ckpt")
    assert not marker.exists()


def test_missing_file_folder_and_config_for_another_kind(tmp_path: Path, ldm_file: Path) -> None:
    with pytest.raises(CheckpointError, match="file not found"):
        inspect_file(tmp_path / "missing.safetensors")
    with pytest.raises(LDMError, match="a folder with no index.json"):
        inspect_file(tmp_path)
    with pytest.raises(ConfigError, match="model config of an LDM checkpoint; .* is a layout planner"):
        inspect_file(ASSETS / "planner-shapes.safetensors", config=ROOT / "tests" / "fixtures" / "v1-inference.yaml")


def test_cli_json(capsys: pytest.CaptureFixture) -> None:
    assert main(["inspect", "--json", str(ASSETS / "planner-shapes.safetensors")]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["kind"] == "planner" and info["max_objects"] == 3


def test_a_new_kind_is_one_more_entry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A LoRA-like file: refused today, described once its recogniser is in KINDS."""
    path = save_safetensors_atomic({"lora_unet_down.lora_up.weight": torch.zeros(4, 2)}, tmp_path / "x.safetensors")
    with pytest.raises(LDMError, match="in no layout this project writes or reads"):
        inspect_file(path)

    def lora(p):  # noqa: ANN001, ANN202
        read = p.tensors()
        if read is None or not any(k.startswith("lora_") for k in read[0]):
            return None
        return {"path": p.source, "kind": "lora", "what": "a LoRA", "tensors": len(read[0])}

    monkeypatch.setattr("latent_diffusion.inspect_file.KINDS", [*KINDS, FileKind("lora", "LoRAs", lora,
                                                                                  field_rows(("tensors", "tensors")))])
    assert format_report(inspect_file(path)).splitlines()[1:] == [
        "  kind:               lora", "  what:               a LoRA", "  tensors:            1"]


def test_cli_takes_the_file_as_path_or_ckpt(capsys: pytest.CaptureFixture) -> None:
    planner = str(ASSETS / "planner-shapes.safetensors")
    assert main(["inspect", planner]) == 0
    by_path = capsys.readouterr().out
    assert main(["inspect", "--ckpt", planner]) == 0
    assert capsys.readouterr().out == by_path
    assert main(["inspect"]) == 2 and "PATH or --ckpt PATH" in capsys.readouterr().err
    assert main(["inspect", planner, "--ckpt", planner]) == 2


def test_fine_tuning_recipes_are_described_without_their_init_file() -> None:
    for recipe in sorted((ROOT / "configs" / "finetune").glob("*.yaml")):
        info = inspect_file(recipe)
        assert info["kind"] == "config" and info["config"] == "ldm fine-tuning recipe", recipe
        assert "--init-from" in info["what"]
