"""The node's deployment parameters on real rclpy: precision / max_batch / cache_dir / build_only
build one DeploymentSpec, the batch is dynamic 1..cameras, build_only prepares and exits 0, the
core's log reaches the ROS logger. (A bounded shutdown with a batch in flight: test_node.py.)"""

import logging
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

rclpy = pytest.importorskip("rclpy", reason="needs rclpy and the message packages (pip install .[ros])")

from rclpy.parameter import Parameter  # noqa: E402

from rpl_perception.backends import OnnxRuntimeBackend  # noqa: E402
from rpl_perception.ros.log_bridge import forward_python_logging  # noqa: E402
from rpl_perception.ros.node import AnomalyNode, ParameterError  # noqa: E402

CAMERAS = [f"/cam{i}/image_raw" for i in range(3)]


@pytest.fixture
def context(monkeypatch):
    monkeypatch.setenv("ROS_DOMAIN_ID", str(random.randint(100, 200)))
    monkeypatch.setenv("ROS_LOCALHOST_ONLY", "1")
    monkeypatch.setenv("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    yield ctx
    rclpy.shutdown(context=ctx)


def make_node(context, **values):
    return AnomalyNode(context=context, parameter_overrides=[Parameter(k, value=v) for k, v in values.items()])


def test_dynamic_batch_one_per_camera_and_build_only(context, tmp_path):
    node = make_node(context, image_topics=CAMERAS, backend="onnxruntime", device="cpu",
                     network_width=128, network_height=64, cache_dir=str(tmp_path), build_only=True)
    try:
        spec = node.settings.deployment
        assert spec.batch == (1, 3, 3) and spec.cache_dir == tmp_path and spec.build_only
        backend = node.segmenter.backend
        assert isinstance(backend, OnnxRuntimeBackend)
        assert backend.fixed_batch is None and backend.batch_range == (1, 3)  # 2 waiting frames run as 2
        assert [p.name for p in tmp_path.glob("*.onnx")] == [backend.onnx_path.name]
        assert "_dyn_" in backend.onnx_path.name
        assert node.count_subscribers(CAMERAS[0]) == 0  # build only: nothing served
    finally:
        node.destroy_node()


@pytest.mark.parametrize("values, match", [
    ({"precision": "int8", "backend": "onnxruntime"}, "int8 is TensorRT only"),
    ({"precision": "bf16"}, "precision 'bf16' is unknown"),
    ({"engine_path": "/x.engine", "backend": "torch"}, "engine_path is a TensorRT engine"),
])
def test_bad_deployment_parameters_are_refused(context, values, match):
    with pytest.raises(ParameterError, match=match):
        make_node(context, image_topics=CAMERAS[:1], **values)


def test_core_log_records_reach_the_ros_logger():
    class RosLogger:
        def __init__(self):
            self.lines = []

        def info(self, text):
            self.lines.append(("info", text))

        def warning(self, text):
            self.lines.append(("warning", text))

        def error(self, text):
            self.lines.append(("error", text))

        def debug(self, text):
            self.lines.append(("debug", text))

    ros = RosLogger()
    handler = forward_python_logging(ros)
    try:
        logging.getLogger("rpl_perception.backends").info("backend auto: onnxruntime; skipped tensorrt")
        logging.getLogger("rpl_perception.backends.engine_cache").warning("building TensorRT engine x")
        logging.getLogger("other.library").warning("not ours")
    finally:
        handler.close()
    logging.getLogger("rpl_perception.backends").info("after close")
    assert ros.lines == [("info", "[rpl_perception.backends] backend auto: onnxruntime; skipped tensorrt"),
                         ("warning", "[rpl_perception.backends.engine_cache] building TensorRT engine x")]


def test_build_only_executable_exits_zero(tmp_path):
    path = shutil.which("anomaly_node", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    if path is None:
        pytest.skip("anomaly_node is not installed (pip install -e .)")
    env = {**os.environ, "ROS_DOMAIN_ID": str(random.randint(100, 200)), "ROS_LOCALHOST_ONLY": "1",
           "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST"}
    done = subprocess.run(
        [path, "--ros-args", "-p", "build_only:=true", "-p", "backend:=onnxruntime", "-p", "device:=cpu",
         "-p", "network_width:=128", "-p", "network_height:=64", "-p", f"cache_dir:={tmp_path}",
         "-p", "image_topics:=['/a/image', '/b/image']"],
        env=env, capture_output=True, text=True, timeout=180)
    log = done.stdout + done.stderr
    assert done.returncode == 0, log
    assert "build_only: ready" in log and "Traceback" not in log
    assert "exporting the model to" in log  # the core's progress, through the ROS logger
    assert len(list(tmp_path.glob("*_dyn_*.onnx"))) == 1
