"""``Pipeline``: one loaded model and the steps every task shares (load → encode → noise → sample → decode). The
seven tasks (txt2img, img2img, inpaint, upscale, sample, layout2img, semantic2img) live in ``tasks_*.py`` and are
bound here as methods; their defaults are in ``defaults.py``.

Seeds: image i of a call with ``seed`` s and ``n`` images draws its initial noise (and its ancestral noise) from
``torch.Generator("cpu").manual_seed(s + i)`` alone, so it equals the single-image run with seed s + i.

Batches: ``batch_size`` images are sampled together (default: all n; 1 gives one progress bar per image, which the
CLI does), and the prompt is encoded once per call whatever the split.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
from typing import Any, Callable, Iterator

import torch

from ..accel import AccelOptions, Precision, sampling_context
from ..accel.gemm_storage import base_dtype, gemm_dtypes
from ..checkpoint import family as family_name
from ..checkpoint import load_checkpoint
from ..diffusion.samplers import SampleOptions, canonical_sampler, randn, sample
from ..errors import LDMError, NonFiniteError
from . import call, defaults, fast_paths, prompts, tasks_structured, tasks_text, tasks_upscale
from .batches import bar_label, take
from .images import check_size, tensor_to_pil
from .limits import Limits, check_seed
from .model_kind import model_kind, tasks_hint
from .output import Record
from .task_common import Callback, check_run, generators

__all__ = ["Pipeline", "generators"]


class Pipeline:
    def __init__(self, model: Any, *, checkpoint_path: str | os.PathLike | None = None,
                 precision: str | Precision = "auto", **fast: Any) -> None:
        self.model = model
        self.cfg = model.cfg
        self.checkpoint_path = checkpoint_path
        self._hash: str | None = None
        self._load_args: dict[str, Any] | None = None  # from_checkpoint's: the file can give the fp32 UNet back
        self.limits = Limits()  # the most pixels per image and images per call (checked before any work)
        self.fast: AccelOptions | None = None
        self.requested_precision = "auto"  # as asked ("auto" / "fp32" / "bf16"): `to` resolves it again
        self._reused: dict[tuple, torch.Tensor] | None = None  # see reusing_inputs
        self.set_fast_paths(precision, **fast)

    @contextlib.contextmanager
    def reusing_inputs(self) -> Iterator[None]:
        """Within this block, calls with the same prompts or the same input image reuse their text embeddings and
        encoded latents (the CLI makes ``--n`` images a batch at a time and writes each as it is made: the text
        encoder and the VAE encoder then run once, not once per batch). The weights must not change inside."""
        outer, self._reused = self._reused, {} if self._reused is None else self._reused
        try:
            yield
        finally:
            self._reused = outer

    def _reuse(self, key: Callable[[], tuple], make: Callable[[], torch.Tensor]) -> torch.Tensor:
        """``make()``, or inside ``reusing_inputs`` its earlier result for the same ``key()`` (computed only there)."""
        if self._reused is None:
            return make()
        key = key()
        if key not in self._reused:
            self._reused[key] = make()
        return self._reused[key]

    @property
    def precision(self) -> Precision:
        return self.fast.precision

    set_fast_paths = fast_paths.set_fast_paths
    enable_vae_tiling = fast_paths.enable_vae_tiling

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike | None = None, config: Any = None, *,
                        dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu", use_ema: bool = False,
                        parameterization: str | None = None, precision: str = "auto", **fast: Any) -> Pipeline:
        """``path=None``: the embedded ShapesWorld text-to-image model (64×64; see ``default_model``).
        ``precision`` and ``fast``: as ``set_fast_paths``, resolved once here; bf16 with fp32 ``dtype`` loads the UNet's
        GEMM weights into bf16 storage as the file is read. A file's ``model_ema.*`` weights are not kept
        (``use_ema`` copies them into the UNet first)."""
        resolved = Precision.resolve(precision, device, dtype, store=True)
        AccelOptions.with_model_paths(resolved, **fast)  # bad options refused before the file is read
        if path is None:
            from ..default_model import default_model_path

            path = default_model_path()
        load_args = {"config": config, "use_ema": use_ema, "dtype": dtype, "device": device,
                     "parameterization": parameterization}
        unet_dtypes = functools.partial(gemm_dtypes, dtype=torch.bfloat16) if resolved.stored_bf16 else None
        model = load_checkpoint(path, **load_args, unet_dtypes=unet_dtypes,
                                keep_ema=False)  # sampling never needs the EMA copy once use_ema has applied it
        pipe = cls(model, checkpoint_path=path, precision=resolved, **fast)
        pipe._load_args, pipe.requested_precision = load_args, precision
        return pipe

    # -- model facts -------------------------------------------------------------------------------
    @property
    def family(self) -> str:
        return family_name(self.cfg)

    @property
    def model_hash(self) -> str | None:
        """A1111-style short sha256 of the checkpoint file (None for an in-memory model)."""
        if self._hash is None and self.checkpoint_path is not None:
            from ..safe_load import file_fingerprint

            self._hash = file_fingerprint(self.checkpoint_path)
        return self._hash

    @property
    def latent_factor(self) -> int:
        return 1 if self.cfg.first_stage == "none" else self.cfg.autoencoder.downsample_factor

    @property
    def text_size(self) -> int:
        """txt2img's default height and width (``defaults.text_size``): 512; 64 for the embedded ShapesWorld models."""
        return defaults.text_size(self.checkpoint_path)

    @property
    def size_multiple(self) -> int:
        return self.latent_factor * 2 ** (len(self.cfg.unet.channel_mult) - 1)

    @property
    def latent_channels(self) -> int:
        return self.cfg.unet.out_channels

    @property
    def kind(self) -> str:
        """Which tasks the model serves: text | inpaint | text_upscale | class | uncond | layout | concat | semantic |
        other (``model_kind``)."""
        return model_kind(self.cfg)

    def _device_dtype(self) -> tuple[torch.device, torch.dtype]:
        """The UNet's device and the dtype it was loaded in (its norms': fp32 while its GEMM weights are stored in
        bf16 for autocast)."""
        return next(self.model.model.parameters()).device, base_dtype(self.model.model)

    # -- checks ------------------------------------------------------------------------------------
    def _require(self, task: str, *kinds: str) -> None:
        if self.kind not in kinds:
            raise LDMError(f"{task} needs a {' or '.join(kinds)} model, but this is a {self.family} model; "
                           f"tasks it can do: {tasks_hint(self.kind)}")

    def _check_common(self, steps: int, sampler: str, cfg_scale: float, n: int) -> None:
        check_run(steps, sampler, cfg_scale, n, self.limits)

    def _check_size(self, height: int, width: int) -> None:
        check_size(height, width, self.size_multiple, self.limits)

    check_prompt = prompts.check_prompt

    # -- the shared steps ------------------------------------------------------------------------------
    _text = prompts.encode_prompts

    def _noise(self, seed: int, n: int, height: int, width: int) -> tuple[torch.Tensor, list[torch.Generator]]:
        device, dtype = self._device_dtype()
        f = self.latent_factor
        gens = generators(seed, n)
        return randn((n, self.latent_channels, height // f, width // f), gens, device=device, dtype=dtype), gens

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        device, dtype = self._device_dtype()
        def key() -> tuple:  # ~ms for a 512² image
            return "image", tuple(x.shape), str(x.dtype), hashlib.sha1(x.detach().cpu().contiguous().numpy()).digest()

        with torch.no_grad():
            return self._reuse(key, lambda: self.model.encode_first_stage(x.to(device, dtype)))

    def _record(self, seed: int, batch_size: int | None, steps: int, sampler: str, cfg_scale: float, prompt: str = "",
                negative_prompt: str = "", extra: dict[str, Any] | None = None) -> Record:
        """What the images of a task call record in their parameters (``output.Record``); ``extra``: the task's own
        settings (a None value is left out)."""
        check_seed(seed, 1)
        if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int)
                                       or batch_size < 1):
            raise LDMError(f"batch_size must be a positive integer or None (all images at once), got {batch_size!r}")
        settings = {"Steps": steps, "Sampler": canonical_sampler(sampler), "CFG scale": cfg_scale}
        settings.update({k: v for k, v in (extra or {}).items() if v is not None})
        # what else changes pixels: the UNet's precision, DeepCache
        settings["Precision"] = self.precision.name
        if self.fast.deepcache and self.fast.deepcache > 1:
            settings["DeepCache"] = self.fast.deepcache
        return Record(prompt, negative_prompt, seed, batch_size, settings, self.model_hash)

    def _decode(self, z: torch.Tensor, output: str, record: Record | None = None) -> Any:
        """``output``: "pil" (images, each with ``record``'s parameters in ``.info``), "latent" (``z`` itself) or
        "output" (a ``PipelineOutput``: images, seeds and ``z``)."""
        if output == "latent":
            return z
        if output not in ("pil", "output"):
            raise LDMError(f"output must be 'pil', 'latent' or 'output', got {output!r}")
        images = []
        for i in range(z.shape[0]):
            with torch.no_grad():
                x = self.model.decode_first_stage(z[i:i + 1])
            if not bool(torch.isfinite(x).all()):
                raise NonFiniteError(
                    f"the autoencoder's decoder produced NaN/Inf pixels for image {i + 1}/{z.shape[0]} from finite "
                    f"latents (dtype {x.dtype}); no image was written for it. Its weights may be damaged: check the "
                    "checkpoint (`ldm inspect`)" + (", or decode in fp32" if x.dtype == torch.float16 else ""))
            images.append(tensor_to_pil(x)[0])
        if record is None:
            return images
        return record.stamp(images) if output == "pil" else record.output(images, z)

    def _run(self, model: Any, noise: torch.Tensor, gens: list[torch.Generator], *, steps: int, sampler: str,
             cfg_scale: float, cond: Any, uncond: Any, guidance_rescale: float = 0.0, callback: Callback | None = None,
             progress: bool = False, start_step: int = 0, init_latents: torch.Tensor | None = None,
             batch_size: int | None = None) -> torch.Tensor:
        """Sample the n rows of ``noise`` in batches of ``batch_size`` (None: all at once), one progress bar per
        batch ("image i/n" when batches are single images). Per-sample generators make the split invisible."""
        n = noise.shape[0]
        size = n if batch_size is None else batch_size
        if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
            raise LDMError(f"batch_size must be a positive integer or None (all images at once), got {batch_size!r}")
        out = []
        for start in range(0, n, size):
            rows = slice(start, min(start + size, n))
            with sampling_context(self.model, self.fast, noise.device):  # autocast, DeepCache, ... per run
                opts = SampleOptions(steps=steps, cfg_scale=cfg_scale, guidance_rescale=guidance_rescale,
                                     start_step=start_step, progress=bar_label(progress, rows, n))
                z = sample(sampler, model, noise[rows], opts, cond=take(cond, rows, n), uncond=take(uncond, rows, n),
                           init_latents=take(init_latents, rows, n), generator=gens[rows], callback=callback)
            out.append(z.to(noise.dtype))  # bf16 autocast may hand back bf16 latents
        return out[0] if len(out) == 1 else torch.cat(out)

    def _generate(self, record: Record, n: int, height: int, width: int, output: str, **run: Any) -> Any:
        """The tasks' common tail: noise (generator i seeded ``record.seed + i``) → ``_run(**run)`` → ``_decode``."""
        noise, gens = self._noise(record.seed, n, height, width)
        return self._decode(self._run(self.model, noise, gens, batch_size=record.batch_size, **run), output, record)

    # -- the tasks (tasks_text.py, tasks_upscale.py, tasks_structured.py) and pipe(...) (call.py) ---------
    __call__ = call.call
    to = call.to
    _inpaint_concat = tasks_text.inpaint_concat
    txt2img = tasks_text.txt2img
    img2img = tasks_text.img2img
    inpaint = tasks_text.inpaint
    upscale = tasks_upscale.upscale
    sample = tasks_structured.sample
    layout2img = tasks_structured.layout2img
    semantic2img = tasks_structured.semantic2img
