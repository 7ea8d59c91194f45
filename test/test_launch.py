"""launch/anomaly.launch.py, config/anomaly.yaml and config/anomaly.rviz, as ROS users run them.

The launch tests run the launch file for real, through ``launch.LaunchService`` and through ``ros2
launch`` in a terminal-like process group. ``launch``, ``launch_ros`` and the ``ros2`` CLI are not on PyPI:
they come from a ROS distribution; where they are missing (this project's machines and CI) these
tests skip with the reason, and the tests above them check what can be checked without them.
"""

import ast
import math
import re
import signal
import threading
from pathlib import Path

import pytest

from rosgraph import (
    Probe,
    Process,
    Spinner,
    image_msg,
    interrupt_twice,
    sample_rgb,
    serving,
    venv_executable,
    wait_until,
)
from rpl_perception.topics import sibling_topic

yaml = pytest.importorskip("yaml", reason="needs PyYAML (comes with rclpy: pip install .[ros])")

REPO = Path(__file__).resolve().parents[1]
LAUNCH_FILE = REPO / "launch" / "anomaly.launch.py"
PARAMS_FILE = REPO / "config" / "anomaly.yaml"
RVIZ_FILE = REPO / "config" / "anomaly.rviz"
LAUNCH_ARGUMENTS = {"image_topics", "params_file", "model", "backend", "namespace", "name", "use_rviz"}


def launch_calls(name: str):
    """Every call of ``name(...)`` in the launch file, as (positional constants, keyword nodes)."""
    tree = ast.parse(LAUNCH_FILE.read_text(encoding="utf-8"))
    calls = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == name:
            args = [a.value for a in node.args if isinstance(a, ast.Constant)]
            calls.append((args, {k.arg: k.value for k in node.keywords}))
    return calls


def constant(node):
    """The value of a literal, or of a module-level ``NAME = "literal"`` the node refers to."""
    if isinstance(node, ast.Name):
        tree = ast.parse(LAUNCH_FILE.read_text(encoding="utf-8"))
        for statement in tree.body:
            if isinstance(statement, ast.Assign) and any(getattr(t, "id", None) == node.id
                                                         for t in statement.targets):
                return constant(statement.value)
    return node.value if isinstance(node, ast.Constant) else None


def test_launch_file_declares_its_arguments_and_starts_the_node_and_rviz():
    declared = {args[0] for args, _ in launch_calls("DeclareLaunchArgument")}
    assert declared == LAUNCH_ARGUMENTS
    nodes = {constant(kw["executable"]): kw for _, kw in launch_calls("Node")}
    assert set(nodes) == {"anomaly_node", "rviz2"}
    assert constant(nodes["anomaly_node"]["package"]) == "rpl_perception"
    # name:=x names the node (rpl_anomaly by default): the Node action takes the launch argument
    defaults = {args[0]: constant(kw["default_value"]) for args, kw in launch_calls("DeclareLaunchArgument")}
    assert defaults["name"] == "rpl_anomaly"
    assert ast.unparse(nodes["anomaly_node"]["name"]) == "arg['name']"
    assert '"namespace", "name")}' in LAUNCH_FILE.read_text(encoding="utf-8")  # read from the arguments
    text = LAUNCH_FILE.read_text(encoding="utf-8")
    assert '"config", "anomaly.yaml"' in text and '"config", "anomaly.rviz"' in text


def test_every_parameter_file_key_is_a_declared_parameter():
    pytest.importorskip("rclpy", reason="the node module needs rclpy")
    from rpl_perception.ros.node import NODE_NAME, PARAMETERS

    params = yaml.safe_load(PARAMS_FILE.read_text(encoding="utf-8"))
    assert set(params) <= {"/**", NODE_NAME, f"/{NODE_NAME}"}
    values = params["/**"]["ros__parameters"]
    declared = {spec.name: spec.default for spec in PARAMETERS}
    assert set(values) == set(declared), "keys differ from the node's declared parameters"
    for name, value in values.items():
        default = declared[name]
        assert type(value) is type(default), f"{name}: {value!r} is not a {type(default).__name__}"
        assert value == default or (isinstance(value, float) and math.isnan(value) and math.isnan(default)), (
            f"{name}: the file says {value!r}, the node's default is {default!r}")


def _launch_module_with_a_stand_in_api(monkeypatch):
    """The launch file imported over stand-ins for ``launch`` / ``launch_ros`` (not on PyPI): each action
    records its arguments, ``LaunchConfiguration`` reads a dict. The file's own logic runs for real."""
    import importlib.util
    import sys
    import types

    class Action:
        def __init__(self, *args, **kwargs):
            self.args, self.kwargs = args, kwargs

    class LaunchConfiguration:
        def __init__(self, name):
            self.name = name

        def perform(self, context):
            return context[self.name]

    class IfCondition:
        def __init__(self, value):
            self.value = value

        def evaluate(self, context):
            return self.value.perform(context).lower() == "true"

    modules = {"launch": {"LaunchDescription": Action}, "launch.actions": dict.fromkeys(
        ("DeclareLaunchArgument", "LogInfo", "OpaqueFunction", "RegisterEventHandler", "Shutdown"), Action),
        "launch.conditions": {"IfCondition": IfCondition}, "launch.event_handlers": {"OnProcessExit": Action},
        "launch.substitutions": {"LaunchConfiguration": LaunchConfiguration},
        "launch_ros": {}, "launch_ros.actions": {"Node": Action}}
    for name, attributes in modules.items():
        monkeypatch.setitem(sys.modules, name, types.SimpleNamespace(**attributes))
    spec = importlib.util.spec_from_file_location("anomaly_launch_under_test", LAUNCH_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "installed", lambda package: False)  # no rviz2 here
    return module


def test_launch_setup_passes_only_declared_node_parameters(monkeypatch):
    """Without the launch package: the launch file's own ``launch_setup`` over a stand-in launch API; the
    parameters it hands the node are the node's declared ones, and its topic helpers resolve as ROS does."""
    pytest.importorskip("rclpy", reason="the node module needs rclpy")
    from rpl_perception.ros.node import PARAMETERS

    module = _launch_module_with_a_stand_in_api(monkeypatch)
    context = {"image_topics": "[/front/image_raw, /rear/image_raw/compressed]", "params_file": str(PARAMS_FILE),
               "model": "default", "backend": "onnxruntime", "namespace": "car", "name": "front_anomaly",
               "use_rviz": "true"}
    actions = module.launch_setup(context)
    node = actions[0]
    assert node.kwargs["executable"] == "anomaly_node" and node.kwargs["name"] == "front_anomaly"
    assert node.kwargs["namespace"] == "car"
    params_file, overrides = node.kwargs["parameters"]
    assert params_file == str(PARAMS_FILE)
    declared = {spec.name for spec in PARAMETERS}
    assert set(overrides) <= declared and set(overrides) == {"model", "backend", "image_topics"}
    assert overrides["image_topics"] == ["/front/image_raw", "/rear/image_raw/compressed"]
    assert "rviz2 is not installed" in actions[-1].kwargs["msg"]  # use_rviz without rviz2: the node alone
    empty = dict(context, image_topics="", model="", backend="", use_rviz="false")
    assert module.launch_setup(empty)[0].kwargs["parameters"] == [str(PARAMS_FILE)]  # the file's values
    assert module.parse_topics("/a/image, /b/image") == ["/a/image", "/b/image"]
    assert module.resolve("image", "car") == "/car/image" and module.resolve("~/x", "", "n") == "/n/x"
    assert module.topics_in_params_file(str(PARAMS_FILE)) == yaml.safe_load(
        PARAMS_FILE.read_text(encoding="utf-8"))["/**"]["ros__parameters"]["image_topics"]


def test_rviz_shows_the_overlay_the_colour_mask_and_the_heatmap():
    config = yaml.safe_load(RVIZ_FILE.read_text(encoding="utf-8"))
    displays = config["Visualization Manager"]["Displays"]
    images = {d["Topic"]["Value"]: d for d in displays if d["Class"] == "rviz_default_plugins/Image"}
    # the launch file remaps the topics of the input "/image" to the first camera's
    assert set(images) == {sibling_topic("/image", name) for name in ("overlay", "semantic_color", "anomaly")}
    assert all(d["Enabled"] for d in images.values())
    assert images["/anomaly"]["Normalize Range"] is True  # 32FC1 scores are shown normalised
    launch_text = LAUNCH_FILE.read_text(encoding="utf-8")
    assert 'RVIZ_OUTPUTS = ("overlay", "semantic_color", "anomaly", "obstacle_markers", "obstacle_points")' \
        in launch_text


def test_rviz_shows_the_obstacle_boxes_and_ground_points():
    config = yaml.safe_load(RVIZ_FILE.read_text(encoding="utf-8"))
    displays = {d["Class"]: d for d in config["Visualization Manager"]["Displays"]}
    markers = displays["rviz_default_plugins/MarkerArray"]
    cloud = displays["rviz_default_plugins/PointCloud2"]
    assert markers["Topic"]["Value"] == sibling_topic("/image", "obstacle_markers") and markers["Enabled"]
    assert set(markers["Namespaces"]) == {"anomaly_boxes", "anomaly_labels"}  # ros.obstacle_messages' names
    assert cloud["Topic"]["Value"] == sibling_topic("/image", "obstacle_points") and cloud["Enabled"]


# -- the launch file, run -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def launch_tools(ros_env):
    """launch, launch_ros, ros2 and this package in the ament index (pip install -e . puts it there)."""
    for module in ("launch", "launch_ros"):
        pytest.importorskip(module, reason=f"{module} is not installed (not on PyPI: a ROS distribution "
                                           "provides it)")
    from ament_index_python.packages import PackageNotFoundError, get_package_share_directory

    try:
        get_package_share_directory("rpl_perception")
    except PackageNotFoundError:
        pytest.skip("rpl_perception is not in the ament index (pip install -e . or colcon build)")
    return venv_executable("ros2")


@pytest.fixture
def small_params(tmp_path):
    """A parameter file of the user's: another camera and a small network (fast on a CPU)."""
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"/**": {"ros__parameters": {
        "image_topics": ["/from_file/image_raw"], "backend": "onnxruntime",
        "network_width": 256, "network_height": 128}}}))
    return path


def test_launch_service_serves_a_frame_with_every_argument(launch_tools, small_params, capfd):
    """The repo's launch file through launch.LaunchService: parameters from the YAML file, every
    argument taking effect, use_rviz:=true where rviz2 is missing, a clean shutdown (return code 0)."""
    import launch
    from launch.actions import IncludeLaunchDescription
    from launch.launch_description_sources import PythonLaunchDescriptionSource

    from rpl_perception.checkpoint import DEFAULT_CHECKPOINT

    topic = "/ls/image_raw"
    arguments = {"image_topics": f"[{topic}]", "params_file": str(small_params), "model": str(DEFAULT_CHECKPOINT),
                 "backend": "torch", "namespace": "ls_ns", "name": "ls_node", "use_rviz": "true"}
    assert set(arguments) == LAUNCH_ARGUMENTS
    service = launch.LaunchService()
    service.include_launch_description(IncludeLaunchDescription(
        PythonLaunchDescriptionSource(str(LAUNCH_FILE)), launch_arguments=arguments.items()))
    outcome = {}

    def drive():
        spinner = Spinner()
        probe = Probe(spinner.context, [topic], name="launch_probe")
        spinner.spin(probe.node)
        try:
            wait_until(lambda: probe.publishers[topic].get_subscription_count(), "the launched node", 120)
            probe.wait_for_reliable_subscription(topic)
            header = probe.publish(topic, image_msg(sample_rgb(), "rgb8"))
            outcome["outputs"] = probe.outputs(topic, header, ["semantic", "anomaly"])
            outcome["model"] = wait_until(lambda: probe.values("/ls_ns/ls_node: model"), "model diagnostics")
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            outcome["error"] = exc
        finally:
            spinner.close(probe.node)
            service.shutdown()

    driver = threading.Thread(target=drive)
    driver.start()
    code = service.run()  # the main thread's, as launch requires
    driver.join(timeout=60)
    output = capfd.readouterr()
    if "error" in outcome:
        raise AssertionError(f"{outcome['error']}\n{output.out[-3000:]}{output.err[-3000:]}")
    assert code == 0
    model = outcome["model"]
    assert model["backend"] == "torch" and model["model"] == str(DEFAULT_CHECKPOINT)
    assert model["network size"] == "256x128"  # from params_file
    assert "rviz2 is not installed here: starting without RViz" in output.out + output.err
    assert "Traceback" not in output.out + output.err


def started_pids(output: str):
    return [int(pid) for pid in re.findall(r"process started with pid \[(\d+)\]", output)]


def process_exists(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


def test_ros2_launch_ends_cleanly_on_a_terminal_ctrl_c(launch_tools, small_params, ros_env):
    """``ros2 launch ... use_rviz:=true`` without rviz2, a frame served, then Ctrl-C as a terminal sends it
    (SIGINT to the whole process group: the node gets it from the terminal and again from launch):
    exit code 0, no traceback, no process left behind."""
    topic = "/term/image_raw"
    command = [launch_tools, "launch", "rpl_perception", "anomaly.launch.py", f"image_topics:=[{topic}]",
               f"params_file:={small_params}", "use_rviz:=true"]
    with serving(command, [topic], ros_env, name="terminal_probe") as (process, probe):
        header = probe.publish(topic, image_msg(sample_rgb(), "rgb8"))
        probe.outputs(topic, header, ["anomaly"])
        pids = started_pids(process.output())
        assert len(pids) == 1, process.output()  # the node alone: RViz is not installed
        process.signal_group(signal.SIGINT)
        code = process.wait(timeout=30)
        output = process.output()
    assert code == 0, output
    assert "Traceback" not in output, output
    assert "rviz2 is not installed here" in output
    assert "process has finished cleanly" in output, output
    assert not process_exists(pids[0]), f"the node (pid {pids[0]}) outlived the launch"


def test_ros2_launch_ends_cleanly_on_ctrl_c_twice(launch_tools, small_params, ros_env):
    """Ctrl-C twice in the terminal (the second 0.5 s or more after the first), 20 times: the launch exits 0
    within 2 s and never reports the node "exited with code -2"."""
    topic = "/twice_launch/image_raw"
    command = [launch_tools, "launch", "rpl_perception", "anomaly.launch.py", f"image_topics:=[{topic}]",
               f"params_file:={small_params}"]
    for _ in range(20):
        process = Process(command, ros_env)
        try:
            wait_until(lambda p=process: "serving " in p.output() or not p.alive(), "the node to serve", 120)
            took = interrupt_twice(process)
            code, output = process.popen.returncode, process.output()
        finally:
            process.kill()
        assert code == 0, output
        assert took <= 2.0, f"the launch took {took:.1f} s to stop"
        assert "exited with code" not in output and "Traceback" not in output, output


def test_ros2_launch_fails_when_the_node_fails(launch_tools, ros_env):
    process = Process([launch_tools, "launch", "rpl_perception", "anomaly.launch.py",
                       "image_topics:=[/a/image, /a/image2]"], ros_env)
    try:
        code = process.wait(timeout=120)
        output = process.output()
    finally:
        process.kill()
    assert code == 1, output
    assert "cannot start: image_topics: image topics '/a/image' and '/a/image2' would both publish" in output
    assert "rpl_anomaly exited with code 2" in output
    for pid in started_pids(output):
        assert not process_exists(pid)
