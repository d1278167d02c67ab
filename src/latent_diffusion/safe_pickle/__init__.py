"""The allow-list unpickler behind ``read_pickle``: what a pickle-based torch file may ask for, and what it may do.

Tensors, containers and numpy scalars load for real; other classes (Lightning callbacks, OmegaConf) become inert
``InertObject`` placeholders that never import their module; anything that can run code is refused before it runs.
A pickle may not change any object it did not make (a class, a function, a shared singleton); constructors may not
allocate without bound (``bytearray(10**11)``, ``set(range(10**10))``, ``torch.FloatTensor(2**33)``,
``numpy.ndarray((2**33,))``, a storage whose persistent id claims 2**33 elements) nor keys take ages to hash (nested
shared tuples); codecs other than latin-1, ASCII and UTF-8 are refused. ``pickle_module(path, size)`` is what
``torch.load(pickle_module=...)`` takes, one per load.
"""

from __future__ import annotations

from .allowlist import SAFER, InertObject
from .unpickler import pickle_module

__all__ = ["InertObject", "pickle_module", "SAFER"]
