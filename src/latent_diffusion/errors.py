"""Project exceptions. Every message names the bad value, what is accepted and, for files, the path."""


class LDMError(Exception):
    """Base class of every error this package raises on bad input."""


class ConfigError(LDMError, ValueError):
    """A config (dataclass, YAML) has an unknown key, a bad value or an unknown ``target:``."""


class CheckpointError(LDMError):
    """A checkpoint file is unreadable, malformed, or does not match the model."""


class UnsafeCheckpointError(CheckpointError):
    """A pickle asked for something that could execute code; it was refused before running."""


class KeyMismatchError(CheckpointError):
    """Missing / unexpected keys or shape mismatches between a state dict and a model."""


class NonFiniteError(LDMError, FloatingPointError):
    """NaN or Inf came out of a stage (text encoder, UNet while sampling, decoder); the message names which."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during a command; the message says what was kept (e.g. how many images were written)."""
