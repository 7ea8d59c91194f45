"""The TensorRT backend against a fake TensorRT and a numpy "GPU" (``fake_tensorrt.py``): the order
of tensor addresses, input shapes and executions, dtypes, dynamic-batch chunking, the build
flags (strongly typed fp32, fp16 with the scoring pinned to float32), one logger, an atomic
timing cache, read-only engine folders, int8 without calibration images, the TensorRT-11 refusal,
the memory figure, and ``auto`` falling back on every failure while a named backend reports it."""

import logging
import os
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from fake_tensorrt import FakeGpu, calls, make_tensorrt
from rpl_perception import AnomalySegmenter
from rpl_perception.backends import (
    BackendUnavailable,
    DeploymentSpec,
    OnnxRuntimeBackend,
    TensorRTBackend,
    engine_cache,
    exported_onnx,
    tensorrt_backend,
    tensorrt_build,
)
from rpl_perception.backends.engine_cache import EngineNotBuildable
from test_engine_cache import write_onnx

SMALL = (256, 128)
FRAME = (64, 128)  # the tiny graph's (height, width)


def install(monkeypatch, gpu=None, **kwargs):
    gpu = gpu or FakeGpu()
    trt = make_tensorrt(gpu, **kwargs)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    for module in (tensorrt_build, tensorrt_backend):
        monkeypatch.setattr(module, "cuda_runtime", lambda device="cuda:0", gpu=gpu: gpu)
    return trt, gpu


@pytest.fixture
def fake(monkeypatch):
    return install(monkeypatch)


@pytest.fixture
def tiny_onnx(tmp_path):
    return write_onnx(tmp_path / "model.onnx")


@pytest.fixture(scope="module")
def segmenter():
    return AnomalySegmenter.from_pretrained(network_size=SMALL, score="energy")


@pytest.fixture(scope="module")
def real_onnx(tmp_path_factory, segmenter):
    """The real model's dynamic-batch export (its node names are what the fp16 build pins)."""
    return exported_onnx(segmenter.model, SMALL, dynamic_batch=True,
                         cache_dir=tmp_path_factory.mktemp("onnx"))


def frames(count, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (count, *FRAME, 3), dtype=np.uint8)


def expected(batch):
    return batch[..., 0] % 19, batch[..., 1].astype(np.float32) / 255


# --- running ------------------------------------------------------------------------------------


def test_tensor_addresses_then_shape_then_execute_with_dtypes(fake, tiny_onnx):
    trt, gpu = fake
    backend = TensorRTBackend(tiny_onnx, batch=(1, 2, 4))
    assert backend.built.built and backend.max_batch == 4
    assert {name for _, name in calls(trt, "set_tensor_address")} == {"images", "labels", "anomaly"}
    trt.log.clear()
    batch = frames(3)
    labels, anomaly = backend(batch)
    assert [c[0] for c in trt.log] == ["set_input_shape", "execute_async_v3"]
    assert calls(trt, "set_input_shape") == [("set_input_shape", (3, *FRAME, 3))]
    assert calls(trt, "execute_async_v3") == [("execute_async_v3", gpu.stream_handle)]
    assert labels.dtype == np.uint8 and anomaly.dtype == np.float32
    assert labels.shape == anomaly.shape == (3, *FRAME)
    np.testing.assert_array_equal(labels, expected(batch)[0])
    np.testing.assert_allclose(anomaly, expected(batch)[1])
    with pytest.raises(ValueError, match="the model runs at 128×64"):
        backend(np.zeros((1, 32, 32, 3), np.uint8))


def test_a_short_remainder_is_padded_to_the_profile_minimum(fake, tiny_onnx):
    """Profile 2..4, batch of 5: chunks of 4 and 1 → the 1 is run as 2 (it used to raise)."""
    trt, _ = fake
    backend = TensorRTBackend(tiny_onnx, batch=(2, 2, 4))
    trt.log.clear()
    batch = frames(5, seed=1)
    labels, anomaly = backend(batch)
    assert [shape[0] for _, shape in calls(trt, "set_input_shape")] == [4, 2]
    np.testing.assert_array_equal(labels, expected(batch)[0])
    np.testing.assert_allclose(anomaly, expected(batch)[1])
    trt.log.clear()
    backend(batch[:1])  # a single frame below the minimum
    assert calls(trt, "set_input_shape") == [("set_input_shape", (2, *FRAME, 3))]


def test_rejected_input_shape_and_failed_execution_raise(monkeypatch, tiny_onnx):
    install(monkeypatch, input_shape_false=True)
    with pytest.raises(RuntimeError, match=r"TensorRT rejected input shape \(1, 64, 128, 3\)"):
        TensorRTBackend(tiny_onnx, batch=(1, 1, 2))(frames(1))
    install(monkeypatch, execute_false=True)
    with pytest.raises(RuntimeError, match="execute_async_v3 failed"):
        TensorRTBackend(tiny_onnx, batch=(1, 1, 2), force_rebuild=True)(frames(1))


def test_peak_device_memory_counts_what_tensorrt_holds(monkeypatch, tiny_onnx):
    _, gpu = install(monkeypatch, device_memory=12345)
    backend = TensorRTBackend(tiny_onnx, batch=(1, 1, 2))
    buffers = 2 * 64 * 128 * (3 + 1 + 4)  # images uint8 ×3, labels uint8, anomaly float32, batch 2
    assert gpu.allocated_bytes == buffers
    engine_bytes = backend.cache.engine_path.stat().st_size
    assert backend.peak_device_memory() == 12345 + buffers + engine_bytes


# --- building -----------------------------------------------------------------------------------


def test_fp32_is_strongly_typed_and_fp16_pins_the_scoring_to_float32(fake, real_onnx):
    trt, _ = fake
    scoring_nodes = [n.name for n in onnx.load(str(real_onnx)).graph.node if n.name.startswith("/scoring/")]
    ops = {n.split("/")[-1].split("_")[0] for n in scoring_nodes}
    assert {"ArgMax", "Exp", "Log", "Conv", "Pad"} <= ops  # score and smoothing are in the scope
    TensorRTBackend(real_onnx, precision="fp32", batch=(1, 2, 2))
    (_, fp32), = calls(trt, "build")
    assert fp32["network_flags"] == 1 << 1  # STRONGLY_TYPED, no precision flags
    assert fp32["flags"] == [] and fp32["pinned"] == []
    TensorRTBackend(real_onnx, precision="fp16", batch=(1, 2, 2))
    _, fp16 = calls(trt, "build")[-1]
    assert fp16["network_flags"] == 0
    assert fp16["flags"] == ["FP16", "OBEY_PRECISION_CONSTRAINTS"]
    assert sorted(fp16["pinned"]) == sorted(scoring_nodes)
    argmax = next(n for n in scoring_nodes if "ArgMax" in n)
    assert argmax not in fp16["output_types"]  # integer outputs keep their type
    exp = next(n for n in scoring_nodes if n.endswith("/Exp"))
    assert fp16["output_types"][exp] == {0: trt.float32}
    network = trt.last_network
    assert all(l.precision == trt.float32 for l in network.layers if l.name.startswith("/scoring/"))


def test_fp16_refuses_a_graph_without_a_scoring_scope(fake, tmp_path):
    unscoped = write_onnx(tmp_path / "other.onnx", scope=None)
    with pytest.raises(RuntimeError, match="no scoring layers .* half precision"):
        TensorRTBackend(unscoped, precision="fp16", batch=(1, 1, 1))


def test_one_logger_for_builder_parser_and_runtime(fake, tiny_onnx):
    trt, _ = fake
    TensorRTBackend(tiny_onnx, batch=(1, 1, 2))
    TensorRTBackend(tiny_onnx, batch=(1, 1, 2))  # loaded from the cache
    TensorRTBackend(tiny_onnx, batch=(1, 2, 2))  # another engine built
    assert len(calls(trt, "build")) == 2 and trt.loggers == 1


def test_timing_cache_is_written_atomically(fake, tiny_onnx, monkeypatch):
    written = []
    original = Path.write_bytes

    def recording(self, data):
        written.append(self.name)
        return original(self, data)

    monkeypatch.setattr(Path, "write_bytes", recording)
    TensorRTBackend(tiny_onnx, batch=(1, 1, 2))
    timing = [p for p in tiny_onnx.parent.iterdir() if p.name.endswith(".timing-cache")]
    assert len(timing) == 1 and timing[0].read_bytes() == b"timing-cache"
    assert timing[0].name not in written  # only a temporary file, renamed into place
    assert any(name.startswith(timing[0].name + ".") and name.endswith(".tmp") for name in written)


def test_a_read_only_engine_folder_loads_without_writing(fake, tiny_onnx, monkeypatch):
    trt, _ = fake
    folder = tiny_onnx.parent
    TensorRTBackend(tiny_onnx, batch=(1, 1, 2))
    before = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    lock_files = [name for name in before if name.endswith(".lock")]
    for name in lock_files:  # the build's lock; a load must not need one
        (folder / name).unlink()
    before = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    real_access = os.access
    monkeypatch.setattr(engine_cache.os, "access",  # read-only, also for root
                        lambda path, mode, **kw: False if Path(path) == folder else real_access(path, mode))
    folder.chmod(0o555)
    try:
        again = TensorRTBackend(tiny_onnx, batch=(1, 1, 2))
        assert not again.built.built
        assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == before
        with pytest.raises(EngineNotBuildable, match=r"needs a build \(no cached engine\).*not writable"):
            TensorRTBackend(tiny_onnx, batch=(1, 2, 2))  # another profile: would need a build
        assert len(calls(trt, "build")) == 1
    finally:
        folder.chmod(0o755)


def test_int8_engine_loads_without_calibration_images(fake, tiny_onnx, tmp_path):
    trt, _ = fake
    with pytest.raises(EngineNotBuildable, match="int8 build needs calibration images"):
        TensorRTBackend(tiny_onnx, precision="int8", batch=(1, 1, 1))
    images = tmp_path / "calibration"
    images.mkdir()
    import cv2

    for i in range(2):
        cv2.imwrite(str(images / f"{i}.png"), frames(1, seed=i)[0])
    built = TensorRTBackend(tiny_onnx, precision="int8", batch=(1, 1, 1), calibration_dir=images)
    assert built.built.built
    _, build = calls(trt, "build")[-1]
    assert build["flags"] == ["FP16", "INT8", "OBEY_PRECISION_CONSTRAINTS"]
    assert build["pinned"] == ["/scoring/ReduceMax", "/scoring/Cast"]
    loaded = TensorRTBackend(tiny_onnx, precision="int8", batch=(1, 1, 1))  # no calibration folder
    assert not loaded.built.built and len(calls(trt, "build")) == 1


def test_tensorrt_11_and_stub_only_packages_are_refused(monkeypatch, tmp_path):
    install(monkeypatch, version="11.0.0.1")
    with pytest.raises(BackendUnavailable, match=r"TensorRT 11.0.0.1 is not supported yet.*strongly typed"):
        tensorrt_build.import_tensorrt()
    stubs = tmp_path / "tensorrt"  # what `pip install tensorrt-stubs` leaves: a folder of .pyi files
    stubs.mkdir()
    (stubs / "__init__.pyi").write_text("__version__: str\n")
    monkeypatch.delitem(sys.modules, "tensorrt")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(BackendUnavailable, match=r"type stubs only\?"):
        tensorrt_build.import_tensorrt()


# --- auto falls back, a named backend reports --------------------------------------------------


FAILURES = {
    "parse error": (dict(parse=True), "RuntimeError: TensorRT could not parse"),
    "build fails": (dict(build_none=True), "RuntimeError: TensorRT failed to build an engine"),
    "removed API": (dict(builder_raises=AttributeError("module 'tensorrt' has no attribute 'Builder'")),
                    "AttributeError: module 'tensorrt' has no attribute 'Builder'"),
    "TensorRT 11": (dict(version="11.0.0"), "TensorRT 11.0.0 is not supported yet"),
    "read-only engine folder": (dict(), "EngineNotBuildable: TensorRT engine"),
}


@pytest.mark.parametrize("case", list(FAILURES))
def test_auto_falls_back_on_every_failure_and_logs_why(case, monkeypatch, segmenter, real_onnx, caplog,
                                                     tmp_path):
    failure, reason = FAILURES[case]
    install(monkeypatch, **failure)
    if case == "read-only engine folder":
        monkeypatch.setattr(engine_cache.os, "access", lambda path, mode, **kw: False)
    # the exported graph as it is; engines in a folder of this test's own
    spec = DeploymentSpec(backend="auto", batch=(1, 2, 2), onnx_path=real_onnx, cache_dir=tmp_path)
    with caplog.at_level(logging.INFO, logger="rpl_perception.backends"):
        backend = spec.create_backend(segmenter)
    assert isinstance(backend, OnnxRuntimeBackend) and backend.device == "cpu"
    message = [r.getMessage() for r in caplog.records if r.getMessage().startswith("backend auto:")][-1]
    assert "skipped tensorrt (cuda)" in message and reason in message
    assert any(reason in s for s in backend.skipped)
    # named explicitly, the same failure is an error (with its message), not a silent fallback
    with pytest.raises((RuntimeError, AttributeError, BackendUnavailable, EngineNotBuildable),
                       match=reason.split(": ", 1)[-1][:30].replace("(", r"\(")):
        spec.with_changes(backend="tensorrt").create_backend(segmenter)


# --- one spec: build-engine writes what the node loads -------------------------------------------


def test_build_engine_writes_exactly_the_engine_the_node_loads(fake, tmp_path, capsys):
    from rpl_perception.cli import main as cli_main

    trt, _ = fake
    cache = tmp_path / "cache"
    assert cli_main(["build-engine", "--size", "256x128", "--score", "energy", "--precision", "fp16",
                     "--max-batch", "3", "--cache-dir", str(cache)]) == 0
    printed = capsys.readouterr().out
    engine = Path(printed.split("built: ")[1].split()[0])
    assert engine.is_file() and engine.name.endswith(".fp16.b1-3-3.engine")
    assert len(calls(trt, "build")) == 1
    # the node's parameters for three cameras, max_batch 0 = one per camera
    values = {"model": "default", "network_width": 256, "network_height": 128, "score": "energy",
              "smoothing_sigma": -1.0, "backend": "tensorrt", "device": "auto", "precision": "fp16",
              "max_batch": 0, "cache_dir": str(cache), "engine_path": "", "calibration_images": "",
              "build_only": False}
    spec = DeploymentSpec.from_settings(values, cameras=3)
    assert spec.batch == (1, 3, 3)
    node_segmenter = AnomalySegmenter.from_spec(spec)
    backend = node_segmenter.backend
    assert isinstance(backend, TensorRTBackend) and not backend.built.built
    assert backend.cache.engine_path == engine and len(calls(trt, "build")) == 1
    assert "b1-3-3" in backend.describe() and "fp32 scores" in backend.describe()
    # and the engine file named directly (the node's engine_path parameter) loads as well
    direct = AnomalySegmenter.from_spec(spec.with_changes(engine_path=engine, cache_dir=None)).backend
    assert not direct.built.built and direct.cache.engine_path == engine
