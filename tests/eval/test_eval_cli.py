"""`ldm eval <task>` end to end on a tiny random checkpoint: reports written, wrong task refused."""

import argparse
import json

import pytest

from latent_diffusion.checkpoint import save_checkpoint
from latent_diffusion.errors import LDMError
from latent_diffusion.eval.task_cli import add_eval_task_commands
from latent_diffusion.tiny import tiny_model


def run(argv: list[str]) -> int:
    """``ldm eval ...`` as the CLI runs it (the sub-commands this module adds)."""
    parser = argparse.ArgumentParser(prog="ldm eval")
    add_eval_task_commands(parser.add_subparsers(dest="eval_command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


@pytest.fixture(scope="module")
def sd1(tmp_path_factory) -> str:
    return str(save_checkpoint(tiny_model("sd1"), tmp_path_factory.mktemp("ck") / "tiny-sd1.safetensors"))


def test_eval_txt2img_writes_json_and_markdown(sd1: str, tmp_path, capsys) -> None:
    j, m = tmp_path / "r.json", tmp_path / "r.md"
    rc = run(["txt2img", "--ckpt", sd1, "--n", "2", "--steps", "1", "--cfg", "1", "3", "--n-real", "8",
              "--json", str(j), "--markdown", str(m), "--quiet"])
    assert rc == 0
    rows = json.loads(j.read_text())["rows"]
    assert [r["cfg_scale"] for r in rows] == [1.0, 3.0] and all("fid" in r for r in rows)
    assert m.read_text().startswith("| CFG | adherence |")
    assert "| 3 |" in capsys.readouterr().out
    with pytest.raises(LDMError, match="already exists"):  # no silent overwrite
        run(["txt2img", "--ckpt", sd1, "--n", "1", "--json", str(j)])


def test_eval_of_a_different_task_is_refused(sd1: str) -> None:
    with pytest.raises(LDMError, match="cannot evaluate class on this model"):
        run(["class", "--ckpt", sd1, "--n", "1"])


def test_ema_flag_samples_with_the_files_ema_weights(sd1: str, tmp_path) -> None:
    import torch

    from latent_diffusion.errors import CheckpointError
    from latent_diffusion.eval.task_cli import _load_pipeline

    with pytest.raises(CheckpointError, match="no model_ema"):
        run(["txt2img", "--ckpt", sd1, "--ema", "--n", "1", "--steps", "1", "--cfg", "1", "--quiet"])
    model = tiny_model("sd1")
    model.enable_ema()
    with torch.no_grad():  # an average that differs from the raw weights
        for _, buf in model.model_ema.named_buffers():
            if buf.is_floating_point() and buf.dim() > 0:
                buf.add_(0.5)
    ema = str(save_checkpoint(model, tmp_path / "with-ema.safetensors"))
    raw_w = _load_pipeline(ema, "txt2img").model.model.diffusion_model.out[2].weight
    ema_w = _load_pipeline(ema, "txt2img", use_ema=True).model.model.diffusion_model.out[2].weight
    torch.testing.assert_close(ema_w, raw_w + 0.5)
    j = tmp_path / "r.json"
    assert run(["txt2img", "--ckpt", ema, "--ema", "--n", "2", "--steps", "1", "--cfg", "1", "--n-real", "4",
                "--json", str(j), "--quiet"]) == 0
    assert json.loads(j.read_text())["ema"] is True


def test_grounded_txt2img_evaluation(sd1: str, tmp_path) -> None:
    """--grounded: the embedded planner and layout model, scored with the text-to-image rule; --planner alone and a
    text-to-image --ckpt are refused."""
    j = tmp_path / "g.json"
    assert run(["txt2img", "--grounded", "--n", "2", "--steps", "1", "--cfg", "3", "--n-real", "8",
                "--json", str(j), "--quiet"]) == 0
    out = json.loads(j.read_text())
    assert out["grounded"] is True and out["planner"] == "default"
    (row,) = out["rows"]
    assert row["cfg_scale"] == 3.0 and 0.0 <= row["adherence"] <= 1.0 and "fid" in row
    with pytest.raises(LDMError, match="add --grounded"):
        run(["txt2img", "--planner", "p.safetensors", "--n", "1"])
    with pytest.raises(LDMError, match="cannot evaluate layout on this model"):
        run(["txt2img", "--grounded", "--ckpt", sd1, "--n", "1"])
