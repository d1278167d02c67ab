"""``ldm eval mnist`` on a tiny random class model: the judge reads its samples, one row per scale; models without
the digit classes are refused. The embedded model's own numbers are in docs/results.md (and checked by
test_embedded_mnist_model when the asset is present)."""

from __future__ import annotations

import dataclasses

import pytest

from latent_diffusion.errors import LDMError
from latent_diffusion.eval.mnist_eval import digit_labels, evaluate_digits, markdown
from latent_diffusion.pipelines.pipeline import Pipeline
from latent_diffusion.tiny import tiny_model


def _digit_pipe(names):
    model = tiny_model("class")
    model.cfg = dataclasses.replace(model.cfg, class_names=tuple(names))
    return Pipeline(model)


def test_eval_structure_on_a_random_model() -> None:
    pipe = _digit_pipe([str(d) for d in range(10)])
    res = evaluate_digits(pipe, scales=(1.0,), n=2, steps=2)
    assert res["judge_test_accuracy"] > 0.95 and len(res["scales"]) == 1
    row = res["scales"][0]
    assert 0.0 <= row["accuracy"] <= 1.0 and len(row["per_digit"]) == 10 and row["fid"] >= 0
    assert "| 1 |" in markdown(res)


def test_digit_labels_follow_the_class_names() -> None:
    assert digit_labels(_digit_pipe(["1", "0", "2", "3", "4", "5", "6", "7", "8", "9"]))[:2] == [1, 0]
    with pytest.raises(LDMError, match=r"needs the ten classes '0' ... '9'"):
        digit_labels(_digit_pipe(["cat", "dog"]))
