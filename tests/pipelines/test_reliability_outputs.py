"""Writing images and run files: no image lost or swapped under concurrency, failures before sampling, each image on
disk as soon as it is made, no temp debris, limits and non-finite stages named (docs/reliability.md)."""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from latent_diffusion.errors import LDMError, NonFiniteError
from latent_diffusion.fileio import OutputError, check_output_dir, sweep_stale_temps, write_atomic
from latent_diffusion.pipelines import Pipeline
from latent_diffusion.pipelines.generate import _write
from latent_diffusion.pipelines.requests import RunRequest
from latent_diffusion.pipelines.metadata import parse_parameters, read_png_parameters, save_numbered_png, save_png
from latent_diffusion.tiny import tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")
WRITERS, EACH = 6, 8


def _writer(folder: str, proc: int, barrier) -> list[str]:  # noqa: ANN001 - a multiprocessing barrier
    barrier.wait()
    paths = []
    for k in range(EACH):
        image = Image.new("RGB", (8, 8), (proc * 40, k * 30, 7))  # the pixels say who made it
        paths.append(str(save_numbered_png(image, folder, 1000 * proc + k, f"p{proc}\nSteps: 1, Who: {proc}-{k}")))
    return paths


def test_concurrent_saves_into_one_folder_lose_and_swap_nothing(tmp_path: Path) -> None:
    """Six processes save eight images each into one folder at the same moment: 48 files with 48 distinct numbers,
    each reported path holds its own writer's image, and its parameters describe that image."""
    ctx = mp.get_context("fork" if sys.platform.startswith("linux") else "spawn")
    barrier = ctx.Manager().Barrier(WRITERS)
    with ctx.Pool(WRITERS) as pool:
        results = pool.starmap(_writer, [(str(tmp_path), p, barrier) for p in range(WRITERS)])
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(files) == WRITERS * EACH and not [f for f in files if f.startswith(".")]
    assert sorted(int(f[:5]) for f in files) == list(range(WRITERS * EACH))  # distinct numbers, no gaps
    for proc, paths in enumerate(results):
        for k, path in enumerate(paths):
            pixel = np.asarray(Image.open(path))[0, 0]
            assert tuple(pixel) == (proc * 40, k * 30, 7), path
            assert parse_parameters(read_png_parameters(path))[2]["Who"] == f"{proc}-{k}"
            assert Path(path).name.endswith(f"-{1000 * proc + k}.png")


def test_a_failed_write_leaves_neither_file_nor_temp(tmp_path: Path) -> None:
    def fail(tmp: Path) -> None:
        tmp.write_bytes(b"half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OutputError, match=r"cannot write .*x\.png: No space left on device"):
        write_atomic(tmp_path / "x.png", fail)
    assert list(tmp_path.iterdir()) == []
    save_png(Image.new("RGB", (4, 4)), tmp_path / "a.png", "p\nSteps: 1")
    with pytest.raises(OutputError, match="already exists"):
        save_png(Image.new("RGB", (4, 4), (9, 9, 9)), tmp_path / "a.png", "p\nSteps: 1")
    assert np.asarray(Image.open(tmp_path / "a.png")).max() == 0  # the first file is untouched


def test_temp_files_of_killed_writers_are_swept(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".last.ckpt.{int(dead.stdout)}.0123abcd.tmp"
    live = tmp_path / f".last.ckpt.{os.getpid()}.89abcdef.tmp"  # a write in progress in a running process
    other = tmp_path / ".notes.tmp"  # not ours
    recent = tmp_path / f".x.png.{int(dead.stdout)}.4567abcd.tmp"  # a dead pid here, but written just now: maybe
    for p in (stale, live, other, recent):                            # another machine's writer on a shared folder
        p.write_bytes(b"x")
    hour_ago = time.time() - 3700
    for p in (stale, live, other):
        os.utime(p, (hour_ago, hour_ago))
    assert sweep_stale_temps(tmp_path) == [stale]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, other.name, recent.name])
    assert sweep_stale_temps(tmp_path, min_age=0) == [recent]


def test_the_output_folder_is_checked_before_any_work(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="it is a file, not a folder"):
        check_output_dir(tmp_path / "file")
    if os.geteuid() != 0:  # root writes anywhere
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        try:
            with pytest.raises(OutputError, match="Permission denied"):
                check_output_dir(ro)
        finally:
            ro.chmod(0o755)
    assert check_output_dir(tmp_path / "new" / "deep").is_dir()


def _cli(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "latent_diffusion.cli", *argv], capture_output=True, text=True,
                          env=os.environ | {"OMP_NUM_THREADS": "1"}, timeout=300)


def test_cli_refuses_bad_outputs_prompts_seeds_and_counts_before_loading(tmp_path: Path) -> None:
    """Each of these failed after sampling (or as a traceback) before: now one line, exit 2, nothing loaded."""
    (tmp_path / "file").write_text("x")
    base = ("txt2img", "--prompt", "a red circle", "--steps", "1", "--quiet")
    r = _cli(*base, "--out", str(tmp_path / "file"))
    assert r.returncode == 2 and "it is a file, not a folder" in r.stderr and "Traceback" not in r.stderr
    r = _cli(*base, "--out", str(tmp_path / "o"), "--n", "100000000")
    assert r.returncode == 2 and "over the limit of 10,000 per run" in r.stderr and "--max-images" in r.stderr
    r = _cli(*base, "--out", str(tmp_path / "o"), "--seed", str(2**64))
    assert r.returncode == 2 and "outside 0 .. 2**64-1" in r.stderr
    bad = subprocess.run([sys.executable, "-m", "latent_diffusion.cli", *base[:2], b"a \xff circle".decode(
        "utf-8", "surrogateescape"), *base[3:], "--out", str(tmp_path / "o")], capture_output=True, text=True,
        timeout=300, env=os.environ | {"OMP_NUM_THREADS": "1"})
    assert bad.returncode == 2 and "--prompt is not valid UTF-8" in bad.stderr and "Traceback" not in bad.stderr
    assert not any((tmp_path / "o").glob("*.png"))


def _png_header_only(path: Path, width: int, height: int) -> None:
    """A valid PNG signature and IHDR claiming width x height, then a tiny IDAT: a few hundred bytes on disk."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def sd1() -> Pipeline:
    return Pipeline(tiny_model("sd1"), precision="fp32")


def test_huge_inputs_and_sizes_are_refused_before_decoding(sd1: Pipeline, tmp_path: Path) -> None:
    _png_header_only(tmp_path / "big.png", 12000, 12000)  # decoding it took the process down (OOM)
    _png_header_only(tmp_path / "bomb.png", 20000, 20000)  # Pillow's DecompressionBombError as a traceback
    with pytest.raises(LDMError, match=r"12000x12000 = 144,000,000 pixels, over the limit of 4,194,304 "
                                       r"\(2048x2048\); raise it with --max-pixels"):
        sd1.img2img(tmp_path / "big.png", "a cat", steps=1)
    with pytest.raises(LDMError, match=r"bomb.png is 20000x20000 = 400,000,000 pixels, over the limit"):
        sd1.img2img(tmp_path / "bomb.png", "a cat", steps=1)
    with pytest.raises(LDMError, match="requested image size is 4096x4096"):
        sd1.txt2img("a cat", height=4096, width=4096, steps=1)
    with pytest.raises(LDMError, match="over the limit of 10,000 per run"):
        sd1.txt2img("a cat", n=100_000_000, steps=1)
    for seed in (-1, 2**64, 2**64 - 1):
        with pytest.raises(LDMError, match=r"seed must be an integer in 0 \.\. 2\*\*64 - 1"):
            sd1.txt2img("a cat", seed=seed, n=2 if seed == 2**64 - 1 else 1, steps=1, height=32, width=32)
    assert len(sd1.txt2img("a cat", seed=2**64 - 1, steps=1, height=32, width=32)) == 1


def test_non_finite_stages_are_named(tmp_path: Path) -> None:
    """An inf in post_quant_conv gave an all-black PNG, a NaN in conv_out a zeroed channel, both with exit 0; NaN from
    the text encoder was blamed on sampling ('fp16 overflow') in an fp32 run."""
    kw = dict(steps=2, height=32, width=32, sampler="ddim", cfg_scale=1.0)
    for name, value in (("post_quant_conv.weight", float("inf")), ("decoder.conv_out.bias", float("nan"))):
        pipe = Pipeline(tiny_model("sd1"), precision="fp32")
        with torch.no_grad():
            dict(pipe.model.first_stage_model.named_parameters())[name].view(-1)[0] = value
        with pytest.raises(NonFiniteError, match=r"the autoencoder's decoder produced NaN/Inf pixels for image 1/1"):
            pipe.txt2img("a cat", **kw)
    pipe = Pipeline(tiny_model("sd1"), precision="fp32")
    with torch.no_grad():
        next(pipe.model.cond_stage_model.parameters()).fill_(float("nan"))
    with pytest.raises(NonFiniteError, match="the text encoder produced NaN/Inf") as err:
        pipe.txt2img("a cat", **kw)
    assert "fp16" not in str(err.value)
    pipe = Pipeline(tiny_model("sd1"), precision="fp32")
    with torch.no_grad():
        pipe.model.model.diffusion_model.out[-1].bias.fill_(float("nan"))
    with pytest.raises(NonFiniteError, match="the UNet's output was not finite") as err:
        pipe.txt2img("a cat", **kw)
    assert "fp16" not in str(err.value)


def test_each_image_is_written_as_soon_as_it_is_made(sd1: Pipeline, tmp_path: Path) -> None:
    """A run stopped part-way (here: the third image fails) keeps the images made before it, each re-creatable."""
    run = RunRequest(out=str(tmp_path), steps=1, sampler="ddim", cfg_scale=1.0, n=4, quiet=True)
    made = []

    def make(seed: int, n: int, progress: object) -> list:
        if len(made) == 2:
            raise KeyboardInterrupt  # a kill, a Ctrl-C, a full disk...
        made.append(seed)
        return sd1.txt2img("a cat", seed=seed, n=n, steps=1, height=32, width=32, sampler="ddim", cfg_scale=1.0)

    with pytest.raises(KeyboardInterrupt, match=r"interrupted: 2 of 4 image\(s\) written to "):
        _write(sd1, run, make, 40)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["00000-40.png", "00001-41.png"]
    again = sd1.txt2img("a cat", seed=41, steps=1, height=32, width=32, sampler="ddim", cfg_scale=1.0)[0]
    assert np.array_equal(np.asarray(Image.open(tmp_path / names[1])), np.asarray(again))


def test_the_embedded_text_encoder_warns_when_it_cuts_a_prompt() -> None:
    from latent_diffusion.default_model import task_model_path

    pipe = Pipeline.from_checkpoint(task_model_path("txt2img"))
    with pytest.warns(UserWarning, match=r"the last \d+ words were dropped"):
        assert pipe.check_prompt("a red circle above a blue square " * 800) > 0


def test_numbers_past_99999_keep_counting(tmp_path: Path) -> None:
    (tmp_path / "100000-1.png").write_bytes(b"x")
    path = save_numbered_png(Image.new("RGB", (4, 4)), tmp_path, 7, "p\nSteps: 1")
    assert path.name == "100001-7.png"


def test_inputs_and_run_arguments_are_checked_before_the_model_loads(tmp_path: Path) -> None:
    """A missing --init-image, --steps 0, an unknown sampler or a bad --from-png batch position are reported before
    any checkpoint is read (the --ckpt here does not exist: its error would come first otherwise)."""
    nope = str(tmp_path / "nope.safetensors")
    base = ("--ckpt", nope, "--out", str(tmp_path / "o"), "--quiet")
    r = _cli("img2img", "--init-image", str(tmp_path / "missing.png"), "--prompt", "x", *base)
    assert r.returncode == 2 and "cannot read --init-image" in r.stderr, r.stderr
    r = _cli("txt2img", "--prompt", "x", "--steps", "0", *base)
    assert r.returncode == 2 and "--steps must be a positive integer" in r.stderr, r.stderr
    r = _cli("txt2img", "--prompt", "x", "--sampler", "nope", *base)
    assert r.returncode == 2 and "nope" in r.stderr and "nope.safetensors" not in r.stderr, r.stderr
    r = _cli("txt2img", "--prompt", "x", "--seed", str(2**64 - 1), "--n", "2", *base)
    assert r.returncode == 2 and "seed must be an integer in 0 .. 2**64 - 1" in r.stderr, r.stderr
    png = tmp_path / "bad.png"
    save_png(Image.new("RGB", (4, 4)), png, "x\nSteps: 1, Sampler: ddim, CFG scale: 1, Seed: 3, Size: 64x64, "
             "Batch size: 2, Batch pos: 5")
    r = _cli("txt2img", "--from-png", str(png), *base)
    assert r.returncode == 2 and "Batch pos 5 / Batch size 2" in r.stderr, r.stderr


def test_the_cli_encodes_the_prompt_and_the_input_once_per_run(sd1: Pipeline, tmp_path: Path, monkeypatch) -> None:
    """Images are made --batch-size at a time and written as made; the text encoder and the VAE encoder still run
    once per run, not once per batch."""
    calls = {"text": 0, "encode": 0}
    real_text, real_encode = sd1.model.get_learned_conditioning, sd1.model.encode_first_stage

    def text(c):  # noqa: ANN001, ANN202
        calls["text"] += 1
        return real_text(c)

    def encode(x, **kw):  # noqa: ANN001, ANN202
        calls["encode"] += 1
        return real_encode(x, **kw)

    monkeypatch.setattr(sd1.model, "get_learned_conditioning", text)
    monkeypatch.setattr(sd1.model, "encode_first_stage", encode)
    init = Image.new("RGB", (32, 32), (200, 30, 30))
    run = RunRequest(out=str(tmp_path), steps=2, sampler="ddim", cfg_scale=3.0, n=3, quiet=True)

    def make(**each: object) -> list:
        return sd1.img2img(init, "a cat", steps=2, sampler="ddim", cfg_scale=3.0, **each)

    written = _write(sd1, run, make, 11)
    assert len(written) == 3 and calls == {"text": 1, "encode": 1}
    single = sd1.img2img(init, "a cat", steps=2, sampler="ddim", cfg_scale=3.0, seed=13)[0]
    assert np.array_equal(np.asarray(Image.open(written[2])), np.asarray(single))  # reuse changes no image


def test_ctrl_c_is_one_line_and_exit_130(capsys) -> None:
    from latent_diffusion.commands import run
    from latent_diffusion.errors import Interrupted

    def stopped(_: argparse.Namespace) -> int:
        raise Interrupted("interrupted: 3 of 8 image(s) written to out/")

    def plain(_: argparse.Namespace) -> int:
        raise KeyboardInterrupt

    assert run(argparse.Namespace(func=stopped)) == 130
    assert capsys.readouterr().err == "ldm: interrupted: 3 of 8 image(s) written to out/\n"
    assert run(argparse.Namespace(func=plain)) == 130
    assert capsys.readouterr().err == "ldm: interrupted\n"


def test_a_warning_is_one_line_in_the_cli_voice(capsys) -> None:
    """No file path and no source line: ``ldm: warning: <message>``, and the hook is gone after the command."""
    import warnings

    from latent_diffusion.commands import run

    def warns(_: argparse.Namespace) -> int:
        warnings.warn("the text encoder does not know the word(s) ['zebra']; they are ignored ([UNK])", stacklevel=2)
        return 0

    before = warnings.showwarning
    assert run(argparse.Namespace(func=warns)) == 0
    assert capsys.readouterr().err == ("ldm: warning: the text encoder does not know the word(s) ['zebra']; they are "
                                       "ignored ([UNK])\n")
    assert warnings.showwarning is before
