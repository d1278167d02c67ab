"""The names of the ``ldm bench`` cases: plain data, so that building the ``ldm`` parser imports no torch."""

CASES = ("unet", "vae", "pipeline", "samplers", "train", "fastpaths", "data")
CUDA_CASES = ("unet",)  # the cases that take --device cuda; the others are CPU benchmarks
DEFAULT_CASES = ("unet", "vae", "samplers", "train", "fastpaths", "pipeline")
