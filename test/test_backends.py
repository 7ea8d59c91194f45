"""Backends: the batch contract, ONNX Runtime against PyTorch, DeploymentSpec.create_backend's choice and
its log, the export cache, the TensorRT runtime (skipped without TensorRT and a GPU), and the
bench command's statistics, table and JSON."""

import json
import logging
import sys

import numpy as np
import pytest
import torch

from rpl_perception import AnomalySegmenter
from rpl_perception.backends import (
    AUTO_ORDER,
    BackendUnavailable,
    DeploymentSpec,
    OnnxRuntimeBackend,
    TorchBackend,
    exported_onnx,
)
from rpl_perception.backends.common import check_batch, run_in_batches
from rpl_perception.backends.tensorrt_build import tensorrt_available
from rpl_perception.cli import main as cli_main
from rpl_perception.commands.bench import format_table, parse_spec, percentile_ms
from rpl_perception.export import export_onnx
from rpl_perception.parity import sample_batch

SMALL = (256, 128)
HAS_TENSORRT = tensorrt_available()  # not find_spec: tensorrt-stubs install an empty 'tensorrt'
HAS_CUDA = torch.cuda.is_available()


@pytest.fixture(scope="module")
def segmenter():
    return AnomalySegmenter.from_pretrained(network_size=SMALL)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def small_onnx(cache_dir, segmenter):
    return exported_onnx(segmenter.model, SMALL, cache_dir=cache_dir)


# --- the batch contract -------------------------------------------------------------------------


def test_check_batch_names_what_is_wrong():
    good = np.zeros((2, 128, 256, 3), np.uint8)
    assert check_batch(good, SMALL) is not None
    with pytest.raises(ValueError, match="got list"):
        check_batch([good], SMALL)
    with pytest.raises(ValueError, match="dtype float32"):
        check_batch(good.astype(np.float32), SMALL)
    with pytest.raises(ValueError, match=r"shape \(128, 256, 3\)"):
        check_batch(good[0], SMALL)
    with pytest.raises(ValueError, match="frames are 256×64, the model runs at 256×128"):
        check_batch(np.zeros((1, 64, 256, 3), np.uint8), SMALL)


def test_run_in_batches_chunks_and_pads():
    calls = []

    def run(chunk):  # "labels" = the frame's id, "anomaly" = twice it
        calls.append(len(chunk))
        ids = chunk[:, 0, 0, 0]
        return ids.copy(), 2.0 * ids

    batch = np.arange(5, dtype=np.uint8).reshape(5, 1, 1, 1) * np.ones((1, 2, 2, 3), np.uint8)
    labels, anomaly = run_in_batches(run, batch, 2, 2)
    assert calls == [2, 2, 2]  # the last chunk padded to the static batch
    np.testing.assert_array_equal(labels, np.arange(5))
    np.testing.assert_array_equal(anomaly, 2.0 * np.arange(5))
    calls.clear()
    run_in_batches(run, batch, 1, 8)
    assert calls == [5]
    calls.clear()
    # a dynamic range 2..4: 5 frames = 4 + a remainder of 1, padded up to the minimum of 2
    labels, _ = run_in_batches(run, batch, 2, 4)
    assert calls == [4, 2]
    np.testing.assert_array_equal(labels, np.arange(5))
    calls.clear()
    run_in_batches(run, batch[:1], 3, 4)  # a short batch padded to the minimum
    assert calls == [3]
    with pytest.raises(ValueError, match="1 <= min <= max"):
        run_in_batches(run, batch, 3, 2)


# --- ONNX Runtime -------------------------------------------------------------------------------


def test_onnxruntime_matches_torch_and_stages(small_onnx, segmenter):
    batch = sample_batch(SMALL, 2)
    ort_backend = OnnxRuntimeBackend(small_onnx, threads=1)
    assert ort_backend.size == SMALL and ort_backend.fixed_batch == 1
    labels, anomaly = ort_backend(batch)
    ref_labels, ref_anomaly = TorchBackend(segmenter.model)(batch)
    assert labels.dtype == np.uint8 and anomaly.dtype == np.float32
    assert labels.shape == anomaly.shape == (2, 128, 256)
    assert (labels == ref_labels).mean() >= 0.9999
    assert np.abs(anomaly - ref_anomaly).max() <= 1e-4
    staged = ort_backend.download(ort_backend.run(ort_backend.upload(batch[:1])))
    np.testing.assert_array_equal(staged[0], labels[:1])
    assert "CPUExecutionProvider (1 threads)" in ort_backend.describe()
    with pytest.raises(ValueError, match="the model runs at 256×128"):
        ort_backend(np.zeros((1, 256, 512, 3), np.uint8))


def test_segmenter_with_onnxruntime_backend(small_onnx):
    torch_seg = AnomalySegmenter.from_pretrained(network_size=SMALL)
    ort_seg = AnomalySegmenter.from_pretrained(network_size=SMALL, backend=OnnxRuntimeBackend(small_onnx))
    frame = sample_batch((640, 360), 1)[0]
    a, b = torch_seg.predict(frame), ort_seg.predict(frame)
    assert b.labels.shape == (360, 640) and b.anomaly.shape == (360, 640)
    assert (a.labels == b.labels).mean() >= 0.9999
    assert np.abs(a.anomaly - b.anomaly).max() <= 1e-4


def test_onnxruntime_cuda_without_gpu_names_the_package(small_onnx):
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("onnxruntime-gpu is installed here")
    with pytest.raises(BackendUnavailable, match="install onnxruntime-gpu"):
        OnnxRuntimeBackend(small_onnx, device="cuda")


# --- DeploymentSpec.create_backend --------------------------------------------------------------


@pytest.mark.skipif(HAS_CUDA or HAS_TENSORRT, reason="checks the CPU-only choice")
def test_auto_picks_onnxruntime_on_cpu_and_logs_why(segmenter, cache_dir, caplog):
    with caplog.at_level(logging.INFO, logger="rpl_perception.backends"):
        backend = DeploymentSpec(backend="auto", cache_dir=cache_dir).create_backend(segmenter)
    assert isinstance(backend, OnnxRuntimeBackend) and backend.device == "cpu"
    message = [r.getMessage() for r in caplog.records if r.getMessage().startswith("backend auto")][-1]
    assert "onnxruntime" in message and "CPUExecutionProvider" in message
    assert "skipped tensorrt (cuda): backend 'tensorrt' needs NVIDIA TensorRT" in message
    assert "torch (cuda): torch" in message and "sees no CUDA GPU" in message
    assert [n for n, _ in AUTO_ORDER] == ["tensorrt", "onnxruntime", "torch", "onnxruntime", "torch"]


def test_missing_onnx_packages_fall_back_to_torch_with_the_reason(segmenter, cache_dir, caplog, monkeypatch):
    """A plain install (no [onnx] extra): 'auto' serves with PyTorch instead of failing in the export."""
    monkeypatch.setitem(sys.modules, "onnx", None)  # import fails, find_spec gives None
    with caplog.at_level(logging.INFO, logger="rpl_perception.backends"):
        backend = DeploymentSpec(backend="auto", device="cpu", cache_dir=cache_dir).create_backend(segmenter)
    assert isinstance(backend, TorchBackend)
    message = [r.getMessage() for r in caplog.records if r.getMessage().startswith("backend auto")][-1]
    assert "skipped onnxruntime (cpu): backend 'onnxruntime' runs the exported ONNX graph" in message
    with pytest.raises(BackendUnavailable, match="exporting needs the onnx package: pip install onnx"):
        DeploymentSpec(backend="onnxruntime", device="cpu", cache_dir=cache_dir).create_backend(segmenter)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(BackendUnavailable, match="needs the onnxruntime package: pip install onnxruntime"):
        DeploymentSpec(backend="onnxruntime", device="cpu", cache_dir=cache_dir).create_backend(segmenter)


def test_create_backend_by_name(segmenter, cache_dir, small_onnx):
    torch_backend = DeploymentSpec(backend="torch", device="cpu").create_backend(segmenter)
    assert isinstance(torch_backend, TorchBackend)
    # an exported file is used as it is; the same settings find the same cached file
    assert exported_onnx(segmenter.model, SMALL, cache_dir=cache_dir) == small_onnx
    ort_backend = DeploymentSpec(backend="onnxruntime", device="cpu").create_backend(small_onnx)
    assert ort_backend.onnx_path == small_onnx
    with pytest.raises(ValueError, match="backend 'tflite' is unknown"):
        DeploymentSpec(backend="tflite").create_backend(segmenter)
    with pytest.raises(ValueError, match="backend 'torch' needs the PyTorch model"):
        DeploymentSpec(backend="torch", device="cpu").create_backend(small_onnx)
    with pytest.raises(ValueError, match="device 'gpu' is unknown"):
        DeploymentSpec(backend="auto", device="gpu").create_backend(segmenter)
    with pytest.raises(ValueError, match="'tensorrt' runs on a CUDA device"):
        DeploymentSpec(backend="tensorrt", device="cpu").create_backend(segmenter)
    with pytest.raises(ValueError, match="needs size"):
        DeploymentSpec(backend="onnxruntime", device="cpu").create_backend(segmenter.model)


def test_exported_onnx_refuses_a_file_with_other_settings(segmenter, small_onnx):
    other = AnomalySegmenter.from_pretrained(network_size=SMALL, score="max_logit")
    with pytest.raises(ValueError, match=f"score {segmenter.score} \\(file\\) vs max_logit \\(requested\\)"):
        exported_onnx(other.model, SMALL, onnx_path=small_onnx)


@pytest.mark.skipif(HAS_TENSORRT, reason="checks the message shown when TensorRT is missing")
def test_tensorrt_without_tensorrt_says_what_to_install(segmenter, cache_dir):
    with pytest.raises(BackendUnavailable, match="pip install tensorrt"):
        DeploymentSpec(backend="tensorrt", cache_dir=cache_dir).create_backend(segmenter)


# --- TensorRT (needs TensorRT and a GPU) ---------------------------------------------------------


@pytest.mark.skipif(not (HAS_TENSORRT and HAS_CUDA), reason="needs TensorRT and a CUDA GPU")
def test_tensorrt_fp32_parity_and_cache(tmp_path, segmenter):
    from rpl_perception.backends import TensorRTBackend

    path = export_onnx(segmenter.model, tmp_path / "trt.onnx", SMALL, dynamic_batch=True)
    backend = TensorRTBackend(path, precision="fp32", batch=(1, 2, 4))
    assert backend.built.built and backend.cache.engine_path.parent == tmp_path
    batch = sample_batch(SMALL, 3)
    labels, anomaly = backend(batch)
    ref_labels, ref_anomaly = TorchBackend(segmenter.model)(batch)
    assert (labels == ref_labels).mean() >= 0.999
    assert np.abs(anomaly - ref_anomaly).max() <= 1e-3
    again = TensorRTBackend(path, precision="fp32", batch=(1, 2, 4))
    assert not again.built.built  # loaded from the cache


# --- bench --------------------------------------------------------------------------------------


def test_bench_spec_and_statistics():
    assert parse_spec("torch") == ("torch", "cpu", "fp32")
    assert parse_spec("torch@cuda:1/fp16") == ("torch", "cuda:1", "fp16")
    assert parse_spec("tensorrt/int8") == ("tensorrt", "cuda", "int8")
    assert parse_spec("onnxruntime", "cuda:1") == ("onnxruntime", "cuda:1", "fp32")
    with pytest.raises(ValueError, match="unknown backend 'trt'"):
        parse_spec("trt")
    with pytest.raises(ValueError, match="unknown precision 'fp8'"):
        parse_spec("torch/fp8")
    samples = [0.001 * v for v in range(1, 101)]  # 1 … 100 ms
    assert percentile_ms(samples, 50) == pytest.approx(50.5)
    assert percentile_ms(samples, 95) == pytest.approx(95.05)


def test_bench_table_layout():
    def stages(net):
        names = ("preprocess", "upload", "network", "in_graph_prepost", "download", "postprocess",
                 "total")
        values = (2.0, 0.0, net, 5.0, 0.0, 1.0, net + 3.0)
        return {n: {"median_ms": v, "p95_ms": v + 1} for n, v in zip(names, values)}

    results = [{"backend": b, "description": d, "stages": stages(net), "inference_ms": net - 5,
                "prepost_ms": 8.0, "prepost_share": 8.0 / (net - 5), "fps": 1000 / (net + 3),
                "peak_rss_mb": 500.0, "rss_growth_mb": 20.0, "peak_gpu_mb": None}
               for b, d, net in (("torch", "torch cpu", 397.0), ("onnxruntime", "ort cpu", 197.0))]
    report = {"network_size": [1024, 512], "camera_size": [1280, 720], "batch": 1, "frames": 20,
              "warmup": 3, "score": "energy", "results": results}
    table = format_table(report)
    lines = table.splitlines()
    assert lines[0].startswith("network 1024x512, batch 1, camera frames 1280x720")
    assert any(l.startswith("network (whole graph)") and "397.0 / 398.0" in l and "197.0 / 198.0" in l
               for l in lines)
    assert any(l.startswith("pre+post / inference") and "2.0 %" in l and "4.2 %" in l for l in lines)
    assert any(l.startswith("speed-up vs torch") and "1.00x" in l and "2.00x" in l for l in lines)
    assert "onnxruntime: ort cpu" in lines[-1]


def test_bench_command_json(capsys, cache_dir):
    code = cli_main(["bench", "--backend", "torch", "onnxruntime", "--size", "128x64",
                     "--frames", "2", "--warmup", "1", "--rounds", "2", "--json",
                     "--cache-dir", str(cache_dir)])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["network_size"] == [128, 64] and report["camera_size"] == [1280, 720]
    assert [r["backend"] for r in report["results"]] == ["torch", "onnxruntime"]
    for result in report["results"]:
        stages = result["stages"]
        assert set(stages) == {"preprocess", "upload", "network", "in_graph_prepost", "download",
                               "postprocess", "total"}
        assert 0 < stages["network"]["median_ms"] <= stages["network"]["p95_ms"]
        assert stages["total"]["median_ms"] >= stages["network"]["median_ms"]
        assert result["fps"] > 0 and result["peak_rss_mb"] > 0
