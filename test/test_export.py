"""ONNX export: the exportable adaptive pooling and op rewrites, parity with PyTorch on real
images (small size, and 1024×512 once), RPL branch and logits outputs, dynamic batch, the
dynamic-size refusal, and the export command."""

import json

import cv2
import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F

from rpl_perception import AnomalySegmenter
from rpl_perception.backends import OnnxRuntimeBackend
from rpl_perception.checkpoint import DEFAULT_CHECKPOINT, load_model, read_checkpoint
from rpl_perception.cli import main as cli_main
from rpl_perception.export import export_onnx, read_onnx_metadata
from rpl_perception.export_forms import ExportForms, adaptive_pool_matrix, exportable_adaptive_avg_pool2d
from rpl_perception.image import resize_rgb
from rpl_perception.models import AnomalyModel, get_architecture
from rpl_perception.models.espnetv2 import EfficientPyrPool
from rpl_perception.parity import check_parity, sample_batch

SMALL = (256, 128)


def real_batch(roadanomaly_dev, size, count=1):
    files = sorted((roadanomaly_dev / "images").glob("*.jpg"))[:count]
    frames = [resize_rgb(cv2.cvtColor(cv2.imread(str(f)), cv2.COLOR_BGR2RGB), size) for f in files]
    return np.stack(frames)


@pytest.fixture(scope="module")
def segmenter():
    # the closed-set energy graph (rpl_energy's export is checked on its own below)
    return AnomalySegmenter.from_pretrained(score="energy", network_size=SMALL)


@pytest.fixture(scope="module")
def small_onnx(tmp_path_factory, segmenter):
    return export_onnx(segmenter.model, tmp_path_factory.mktemp("onnx") / "small.onnx", SMALL)


# --- exportable pooling -------------------------------------------------------------------------


def test_pool_matrix_uses_pytorch_bins():
    # 5 → 3: bins [0, 2), [1, 4), [3, 5) (start ⌊i·5/3⌋, end ⌈(i+1)·5/3⌉)
    expected = np.array([[1 / 2, 1 / 2, 0, 0, 0],
                         [0, 1 / 3, 1 / 3, 1 / 3, 0],
                         [0, 0, 0, 1 / 2, 1 / 2]], dtype=np.float32)
    np.testing.assert_allclose(adaptive_pool_matrix(5, 3).numpy(), expected, rtol=0, atol=1e-7)
    # upsampling (output larger than input) repeats inputs: 2 → 5
    np.testing.assert_array_equal(adaptive_pool_matrix(2, 5).numpy(),
                                  np.array([[1, 0], [1, 0], [1, 1], [0, 1], [0, 1]], np.float32) /
                                  np.array([[1], [1], [2], [1], [1]], np.float32))
    with pytest.raises(ValueError, match="must be positive"):
        adaptive_pool_matrix(0, 3)


@pytest.mark.parametrize("in_hw, out_hw", [((48, 96), (32, 64)), ((32, 64), (5, 7)),
                                            ((256, 128), (26, 13)), ((2, 4), (5, 5)),
                                            ((64, 128), (32, 64)), ((7, 9), (7, 4))])
def test_exportable_pool_matches_adaptive_avg_pool(in_hw, out_hw):
    x = torch.randn(2, 10, *in_hw, generator=torch.Generator().manual_seed(0))
    expected = F.adaptive_avg_pool2d(x, out_hw)
    got = exportable_adaptive_avg_pool2d(x, out_hw)
    assert got.shape == expected.shape
    assert (got - expected).abs().max().item() <= 1e-6


def test_export_forms_compute_the_same_function():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 6, 24, 40, generator=g)
    slopes = torch.tensor([-0.7, 0.0, 0.25, 1.0, 1.6, 15.8])
    logits = 20 * torch.randn(2, 19, 8, 8, generator=g)
    pyramid = EfficientPyrPool(32, 10, 16).eval()
    features = torch.randn(1, 32, 12, 24, generator=g)
    with torch.no_grad():
        def ops():
            return (F.prelu(x, slopes), F.prelu(x, torch.tensor([0.25])),
                    torch.logsumexp(logits, dim=1), pyramid(features),
                    F.adaptive_avg_pool2d(x, (8, 8)), F.adaptive_avg_pool2d(x, 1))

        eager = ops()
        with ExportForms():
            rewritten = ops()
    assert torch.equal(eager[0], rewritten[0])  # relu(x) + (−a)·relu(−x) is bit-exact
    assert torch.equal(eager[1], rewritten[1])
    assert (eager[2] - rewritten[2]).abs().max().item() <= 1e-5
    for a, b in zip(eager[3:], rewritten[3:]):
        assert a.shape == b.shape and (a - b).abs().max().item() <= 1e-5


# --- parity -------------------------------------------------------------------------------------


def test_graph_io_and_metadata(small_onnx, segmenter):
    graph = onnx.load(str(small_onnx)).graph
    (image,) = graph.input
    dims = [d.dim_value for d in image.type.tensor_type.shape.dim]
    assert image.name == "images" and dims == [1, 128, 256, 3]
    assert image.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    outputs = {o.name: o.type.tensor_type.elem_type for o in graph.output}
    assert outputs == {"labels": onnx.TensorProto.UINT8, "anomaly": onnx.TensorProto.FLOAT}
    ops = {node.op_type for node in graph.node}
    assert {"ArgMax", "GatherElements", "Exp", "Log", "Pad"} <= ops  # scoring is in the graph
    assert "ReduceMax" not in ops  # energy's max is read at the labels' argmax
    resized = {node.output[0] for node in graph.node if node.op_type == "Resize"}
    assert not [n for n in graph.node if n.op_type == "Slice" and n.input[0] in resized]
    assert "PRelu" not in ops and not any("Adaptive" in op for op in ops)
    meta = read_onnx_metadata(small_onnx)
    assert meta["input_size"] == [256, 128] and meta["batch"] == 1
    assert meta["score"] == segmenter.score == "energy" and meta["smoothing_sigma"] == 1.0


def test_parity_on_real_images_small(small_onnx, segmenter, roadanomaly_dev):
    batch = real_batch(roadanomaly_dev, SMALL, count=3)
    backend = OnnxRuntimeBackend(small_onnx)
    report = check_parity(segmenter.model, backend, batch)  # static batch 1: run in 3 chunks
    assert report.anomaly_max_abs_error <= 1e-4
    assert report.label_agreement >= 0.9999
    assert report.passes()


def test_parity_at_1024x512(tmp_path, roadanomaly_dev):
    seg = AnomalySegmenter.from_pretrained(network_size=(1024, 512))
    path = export_onnx(seg.model, tmp_path / "full.onnx", (1024, 512))
    # the bundled highway frame once showed 3.6e-4 (a float32 global-pooling sum in ONNX Runtime)
    batch = np.concatenate([sample_batch((1024, 512), 1), real_batch(roadanomaly_dev, (1024, 512), 2)])
    report = check_parity(seg.model, OnnxRuntimeBackend(path), batch)
    assert report.anomaly_max_abs_error <= 1e-4, report
    assert report.label_agreement >= 0.9999, report


@pytest.mark.parametrize("design", ["pyramid", "aspp_fine"])
def test_rpl_branch_and_logits_dynamic_batch(tmp_path, roadanomaly_dev, design):
    """rpl_energy on a (randomly initialised) RPL branch, logits output, batch 1 and 3."""
    torch.manual_seed(0)
    meta, _ = read_checkpoint(DEFAULT_CHECKPOINT)
    network, _ = load_model(DEFAULT_CHECKPOINT)
    network.branch = get_architecture(meta.architecture).build_rpl_branch(network.closed_set, 64, design).eval()
    model = AnomalyModel(network, num_inlier=meta.num_inlier, mean=meta.mean, std=meta.std,
                         score="rpl_energy").eval()
    path = export_onnx(model, tmp_path / "rpl.onnx", SMALL, dynamic_batch=True, return_logits=True)
    assert model.return_logits is False  # the caller's model is left as it was
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape[0] == "batch"
    for count in (1, 3):
        batch = real_batch(roadanomaly_dev, SMALL, count)
        labels, anomaly, logits = session.run(None, {"images": batch})
        model.return_logits = True
        with torch.inference_mode():
            ref = [t.numpy() for t in model(torch.from_numpy(batch))]
        model.return_logits = False
        assert labels.shape == (count, 128, 256) and logits.shape == (count, 20, 128, 256)
        assert (labels == ref[0]).mean() >= 0.9999
        assert np.abs(anomaly - ref[1]).max() <= 1e-4
        assert np.abs(logits - ref[2]).max() <= 1e-4


def test_dynamic_size_is_refused_with_the_reason(tmp_path, segmenter):
    with pytest.raises(ValueError, match="one ONNX file per network size"):
        export_onnx(segmenter.model, tmp_path / "dyn.onnx", SMALL, dynamic_size=True)
    assert not list(tmp_path.iterdir())  # no half-written file left behind


def test_bad_export_arguments(tmp_path, segmenter):
    with pytest.raises(ValueError, match="multiples of 32"):
        export_onnx(segmenter.model, tmp_path / "x.onnx", (250, 128))
    with pytest.raises(ValueError, match="batch must be >= 1"):
        export_onnx(segmenter.model, tmp_path / "x.onnx", SMALL, batch=0)


def test_export_command_writes_and_verifies(tmp_path, capsys):
    out = tmp_path / "cli.onnx"
    code = cli_main(["export", "--out", str(out), "--size", "256x128", "--batch", "2"])
    printed = capsys.readouterr().out
    assert code == 0 and out.is_file()
    assert "parity with PyTorch" in printed and "-> OK" in printed
    meta = read_onnx_metadata(out)
    assert meta["batch"] == 2 and meta["architecture"] == "espnetv2_cityscapes"
    assert len(meta["class_names"]) == 19
    assert json.loads(json.dumps(meta)) == meta
