"""``ldm bench --quick``: every case runs on tiny shapes and writes bench-results.json in the documented schema."""

from __future__ import annotations

import json

import pytest
import torch

from latent_diffusion.cli import main
from latent_diffusion.yaml_compat import load_yaml_config

from oracle import needs_oracle
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")

CASES = ["unet", "vae", "samplers", "train", "fastpaths", "pipeline"]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    assert main(["bench", *CASES, "--quick", "--out", str(out)]) == 0
    return out, json.loads((out / "bench-results.json").read_text())


@needs_oracle
def test_top_level_schema(report) -> None:
    out, r = report
    assert r["schema"] == "ldm-bench/1" and r["quick"] is True
    assert {"cpu", "isa", "torch", "threads"} <= set(r["machine"]) and "amx_bf16" in r["machine"]["isa"]
    assert r["gemm_peak_gflops"]["fp32"] > 0 and r["gemm_peak_gflops"]["bf16"] > 0
    assert list(r["cases"]) == CASES
    for case, section in r["cases"].items():
        assert {"results", "table", "wall_s", "plots"} <= set(section), case
        assert section["table"].startswith("|") and section["results"]
        assert all((out / png).stat().st_size > 0 for png in section["plots"])
    assert (out / "bench-results.md").read_text().startswith("# ldm bench")


@needs_oracle
def test_ours_and_diffusers_side_by_side(report) -> None:
    cases = report[1]["cases"]
    for r in cases["unet"]["results"]:
        assert r["ours_s"] > 0 and r["diffusers_s"] > 0 and r["ratio"] == pytest.approx(r["ours_s"] / r["diffusers_s"])
        assert 0 < r["peak_fraction"]["ours"] and r["gflop_per_call"] > 0
    assert cases["unet"]["results"][0]["max_abs_err"] < 1e-4  # fp32: same weights, same numbers
    for r in cases["vae"]["results"]:
        assert r["ours_s"] > 0 and r["diffusers_s"] > 0
        if r["precision"] == "fp32" and not r["tiled"]:
            assert r["max_abs_vs_diffusers"] < 1e-4
    assert [r["tiled"] for r in cases["vae"]["large"]] == [False, True]
    for r in cases["samplers"]["results"]:
        assert r["ours_err"] == pytest.approx(r["diffusers_err"], rel=1e-2, abs=1e-4)  # the same discretisations
    for r in cases["train"]["results"]:
        assert r["first_loss"]["ours"] == pytest.approx(r["first_loss"]["diffusers"], rel=1e-3)
    fast = {r["case"]: r for r in cases["fastpaths"]["results"]}
    assert fast["fp32"]["rel_diff_vs_fp32"] == 0.0 and fast["fp32 + deepcache 3"]["rel_diff_vs_fp32"] > 0


def test_bf16_rows_follow_the_hardware_unless_asked(monkeypatch) -> None:
    """Auto: bf16 rows where the CPU has native bf16, and in --quick; --precision bf16 / fp32 decide outright."""
    from latent_diffusion.accel import cpu
    from latent_diffusion.bench import common, unet

    monkeypatch.setattr(cpu, "cpu_flags", lambda: ("an AVX2 CPU", {"avx2", "fma"}))
    assert common.bench_precisions(None) == ("fp32",) and common.bench_precisions(None, quick=True) == ("fp32", "bf16")
    assert common.bench_precisions(True) == ("fp32", "bf16") and common.bench_precisions(False, quick=True) == ("fp32",)
    monkeypatch.setattr(cpu, "cpu_flags", lambda: ("a Zen4", {"avx2", "avx512f", "avx512_bf16"}))
    assert common.bench_precisions(None) == ("fp32", "bf16")
    assert [m.name for m in unet.select_modes(precisions=("fp32",))] == ["fp32"]
    assert [m.name for m in unet.select_modes(precisions=("fp32",), only=["bf16"])] == ["bf16"]  # named: runs


@needs_oracle
def test_no_bf16_leaves_out_the_bf16_rows_and_peak(tmp_path) -> None:
    assert main(["bench", "unet", "train", "--quick", "--precision", "fp32", "--no-plots", "--out", str(tmp_path)]) == 0
    r = json.loads((tmp_path / "bench-results.json").read_text())
    assert r["precisions"] == ["fp32"] and "bf16" not in r["gemm_peak_gflops"] and r["gemm_peak_gflops"]["fp32"] > 0
    assert [row["mode"] for row in r["cases"]["unet"]["results"]] == ["fp32"]
    assert [row["precision"] for row in r["cases"]["train"]["results"]] == ["fp32"]


def test_emulated_bf16_peak_is_timed_on_a_small_matmul(monkeypatch) -> None:
    """Without native bf16 the 2048³ bf16 matmul is ~40 s a call: the peak is taken on ≤ 512³ instead."""
    from latent_diffusion.bench import common

    monkeypatch.setattr(common, "native_bf16", lambda device="cpu": False)
    sizes = []
    real = torch.randn
    monkeypatch.setattr(torch, "randn", lambda *a, **k: sizes.append((a, k.get("dtype"))) or real(*a, **k))
    peak = common.gemm_peak(1024, repeats=5)
    assert peak["bf16"] > 0 and ((512, 512), torch.bfloat16) in [(a, d) for a, d in sizes]
    assert ((1024, 1024), torch.float32) in [(a, d) for a, d in sizes]
    assert common.peak_rates({"fp32": 150.2, "bf16": 0.4321}) == "fp32 150, bf16 0.43"


@needs_oracle
def test_vae_latent_size_option(tmp_path) -> None:
    assert main(["bench", "vae", "--quick", "--vae-latent", "8", "--no-plots", "--out", str(tmp_path)]) == 0
    section = json.loads((tmp_path / "bench-results.json").read_text())["cases"]["vae"]
    assert section["setup"]["latent"][-1] == 8 and section["results"][0]["case"].startswith("16²")  # tiny VAE: f = 2
    assert main(["bench", "vae", "--quick", "--vae-latent", "3", "--out", str(tmp_path)]) == 2


def test_unknown_case_is_a_clear_error(tmp_path, capsys) -> None:
    assert main(["bench", "nope", "--quick", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "'nope'" in err and "unet" in err


def test_sd15_unet_shape_is_the_yaml_one() -> None:
    from pathlib import Path

    from latent_diffusion.bench.unet import SD15_UNET

    assert load_yaml_config(Path(__file__).parents[1] / "fixtures" / "v1-inference.yaml").unet == SD15_UNET


def test_device_option_errors_are_clear(tmp_path, capsys, monkeypatch) -> None:
    """--device: a bad name, a CUDA device this machine lacks, and a CPU-only case on a GPU are clear errors."""
    import torch

    assert main(["bench", "unet", "--quick", "--device", "tpu", "--out", str(tmp_path)]) == 2
    assert "cpu or cuda" in capsys.readouterr().err
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["bench", "unet", "--quick", "--device", "cuda", "--out", str(tmp_path)]) == 2
    assert "sees no CUDA GPU" in capsys.readouterr().err
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert main(["bench", "unet", "vae", "--quick", "--device", "cuda", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "vae" in err and "CPU only" in err and "unet" in err
    assert not (tmp_path / "bench-results.json").exists()


def test_unet_modes_and_table_with_gpu_memory() -> None:
    """The CUDA modes (fp32, fp16, bf16 autocast) and the peak-memory column the table gets from a GPU run."""
    from latent_diffusion.bench import unet

    assert [(m.name, m.precision) for m in unet.CUDA_MODES] == [("fp32", "fp32"), ("fp16", "fp16"), ("bf16", "bf16")]
    assert all(m.compiled for m in unet.COMPILED_MODES)
    row = {"case": "64x64 fp16", "ours_s": 0.05, "diffusers_s": 0.06, "ratio": 0.05 / 0.06, "gflop_per_call": 1607,
           "gflops": {"ours": 3.2e4, "diffusers": 2.7e4}, "peak_fraction": {"ours": 0.04, "diffusers": 0.03},
           "max_abs_err": 1e-3, "peak_memory_gib": {"ours": 0.81, "diffusers": 0.93}}
    text = unet.table([row])
    assert "peak GiB ours / diffusers" in text.splitlines()[0] and "0.81 / 0.93" in text
    assert "peak GiB" not in unet.table([{k: v for k, v in row.items() if k != "peak_memory_gib"}])


@needs_oracle
def test_unet_case_runs_the_gpu_modes_on_the_cpu(monkeypatch) -> None:
    """The GPU mode list (fp16 included) through the whole unet case, on the CPU and the tiny UNet: what a CUDA run
    does apart from synchronising and reading GPU memory."""
    from latent_diffusion.bench import common, unet

    monkeypatch.setattr(common, "RERUN_DISTURBED", False)  # a loaded test host would stall on reruns
    monkeypatch.setattr(unet, "MODES", unet.CUDA_MODES)
    section = unet.run(quick=True, peak={"fp32": 1.0, "bf16": 1.0, "fp16": 1.0}, log=lambda _: None)
    results = {r["mode"]: r for r in section["results"]}
    assert list(results) == ["fp32", "fp16", "bf16"]
    assert results["fp32"]["max_abs_err"] < 1e-4 and results["fp16"]["max_abs_err"] < 0.05
    assert all(r["device"] == "cpu" and "peak_memory_gib" not in r for r in results.values())


def test_cached_casts_mode_calls_without_gradients_and_with_the_cast_cache() -> None:
    """The "bf16 cached casts" mode stands for a sampling loop: its calls run under no_grad (``inference_mode(False)``
    would switch gradients back on, so autograd graphs were built and our in-place and cached paths were skipped),
    bf16 autocast, and our lowered convs' cast cache; the plain bf16 mode runs each call under inference_mode."""
    import torch

    from latent_diffusion.accel import gemm_conv as conv
    from latent_diffusion.bench import unet

    def state(mode: unet.Mode) -> tuple:
        with mode.outer(), mode.per_call():
            return (torch.is_grad_enabled(), torch.is_inference_mode_enabled(), torch.is_autocast_enabled("cpu"),
                    getattr(conv._local, "casts", None) is not None)

    cached = next(m for m in unet.EXTRA_MODES if m.cached_casts)
    assert state(cached) == (False, False, True, True)
    assert state(unet.Mode("bf16", amp="bf16")) == (False, True, True, False)
    assert getattr(conv._local, "casts", None) is None  # dropped after the block
    model = unet.seeded_unet(unet.TINY_UNET)
    x, t, ctx = unet.inputs(unet.TINY_UNET, 8)
    with cached.outer(), cached.per_call():
        out = model(x, t, context=ctx)
        assert conv._local.casts  # our lowered convs filled the cache (the tiny UNet lowers its 8² and 4² convs)
    assert not out.requires_grad


@needs_oracle
def test_unet_mode_filter(monkeypatch, capsys) -> None:
    """``only`` runs the named modes and names the accepted ones when a name is wrong, before any model is built;
    the bench/unet.py wrapper checks --modes and --sizes before it times anything."""
    import importlib.util
    from pathlib import Path

    from latent_diffusion.bench import common, unet
    from latent_diffusion.errors import ConfigError

    monkeypatch.setattr(common, "RERUN_DISTURBED", False)  # a loaded test host would stall on reruns
    section = unet.run(quick=True, peak={"fp32": 1.0, "bf16": 1.0}, extras=True, only=["bf16 cached casts"],
                       log=lambda _: None)
    assert [r["mode"] for r in section["results"]] == ["bf16 cached casts"]
    assert section["results"][0]["max_abs_err"] < 0.05

    def no_models(*_a, **_k):
        raise AssertionError("a model was built before the mode names were checked")

    monkeypatch.setattr(unet, "seeded_unet", no_models)
    with pytest.raises(ConfigError, match="'bf16 cached casts'"):
        unet.run(quick=True, peak={}, only=["bf16 cached casts"], log=lambda _: None)  # an extra mode, no extras

    spec = importlib.util.spec_from_file_location("bench_unet_script", Path(__file__).parents[2] / "bench" / "unet.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    monkeypatch.setattr(common, "gemm_peak", no_models)
    for argv, message in [(["--modes", "bf16 cached casts"], "need --extras"), (["--modes", "bf17"], "'bf17'"),
                          (["--sizes", "64,x"], "comma-separated integers"), (["--sizes", "20"], "multiple of 8")]:
        with pytest.raises(SystemExit):
            script.main(argv)
        assert message in capsys.readouterr().err


@needs_oracle
def test_stored_weights_mode_times_ours_as_a_bf16_pipeline_holds_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """"bf16 stored weights" runs a copy of our UNet with bf16 GEMM weights: the same output as bf16 autocast over
    the fp32 weights (so the same error against diffusers, to the bit), the shared model left in fp32."""
    from latent_diffusion.bench import common, unet
    from latent_diffusion.accel.gemm_storage import gemm_parameters

    monkeypatch.setattr(common, "RERUN_DISTURBED", False)
    stored = []
    real = unet.store_gemm_weights
    monkeypatch.setattr(unet, "store_gemm_weights", lambda m, d: stored.append(m) or real(m, d))
    built = []
    real_seeded = unet.seeded_unet
    monkeypatch.setattr(unet, "seeded_unet", lambda *a, **k: built.append(real_seeded(*a, **k)) or built[-1])
    section = unet.run(quick=True, peak={"fp32": 1.0, "bf16": 1.0}, only=["bf16", "bf16 stored weights"],
                       log=lambda _: None)
    r = {x["mode"]: x for x in section["results"]}
    assert list(r) == ["bf16", "bf16 stored weights"]
    assert r["bf16 stored weights"]["max_abs_err"] == r["bf16"]["max_abs_err"] < 0.05
    (copy,), (shared,) = stored, built
    assert copy is not shared
    assert {p.dtype for p in gemm_parameters(copy).values()} == {torch.bfloat16}
    assert {p.dtype for p in gemm_parameters(shared).values()} == {torch.float32}
