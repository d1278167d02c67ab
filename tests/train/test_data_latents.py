"""Pre-encoded latents (ldm data encode): what is stored, training from them without running the encoder, refusal of
latents made by another first stage, and stored caption contexts of a frozen text encoder."""

from __future__ import annotations

import pytest
import torch
import yaml

from latent_diffusion.autoencoder_io import save_autoencoder
from latent_diffusion.config import AutoencoderConfig
from latent_diffusion.data.images import DataError
from latent_diffusion.data.latents import LatentSource
from latent_diffusion.models.autoencoder import AutoencoderKL
from latent_diffusion.train.ldm_config import LDMTrainConfig
from latent_diffusion.train.ldm_run import train_ldm

from ldm_tiny_config import TINY, tiny
from test_train_ldm_folder import TASKS, make_folder


def _autoencoder(path, seed: int) -> AutoencoderKL:
    torch.manual_seed(seed)
    ae = AutoencoderKL(AutoencoderConfig(**{k: tuple(v) if isinstance(v, list) else v
                                            for k, v in TINY["model"]["autoencoder"].items()})).eval()
    save_autoencoder(ae, path)
    return ae


def test_encode_stores_posteriors_and_training_reads_them(tmp_path) -> None:
    from latent_diffusion.cli import main
    from latent_diffusion.data.folder import scan_folder
    from latent_diffusion.data.sources import FolderSource
    from latent_diffusion.data.transforms import TransformConfig

    make_folder(tmp_path / "data")
    ae = _autoencoder(tmp_path / "ae.safetensors", 0)
    assert main(["data", "encode", str(tmp_path / "lat"), "--first-stage", str(tmp_path / "ae.safetensors"),
                 "--data", str(tmp_path / "data"), "--size", "32", "--labels", "folders"]) == 0
    src = LatentSource(tmp_path / "lat", ("caption", "class_label"))
    assert len(src) == 12 and src.class_names == ("circle", "square", "triangle")
    images = FolderSource(scan_folder(tmp_path / "data", labels="folders"), TransformConfig(size=32, resize=32,
                                                                                            crop="center", flip=False),
                          ("caption", "class_label"))
    item, ref = src.get(5), images.get(5, None)
    with torch.no_grad():
        post = ae.encode(ref["image"][None])
    # atol 1e-5: fp32 conv rounding differs between the batch of 12 encoded and this batch of one
    torch.testing.assert_close(item["latent_mean"], post.mean[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(item["latent_logvar"], post.logvar[0], rtol=0, atol=1e-5)
    assert item["caption"] == ref["caption"] and int(item["class_label"]) == int(ref["class_label"])

    d = tiny(task="class", model=TASKS["class"]["model"], first_stage_path=str(tmp_path / "ae.safetensors"),
             diffusion={"sample_posterior": True}, run={"out_dir": str(tmp_path / "run"), "max_steps": 2})
    (tmp_path / "class.yaml").write_text(yaml.safe_dump(d))
    assert main(["train", "ldm", "--config", str(tmp_path / "class.yaml"), "--data", str(tmp_path / "lat"),
                 "--quiet"]) == 0
    saved = LDMTrainConfig.from_yaml(tmp_path / "run" / "config.yaml")
    assert saved.data.source == "latents"

    _autoencoder(tmp_path / "other.safetensors", 1)
    d["first_stage_path"] = str(tmp_path / "other.safetensors")
    d["data"] = {"source": "latents", "root": str(tmp_path / "lat"), "size": 32}
    d["run"]["out_dir"] = str(tmp_path / "run2")
    with pytest.raises(DataError, match=r"encoded by a first stage with sha256 .*, but first_stage_path .*other"):
        train_ldm(LDMTrainConfig.from_dict(d), echo=False, progress=False)
    d["task"], d["model"] = "superres", TASKS["superres"]["model"]
    d["first_stage_path"] = str(tmp_path / "ae.safetensors")
    with pytest.raises(DataError, match=r"also needs \['lowres'\], made from the pixels"):
        train_ldm(LDMTrainConfig.from_dict(tiny(**{k: v for k, v in d.items() if k != "data"}, data=d["data"])),
                  echo=False, progress=False)
    assert main(["data", "encode", str(tmp_path / "lat"), "--first-stage", str(tmp_path / "ae.safetensors"),
                 "--data", str(tmp_path / "data"), "--size", "32"]) == 2  # an earlier encoding needs --force
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    assert main(["data", "encode", str(tmp_path / "mine"), "--first-stage", str(tmp_path / "ae.safetensors"),
                 "--data", str(tmp_path / "data"), "--size", "32", "--force"]) == 2  # never over a user's folder
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_stored_contexts_of_a_frozen_text_encoder(tmp_path) -> None:
    """A recipe with a frozen CLIP text encoder (tiny, random): its contexts are stored and used in training; a
    recipe with another text encoder is refused."""
    from latent_diffusion.train.encode import encode_dataset
    from latent_diffusion.train.ldm import LatentDiffusionModule
    from latent_diffusion.train.ldm_data import StepWindow

    make_folder(tmp_path / "data", n_per_class=2)
    _autoencoder(tmp_path / "ae.safetensors", 0)
    clip = {"kind": "clip", "width": 16, "layers": 1, "heads": 2, "max_length": 77}
    d = tiny(model={"conditioner": clip}, first_stage_path=str(tmp_path / "ae.safetensors"),
             run={"out_dir": str(tmp_path / "run"), "max_steps": 2})
    (tmp_path / "clip.yaml").write_text(yaml.safe_dump(d))
    meta = encode_dataset(tmp_path / "ae.safetensors", tmp_path / "data", tmp_path / "lat", size=32,
                          text_recipe=str(tmp_path / "clip.yaml"))
    assert meta["text_encoder"]["kind"] == "clip" and len(meta["text_encoder"]["weights_sha256"]) == 64
    d["data"] = {"source": "latents", "root": str(tmp_path / "lat"), "size": 32}
    cfg = LDMTrainConfig.from_dict(d)
    m = LatentDiffusionModule(cfg)
    m.setup("fit")
    item = StepWindow(m.source, 0, 0, 1, 2)[0]
    with torch.no_grad():  # the stored context is what the run's own (seeded, frozen) encoder gives
        ref = m.model.cond_stage_model.encode([item["caption"]])[0]
    torch.testing.assert_close(item["context"], ref.half().float(), rtol=0, atol=1e-6)  # stored as fp16
    assert train_ldm(cfg, echo=False, progress=False)["steps"] == 2
    other = tiny(first_stage_path=str(tmp_path / "ae.safetensors"), data=d["data"], model={"conditioner": clip},
                 run={"out_dir": str(tmp_path / "r3"), "seed": 1})  # the same encoder, other (seeded) weights
    with pytest.raises(Exception, match="caption contexts of another text encoder"):
        train_ldm(LDMTrainConfig.from_dict(other), echo=False, progress=False)
