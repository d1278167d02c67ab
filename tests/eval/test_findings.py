"""eval/findings.py: the pieces that do not need trained models (throughput, tables, argument errors)."""

from __future__ import annotations

import pytest

from latent_diffusion.errors import LDMError
from latent_diffusion.eval.findings import _markdown, main, throughput
from latent_diffusion.pipelines import Pipeline
from latent_diffusion.tiny import tiny_model


def test_throughput_counts_images_per_second() -> None:
    pipe = Pipeline(tiny_model("uncond-vq"), precision="fp32")
    ips = throughput(pipe, steps=2, batch=2, repeats=1)
    assert 0 < ips < 1e5


def test_markdown_table_has_a_row_per_result() -> None:
    table = _markdown([{"model": "LDM-4", "acc": 0.5}, {"model": "LDM-8", "acc": 0.25}])
    assert table.splitlines()[0] == "| model | acc |" and "| LDM-8 | 0.25 |" in table


def test_run_arguments_need_name_and_folder(tmp_path) -> None:
    with pytest.raises(LDMError, match="NAME=RUN_DIR"):
        main(["first-stage", "--run", "nofolder", "--out", str(tmp_path)])


def test_grounded_ceiling_judges_layout_samples_against_captions(tmp_path) -> None:
    """The real scenes satisfy their own captions (the judge's ceiling); the layout model's rows are rates."""
    import json

    assert main(["grounded", "--n", "3", "--cfg", "3", "--steps", "2", "--out", str(tmp_path), "--threads", "1"]) == 0
    rows = json.loads((tmp_path / "grounded.json").read_text())["rows"]
    assert [r["cfg_scale"] for r in rows] == [None, 3.0] and rows[0]["adherence"] == 1.0
    assert all(0.0 <= r[k] <= 1.0 for r in rows for k in ("adherence", "objects", "count"))
    assert (tmp_path / "grounded.png").stat().st_size > 0


def test_rescaling_judges_every_kept_model_of_a_run(tmp_path) -> None:
    """A tiny class run keeping its model at steps 2 and 4: one row per kept model, with the logged loss."""
    import json

    from ldm_tiny_config import tiny

    from latent_diffusion.train.ldm_config import LDMTrainConfig
    from latent_diffusion.train.ldm_run import train_ldm

    run = tmp_path / "run"
    cfg = tiny(task="class", data={"size": 64}, run={"out_dir": str(run), "keep_epoch_models": True},
               model={"autoencoder": {"resolution": 64},
                      "conditioner": {"kind": "class", "n_classes": 41, "embed_dim": 16, "null_class": 40}})
    train_ldm(LDMTrainConfig.from_dict(cfg), progress=False, echo=False)
    with pytest.raises(LDMError, match=r"no kept model at a multiple of 3 steps \(kept: \[2, 4\]\)"):
        main(["rescaling", "--run", f"tiny={run}", "--every", "3", "--out", str(tmp_path)])
    assert main(["rescaling", "--run", f"tiny={run}", "--every", "2", "--n", "2", "--steps", "2",
                 "--out", str(tmp_path / "out"), "--threads", "1"]) == 0
    rows = json.loads((tmp_path / "out" / "rescaling.json").read_text())["rows"]
    assert [r["step"] for r in rows] == [2, 4] and all(r["loss"] > 0 for r in rows)
    assert all(0.0 <= r[k] <= 1.0 for r in rows for k in ("class_accuracy_cfg1", "class_accuracy_cfg3"))
    assert (tmp_path / "out" / "rescaling.png").stat().st_size > 0
