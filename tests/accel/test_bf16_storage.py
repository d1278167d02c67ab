"""bf16 storage of the UNet's GEMM weights (accel/gemm_storage.py; load_checkpoint's unet_dtypes;
Pipeline.from_checkpoint with precision bf16): bit-identical to bf16 autocast over fp32 weights, half the UNet's
GEMM-weight memory, converted as a .safetensors file is read, only for weights the pipeline loaded itself, and read
back from the file — never over weights changed in memory — on a switch to fp32."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch

from latent_diffusion import checkpoint
from latent_diffusion.accel import Precision, accelerate
from latent_diffusion.accel import precision as precision_rule
from latent_diffusion.accel.gemm_storage import gemm_dtypes, gemm_parameters, store_gemm_weights
from latent_diffusion.checkpoint import load_checkpoint, save_checkpoint
from latent_diffusion.errors import ConfigError, LDMError
from latent_diffusion.pipelines import Pipeline
from latent_diffusion.safe_load import read_state_dict
from latent_diffusion.tiny import tiny_model

KW = dict(steps=3, height=32, width=32, output="latent", seed=5, sampler="dpmpp_2m")
BF16_GEMMS = functools.partial(gemm_dtypes, dtype=torch.bfloat16)  # load_checkpoint's unet_dtypes for bf16 storage


def unet_inputs(model, size: int, seed: int = 0) -> dict:
    cfg = model.cfg.unet
    g = torch.Generator().manual_seed(seed)
    kw = {"x": torch.randn(2, cfg.in_channels, size, size, generator=g), "timesteps": torch.tensor([999.0, 321.0])}
    if cfg.context_dim is not None:
        kw["context"] = torch.randn(2, 7, cfg.context_dim, generator=g)
    if cfg.num_classes is not None:
        kw["y"] = torch.tensor([1, 2])
    return kw


@pytest.mark.parametrize("family,size", [("sd1", 16), ("sd2", 24), ("class", 16)])
def test_stored_bf16_weights_give_the_autocast_numbers_exactly(family: str, size: int) -> None:
    """Exact (torch.equal): autocast casts each fp32 weight to bf16 with the same rounding the storage used. 16²:
    every conv lowered to a GEMM (accel/gemm_conv.py); 24²: the first level's convs on oneDNN's own conv kernel."""
    unet = accelerate(tiny_model(family).model.diffusion_model)
    kw = unet_inputs(tiny_model(family), size)
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16):
        reference = unet(**kw)
    fp32_bytes = sum(p.numel() * p.element_size() for p in gemm_parameters(unet).values())
    names = store_gemm_weights(unet, torch.bfloat16)
    gemm = gemm_parameters(unet)
    assert sorted(names) == sorted(gemm) and all(p.dtype == torch.bfloat16 for p in gemm.values())
    assert sum(p.numel() * p.element_size() for p in gemm.values()) * 2 == fp32_bytes
    others = [n for n, p in unet.named_parameters() if n not in gemm]  # norms (and the class embedding): fp32
    assert others and all(dict(unet.named_parameters())[n].dtype == torch.float32 for n in others)
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16):
        stored = unet(**kw)
    assert torch.equal(stored, reference)
    assert store_gemm_weights(unet, torch.bfloat16) == []  # nothing left in fp32


@pytest.fixture(scope="module")
def sd1_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_checkpoint(tiny_model("sd1"), tmp_path_factory.mktemp("ckpt") / "tiny-sd1.safetensors")


def test_load_checkpoint_stores_the_unet_gemm_weights_as_it_reads(sd1_file: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """.safetensors: converted during the read (the cast map is exactly the UNet's GEMM keys; nothing is left to
    convert after loading); .ckpt: after loading; both equal to loading in fp32 and storing afterwards, the rest of
    the model untouched (fp32)."""
    expected = load_checkpoint(sd1_file)
    names = store_gemm_weights(expected.model.diffusion_model, torch.bfloat16)
    gemm_keys = {"model.diffusion_model." + n for n in names}
    assert checkpoint._unet_cast(sd1_file, None, None, BF16_GEMMS) == dict.fromkeys(gemm_keys, torch.bfloat16)
    raw, _ = read_state_dict(sd1_file, mmap=False, cast=dict.fromkeys(gemm_keys, torch.bfloat16))
    assert {k for k, v in raw.items() if v.dtype == torch.bfloat16} == gemm_keys
    ckpt = tmp_path / "tiny-sd1.ckpt"
    torch.save({"state_dict": {k: v.float() for k, v in raw.items()}}, ckpt)  # bf16 values, exact in fp32
    after: dict[str, int] = {}

    real = checkpoint._keep_dtypes

    def spy(module: torch.nn.Module, dtypes: dict[str, torch.dtype]) -> list[str]:
        done = real(module, dtypes)
        after[suffix] = len(done)
        return done

    monkeypatch.setattr(checkpoint, "_keep_dtypes", spy)
    for path in (sd1_file, ckpt):
        suffix = path.suffix
        model = load_checkpoint(path, unet_dtypes=BF16_GEMMS)
        got, want = model.state_dict(), expected.state_dict()
        assert got.keys() == want.keys()
        for k in want:
            assert got[k].dtype == want[k].dtype and torch.equal(got[k], want[k]), (path.suffix, k)
        assert {k for k, v in got.items() if v.dtype == torch.bfloat16} == gemm_keys
    assert after == {".safetensors": 0, ".ckpt": len(gemm_keys)}
    with pytest.raises(ConfigError, match="needs dtype=torch.float32"):
        load_checkpoint(sd1_file, dtype=torch.float16, unet_dtypes=BF16_GEMMS)


def unet_gemm_dtypes(pipe: Pipeline) -> set[torch.dtype]:
    return {p.dtype for p in gemm_parameters(pipe.model.model.diffusion_model).values()}


@pytest.mark.parametrize("fast", [{}, {"deepcache": 2}, {"attention_slice": 16}])
def test_a_loaded_bf16_pipeline_stores_bf16_and_samples_as_autocast_does(sd1_file: Path, fast: dict) -> None:
    reference = Pipeline(tiny_model("sd1"), precision="bf16", **fast)  # in-memory model: autocast over fp32
    assert unet_gemm_dtypes(reference) == {torch.float32}  # a model the caller built is never converted
    expected = reference.txt2img("a red square", **KW)

    pipe = Pipeline.from_checkpoint(sd1_file, precision="bf16", **fast)
    assert pipe.precision.name == "bf16" and unet_gemm_dtypes(pipe) == {torch.bfloat16}
    assert pipe._device_dtype()[1] == torch.float32  # noise, conditioning and latents stay fp32
    out = pipe.txt2img("a red square", **KW)
    assert out.dtype == torch.float32 and torch.equal(out, expected)


def test_a_stored_model_outside_its_pipeline_runs_bf16_or_says_why_not(sd1_file: Path) -> None:
    """A stored model handed to a Pipeline of its own: "auto" keeps bf16 (the only way it runs); "fp32" cannot
    read the file back (the pipeline did not load it) and says so; save_checkpoint warns it writes rounded weights."""
    expected = Pipeline(tiny_model("sd1"), precision="bf16").txt2img("a red square", **KW)
    model = load_checkpoint(sd1_file, unet_dtypes=BF16_GEMMS)
    pipe = Pipeline(model)
    assert pipe.precision.name == "bf16" and torch.equal(pipe.txt2img("a red square", **KW), expected)
    with pytest.raises(LDMError, match="runs under bf16 autocast only; use precision='bf16'"):
        pipe.set_fast_paths("fp32")
    with pytest.warns(UserWarning, match="stored in torch.bfloat16"):
        save_checkpoint(model, sd1_file.parent / "rounded.safetensors")


def test_reduced_weights_with_bf16_autocast_still_load(sd1_file: Path) -> None:
    """--dtype bf16 --precision bf16: the whole model in bf16 (no storage split), autocast on top, as before."""
    pipe = Pipeline.from_checkpoint(sd1_file, dtype=torch.bfloat16, precision="bf16")
    assert pipe.precision.name == "bf16" and pipe._device_dtype()[1] == torch.bfloat16
    out = pipe.txt2img("a red square", **dict(KW, steps=1))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()


def test_switching_to_fp32_reads_the_weights_back_from_the_file(sd1_file: Path) -> None:
    fp32 = Pipeline.from_checkpoint(sd1_file, precision="fp32")
    assert unet_gemm_dtypes(fp32) == {torch.float32}
    expected = fp32.txt2img("a red square", **KW)

    pipe = Pipeline.from_checkpoint(sd1_file, precision="bf16")
    unet = pipe.model.model.diffusion_model
    params = dict(unet.named_parameters())
    pipe.set_fast_paths("fp32")
    assert unet_gemm_dtypes(pipe) == {torch.float32} and dict(unet.named_parameters()) == params  # same Parameters
    for name, p in fp32.model.model.diffusion_model.named_parameters():
        assert torch.equal(params[name], p), name
    assert torch.equal(pipe.txt2img("a red square", **KW), expected)
    pipe.set_fast_paths("bf16")  # and back: autocast over the fp32 weights (storing happens at load only)
    assert unet_gemm_dtypes(pipe) == {torch.float32} and pipe.precision.name == "bf16"


@pytest.fixture(scope="module")
def ema_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = tiny_model("sd1")
    model.enable_ema()
    with torch.no_grad():
        for name, buf in model.model_ema.named_buffers():
            if buf.is_floating_point() and name != "decay":
                buf.add_(0.01)  # EMA weights differ from the raw ones
    return save_checkpoint(model, tmp_path_factory.mktemp("ema") / "ema.safetensors")


def unet_params(model) -> dict[str, torch.Tensor]:
    return dict(model.model.diffusion_model.named_parameters())


def test_a_pipeline_keeps_no_ema_copy(ema_file: Path) -> None:
    """The file's model_ema.* (a second UNet) is not read without use_ema and dropped once applied with it; with
    bf16 storage its GEMM averages are converted as read (their cast keys are the file's)."""
    assert load_checkpoint(ema_file).model_ema is not None  # load_checkpoint itself keeps everything
    header, _ = read_state_dict(ema_file)  # memory-mapped: the keys
    cast = checkpoint._unet_cast(ema_file, None, None, BF16_GEMMS, ema=True)
    ema_keys = [k for k in cast if k.startswith("model_ema.")]
    assert ema_keys and len(ema_keys) * 2 == len(cast) and set(cast) <= set(header)
    raw, _ = read_state_dict(ema_file, mmap=False, skip=("model_ema.",))
    assert raw and not any(k.startswith("model_ema.") for k in raw)
    for use_ema in (False, True):
        want = unet_params(load_checkpoint(ema_file, use_ema=use_ema))
        for precision in ("fp32", "bf16"):
            pipe = Pipeline.from_checkpoint(ema_file, use_ema=use_ema, precision=precision)
            assert pipe.model.model_ema is None
            got = unet_params(pipe.model)
            for name, p in want.items():
                assert torch.equal(got[name], p.to(got[name].dtype)), (use_ema, precision, name)


def test_switching_an_ema_pipeline_to_fp32_reads_the_ema_weights(ema_file: Path) -> None:
    want = unet_params(load_checkpoint(ema_file, use_ema=True))
    pipe = Pipeline.from_checkpoint(ema_file, use_ema=True, precision="bf16")
    assert unet_gemm_dtypes(pipe) == {torch.bfloat16}
    pipe.set_fast_paths("fp32")
    for name, p in unet_params(pipe.model).items():
        assert p.dtype == torch.float32 and torch.equal(p, want[name]), name


def test_weights_changed_in_memory_are_not_replaced_by_the_file(sd1_file: Path) -> None:
    pipe = Pipeline.from_checkpoint(sd1_file, precision="bf16", deepcache=2)
    assert pipe.fast.deepcache == 2  # from_checkpoint takes the other fast paths too
    weight = pipe.model.model.diffusion_model.out[2].weight
    with torch.no_grad():
        weight.add_(0.5)  # e.g. a merged LoRA
    edited = weight.clone()
    with pytest.raises(LDMError, match=r"cannot switch to fp32.*out\.2\.weight.*precision='fp32'"):
        pipe.set_fast_paths("fp32")
    assert pipe.precision.name == "bf16" and unet_gemm_dtypes(pipe) == {torch.bfloat16}  # nothing changed
    assert torch.equal(weight, edited)


def test_auto_stores_bf16_only_where_it_resolves_to_bf16(sd1_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(precision_rule, "cpu_has_native_bf16", lambda: False)
    assert unet_gemm_dtypes(Pipeline.from_checkpoint(sd1_file)) == {torch.float32}
    assert unet_gemm_dtypes(Pipeline.from_checkpoint(sd1_file, dtype=torch.bfloat16)) == {torch.bfloat16}  # --dtype
    monkeypatch.setattr(precision_rule, "cpu_has_native_bf16", lambda: True)
    pipe = Pipeline.from_checkpoint(sd1_file)
    assert pipe.precision == Precision("bf16", stored_bf16=True) and unet_gemm_dtypes(pipe) == {torch.bfloat16}
    assert pipe.set_fast_paths("auto").precision.name == "bf16" and unet_gemm_dtypes(pipe) == {torch.bfloat16}
    monkeypatch.setattr(precision_rule, "cpu_has_native_bf16", lambda: False)
    assert pipe.set_fast_paths("auto").precision.name == "bf16"  # a stored UNet stays bf16 under "auto"
    reduced = Pipeline.from_checkpoint(sd1_file, dtype=torch.bfloat16)  # weights loaded in bf16: no autocast
    assert reduced.precision == Precision("fp32")
