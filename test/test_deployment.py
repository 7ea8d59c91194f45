"""The deployment spec and what it guarantees without a GPU: settings from node parameters and
CLI options, resolved file names, the ONNX cache key, float32 scores under reduced precision,
evaluation through the deployed backend (one forward, every score), a PyTorch backend that
leaves the caller's model alone, and the honest description of the default threshold."""

from pathlib import Path

import numpy as np
import pytest
import torch

from rpl_perception import AnomalySegmenter
from rpl_perception.backends import DeploymentSpec, OnnxRuntimeBackend, TorchBackend, exported_onnx
from rpl_perception.checkpoint import DEFAULT_CHECKPOINT, load_model
from rpl_perception.models import AnomalyModel
from rpl_perception.parity import sample_batch

SMALL = (128, 64)


@pytest.fixture(scope="module")
def segmenter():
    return AnomalySegmenter.from_pretrained(network_size=SMALL)


# --- the spec ---------------------------------------------------------------------------------


def test_spec_from_node_parameters():
    values = {"image_topics": ["/a/image", "/b/image"], "model": "default", "backend": "auto",
              "device": "auto", "network_width": 0, "network_height": 0, "score": "",
              "smoothing_sigma": -1.0, "precision": "fp16", "max_batch": 0, "cache_dir": "/tmp/x",
              "engine_path": "", "calibration_images": "", "build_only": True}
    spec = DeploymentSpec.from_settings(values, cameras=6)
    assert spec.batch == (1, 6, 6)  # dynamic 1..cameras, never padded up to 6
    assert spec.dynamic_batch and spec.precision == "fp16" and spec.build_only
    assert spec.cache_dir == Path("/tmp/x") and spec.engine_path is None and spec.score is None
    assert spec.network_size is None and spec.smoothing_sigma is None
    assert spec.model_file == DEFAULT_CHECKPOINT
    assert DeploymentSpec.from_settings({**values, "max_batch": 2}, cameras=6).batch == (1, 2, 2)
    one = DeploymentSpec.from_settings({**values, "network_width": 256, "network_height": 128}, cameras=1)
    assert one.batch == (1, 1, 1) and not one.dynamic_batch and one.network_size == (256, 128)


@pytest.mark.parametrize("change, match", [
    ({"precision": "fp8"}, "precision 'fp8' is unknown"),
    ({"backend": "onnxruntime", "precision": "int8"}, "int8 is TensorRT only"),
    ({"backend": "tensorrt", "device": "cpu"}, "runs on a CUDA device"),
    ({"backend": "torch", "engine_path": "/x.engine"}, "engine_path is a TensorRT engine"),
    ({"network_width": 256}, "must both be set"),
    ({"max_batch": 2, "min_batch": 3}, "min_batch 3 exceeds max_batch 2"),
])
def test_spec_refuses_settings_it_cannot_deploy(change, match):
    with pytest.raises(ValueError, match=match):
        DeploymentSpec.from_settings(change)


def test_spec_resolves_one_onnx_and_engine_name(segmenter, tmp_path):
    spec = DeploymentSpec(precision="fp16", batch=(1, 4, 4), cache_dir=tmp_path)
    onnx_path = spec.onnx_file(segmenter.model, SMALL)
    assert onnx_path.parent == tmp_path and "_dyn_" in onnx_path.name
    assert spec.onnx_file(segmenter.model, SMALL) == onnx_path  # found again, not re-exported
    assert spec.engine_file(onnx_path) == tmp_path / f"{onnx_path.stem}.fp16.b1-4-4.engine"
    explicit = spec.with_changes(engine_path=tmp_path / "car.engine")
    assert explicit.engine_file(onnx_path) == tmp_path / "car.engine"
    single = DeploymentSpec(cache_dir=tmp_path).onnx_file(segmenter.model, SMALL)
    assert "_b1_" in single.name  # one frame at a time: the (faster) static graph


# --- the ONNX cache key -------------------------------------------------------------------------


def _model(num_inlier=19, mean=None):
    network, meta = load_model(DEFAULT_CHECKPOINT)
    return AnomalyModel(network, num_inlier=num_inlier, mean=mean or meta.mean, std=meta.std,
                        score="energy").eval()


def test_onnx_cache_key_covers_buffers_class_count_and_torch(tmp_path, monkeypatch):
    base = exported_onnx(_model(), SMALL, cache_dir=tmp_path)
    # the normalisation constants are non-persistent buffers: outside state_dict, inside the graph
    other_mean = exported_onnx(_model(mean=(0.5, 0.5, 0.5)), SMALL, cache_dir=tmp_path)
    fewer_classes = exported_onnx(_model(num_inlier=18), SMALL, cache_dir=tmp_path)
    assert len({base, other_mean, fewer_classes}) == 3
    monkeypatch.setattr(torch, "__version__", "9.9.9")
    assert exported_onnx(_model(), SMALL, cache_dir=tmp_path) != base


# --- float32 scores ------------------------------------------------------------------------------


def test_scores_stay_float32_under_autocast(segmenter):
    """The network may run in reduced precision; the score and its smoothing may not."""
    model = segmenter.model
    images = torch.from_numpy(sample_batch(SMALL, 2))
    with torch.inference_mode():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model.network(model.normalise(images))
            labels, anomaly = model.scoring(out.closed, out.rpl)
        reference = model.scoring(out.closed, out.rpl)  # the same low-precision logits, in fp32
        assert out.closed.dtype == torch.bfloat16  # autocast did reach the network
        with torch.autocast("cpu", dtype=torch.bfloat16):
            whole = model(images)
    assert anomaly.dtype == torch.float32 and whole[1].dtype == torch.float32
    torch.testing.assert_close(anomaly, reference[1], rtol=0, atol=0)
    torch.testing.assert_close(labels, reference[0], rtol=0, atol=0)


def test_eager_labels_and_energy_match_the_reference_definitions(segmenter):
    """max(dim) for the labels and the reused max in −logsumexp: the same as argmax / logsumexp."""
    from rpl_perception.scoring import closed_set_score, gaussian_smooth

    network, meta = load_model(DEFAULT_CHECKPOINT, with_branch=False)
    model = AnomalyModel(network, num_inlier=19, mean=meta.mean, std=meta.std, score="energy",
                         scores=("energy", "max_logit")).eval()
    images = torch.from_numpy(sample_batch(SMALL, 2))
    with torch.inference_mode():
        labels, anomaly = model(images)
        closed = network(model.normalise(images)).closed[:, :19]
    np.testing.assert_array_equal(labels.numpy(), closed.argmax(dim=1).numpy())
    for k, name in enumerate(("energy", "max_logit")):
        expected = gaussian_smooth(closed_set_score(closed, name), 1.0)
        torch.testing.assert_close(anomaly[:, k], expected, rtol=1e-6, atol=1e-5)


# --- evaluation through the deployed backend --------------------------------------------------


def test_evaluation_runs_every_score_in_one_forward_on_onnxruntime(segmenter, tmp_path):
    from rpl_perception.eval.offline import MultiScorePredictor

    spec = DeploymentSpec(backend="onnxruntime", device="cpu", cache_dir=tmp_path)
    deployed = AnomalySegmenter.from_spec(spec.with_changes(network_size=SMALL))
    predictor = MultiScorePredictor(deployed)
    assert isinstance(predictor.backend, OnnxRuntimeBackend)
    assert predictor.scores == ("rpl_energy", "energy", "max_logit", "max_softmax", "entropy")
    (graph,) = list(tmp_path.glob("*.onnx"))
    assert "rpl_energy+energy+max_logit+max_softmax+entropy" in graph.name
    calls = []
    run = predictor.backend.run
    predictor.backend.run = lambda inputs: calls.append(len(inputs)) or run(inputs)
    images = list(sample_batch((200, 100), 2))
    outputs = predictor.predict_batch(images)
    assert calls == [1, 1]  # static batch 1: one run per frame gives all five scores
    torch_predictor = MultiScorePredictor(segmenter)  # no spec: PyTorch
    assert isinstance(torch_predictor.backend, TorchBackend)
    for (labels, maps), (ref_labels, ref_maps), image in zip(outputs, torch_predictor.predict_batch(images),
                                                           images):
        assert labels.shape == image.shape[:2]
        assert (labels == ref_labels).mean() >= 0.999
        for name in predictor.scores:
            assert maps[name].dtype == np.float32
            assert np.abs(maps[name] - ref_maps[name]).max() <= 1e-4, name
    # the deployed single-score segmenter was never built: evaluation did not need it
    assert deployed._backend is None


def test_eval_command_takes_backend_and_precision_and_passes_them_to_a_live_node():
    from rpl_perception.cli import build_parser
    from rpl_perception.eval.live import NodeOptions

    args = build_parser().parse_args(["eval", "--bag", "b", "--out", "o", "--backend", "onnxruntime",
                                      "--precision", "fp16", "--cache-dir", "/tmp/c"])
    assert (args.backend, args.precision, args.cache_dir) == ("onnxruntime", "fp16", Path("/tmp/c"))
    command = " ".join(NodeOptions.from_args(args).command("/cam/image_raw"))
    assert "-p backend:=onnxruntime -p precision:=fp16 -p cache_dir:=/tmp/c" in command


# --- the PyTorch backend leaves the caller's model alone ------------------------------------------


def test_torch_backend_does_not_change_the_callers_model(segmenter):
    network, meta = load_model(DEFAULT_CHECKPOINT)
    model = AnomalyModel(network, num_inlier=19, mean=meta.mean, std=meta.std).train()
    backend = TorchBackend(model)
    assert model.training and not backend.model.training  # ran on an eval copy
    assert backend.model is not model
    batch = sample_batch(SMALL, 1)
    labels, _ = backend(batch)
    assert model.training
    shared = TorchBackend(model.eval())
    assert shared.model is model  # nothing to change: the model is shared, not copied
    np.testing.assert_array_equal(shared(batch)[0], labels)


# --- the default threshold is described as what it is ------------------------------------------


def test_calibrated_threshold_flags_five_percent_and_says_so():
    from rpl_perception import calibration
    from rpl_perception.calibration import calibrate

    rng = np.random.default_rng(0)
    scores = rng.standard_normal(100_000).astype(np.float32)
    labels = (rng.random(100_000) < 0.1).astype(np.uint8)
    _, threshold = calibrate(scores, labels)
    assert (scores[labels == 0] > threshold).mean() == pytest.approx(0.05, abs=1e-3)
    doc = " ".join(calibration.calibrate.__doc__.split())
    assert "5 % of them flagged" in doc and "conservative" not in doc
    assert "sensitive" in doc
