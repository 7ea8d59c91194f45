"""TensorRT engine cache without TensorRT: key and file names, what invalidates an engine and the
logged reason (cached vs current), corrupt files rebuilt rather than crashing, I/O validation,
the optimisation profile from the ONNX input, and the missing-package errors."""

import hashlib
import importlib.util
import json
import logging
import sys
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from rpl_perception.backends import DeploymentSpec
from rpl_perception.backends.common import BackendUnavailable
from rpl_perception.backends.engine_cache import (
    EngineCache,
    EngineKey,
    InputProfile,
    compare_io,
    images_sha256,
    onnx_io,
)
from rpl_perception.backends.tensorrt_backend import cuda_runtime, import_tensorrt
from rpl_perception.backends.tensorrt_build import _input_profile, tensorrt_available

HAS_TENSORRT = tensorrt_available()  # not find_spec: tensorrt-stubs install an empty 'tensorrt'


def write_onnx(path, batch="batch", scope="scoring"):
    """A tiny graph with the exported model's I/O: images (B,64,128,3) uint8 → labels, anomaly,
    its nodes named in ``scope`` as the exported scoring head's are (None: unnamed)."""
    images = helper.make_tensor_value_info("images", TensorProto.UINT8, [batch, 64, 128, 3])
    labels = helper.make_tensor_value_info("labels", TensorProto.UINT8, [batch, 64, 128])
    anomaly = helper.make_tensor_value_info("anomaly", TensorProto.FLOAT, [batch, 64, 128])
    names = [f"/{scope}/ReduceMax", f"/{scope}/Cast"] if scope else ["", ""]
    nodes = [helper.make_node("ReduceMax", ["images"], ["labels"], axes=[3], keepdims=0, name=names[0]),
             helper.make_node("Cast", ["labels"], ["anomaly"], to=TensorProto.FLOAT, name=names[1])]
    graph = helper.make_graph(nodes, "g", [images], [labels, anomaly])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


IO = {"images": {"mode": "input", "shape": [-1, 64, 128, 3], "dtype": "uint8"},
      "labels": {"mode": "output", "shape": [-1, 64, 128], "dtype": "uint8"},
      "anomaly": {"mode": "output", "shape": [-1, 64, 128], "dtype": "float32"}}


def make_key(**changes):
    fields = dict(onnx_sha256="ab" * 32, tensorrt_version="10.3.0", gpu_name="NVIDIA RTX A2000",
                  compute_capability="8.6", precision="fp16",
                  profile=(InputProfile.for_batches("images", (64, 128, 3), 1, 2, 4),))
    fields.update(changes)
    return EngineKey(**fields)


class FakeTensorRT:
    """Stands in for build / deserialize / describe_io; engines are dicts parsed from bytes."""

    def __init__(self, io=IO):
        self.builds = 0
        self.io = io

    def build(self):
        self.builds += 1
        return json.dumps({"engine": self.builds}).encode()

    def deserialize(self, data):
        try:
            return json.loads(data)
        except ValueError:
            return None  # what TensorRT's runtime returns for a plan it cannot read

    def describe_io(self, engine):
        return self.io


@pytest.fixture
def onnx_file(tmp_path):
    return write_onnx(tmp_path / "model.onnx")


def load(cache, fake, **kwargs):
    return cache.load_or_build(fake.build, fake.deserialize, fake.describe_io, **kwargs)


# --- key ----------------------------------------------------------------------------------------


def test_key_differences_say_cached_vs_current():
    cached = make_key()
    assert cached.differences(make_key()) == []
    current = make_key(tensorrt_version="10.4.0", gpu_name="NVIDIA H100",
                       profile=(InputProfile.for_batches("images", (64, 128, 3), 1, 1, 1),))
    diffs = cached.differences(current)
    assert diffs[0] == "tensorrt_version: cached 10.3.0 vs current 10.4.0"
    assert diffs[1] == "gpu_name: cached NVIDIA RTX A2000 vs current NVIDIA H100"
    assert diffs[2].startswith("profile: cached images (1, 64, 128, 3)/(2, 64, 128, 3)/(4, 64, 128, 3)")
    assert EngineKey.from_json(json.loads(json.dumps(cached.to_json()))) == cached


def test_engine_file_name_and_key_validation():
    onnx = Path("/models/m.onnx")
    assert EngineCache(onnx, make_key()).engine_path == Path("/models/m.fp16.b1-2-4.engine")
    static = make_key(precision="int8",
                      profile=(InputProfile.for_batches("images", (64, 128, 3), 2, 2, 2),))
    assert EngineCache(onnx, static, cache_dir=Path("/cache")).engine_path == Path("/cache/m.int8.b2.engine")
    # the deployment resolves the same name the cache writes
    assert DeploymentSpec(precision="fp16", batch=(1, 2, 4)).engine_file(onnx) == EngineCache(onnx, make_key()).engine_path
    with pytest.raises(ValueError, match="precision must be one of fp32, fp16, int8"):
        make_key(precision="bf16")
    with pytest.raises(ValueError, match="min <= opt <= max"):
        InputProfile.for_batches("images", (64, 128, 3), 4, 2, 8)


def test_engine_stored_beside_the_onnx_file(onnx_file):
    cache = EngineCache(onnx_file, make_key())
    assert cache.engine_path == onnx_file.parent / "model.fp16.b1-2-4.engine"
    assert cache.meta_path.name == "model.fp16.b1-2-4.engine.json"


# --- load or build ------------------------------------------------------------------------------


def test_build_once_then_load(onnx_file, caplog):
    fake = FakeTensorRT()
    cache = EngineCache(onnx_file, make_key())
    with caplog.at_level(logging.INFO, logger="rpl_perception.backends.engine_cache"):
        engine, built = load(cache, fake)
    assert built and engine == {"engine": 1} and fake.builds == 1
    assert "no cached engine" in caplog.text
    meta = json.loads(cache.meta_path.read_text())
    assert meta["key"]["tensorrt_version"] == "10.3.0" and meta["io"] == IO
    engine, built = load(EngineCache(onnx_file, make_key()), fake)
    assert not built and engine == {"engine": 1} and fake.builds == 1
    engine, built = load(EngineCache(onnx_file, make_key()), fake, force=True)
    assert built and fake.builds == 2


@pytest.mark.parametrize("change, reason", [
    (dict(tensorrt_version="10.4.0"), "tensorrt_version: cached 10.3.0 vs current 10.4.0"),
    (dict(onnx_sha256="cd" * 32), "onnx_sha256: cached abab"),
    (dict(compute_capability="8.9"), "compute_capability: cached 8.6 vs current 8.9"),
    (dict(calibration_sha256="ef" * 32), "calibration_sha256: cached (none) vs current efef"),
])
def test_key_mismatch_rebuilds_and_logs_why(onnx_file, caplog, change, reason):
    fake = FakeTensorRT()
    load(EngineCache(onnx_file, make_key()), fake)
    with caplog.at_level(logging.WARNING, logger="rpl_perception.backends.engine_cache"):
        _, built = load(EngineCache(onnx_file, make_key(**change)), fake)
    assert built and fake.builds == 2
    assert reason in caplog.text
    # the rebuilt engine is now the valid one for the new key
    assert not load(EngineCache(onnx_file, make_key(**change)), fake)[1]


@pytest.mark.parametrize("damage, reason", [
    (lambda c: c.engine_path.write_bytes(b"\x00garbage"), "corrupt (sha256 differs"),
    (lambda c: c.meta_path.unlink(), "engine.json is missing"),
    (lambda c: c.meta_path.write_text("{not json"), "is unreadable"),
    (lambda c: c.meta_path.write_text(json.dumps({"engine_sha256": "x"})), "is unreadable"),
])
def test_damaged_cache_is_rebuilt_not_a_crash(onnx_file, caplog, damage, reason):
    fake = FakeTensorRT()
    cache = EngineCache(onnx_file, make_key())
    load(cache, fake)
    damage(cache)
    with caplog.at_level(logging.WARNING, logger="rpl_perception.backends.engine_cache"):
        engine, built = load(EngineCache(onnx_file, make_key()), fake)
    assert built and engine == {"engine": 2}
    assert reason in caplog.text


def test_undeserialisable_engine_is_rebuilt(onnx_file, caplog):
    fake = FakeTensorRT()
    cache = EngineCache(onnx_file, make_key())
    load(cache, fake)
    # a plan whose bytes match its recorded sha256 but that TensorRT rejects (other build, say)
    data = b"plan TensorRT cannot read"
    cache.engine_path.write_bytes(data)
    meta = json.loads(cache.meta_path.read_text())
    meta["engine_sha256"] = hashlib.sha256(data).hexdigest()
    cache.meta_path.write_text(json.dumps(meta))
    with caplog.at_level(logging.WARNING, logger="rpl_perception.backends.engine_cache"):
        _, built = load(EngineCache(onnx_file, make_key()), fake)
    assert built and "could not deserialise" in caplog.text

    def raising(data):
        raise RuntimeError("serialization version mismatch")

    caplog.clear()
    cache.engine_path.write_bytes(data)
    cache.meta_path.write_text(json.dumps(meta))
    with caplog.at_level(logging.WARNING, logger="rpl_perception.backends.engine_cache"):
        # the loader raises on the cached plan but accepts the fresh build
        calls = iter([raising, fake.deserialize])
        engine, built = EngineCache(onnx_file, make_key()).load_or_build(
            fake.build, lambda d: next(calls)(d), fake.describe_io)
    assert built and "RuntimeError: serialization version mismatch" in caplog.text


def test_io_mismatch_rebuilds_and_a_bad_fresh_build_raises(onnx_file, caplog):
    fake = FakeTensorRT()
    cache = EngineCache(onnx_file, make_key())
    load(cache, fake)
    wrong = {**IO, "anomaly": {"mode": "output", "shape": [-1, 32, 64], "dtype": "float32"}}
    stale = FakeTensorRT(io=wrong)
    stale.builds = 5
    # the cached engine reports the wrong shape; the rebuilt one too: that must raise, not loop
    with caplog.at_level(logging.WARNING, logger="rpl_perception.backends.engine_cache"):
        with pytest.raises(RuntimeError, match="does not match its I/O"):
            load(EngineCache(onnx_file, make_key()), stale)
    assert "tensor 'anomaly' shape: engine [-1, 32, 64] vs ONNX [-1, 64, 128]" in caplog.text


def test_unbuildable_engine_raises(onnx_file):
    fake = FakeTensorRT()
    with pytest.raises(RuntimeError, match="could not deserialise the engine it just built"):
        EngineCache(onnx_file, make_key()).load_or_build(lambda: b"x", lambda d: None, fake.describe_io)


# --- I/O and profile ----------------------------------------------------------------------------


def test_onnx_io_and_compare(onnx_file):
    assert onnx_io(onnx_file) == IO
    assert compare_io(IO, IO) == []
    engine = {k: dict(v) for k, v in IO.items() if k != "labels"}
    engine["images"] = {**engine["images"], "shape": [1, 64, 128, 3]}
    engine["logits"] = {"mode": "output", "shape": [-1, 20, 64, 128], "dtype": "float32"}
    assert compare_io(IO, engine) == [
        "tensor 'images' shape: engine [1, 64, 128, 3] vs ONNX [-1, 64, 128, 3]",
        "tensor 'labels': in the ONNX graph, not in the engine",
        "tensor 'logits': in the engine, not in the ONNX graph",
    ]


def test_input_profile_from_the_onnx_input(tmp_path, onnx_file):
    (dynamic,) = _input_profile(onnx_file, (1, 2, 4))
    assert dynamic == InputProfile("images", (1, 64, 128, 3), (2, 64, 128, 3), (4, 64, 128, 3))
    assert _input_profile(onnx_file, None)[0].max == (1, 64, 128, 3)
    static = write_onnx(tmp_path / "static.onnx", batch=2)
    assert _input_profile(static, None)[0].min == (2, 64, 128, 3)
    with pytest.raises(ValueError, match="static batch of 2; export it with --dynamic-batch"):
        _input_profile(static, (1, 2, 4))


def test_calibration_digest_follows_content(tmp_path):
    a, b = tmp_path / "a.jpg", tmp_path / "b.jpg"
    a.write_bytes(b"one")
    b.write_bytes(b"two")
    first = images_sha256([b, a])
    assert first == images_sha256([a, b])  # order-free
    b.write_bytes(b"three")
    assert images_sha256([a, b]) != first


# --- without TensorRT ---------------------------------------------------------------------------


def test_missing_tensorrt_names_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import fails, as without TensorRT
    with pytest.raises(BackendUnavailable, match=r"pip install tensorrt .*pycuda"):
        import_tensorrt()


@pytest.mark.skipif(importlib.util.find_spec("pycuda") is not None, reason="pycuda is installed")
def test_no_gpu_runtime_names_what_to_install():
    import torch

    if torch.cuda.is_available():
        pytest.skip("torch has CUDA here")
    with pytest.raises(BackendUnavailable, match=r"pycuda \(pip install pycuda\) or PyTorch with CUDA"):
        cuda_runtime("cuda:0")
    with pytest.raises(ValueError, match="runs on a CUDA device"):
        cuda_runtime("cpu")


def test_build_engine_command_without_tensorrt(onnx_file, capsys, monkeypatch):
    from rpl_perception.cli import main as cli_main

    monkeypatch.setitem(sys.modules, "tensorrt", None)
    assert cli_main(["build-engine", str(onnx_file), "--precision", "fp16"]) == 2
    assert "needs NVIDIA TensorRT" in capsys.readouterr().err
