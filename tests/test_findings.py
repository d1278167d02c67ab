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
