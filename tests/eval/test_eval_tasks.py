"""Task evaluations: the mechanics on ground truth and tiny random models, distribution metrics, bad input."""

import warnings

import pytest
import torch

from latent_diffusion.errors import LDMError
from latent_diffusion.eval import adapters as ad
from latent_diffusion.eval import tasks as tk
from latent_diffusion.eval.distribution import DistributionMetrics, precision_recall
from latent_diffusion.eval.judge import Judge
from latent_diffusion.pipelines.pipeline import Pipeline
from latent_diffusion.tiny import tiny_model

SETTINGS = ad.SampleSettings(steps=2, sampler="ddim", seed=0, batch_size=None)


@pytest.fixture(scope="module")
def judge() -> Judge:
    return Judge.load()


@pytest.fixture(scope="module")
def data() -> dict:
    return tk.heldout(12)


def test_ground_truth_scores_perfectly(judge: Judge, data: dict) -> None:
    # the "perfect generator" returns the scene itself; tolerance: >= 0.95 on 12 scenes
    by_caption = dict(zip(data["captions"], data["images"]))
    rows = tk.evaluate_txt2img(lambda p, s: torch.stack([by_caption[c] for c in p]), judge, data["captions"], [1.0])
    assert rows[0]["adherence"] >= 0.95
    assert tk.evaluate_class(lambda labels: data["images"], judge, data["labels"])["class_accuracy"] >= 0.95
    assert tk.evaluate_layout(lambda lay: data["images"], judge, data["layouts"])["mean_iou"] >= 0.95
    assert tk.evaluate_semantic(lambda m: data["images"], judge, data["segmentation"])["miou"] >= 0.95
    keep = tk.evaluate_inpaint(lambda x, m, c: x, data["images"], data["masks"], data["captions"])
    assert keep["max_change_outside"] == 0.0 and keep["psnr_inside"] > 60


def test_superres_compares_with_bicubic(data: dict) -> None:
    up = tk.evaluate_superres(lambda lo: torch.nn.functional.interpolate(lo, scale_factor=4, mode="bicubic"),
                              data["images"], data["lowres"])
    assert up["psnr_gain_db"] == pytest.approx(0.0, abs=0.05)  # bicubic vs bicubic (clamping aside)
    truth = tk.evaluate_superres(lambda lo: data["images"], data["images"], data["lowres"])
    assert truth["psnr"] > 60 and truth["psnr_gain_db"] > 10


def test_inpaint_reports_changes_outside_the_mask(data: dict) -> None:
    out = tk.evaluate_inpaint(lambda x, m, c: torch.where(m > 0.5, x, x + 0.1), data["images"][:2],
                              data["masks"][:2], data["captions"][:2])
    assert out["max_change_outside"] == pytest.approx(0.05 * 255, abs=13)


def test_bad_conditions_are_clear_errors(judge: Judge, data: dict) -> None:
    lay = data["layouts"].clone()
    lay[0, 0, 3] = 1.2  # x1 beyond the right edge
    with pytest.raises(LDMError, match="outside the image"):
        tk.evaluate_layout(lambda x: data["images"], judge, lay)
    with pytest.raises(LDMError, match=r"semantic maps must have shape \(N, 64, 64\)"):
        tk.evaluate_semantic(lambda m: data["images"], judge, data["segmentation"][:, :32, :32])
    with pytest.raises(LDMError, match="generator must return"):
        tk.evaluate_class(lambda labels: data["images"][:3], judge, data["labels"])
    with pytest.raises(LDMError, match="not a ShapesWorld caption"):
        tk.evaluate_txt2img(lambda p, s: data["images"], judge, ["a cat"], [1.0])


def test_precision_recall_extremes() -> None:
    g = torch.Generator().manual_seed(0)
    a = torch.randn(50, 4, generator=g)
    assert precision_recall(a, a.clone()) == (1.0, 1.0)
    assert precision_recall(a, a + 100.0) == (0.0, 0.0)
    with pytest.raises(LDMError, match="needs more than 3"):
        precision_recall(a[:3], a)


def test_small_sets_warn_with_the_numbers(judge: Judge, data: dict) -> None:
    m = DistributionMetrics(judge, data["images"])
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        same = m.score(data["images"])
    msgs = [str(x.message) for x in w if "samples per set" in str(x.message)]
    assert any(msg.startswith("fid: 12 samples per set") and "128" in msg for msg in msgs), msgs
    assert abs(same["fid"]) < 1e-4 and same["precision"] == 1.0  # a set against itself; tolerance 1e-4
    with pytest.raises(LDMError, match="at least 2"):
        m.score(data["images"][:1], warn=False)


def test_tiny_text_model_through_the_evaluation(judge: Judge, data: dict) -> None:
    pipe = Pipeline(tiny_model("sd1"))
    gen = ad.text_generator(pipe, SETTINGS, size=64)
    rows = tk.evaluate_txt2img(gen, judge, data["captions"][:2], [1.0, 3.0])
    assert [r["cfg_scale"] for r in rows] == [1.0, 3.0]
    assert all(0.0 <= r["adherence"] <= 1.0 for r in rows)  # a random model: low, but the pipeline runs
    assert torch.equal(gen(data["captions"][:2], 3.0)[1], gen(data["captions"][1:2] * 2, 3.0)[1])  # seed per row


def test_tiny_class_and_uncond_models(judge: Judge, data: dict) -> None:
    cls = Pipeline(tiny_model("class"))  # 10 classes
    out = tk.evaluate_class(ad.class_generator(cls, SETTINGS), judge, torch.tensor([1, 3, 1]))
    assert out["n"] == 3 and 0.0 <= out["class_accuracy"] <= 1.0
    unc = Pipeline(tiny_model("uncond-vq"))
    images = ad.uncond_generator(unc, SETTINGS)(2)
    assert images.shape[:2] == (2, 3) and images.abs().max() <= 1


def test_evaluating_the_wrong_task_is_a_clear_error() -> None:
    with pytest.raises(LDMError, match=r"cannot evaluate txt2img .* `ldm eval class`"):
        ad.check_task(Pipeline(tiny_model("class")), "txt2img")
    with pytest.raises(LDMError, match="cannot evaluate superres"):
        ad.check_task(Pipeline(tiny_model("sd1")), "superres")
    with pytest.raises(LDMError, match="cannot evaluate layout"):
        ad.check_task(Pipeline(tiny_model("sd1")), "layout")
