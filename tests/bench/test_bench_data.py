"""``ldm bench data --quick``: loader rates from a folder and from shards next to a training step's consumption."""

from __future__ import annotations

from latent_diffusion.bench import data


def test_bench_data_quick_reports_rates_and_ratios() -> None:
    out = data.run(quick=True, log=lambda _: None)
    assert {(r["source"], r["workers"]) for r in out["results"]} == {(s, w) for s in ("folder", "shards")
                                                                     for w in (0, 1, 2)}
    assert all(r["images_per_s"] > 0 and r["ratio_to_training"] > 0 for r in out["results"])
    assert out["training_images_per_s"] > 0 and "loader / training" in out["table"]
