"""launch/anomaly.launch.py, config/anomaly.yaml and config/anomaly.rviz.

``launch`` and ``launch_ros`` are not on PyPI: where they are missing the launch description test
skips, and the rest checks the files statically: what the launch file names is what the package
installs, every parameter-file key is a parameter the node declares, RViz shows the outputs.
"""

import ast
import configparser
import importlib.util
import math
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from rpl_perception.ros.topics import sibling_topic

yaml = pytest.importorskip("yaml", reason="needs PyYAML (comes with rclpy: pip install .[ros])")

REPO = Path(__file__).resolve().parents[1]
LAUNCH_FILE = REPO / "launch" / "anomaly.launch.py"
PARAMS_FILE = REPO / "config" / "anomaly.yaml"
RVIZ_FILE = REPO / "config" / "anomaly.rviz"
LAUNCH_ARGUMENTS = {"image_topics", "params_file", "model", "backend", "namespace", "use_rviz"}


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
    assert constant(nodes["anomaly_node"]["name"]) == "rpl_anomaly"
    assert "condition" in nodes["rviz2"]  # only with use_rviz:=true
    text = LAUNCH_FILE.read_text(encoding="utf-8")
    assert '"config", "anomaly.yaml"' in text and '"config", "anomaly.rviz"' in text


def test_the_launch_description_builds_where_launch_is_installed():
    try:
        import launch.actions  # noqa: F401
        import launch_ros.actions  # noqa: F401
        from ament_index_python.packages import PackageNotFoundError, get_package_share_directory
    except ImportError as exc:
        pytest.skip(f"{exc.name} is not installed (launch and launch_ros are not on PyPI; "
                    "they come with a ROS 2 distribution)")

    try:
        get_package_share_directory("rpl_perception")
    except PackageNotFoundError:
        pytest.skip("rpl_perception is not in the ament index "
                    "(build it with colcon and source the workspace)")
    spec = importlib.util.spec_from_file_location("anomaly_launch", LAUNCH_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    description = module.generate_launch_description()
    assert {arg.name for arg in description.get_launch_arguments()} == LAUNCH_ARGUMENTS
    assert module.parse_topics("[/a/image_raw, /b/image_raw/compressed]") == ["/a/image_raw",
                                                                              "/b/image_raw/compressed"]
    assert module.parse_topics("/a/image, /b/image") == ["/a/image", "/b/image"]
    assert module.resolve("semantic", "/robot") == "/robot/semantic"
    assert module.resolve("/cam/semantic", "robot") == "/cam/semantic"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """The wheel pip builds from this tree: what an install really puts where."""
    src = tmp_path_factory.mktemp("src")
    for name in ("setup.py", "setup.cfg", "README.md", "package.xml"):
        shutil.copy(REPO / name, src / name)
    for name in ("resource", "launch", "config", "rpl_perception"):
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    out = tmp_path_factory.mktemp("wheel")
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                             "-w", str(out), str(src)], capture_output=True, text=True, timeout=300)
    if result.returncode != 0 and "No module named" in result.stderr:
        pytest.skip(f"cannot build a wheel here: {result.stderr.strip().splitlines()[-1]}")
    assert result.returncode == 0, result.stderr
    return zipfile.ZipFile(next(out.glob("rpl_perception-*.whl")))


def test_the_package_installs_the_executable_and_files_the_launch_file_names(wheel):
    names = set(wheel.namelist())
    data = "rpl_perception-0.1.0.data/data/share/"
    for path in ("rpl_perception/config/anomaly.yaml", "rpl_perception/config/anomaly.rviz",
                 "rpl_perception/launch/anomaly.launch.py", "rpl_perception/package.xml",
                 "ament_index/resource_index/packages/rpl_perception"):
        assert data + path in names, f"the package does not install share/{path}"
    entry_points = configparser.ConfigParser()
    entry_points.read_string(wheel.read("rpl_perception-0.1.0.dist-info/entry_points.txt").decode())
    assert entry_points["console_scripts"]["anomaly_node"] == "rpl_perception.ros.node:main"
    # colcon installs console scripts where `ros2 run rpl_perception anomaly_node` looks
    setup_cfg = configparser.ConfigParser()
    setup_cfg.read(REPO / "setup.cfg")
    assert setup_cfg["install"]["install_scripts"] == "$base/lib/rpl_perception"


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


def test_rviz_shows_the_overlay_the_colour_mask_and_the_heatmap():
    config = yaml.safe_load(RVIZ_FILE.read_text(encoding="utf-8"))
    displays = config["Visualization Manager"]["Displays"]
    images = {d["Topic"]["Value"]: d for d in displays if d["Class"] == "rviz_default_plugins/Image"}
    # the launch file remaps the topics of the input "/image" to the first camera's
    assert set(images) == {sibling_topic("/image", name) for name in ("overlay", "semantic_color", "anomaly")}
    assert all(d["Enabled"] for d in images.values())
    assert images["/anomaly"]["Normalize Range"] is True  # 32FC1 scores are shown normalised
    launch_text = LAUNCH_FILE.read_text(encoding="utf-8")
    assert 'RVIZ_OUTPUTS = ("overlay", "semantic_color", "anomaly")' in launch_text
