"""Tests for latent_diffusion.safe_load: safetensors validation, the allow-list unpickler, atomic saves."""

from __future__ import annotations

import builtins
import functools
import hashlib
import json
import os
import pickle
import struct
import subprocess

import numpy as np
import pytest
import torch

from latent_diffusion.errors import CheckpointError, UnsafeCheckpointError
from latent_diffusion.safe_load import (
    InertObject,
    file_fingerprint,
    read_pickle,
    read_state_dict,
    save_safetensors_atomic,
)

TOUCHED: list[str] = []  # anything the "real" classes below do while being unpickled lands here


class UnknownCallback:
    """Stands for a Lightning callback / config class: it exists here, but loading must never touch it."""

    def __new__(cls, *args, **kwargs):
        TOUCHED.append("__new__")
        return super().__new__(cls)

    def __init__(self, best=0.0):
        self.best = best

    def __setstate__(self, state):
        TOUCHED.append("__setstate__")
        self.__dict__.update(state)


def record_call(*args):
    TOUCHED.append(f"record_call{args}")
    return args


class CallsFunction:
    """Pickles as a call of a module function that exists here (like ``ldm.util.instantiate_from_config``)."""

    def __reduce__(self):
        return (record_call, ("instantiate", {"target": "os.system"}))


class Payload:
    """A malicious object: pickling records ``callable(*args)``, so unpickling it would run the call."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return (self.fn, self.args)


@pytest.fixture(autouse=True)
def _reset_touched():
    TOUCHED.clear()
    yield
    TOUCHED.clear()


def _tensors(dtype=torch.float32):
    gen = torch.Generator().manual_seed(0)
    return {"model.diffusion_model.out.0.weight": torch.randn(4, 3, generator=gen).to(dtype),
            "first_stage_model.bias": torch.randn(5, generator=gen).to(dtype)}


def _assert_same(actual, expected):
    assert actual.keys() == expected.keys()
    for key, tensor in expected.items():
        assert actual[key].dtype == tensor.dtype and torch.equal(actual[key], tensor), key


def _write_safetensors(path, header: bytes, data: bytes = b"") -> None:
    path.write_bytes(struct.pack("<Q", len(header)) + header + data)


# --- safetensors --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_safetensors_round_trip_with_metadata(tmp_path, dtype):
    tensors = _tensors(dtype)
    path = save_safetensors_atomic(tensors, tmp_path / "m.safetensors", metadata={"format": "pt", "step": "7"})
    loaded, extras = read_state_dict(path)
    _assert_same(loaded, tensors)
    assert extras == {"format": "pt", "step": "7"}
    assert os.listdir(tmp_path) == ["m.safetensors"]  # no temp file left behind


def test_reading_into_memory_gives_the_same_tensors(tmp_path):
    """mmap=False: every dtype, 0-d and empty tensors, read by plain file reads into fresh storages."""
    g = torch.Generator().manual_seed(0)
    tensors = {f"t.{d}": (torch.randn(3, 5, generator=g) * 10).to(d) for d in
               (torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.int32, torch.int8,
                torch.uint8, torch.bool, torch.float8_e4m3fn)}
    tensors |= {"scalar": torch.tensor(3.5), "empty": torch.zeros(0, 4), "big": torch.randn(1000, 257, generator=g)}
    path = save_safetensors_atomic(tensors, tmp_path / "m.safetensors", metadata={"k": "v"})
    loaded, extras = read_state_dict(path, mmap=False)
    assert loaded.keys() == tensors.keys() and extras == {"k": "v"}
    for key, tensor in tensors.items():
        assert loaded[key].dtype == tensor.dtype and loaded[key].shape == tensor.shape, key
        bits = [t.reshape(-1).view(torch.uint8) for t in (loaded[key], tensor)]
        assert torch.equal(*bits), key  # bitwise (fp8 too)
    storages = {t.untyped_storage().data_ptr() for t in loaded.values() if t.numel()}
    assert len(storages) == len(tensors) - 1  # one storage each: freeing or replacing one frees its memory


def _rss_file_kib() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("RssFile:"))


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs Linux /proc")
def test_reading_into_memory_maps_nothing(tmp_path):
    """A mapped file's pages count in RSS as long as any of its tensors lives (on top of converted copies)."""
    path = save_safetensors_atomic({f"w{i}": torch.randn(1024, 1024) for i in range(16)}, tmp_path / "m.safetensors")
    before = _rss_file_kib()
    loaded, _ = read_state_dict(path, mmap=False)
    assert sum(float(t.sum()) for t in loaded.values()) != 0  # touch every page
    assert _rss_file_kib() - before < 16 * 1024  # 64 MiB of tensors, none of it file-backed
    del loaded
    mapped, _ = read_state_dict(path)
    sum(float(t.sum()) for t in mapped.values())
    if _rss_file_kib() - before < 48 * 1024:
        pytest.skip("this safetensors build does not map files; nothing to compare against")


def test_save_handles_shared_and_non_contiguous_tensors(tmp_path):
    base = torch.arange(16.0).reshape(4, 4)
    tensors = {"a": base, "tied": base, "t": base.t(), "row": base[1]}
    before = base.clone()
    path = save_safetensors_atomic(tensors, tmp_path / "shared.safetensors")
    loaded, _ = read_state_dict(path)
    _assert_same(loaded, {k: v.contiguous() for k, v in tensors.items()})
    assert torch.equal(base, before)


def test_saved_file_mode_follows_the_umask(tmp_path):
    """safetensors writes 0600 files; ours are readable like any other file the user makes (umask 022 -> 0644)."""
    old = os.umask(0o022)
    try:
        path = save_safetensors_atomic({"a": torch.zeros(2)}, tmp_path / "m.safetensors")
    finally:
        os.umask(old)
    assert os.stat(path).st_mode & 0o777 == 0o644


def test_save_refuses_to_overwrite_unless_asked(tmp_path):
    path = tmp_path / "m.safetensors"
    save_safetensors_atomic(_tensors(), path)
    original = path.read_bytes()
    with pytest.raises(CheckpointError, match="overwrite=True") as err:
        save_safetensors_atomic({"x": torch.ones(2)}, path)
    assert str(path) in str(err.value)
    assert path.read_bytes() == original
    save_safetensors_atomic({"x": torch.ones(2)}, path, overwrite=True)
    assert read_state_dict(path)[0].keys() == {"x"}
    assert os.listdir(tmp_path) == ["m.safetensors"]


def test_failed_save_removes_temp_file_and_keeps_original(tmp_path, monkeypatch):
    import safetensors.torch

    path = tmp_path / "m.safetensors"
    save_safetensors_atomic(_tensors(), path)
    original = path.read_bytes()

    def broken_save_file(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", broken_save_file)
    with pytest.raises(CheckpointError, match=r"cannot write .*m\.safetensors: disk full"):  # one line, no traceback
        save_safetensors_atomic({"x": torch.ones(2)}, path, overwrite=True)
    assert path.read_bytes() == original
    assert os.listdir(tmp_path) == ["m.safetensors"]


@pytest.mark.parametrize("tensors, metadata, match", [
    ({"x": [1.0, 2.0]}, None, "'x' is a list"),
    ({"x": torch.ones(1)}, {"step": 3}, "metadata must be a dict of str -> str"),
])
def test_save_rejects_bad_input(tmp_path, tensors, metadata, match):
    with pytest.raises(CheckpointError, match=match):
        save_safetensors_atomic(tensors, tmp_path / "bad.safetensors", metadata=metadata)
    assert os.listdir(tmp_path) == []


def test_save_into_missing_folder_names_it(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        save_safetensors_atomic(_tensors(), tmp_path / "nope" / "m.safetensors")


def _truncated(path):
    save_safetensors_atomic(_tensors(), path)
    data = path.read_bytes()
    path.write_bytes(data[:-10])
    return f"needs {len(data)} bytes but the file has {len(data) - 10}"


@pytest.mark.parametrize("make, match", [
    (lambda p: p.write_bytes(b""), "empty"),
    (lambda p: p.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 123\n"), "git lfs pull"),
    (lambda p: p.write_bytes(struct.pack("<Q", 2**40) + b"{}"), "huge header"),
    (lambda p: p.write_bytes(struct.pack("<Q", 500) + b"{}"), "huge header"),
    (lambda p: p.write_bytes(b"abc"), "huge header"),
    (lambda p: _write_safetensors(p, b"{not json"), "not valid JSON"),
    (lambda p: _write_safetensors(p, b"[1, 2]"), "expected an object"),
    (lambda p: _write_safetensors(p, json.dumps({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, "8"]}})
                                  .encode(), b"\0" * 8), "data_offsets"),
    (lambda p: _write_safetensors(p, json.dumps({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}})
                                  .encode(), b"\0" * 8), "truncated"),
    (_truncated, None),
    (lambda p: _write_safetensors(p, json.dumps({"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}})
                                  .encode(), b"\0" * 8), "could not read"),  # the library's own shape check
])
def test_broken_safetensors_name_the_path(tmp_path, make, match):
    path = tmp_path / "broken.safetensors"
    expected = make(path)  # only _truncated returns a message fragment
    with pytest.raises(CheckpointError) as err:
        read_state_dict(path)
    assert str(path) in str(err.value)
    assert (match or expected) in str(err.value)


def test_missing_file_and_unknown_extension(tmp_path):
    with pytest.raises(CheckpointError, match="not found") as err:
        read_state_dict(tmp_path / "missing.safetensors")
    assert str(tmp_path / "missing.safetensors") in str(err.value)
    (tmp_path / "model.onnx").write_bytes(b"x")
    with pytest.raises(CheckpointError, match=r"'\.onnx'.*\.safetensors, \.ckpt, \.pt, \.pth, \.bin"):
        read_state_dict(tmp_path / "model.onnx")


# --- pickle checkpoints ---------------------------------------------------------------------------------------------

def _lightning_checkpoint():
    return {
        "epoch": 3,
        "global_step": 1234,
        "pytorch-lightning_version": "1.4.2",
        "best_score": np.float64(0.5),
        "callbacks": {"UnknownCallback": UnknownCallback(best=np.float32(0.25))},
        "optimizer_states": [{"state": {0: {"exp_avg": torch.zeros(2)}}}],
        "state_dict": {**_tensors(), "_metadata_version": 1},
    }


def test_lightning_checkpoint_keeps_tensors_and_plain_extras(tmp_path):
    path = tmp_path / "model.ckpt"
    torch.save(_lightning_checkpoint(), path)
    TOUCHED.clear()  # torch.save itself ran __new__ while building the checkpoint
    tensors, extras = read_state_dict(path)
    _assert_same(tensors, _tensors())
    assert extras["global_step"] == 1234 and extras["epoch"] == 3
    assert extras["best_score"] == 0.5 and type(extras["best_score"]) is float
    assert extras["pytorch-lightning_version"] == "1.4.2"
    assert extras["skipped_entries"] == ["callbacks", "optimizer_states"]
    assert extras["dropped_keys"] == ["_metadata_version"]
    assert TOUCHED == []


def test_unknown_class_becomes_inert_placeholder(tmp_path):
    path = tmp_path / "model.ckpt"
    torch.save(_lightning_checkpoint(), path)
    TOUCHED.clear()
    callback = read_pickle(path)["callbacks"]["UnknownCallback"]
    assert isinstance(callback, InertObject) and not isinstance(callback, UnknownCallback)
    assert callback.qualified_name == f"{UnknownCallback.__module__}.UnknownCallback"
    assert callback.state["best"] == np.float32(0.25)  # numpy scalars load for real
    assert TOUCHED == []


def test_reduce_of_placeholder_stays_inert(tmp_path):
    path = tmp_path / "model.pt"
    torch.save({"w": torch.ones(1), "factory": CallsFunction(), "error": ValueError("kept as data")}, path)
    obj = read_pickle(path)
    assert TOUCHED == []
    assert isinstance(obj["factory"], InertObject) and obj["factory"].args == ("instantiate", {"target": "os.system"})
    assert obj["error"].qualified_name == "builtins.ValueError"  # unknown builtin *classes* are inert too
    assert isinstance(obj["factory"]("again"), InertObject)


def test_plain_and_legacy_formats(tmp_path):
    for name, legacy in (("flat.pth", False), ("legacy.pt", True)):
        path = tmp_path / name
        torch.save(_tensors(), path, _use_new_zipfile_serialization=not legacy)
        tensors, extras = read_state_dict(path)
        _assert_same(tensors, _tensors())
        assert extras == {}


def test_parameters_and_numpy_arrays(tmp_path):
    path = tmp_path / "m.bin"
    torch.save({"p": torch.nn.Parameter(torch.ones(2)), "arr": np.arange(3)}, path)
    tensors, extras = read_state_dict(path)
    assert type(tensors["p"]) is torch.Tensor and not tensors["p"].requires_grad
    assert extras == {"dropped_keys": ["arr"]}
    assert np.array_equal(read_pickle(path)["arr"], np.arange(3))


def _marker_payloads(marker):
    return {
        "os.system": Payload(os.system, f"touch {marker}"),
        "builtins.exec": Payload(builtins.exec, f"open({str(marker)!r}, 'w').close()"),
        "builtins.eval": Payload(builtins.eval, f"open({str(marker)!r}, 'w')"),
        "subprocess.Popen": Payload(subprocess.Popen, ["touch", str(marker)]),
        "functools.partial": Payload(functools.partial(os.system, f"touch {marker}")),
        "builtins.print": Payload(print, "hi"),
    }


@pytest.mark.parametrize("payload", ["os.system", "builtins.exec", "builtins.eval", "subprocess.Popen",
                                     "functools.partial", "builtins.print"])
@pytest.mark.parametrize("layout", ["top", "state_dict", "legacy"])
def test_malicious_pickles_are_refused_before_running(tmp_path, payload, layout):
    marker = tmp_path / "pwned"
    evil = _marker_payloads(marker)[payload]
    obj = {"state_dict": {"w": torch.ones(2), "evil": evil}} if layout == "state_dict" else evil
    path = tmp_path / "evil.ckpt"
    torch.save(obj, path, _use_new_zipfile_serialization=layout != "legacy")
    with pytest.raises(UnsafeCheckpointError) as err:
        read_state_dict(path)
    message = str(err.value)
    assert str(path) in message and ".safetensors" in message
    assert payload.split(".")[-1] in message  # names the refused global (os.system pickles as posix.system)
    assert not marker.exists()


def test_raw_pickle_payload_is_real_but_refused(tmp_path):
    marker = tmp_path / "pwned"
    data = pickle.dumps(_marker_payloads(marker)["builtins.exec"], protocol=0)
    path = tmp_path / "raw.pt"
    path.write_bytes(data)
    with pytest.raises(UnsafeCheckpointError, match="builtins.exec"):
        read_state_dict(path)
    assert not marker.exists()
    pickle.loads(data)  # the same bytes through plain pickle do run: the payload is real
    assert marker.exists()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit.script/save are deprecated
def test_torchscript_archive_is_refused(tmp_path):
    path = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), path)
    with pytest.raises(UnsafeCheckpointError, match="TorchScript"):
        read_state_dict(path)


@pytest.mark.parametrize("make, match", [
    (lambda p: p.write_bytes(b""), "empty"),
    (lambda p: p.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:abc\n"), "git lfs pull"),
    (lambda p: p.write_bytes(b"not a checkpoint at all"), "could not read"),
    (lambda p: (torch.save(_tensors(), p), p.write_bytes(p.read_bytes()[:200])), "could not read"),
    (lambda p: torch.save([torch.ones(1)], p), "holds a list"),
    (lambda p: torch.save({"state_dict": {"step": 1}}, p), "contains no tensors"),
])
def test_broken_pickle_checkpoints_name_the_path(tmp_path, make, match):
    path = tmp_path / "broken.ckpt"
    make(path)
    with pytest.raises(CheckpointError, match=match) as err:
        read_state_dict(path)
    assert str(path) in str(err.value)
    assert not isinstance(err.value, UnsafeCheckpointError)


# --- fingerprint ----------------------------------------------------------------------------------------------------

def test_file_fingerprint_is_short_sha256(tmp_path):
    path = tmp_path / "m.safetensors"
    path.write_bytes(os.urandom(3 << 20))
    assert file_fingerprint(path) == hashlib.sha256(path.read_bytes()).hexdigest()[:10]
    with pytest.raises(CheckpointError, match="missing"):
        file_fingerprint(tmp_path / "missing.ckpt")
