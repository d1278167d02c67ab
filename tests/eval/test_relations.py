"""eval/relations.py: the relation-flip and layout-leak probes, on the embedded text-to-image model (few steps)."""

from __future__ import annotations

import json

import pytest

from latent_diffusion.default_model import task_model_path
from latent_diffusion.errors import LDMError
from latent_diffusion.eval.findings import main
from latent_diffusion.eval.relations import encoder_probe, flip_relation, relation_scenes, swap_first_colour


def test_flip_relation_reverses_only_the_relation() -> None:
    assert flip_relation("a red circle above a blue square") == "a red circle below a blue square"
    assert flip_relation("a red circle left of a blue square and a green star") == \
        "a red circle right of a blue square and a green star"
    assert flip_relation("an orange cross right of a pink star") == "an orange cross left of a pink star"
    with pytest.raises(LDMError, match="no relation to flip"):
        flip_relation("a red circle")


def test_swap_first_colour_changes_one_word() -> None:
    assert swap_first_colour("a red circle above a blue square") == "a green circle above a blue square"
    assert swap_first_colour("a purple star left of a red cross") == "an orange star left of a red cross"
    assert swap_first_colour("a cyan star left of a pink cross") == "a cyan star left of a red cross"  # 2-token word
    with pytest.raises(LDMError, match="no colour word"):
        swap_first_colour("a circle")


def test_encoder_probe_sees_the_colour_word() -> None:
    """The embedded model draws the named colours: its encoder must change the context when the colour changes."""
    from latent_diffusion.pipelines.pipeline import Pipeline

    model = Pipeline.from_checkpoint(task_model_path("txt2img")).model
    row = encoder_probe(model, relation_scenes(4)["captions"])
    assert -1.0 <= row["encoder_cos_colour"] < 0.95 and -1.0 <= row["encoder_cos_relation"] <= 1.0 + 1e-6


def test_relation_scenes_all_name_a_relation() -> None:
    data = relation_scenes(5)
    assert len(data["captions"]) == 5 and data["images"].shape == (5, 3, 64, 64)
    assert all(flip_relation(c) != c for c in data["captions"])


def test_relations_finding_writes_json_and_png(tmp_path) -> None:
    model = str(task_model_path("txt2img"))
    assert main(["relations", "--model", f"default={model}", "--n", "2", "--steps", "2", "--out", str(tmp_path),
                 "--threads", "1"]) == 0
    row = json.loads((tmp_path / "relations.json").read_text())["rows"][0]
    assert row["model"] == "default" and row["ema"] is False and row["n"] == 2
    assert -1.0 <= row["encoder_cos_relation"] <= 1.0 + 1e-6
    for key in ("relation_right", "relation_right_flipped", "relation_right_both"):
        assert 0.0 <= row[key] <= 1.0
    assert row["relation_right_both"] <= min(row["relation_right"], row["relation_right_flipped"])
    assert row["pair_change_levels"] >= 0 and row["leak_found_own"] <= 2
    assert (tmp_path / "relations.png").stat().st_size > 0


def test_relations_refuses_a_model_without_text(tmp_path) -> None:
    with pytest.raises(LDMError, match="need a text-to-image model"):
        main(["relations", "--model", f"c={task_model_path('class')}", "--n", "2", "--steps", "1",
              "--out", str(tmp_path)])
