"""Reliability of the pickle checkpoint reader (latent_diffusion.safe_load): zip CRCs, expansion bombs in the extras,
pickles that try to modify classes or shared objects, memory bombs through allow-listed constructors, and keys that
take ages to hash."""

from __future__ import annotations

import argparse
import collections
import pathlib
import pickle
import struct
import sys
import time
import zipfile

import numpy as np
import pytest
import torch
import torch._utils

from latent_diffusion import safe_load, zip_crc
from latent_diffusion.errors import CheckpointError, UnsafeCheckpointError
from latent_diffusion.safe_load import read_pickle, read_state_dict


class Reduce:
    """Pickles as ``fn(*args)``: how a hand-made pickle calls an allow-listed constructor (nothing runs at dump)."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return (self.fn, self.args)


def _torch_zip(path, data_pkl: bytes) -> None:
    """A torch zip archive (its real members, CRCs included: storage record data/0 holds 4 float32s) whose data.pkl
    is ``data_pkl``."""
    torch.save({"w": torch.zeros(4)}, path)
    with zipfile.ZipFile(path) as z:
        members = {n: z.read(n) for n in z.namelist()}
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        for name, data in members.items():
            z.writestr(name, data_pkl if name.endswith("/data.pkl") else data)


def _write(path, data_pkl: bytes, layout: str) -> None:
    """``data_pkl`` as a torch zip (torch's Unpickler subclass) or a raw pickle (torch's ``pickle_module.load``)."""
    _torch_zip(path, data_pkl) if layout == "zip" else path.write_bytes(data_pkl)


# --- 1. zip CRCs ------------------------------------------------------------------------------------------------------

def _flip_inside(path, needle: bytes, count: int = 64) -> None:
    data = bytearray(path.read_bytes())
    at = data.find(needle)
    assert at > 0
    data[at:at + count] = bytes(b ^ 0xFF for b in data[at:at + count])
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("threads", [False, True])
def test_flipped_bytes_in_a_tensor_fail_the_crc_check(tmp_path, monkeypatch, threads):
    if threads:  # members shared out over several threads, as for a file of a few hundred MB
        monkeypatch.setattr(zip_crc, "_CRC_THREAD_BYTES", 1)
    weight = torch.full((256,), 1234.5678)  # distinctive bytes, easy to find in the file
    ckpt = {"state_dict": {"w": weight, "b": torch.zeros(3), **{f"x{i}": torch.ones(i) for i in range(8)}},
            "global_step": 7}
    good, bad, no_crc = tmp_path / "good.ckpt", tmp_path / "bad.ckpt", tmp_path / "no_crc.ckpt"
    torch.save(ckpt, good)
    bad.write_bytes(good.read_bytes())
    _flip_inside(bad, weight.numpy().tobytes()[:64])
    with pytest.raises(CheckpointError, match=r"data/\d+ fails its CRC check: the file is corrupted") as err:
        read_state_dict(bad)
    assert str(bad) in str(err.value) and not isinstance(err.value, UnsafeCheckpointError)
    assert torch.equal(read_state_dict(good)[0]["w"], weight)  # the untouched file still loads
    torch.serialization.set_crc32_options(False)  # torch then records CRC 0: nothing to check, not a corruption
    try:
        torch.save(ckpt, no_crc)
    finally:
        torch.serialization.set_crc32_options(True)
    assert {i.CRC for i in zipfile.ZipFile(no_crc).infolist()} == {0}
    assert torch.equal(read_state_dict(no_crc)[0]["w"], weight)


def test_verify_checkpoint_file(tmp_path):
    verify = safe_load.verify_checkpoint_file
    assert "verify_checkpoint_file" in safe_load.__all__
    good, bad = tmp_path / "last.ckpt", tmp_path / "bad.ckpt"
    torch.save({"state_dict": {"w": torch.full((64,), 7.25)}, "optimizer_states": [{}]}, good)
    assert verify(good) is None
    bad.write_bytes(good.read_bytes())
    _flip_inside(bad, torch.full((16,), 7.25).numpy().tobytes())
    with pytest.raises(CheckpointError, match="CRC check"):
        verify(bad)
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "x": Reduce(print, "hi")}, evil)
    with pytest.raises(UnsafeCheckpointError, match="builtins.print"):
        verify(evil)
    with pytest.raises(CheckpointError, match="not found"):
        verify(tmp_path / "missing.ckpt")
    safetensors = safe_load.save_safetensors_atomic({"w": torch.ones(2)}, tmp_path / "m.safetensors")
    assert verify(safetensors) is None
    safetensors.write_bytes(safetensors.read_bytes()[:-4])
    with pytest.raises(CheckpointError, match="truncated"):
        verify(safetensors)


# --- 2. expansion bombs in the extras --------------------------------------------------------------------------------

def _bomb(levels: int = 40, x: list | None = None) -> list:
    x = [] if x is None else x
    for _ in range(levels):
        x = [x, x]  # 2**levels nodes when expanded; a few KB pickled (memoised)
    return x


def test_self_referencing_extra_entry_is_skipped_fast(tmp_path):
    path = tmp_path / "bomb.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "extra": _bomb(), "global_step": 3}, path)
    assert path.stat().st_size < 10_000
    start = time.perf_counter()
    tensors, extras = read_state_dict(path)
    assert time.perf_counter() - start < 3.0  # old code: 87 s, then MemoryError
    assert torch.equal(tensors["w"], torch.zeros(2))
    assert extras["skipped_entries"] == ["extra"] and extras["global_step"] == 3


def test_many_entries_sharing_one_bomb_stay_fast(tmp_path):
    path = tmp_path / "bombs.ckpt"
    bomb = _bomb()
    torch.save({"state_dict": {"w": torch.zeros(2)}, **{f"extra{i}": bomb for i in range(200)}}, path)
    start = time.perf_counter()
    _, extras = read_state_dict(path)
    assert time.perf_counter() - start < 3.0  # shared values are converted once, and counted as copies
    assert extras["skipped_entries"] == [f"extra{i}" for i in range(200)]


def test_deep_or_self_containing_entries_are_skipped_plain_ones_kept(tmp_path):
    deep: list = []
    for _ in range(150):
        deep = [deep]
    cycle: list = [1]
    cycle.append(cycle)
    holds_itself = np.empty((), dtype=object)  # a 0-d object array unwraps to itself
    holds_itself[()] = holds_itself
    plain = {"lr": 1e-4, "sizes": (64, 128), "names": ["a", "b"], 3: None, "flag": True, "n": np.int64(5),
             "x": np.float32(0.5), "s": np.str_("s"), "nested": [[[{"k": [1, 2.5, None]}]]]}
    path = tmp_path / "m.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "deep": deep, "cycle": cycle, "array": holds_itself,
                "plain": plain}, path)
    _, extras = read_state_dict(path)
    assert extras["skipped_entries"] == ["deep", "cycle", "array"]
    assert extras["plain"] == {"lr": 1e-4, "sizes": [64, 128], "names": ["a", "b"], "3": None, "flag": True, "n": 5,
                               "x": 0.5, "s": "s", "nested": [[[{"k": [1, 2.5, None]}]]]}
    assert type(extras["plain"]["n"]) is int and type(extras["plain"]["x"]) is float


# --- 3. pickles that modify what they did not make ------------------------------------------------------------------

def _str(text: str) -> bytes:
    raw = text.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw  # BINUNICODE


def _global(module: str, name: str) -> bytes:
    return f"c{module}\n{name}\n".encode()  # GLOBAL


def _build(target: bytes, attribute: str, value: bytes) -> bytes:
    """Protocol 2: push ``target``, then BUILD with state ``(None, {attribute: value})`` -> setattr(target, ...)."""
    return b"\x80\x02" + target + b"N}" + _str(attribute) + value + b"s\x86b."


_NUMPY_F8 = _global("numpy", "dtype") + _str("f8") + b"\x89\x89\x87R"  # numpy.dtype('f8', False, False): shared
_BUILDS = {
    "pathlib.PurePosixPath": _build(_global("pathlib", "PurePosixPath"), "suffix", _str(".ckpt")),
    "pathlib.Path": _build(_global("pathlib", "Path"), "suffix", _str(".ckpt")),  # loads as PurePosixPath
    "argparse.Namespace": _build(_global("argparse", "Namespace"), "injected", _str("x")),
    "collections.Counter": _build(_global("collections", "Counter"), "most_common", _str("x")),
    "torch._utils._rebuild_tensor_v2": _build(_global("torch._utils", "_rebuild_tensor_v2"), "__defaults__",
                                              b"\x88\x85"),  # (True,)
    "numpy.dtype('<f8')": b"\x80\x02" + _NUMPY_F8 + pickle.dumps((3, ">", None, None, None, -1, -1, 0), 2)[2:-1]
                          + b"b.",
    "collections.OrderedDict": b"\x80\x02" + _global("collections", "OrderedDict") + _str("k") + _str("v") + b"s.",
    "collections.deque": b"\x80\x02" + _global("collections", "deque") + _str("v") + b"a.",
    "collections.defaultdict": b"\x80\x02" + _global("collections", "defaultdict") + b"(" + _str("v") + b"e.",
}


def _state_of_shared_objects():
    return {"PurePosixPath": dict(vars(pathlib.PurePosixPath)), "Namespace": dict(vars(argparse.Namespace)),
            "Counter": dict(vars(collections.Counter)), "OrderedDict": dict(vars(collections.OrderedDict)),
            "defaults": torch._utils._rebuild_tensor_v2.__defaults__, "f8": np.dtype("f8").str}


@pytest.fixture
def shared_objects():
    """The state of the classes the pickles above target; put back afterwards (the old reader did change them)."""
    before = _state_of_shared_objects()
    yield before
    for cls, key in ((pathlib.PurePosixPath, "PurePosixPath"), (argparse.Namespace, "Namespace"),
                     (collections.Counter, "Counter")):
        for name in set(vars(cls)) - set(before[key]):
            delattr(cls, name)
        for name, value in before[key].items():
            if vars(cls).get(name) is not value:
                setattr(cls, name, value)
    torch._utils._rebuild_tensor_v2.__defaults__ = before["defaults"]


@pytest.mark.parametrize("layout", ["zip", "raw"])
@pytest.mark.parametrize("target", list(_BUILDS))
def test_pickle_may_not_modify_classes_functions_or_shared_objects(tmp_path, shared_objects, target, layout):
    path = tmp_path / ("m.ckpt" if layout == "zip" else "m.pt")
    _write(path, _BUILDS[target], layout)
    with pytest.raises(UnsafeCheckpointError, match="tried to modify .* nothing was changed") as err:
        read_pickle(path)
    shown = "numpy.dtype('<f8')" if target.startswith("numpy") else \
        "pathlib.Path" if target == "pathlib.Path" else target
    assert f"`{shown}" in str(err.value) and str(path) in str(err.value)
    assert _state_of_shared_objects() == shared_objects
    assert pathlib.Path("m.safetensors").suffix == ".safetensors"


def _lightning_style():
    g = torch.Generator().manual_seed(0)
    return {
        "epoch": 2, "global_step": np.int64(40), "best_model_score": np.float64(0.125),
        "state_dict": collections.OrderedDict([("model.w", torch.randn(3, 2, generator=g)),
                                               ("model.p", torch.nn.Parameter(torch.ones(2)))]),
        "hyper_parameters": argparse.Namespace(lr=1e-4, root=pathlib.Path("/data/run"), tags=["a"]),
        "loops": {"counts": collections.Counter("aab"), "groups": collections.defaultdict(list, {"x": [1]}),
                  "recent": collections.deque([1, 2], maxlen=4), "seen": {1, 2}, "frozen": frozenset({3}),
                  "raw": bytearray(b"\x00\xffab"), "blob": b"\x01\x02", "steps": range(0, 100, 10),
                  "array": np.arange(4.0), "c": complex(1, 2), "by_pair": {(1, ("a", 2)): 3},
                  "pairs": {(1, 2), (3, (4, 5))}, "table": dict([((1, 2), "x")])},
    }


@pytest.mark.parametrize("legacy", [False, True])
def test_lightning_style_checkpoint_still_loads(tmp_path, legacy):
    """Guard: what real checkpoints BUILD and fill (numpy scalars via a fresh dtype copy, Namespace hparams, paths,
    OrderedDict state dicts, Counters, deques, bytes) keeps loading under the new checks."""
    path = tmp_path / "last.ckpt"
    expected = _lightning_style()
    torch.save(expected, path, _use_new_zipfile_serialization=not legacy)
    obj = read_pickle(path)
    hp = obj["hyper_parameters"]
    assert type(hp) is argparse.Namespace and hp.lr == 1e-4 and hp.root == pathlib.PurePosixPath("/data/run")
    assert type(obj["state_dict"]) is collections.OrderedDict and list(obj["state_dict"]) == ["model.w", "model.p"]
    loops, want = obj["loops"], expected["loops"]
    for key in ("counts", "groups", "recent", "seen", "frozen", "raw", "blob", "steps", "c", "by_pair", "pairs",
                "table"):
        assert type(loops[key]) is type(want[key]) and loops[key] == want[key], key
    assert loops["recent"].maxlen == 4 and np.array_equal(loops["array"], want["array"])
    assert obj["global_step"] == 40 and type(obj["global_step"]) is np.int64
    tensors, extras = read_state_dict(path)
    assert torch.equal(tensors["model.w"], expected["state_dict"]["model.w"])
    assert extras["global_step"] == 40 and extras["best_model_score"] == 0.125 and extras["epoch"] == 2
    assert extras["skipped_entries"] == ["hyper_parameters", "loops"]


# --- 4. memory bombs through allow-listed constructors ---------------------------------------------------------------

_BIG = 1 << 30  # past the 64 MiB (plus file size) budget, yet small enough that the old reader survives the test
_BOMBS = {  # the old reader made them all; 10**11 bytes or range(10**10) would take the machine down
    "bytearray(1 GiB)": Reduce(bytearray, _BIG),
    "bytes(1 GiB)": Reduce(bytes, _BIG),
    "set(range)": Reduce(set, range(1 << 22)),
    "frozenset(range)": Reduce(frozenset, range(1 << 22)),
    "list(range)": Reduce(list, range(1 << 22)),
    "tuple(range)": Reduce(tuple, range(1 << 22)),
    "deque(range)": Reduce(collections.deque, range(1 << 22)),
    "Counter(range)": Reduce(collections.Counter, range(1 << 22)),
}


@pytest.mark.parametrize("layout", ["zip", "raw"])
@pytest.mark.parametrize("bomb", list(_BOMBS))
def test_constructor_memory_bombs_are_refused(tmp_path, bomb, layout):
    path = tmp_path / ("m.ckpt" if layout == "zip" else "m.pt")
    if layout == "zip":
        torch.save({"state_dict": {"w": torch.zeros(1)}, "x": _BOMBS[bomb]}, path)
    else:
        path.write_bytes(pickle.dumps({"x": _BOMBS[bomb]}, protocol=2))
    expected = r"past the limit of \d+ bytes" if "GiB" in bomb else r"more than 1048576 elements \(the limit"
    start = time.perf_counter()
    with pytest.raises(CheckpointError, match=expected) as err:
        read_pickle(path)
    assert time.perf_counter() - start < 1.0
    assert str(path) in str(err.value) and "nothing was allocated" in str(err.value)


def test_repeated_small_expansions_share_one_budget(tmp_path):
    """Each list(range(2**20)) is allowed alone; hundreds of them in one file are not (a total per load)."""
    steps = range(1 << 20)
    path = tmp_path / "m.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "x": [Reduce(list, steps) for _ in range(100)]}, path)
    assert path.stat().st_size < 20_000
    start = time.perf_counter()
    with pytest.raises(CheckpointError, match=r"`builtins.list` to make about \d+ bytes, past the limit"):
        read_pickle(path)
    assert time.perf_counter() - start < 1.0
    one = tmp_path / "one.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "x": Reduce(list, steps), "b": Reduce(bytearray, b"ab")}, one)
    assert len(read_pickle(one)["x"]) == 1 << 20 and read_pickle(one)["b"] == bytearray(b"ab")


# --- keys that take ages to hash -------------------------------------------------------------------------------------

def _tuple_bomb(levels: int = 26) -> bytes:
    """The pickled body of ``x = (x, x)`` nested ``levels`` deep: tuples cache no hash, so hashing it visits 2**levels
    items (26 levels: about a second; 40 levels, a few hundred bytes, would take hours)."""
    x: tuple = ()
    for _ in range(levels):
        x = (x, x)
    return pickle.dumps(x, protocol=2)[2:-1]  # no PROTO, no STOP; memo indices from 0


_KEY = _tuple_bomb()
_HASH_BOMBS = {
    "dict key (SETITEM)": b"\x80\x02}" + _KEY + b"K\x01s.",
    "dict key (SETITEMS)": b"\x80\x02}(" + _KEY + b"K\x01u.",
    "dict key (DICT)": b"(" + _KEY + b"K\x01d.",
    "set element (ADDITEMS)": b"\x80\x04\x8f(" + _KEY + b"\x90.",
    "frozenset element (FROZENSET)": b"\x80\x04(" + _KEY + b"\x91.",
    "set(list)": b"\x80\x02" + _global("builtins", "set") + b"]" + _KEY + b"a\x85R.",
    "dict(pairs)": b"\x80\x02" + _global("builtins", "dict") + b"]" + _KEY + b"K\x01\x86a\x85R.",
    "storage key (persistent id)": b"\x80\x02(" + _str("storage") + _global("torch", "FloatStorage") + _KEY
                                   + _str("cpu") + b"K\x01tQ.",  # torch looks the key up in a dict
}


@pytest.mark.parametrize("layout", ["zip", "raw"])
@pytest.mark.parametrize("bomb", list(_HASH_BOMBS))
def test_keys_that_take_ages_to_hash_are_refused(tmp_path, bomb, layout):
    path = tmp_path / ("m.ckpt" if layout == "zip" else "m.pt")
    _write(path, _HASH_BOMBS[bomb], layout)
    assert path.stat().st_size < 2_000
    start = time.perf_counter()
    with pytest.raises(CheckpointError, match=r"more than 10000 nested tuple items .* take ages to hash") as err:
        read_pickle(path)
    assert time.perf_counter() - start < 1.0
    assert str(path) in str(err.value)


# --- 5. memory bombs through torch's and numpy's sized classes, persistent ids, views and codecs --------------------
# Each pickle below is hand-made (< 2 KB) and asks for 2 GiB or more: the old reader passed the call on, and torch or
# numpy tried to allocate it (sizes of 2**33 elements fail fast there for want of memory, rather than allocating).

_G = 1 << 33  # elements
_BYTES_LIMIT = r"to make about \d+ bytes, past the limit of \d+ bytes"


def _body(value) -> bytes:
    """``value`` pickled without PROTO and STOP, to splice into a hand-made pickle (its memo entries are its own)."""
    return pickle.dumps(value, protocol=2)[2:-1]


def _call(module: str, name: str, *args: bytes) -> bytes:
    """REDUCE ``module.name(*args)``, each argument already pickled (``_body``, ``_global``, ``_call``)."""
    return _global(module, name) + b"(" + b"".join(args) + b"tR"


def _refused(tmp_path, body: bytes, layout: str, expected: str, error=CheckpointError) -> str:
    """Write ``body`` as a pickle in ``layout`` and check that loading it is refused quickly with ``expected``."""
    path = tmp_path / ("m.ckpt" if layout == "zip" else "m.pt")
    data = b"\x80\x02" + body + b"."
    assert len(data) < 2_000
    if layout == "legacy":
        _legacy_file(path, data)
    else:
        _write(path, data, layout)
    start = time.perf_counter()
    with pytest.raises(error, match=expected) as err:
        read_pickle(path)
    assert time.perf_counter() - start < 0.5
    assert str(path) in str(err.value)
    return str(err.value)


_TORCH_BOMBS = {
    "UntypedStorage(2**33)": _call("torch.storage", "UntypedStorage", _body(_G)),
    "TypedStorage(2**33)": _call("torch.storage", "TypedStorage", _body(_G)),  # float32, the default dtype
    "FloatTensor(2**33)": _call("torch", "FloatTensor", _body(_G)),
    "Tensor(2**31, 4)": _call("torch", "Tensor", _body(1 << 31), _body(4)),
    "LongTensor(Size([2**16, 2**17]))": _call("torch", "LongTensor", _call("torch", "Size", _body((1 << 16, 1 << 17)))),
    "BFloat16Tensor(nested shared lists)": _call("torch", "BFloat16Tensor", _body(_bomb(33, [0, 0]))),  # 2**34 zeros
    "Tensor.__new__ (NEWOBJ)": _global("torch", "Tensor") + _body((_G,)) + b"\x81",
    "FloatTensor (OBJ)": b"(" + _global("torch", "FloatTensor") + _body(_G) + b"o",
    "UntypedStorage via copyreg.__newobj__": _call("copyreg", "__newobj__", _global("torch.storage", "UntypedStorage"),
                                                   _body(_G)),
    "FloatTensor via _rebuild_from_type_v2": _call("torch._tensor", "_rebuild_from_type_v2",
                                                   _global("torch", "FloatTensor"), _global("torch", "Tensor"),
                                                   _body((_G,)), b"}"),
    "TypedStorage via copyreg._reconstructor": _call("copyreg", "_reconstructor",
                                                     _global("torch.storage", "TypedStorage"),
                                                     _global("torch.storage", "TypedStorage"), _body(_G)),
}  # torch.FloatStorage & co. are inert StorageType objects in the allow-list: only TypedStorage makes typed storages


_HOSTILE_TYPED_STORAGE = pytest.mark.filterwarnings("ignore:TypedStorage is deprecated")  # the pickles' own calls


@_HOSTILE_TYPED_STORAGE
@pytest.mark.parametrize("layout", ["zip", "raw"])
@pytest.mark.parametrize("case", list(_TORCH_BOMBS))
def test_sized_torch_constructors_are_refused(tmp_path, case, layout):
    message = _refused(tmp_path, _TORCH_BOMBS[case], layout, _BYTES_LIMIT)
    assert "nothing was allocated" in message and "calls `" in message


_NUMPY_BOMBS = {
    "ndarray((2**33,))": _call("numpy", "ndarray", _body((_G,))),
    "ndarray.__new__ (NEWOBJ)": _global("numpy", "ndarray") + _body(((_G,),)) + b"\x81",
    "ndarray.__new__(shape=) (NEWOBJ_EX)": _global("numpy", "ndarray") + b")" + _body({"shape": (_G,)}) + b"\x92",
    "_reconstruct (numpy 1 name)": _call("numpy.core.multiarray", "_reconstruct", _global("numpy", "ndarray"),
                                         _body((_G,)), _body("f8")),
    "_reconstruct (numpy 2 name)": _call("numpy._core.multiarray", "_reconstruct", _global("numpy", "ndarray"),
                                         _body((_G,)), _body("f8")),
    "scalar(dtype('V2147483647'))": _body(Reduce(np.core.multiarray.scalar if not hasattr(np, "_core")
                                                 else np._core.multiarray.scalar, np.dtype("V2147483647"))),
    "ndarray via copyreg._reconstructor": _call("copyreg", "_reconstructor", _global("numpy", "ndarray"),
                                                _global("numpy", "ndarray"), _body((_G,))),
    "ndarray via _rebuild_from_type_v2": _call("torch._tensor", "_rebuild_from_type_v2", _global("numpy", "ndarray"),
                                               _global("numpy", "ndarray"), _body(((_G,),)), b"}"),
}


@pytest.mark.parametrize("layout", ["zip", "raw"])
@pytest.mark.parametrize("case", list(_NUMPY_BOMBS))
def test_sized_numpy_constructors_are_refused(tmp_path, case, layout):
    assert "nothing was allocated" in _refused(tmp_path, _NUMPY_BOMBS[case], layout, _BYTES_LIMIT)


_BAD_SIZES = {
    "FloatTensor(-1)": (_call("torch", "FloatTensor", _body(-1)), r"with a negative size \(-1\)"),
    "ndarray of 65 dimensions": (_call("numpy", "ndarray", _body((1,) * 65)),
                                 r"with a shape of 65 dimensions \(the limit is 64\)"),
    "Tensor(65 sizes)": (_call("torch", "Tensor", *[_body(1)] * 65), r"with 65 sizes \(the limit is 64\)"),
}


@pytest.mark.parametrize("layout", ["zip", "raw"])
@pytest.mark.parametrize("case", list(_BAD_SIZES))
def test_negative_sizes_and_too_many_dimensions_are_refused(tmp_path, case, layout):
    body, expected = _BAD_SIZES[case]
    assert "nothing was allocated" in _refused(tmp_path, body, layout, expected)


def _legacy_file(path, data_pkl: bytes) -> None:
    """A legacy (non-zip) torch file whose main pickle is ``data_pkl`` (torch's Unpickler subclass, persistent ids
    ``('storage', type, key, location, numel, view)``)."""
    header = (torch.serialization.MAGIC_NUMBER, torch.serialization.PROTOCOL_VERSION,
              {"protocol_version": 1001, "little_endian": True, "type_sizes": {"short": 2, "int": 4, "long": 4}})
    path.write_bytes(b"".join(pickle.dumps(value, protocol=2) for value in header) + data_pkl
                     + pickle.dumps(["0"], protocol=2))


def _storage_id(numel: int, layout: str, storage_type: str = "FloatStorage") -> bytes:
    """BINPERSID of storage "0" (in the zip layout, a real record of 4 float32s) said to hold ``numel`` elements."""
    view = b"N" if layout == "legacy" else b""  # the legacy layout adds view metadata
    return (b"(" + _str("storage") + _global("torch", storage_type) + _str("0") + _str("cpu") + _body(numel)
            + view + b"tQ")


@pytest.mark.parametrize("layout", ["zip", "legacy"])
def test_storage_sizes_in_persistent_ids_are_charged(tmp_path, layout):
    """The storage a persistent id declares is charged (numel x element size) before torch allocates it: the legacy
    reader allocates it outright (the zip reader first compares it with the record's size)."""
    message = _refused(tmp_path, _storage_id(_G, layout), layout, r"asks torch for storage '0' \(8589934592 elements "
                       r"of torch.float32\) to make about 34359738368 bytes, past the limit of \d+ bytes")
    assert "nothing was allocated" in message
    _refused(tmp_path, _storage_id(-4, layout), layout, r"storage '0' with a negative size \(-4\)")


@pytest.mark.parametrize("legacy", [False, True])
def test_views_and_tied_weights_charge_their_storage_once(tmp_path, legacy):
    """Guard: 150 views of one 1 MiB storage (150 MiB if each were charged) and a tied weight load as torch's own
    ``weights_only`` loader reads them."""
    base = torch.arange(1 << 18, dtype=torch.float32)
    state = {**{f"v{i}": base[i:i + 1000] for i in range(150)}, "base": base, "tied": base,
             "expanded": torch.arange(3.0).expand(1000, 3)}
    path = tmp_path / "m.ckpt"
    torch.save(state, path, _use_new_zipfile_serialization=not legacy)
    got, want = read_pickle(path), torch.load(path, weights_only=True)
    assert got.keys() == want.keys() and got["tied"] is got["base"]
    assert all(torch.equal(got[k], want[k]) and got[k].stride() == want[k].stride() for k in want)


def _storage_of_4(layout: str, storage_type: str = "FloatStorage") -> bytes:
    """4 elements a view can reach past: a legacy file's storage (resizable), or one TypedStorage makes (float32)."""
    if layout == "legacy":
        return _storage_id(4, layout, storage_type)
    return _call("torch.storage", "TypedStorage", _body(4))


_VIEW_BOMBS = {
    "_rebuild_tensor_v2 past its storage": lambda layout: _call(
        "torch._utils", "_rebuild_tensor_v2", _storage_of_4(layout), _body(0), _body((_G,)), _body((1,)),
        _body(False), _call("collections", "OrderedDict")),
    "Tensor BUILD (set_) past its storage": lambda layout: _call("torch", "Tensor") + b"(" + _storage_of_4(layout)
                                                           + _body(0) + _body((_G,)) + _body((1,)) + b"tb",
    "_rebuild_qtensor past its storage": lambda layout: _call(
        "torch._utils", "_rebuild_qtensor", _storage_of_4(layout, "QInt8Storage"), _body(0), _body((_G,)),
        _body((1,)), _global("torch", "per_tensor_affine") + _body(1.0) + _body(0) + b"\x87", _body(False),
        _call("collections", "OrderedDict")),
}


@_HOSTILE_TYPED_STORAGE
@pytest.mark.parametrize("case,layout", [(case, layout) for case in _VIEW_BOMBS for layout in ("zip", "raw", "legacy")
                                         if layout == "legacy" or "qtensor" not in case])  # qint8: only a pid makes it
def test_views_past_their_storage_are_refused(tmp_path, case, layout):
    """A view past its storage's end makes ``Tensor.set_`` grow the storage: any storage of a legacy file, or one a
    constructor made (a zip file's own storages cannot grow)."""
    assert "nothing was allocated" in _refused(tmp_path, _VIEW_BOMBS[case](layout), layout, _BYTES_LIMIT)


def _doubling_path(levels: int = 40):
    path = "a"
    for _ in range(levels):
        path = Reduce(pathlib.PurePosixPath, path, path)  # shared: its text doubles at each level
    return path


_TEXT_BOMBS = {
    "str(shared list)": (_body(Reduce(str, _bomb())), r"calls `builtins.str` on a list; only strings, bytes, "
                                                      r"numbers and paths are allowed"),
    "PurePosixPath(p, p) doubling": (_body(_doubling_path()), r"calls `pathlib.PurePosixPath` to make a path of "
                                                              r"more than 65536 characters \(the limit\)"),
}


@pytest.mark.parametrize("layout", ["zip", "raw"])
@pytest.mark.parametrize("case", list(_TEXT_BOMBS))
def test_text_that_doubles_through_sharing_is_refused(tmp_path, case, layout):
    body, expected = _TEXT_BOMBS[case]
    assert "nothing was" in _refused(tmp_path, body, layout, expected)


_CODEC_CALLS = {
    "_codecs.encode": _call("_codecs", "encode", _body("x"), _body("hz")),
    "bytes": _call("builtins", "bytes", _body("x"), _body("hz")),
    "bytearray": _call("builtins", "bytearray", _body("x"), _body("hz")),
    "str": _call("builtins", "str", _call("builtins", "bytes", _body([120])), _body("hz")),
}


@pytest.mark.parametrize("layout", ["zip", "raw"])
@pytest.mark.parametrize("case", list(_CODEC_CALLS))
def test_codecs_other_than_latin1_ascii_utf8_are_refused(tmp_path, case, layout):
    """Any other codec name imports an ``encodings`` module (here ``encodings.hz``, with a C extension)."""
    imported = "encodings.hz" in sys.modules
    _refused(tmp_path, _CODEC_CALLS[case], layout, r"with the codec 'hz'; only ascii, iso-8859-1, latin-1, latin1, "
             r"utf-8, utf8 are allowed \(others import an `encodings` module\); nothing was run", UnsafeCheckpointError)
    assert imported or "encodings.hz" not in sys.modules
    path = tmp_path / "ok.pt"
    _write(path, b"\x80\x02" + _call("_codecs", "encode", _body("\xe9"), _body("UTF-8")) + b".", "zip")
    assert read_pickle(path) == b"\xc3\xa9"


def _mixed_state_dict(count: int = 400) -> dict:
    g = torch.Generator().manual_seed(0)
    dtypes = (torch.float16, torch.bfloat16, torch.int64, torch.bool)
    state = {}
    for i in range(count):
        x = torch.randn(1 + i % 7, 1 + i % 5, generator=g) * 100
        state[f"layer{i}.w"] = x > 0 if dtypes[i % 4] is torch.bool else x.to(dtypes[i % 4])
    tagged = torch.ones(3)
    tagged.tag = "ema"  # a tensor with attributes pickles through _rebuild_from_type_v2
    return {**state, "tied": state["layer0.w"], "view": state["layer9.w"][1:, :2], "tagged": tagged,
            "expanded": torch.arange(5.0).expand(4, 5), "param": torch.nn.Parameter(torch.full((2,), 0.5))}


@pytest.mark.parametrize("legacy", [False, True])
def test_freshly_saved_mixed_dtype_files_load_as_torch_does(tmp_path, legacy):
    """Guard: 400 tensors (fp16, bf16, int64, bool), tied, a view, a stride-0 view, a tagged tensor and a Parameter
    load as torch's own ``weights_only`` loader reads them; numpy arrays (big-endian, objects) still load too."""
    path, extra = tmp_path / "m.ckpt", tmp_path / "np.ckpt"
    torch.save(_mixed_state_dict(), path, _use_new_zipfile_serialization=not legacy)
    got, want = read_pickle(path), torch.load(path, weights_only=True)
    assert got.keys() == want.keys() and got["tied"] is got["layer0.w"] and got["tagged"].tag == "ema"
    for key, value in want.items():
        assert type(got[key]) is type(value) and got[key].dtype == value.dtype, key
        assert got[key].stride() == value.stride() and torch.equal(got[key], value), key
    arrays = {"be": np.arange(6, dtype=">f8").reshape(2, 3), "obj": np.array([1, "a", None], dtype=object)}
    torch.save(arrays, extra, _use_new_zipfile_serialization=not legacy)
    loaded = read_pickle(extra)
    assert loaded["be"].dtype == pickle.loads(pickle.dumps(arrays["be"])).dtype  # numpy's own round trip
    assert np.array_equal(loaded["be"], arrays["be"])
    assert list(loaded["obj"]) == [1, "a", None]
