"""The package as ROS users install it: pip (wheel and editable), colcon (also --symlink-install), rosdep.

``ros2 run`` / ``ros2 launch`` look for executables in ``<prefix>/lib/rpl_perception`` and packages through
``share/ament_index``; the ros2 CLI comes from a ROS distribution (not on PyPI: this project's machines
have none). Tests that need colcon, rosdep or ros2 skip with the reason where they are missing.
"""

import ast
import configparser
import os
import shutil
import stat
import subprocess
import sys
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

import pytest
import yaml

from rosgraph import venv_executable

REPO = Path(__file__).resolve().parents[1]
SOURCES = ("setup.py", "setup.cfg", "README.md", "package.xml", "LICENSE")
SOURCE_DIRS = ("resource", "launch", "config", "rpl_perception", "rosdep")
BAD_TOPICS = "image_topics:=[/a/image, /a/image2]"  # the node refuses these at once, before loading a model


def copy_sources(destination: Path) -> Path:
    destination.mkdir(parents=True, exist_ok=True)
    for name in SOURCES:
        shutil.copy(REPO / name, destination / name)
    for name in SOURCE_DIRS:
        shutil.copytree(REPO / name, destination / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return destination


def assert_refuses_bad_topics(result):
    """The node ran (found, with an interpreter that imports it) and refused the topics with exit 2."""
    assert "cannot start: image_topics: image topics '/a/image' and '/a/image2' would both publish" in (
        result.stdout + result.stderr), result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr


# -- pip ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """The wheel pip builds from this tree: what an install really puts where."""
    src = copy_sources(tmp_path_factory.mktemp("src") / "rpl_perception")
    out = tmp_path_factory.mktemp("wheel")
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                             "-w", str(out), str(src)], capture_output=True, text=True, timeout=300)
    if result.returncode != 0 and "No module named" in result.stderr:
        pytest.skip(f"cannot build a wheel here: {result.stderr.strip().splitlines()[-1]}")
    assert result.returncode == 0, result.stderr
    return zipfile.ZipFile(next(out.glob("rpl_perception-*.whl")))


def test_the_wheel_installs_the_launcher_and_files_ros_tools_look_for(wheel):
    names = set(wheel.namelist())
    data = "rpl_perception-0.1.0.data/data/"
    for path in ("share/rpl_perception/config/anomaly.yaml", "share/rpl_perception/config/anomaly.rviz",
                 "share/rpl_perception/config/fastdds.xml", "share/rpl_perception/launch/anomaly.launch.py",
                 "share/rpl_perception/package.xml", "share/ament_index/resource_index/packages/rpl_perception",
                 "lib/rpl_perception/anomaly_node"):
        assert data + path in names, f"the wheel does not install {path}"
    launcher = wheel.getinfo(data + "lib/rpl_perception/anomaly_node")
    assert (launcher.external_attr >> 16) & stat.S_IXUSR, "the launcher is not executable"
    entry_points = configparser.ConfigParser()
    entry_points.read_string(wheel.read("rpl_perception-0.1.0.dist-info/entry_points.txt").decode())
    assert entry_points["console_scripts"]["anomaly_node"] == "rpl_perception.ros.node:main"


def test_the_editable_install_has_the_launcher_and_current_share_files():
    """The README installs with pip -e: setuptools leaves data_files out of editable installs unless
    setup.py adds them, and what it installed is a copy that goes stale when launch/ or config/ change."""
    prefix = Path(sys.prefix)
    launcher = prefix / "lib" / "rpl_perception" / "anomaly_node"
    if not (prefix / "bin" / "anomaly_node").exists():
        pytest.skip("rpl_perception is not pip-installed in this environment")
    assert launcher.exists() and os.access(launcher, os.X_OK), f"{launcher} is missing: pip install -e ."
    for name in ("launch/anomaly.launch.py", "config/anomaly.yaml", "config/fastdds.xml", "config/anomaly.rviz"):
        installed = prefix / "share" / "rpl_perception" / name
        assert installed.read_bytes() == (REPO / name).read_bytes(), (
            f"{installed} differs from the checkout's {name}: reinstall with pip install -e .")


def test_ros2_run_finds_the_node_of_a_pip_install(ros_env):
    ros2 = venv_executable("ros2")
    result = subprocess.run([ros2, "run", "rpl_perception", "anomaly_node", "--ros-args", "-p", BAD_TOPICS],
                            env=ros_env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stdout + result.stderr
    assert_refuses_bad_topics(result)


# -- colcon ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module", params=["copy", "symlink"])
def colcon_workspace(request, tmp_path_factory, ros_env):
    """``colcon build`` (``--symlink-install`` too) of this package in a fresh workspace."""
    colcon = venv_executable("colcon")
    workspace = tmp_path_factory.mktemp(f"ws_{request.param}")
    copy_sources(workspace / "src" / "rpl_perception")
    command = [colcon, "build"] + (["--symlink-install"] if request.param == "symlink" else [])
    result = subprocess.run(command, cwd=workspace, env=ros_env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return workspace


def sourced(workspace: Path, command: str, env) -> subprocess.CompletedProcess:
    """``command`` in a bash that sourced the workspace, as a user's terminal."""
    return subprocess.run(["bash", "-c", f". {workspace}/install/setup.sh && {command}"],
                          env=env, cwd=workspace, capture_output=True, text=True, timeout=180)


def test_colcon_installs_an_executable_that_runs_with_the_python_on_path(colcon_workspace):
    """Not the interpreter that ran colcon (a pipx or system colcon would break the node)."""
    executable = colcon_workspace / "install" / "rpl_perception" / "lib" / "rpl_perception" / "anomaly_node"
    assert executable.exists() and os.access(executable, os.X_OK)
    assert executable.read_text().splitlines()[0] == "#!/usr/bin/env python3"


def test_ros2_run_and_launch_find_the_colcon_build(colcon_workspace, ros_env):
    ros2 = venv_executable("ros2")
    where = sourced(colcon_workspace, "python3 -c 'import rpl_perception; print(rpl_perception.__file__)'", ros_env)
    assert where.returncode == 0, where.stderr
    assert str(colcon_workspace) in where.stdout, f"sourcing the workspace imports {where.stdout}"
    run = sourced(colcon_workspace, f"{ros2} run rpl_perception anomaly_node --ros-args -p '{BAD_TOPICS}'", ros_env)
    assert run.returncode == 2
    assert_refuses_bad_topics(run)
    launch = sourced(colcon_workspace, f"{ros2} launch rpl_perception anomaly.launch.py '{BAD_TOPICS}'", ros_env)
    assert launch.returncode == 1, launch.stdout + launch.stderr
    assert str(colcon_workspace / "install") in launch.stdout  # the workspace's node, not pip's
    assert_refuses_bad_topics(launch)


# -- rosdep and package.xml -------------------------------------------------------------------------------

#: keys of the public rosdep database (ros/rosdistro rosdep/base.yaml, python.yaml; read at commit
#: 000730dc) and ROS packages of every distribution, that package.xml uses
UPSTREAM_KEYS = {"python3-yaml", "python3-numpy", "python3-opencv", "python3-pil", "python3-tqdm",
                 "python3-pytest", "python3-scipy", "python3-sklearn", "python3-matplotlib",
                 "python3-onnxruntime-pip"}
ROS_PACKAGES = {"rclpy", "sensor_msgs", "diagnostic_msgs", "visualization_msgs", "vision_msgs", "rcl_interfaces",
                "ament_index_python", "launch", "launch_ros", "rviz2", "builtin_interfaces", "cv_bridge", "ros2launch", "ros2run"}
#: the key for each top-level module the code imports (third-party or ROS)
MODULE_KEYS = {"rclpy": "rclpy", "sensor_msgs": "sensor_msgs", "diagnostic_msgs": "diagnostic_msgs",
               "visualization_msgs": "visualization_msgs", "vision_msgs": "vision_msgs",
               "rcl_interfaces": "rcl_interfaces", "ament_index_python": "ament_index_python",
               "launch": "launch", "launch_ros": "launch_ros", "yaml": "python3-yaml", "numpy": "python3-numpy",
               "cv2": "python3-opencv", "PIL": "python3-pil", "tqdm": "python3-tqdm",
               "safetensors": "python3-safetensors-pip", "torch": "python3-torch-cpu",
               "onnx": "python3-onnx-pip", "onnxruntime": "python3-onnxruntime-pip",
               "rosbags": "python3-rosbags-pip", "matplotlib": "python3-matplotlib", "pytest": "python3-pytest",
               "scipy": "python3-scipy", "sklearn": "python3-sklearn", "builtin_interfaces": "builtin_interfaces",
               "cv_bridge": "cv_bridge"}
#: imported only by optional parts (extras onnx and eval, TensorRT from NVIDIA): not exec_depends
OPTIONAL_MODULES = {"onnx", "onnxruntime", "tensorrt", "pycuda", "rosbags", "matplotlib"}


def package_dependencies():
    root = ET.parse(REPO / "package.xml").getroot()
    return ({e.text for e in root.iter("exec_depend")}, {e.text for e in root.iter("test_depend")},
            {e.tag for e in root if e.tag.endswith("depend") and e.tag not in ("exec_depend", "test_depend")})


def imported_modules(paths):
    modules = set()
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                modules.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules.add(node.module.split(".")[0])
    return modules - set(sys.stdlib_module_names) - {"rpl_perception", "rosgraph", "conftest"}


def test_rviz_is_a_run_dependency_only_where_asked_for():
    """A headless vehicle's ``rosdep install`` gets no RViz and Qt; RPL_PERCEPTION_RVIZ=true asks for it
    (rosdep and colcon evaluate package.xml conditions against the environment)."""
    from catkin_pkg.package import parse_package

    package = parse_package(str(REPO / "package.xml"))
    for environment, with_rviz in (({}, False), ({"RPL_PERCEPTION_RVIZ": "true"}, True),
                                   ({"RPL_PERCEPTION_RVIZ": "false"}, False)):
        package.evaluate_conditions(environment)
        names = {d.name for d in package.exec_depends if d.evaluated_condition}
        assert ("rviz2" in names) == with_rviz, environment
        assert {"rclpy", "python3-torch-cpu"} <= names


def test_package_xml_declares_what_the_code_imports_and_nothing_else():
    exec_depends, test_depends, others = package_dependencies()
    assert not others, f"unexpected dependency kinds {others}"
    product = imported_modules([*REPO.joinpath("rpl_perception").rglob("*.py"), *REPO.joinpath("launch").glob("*.py")])
    assert product - OPTIONAL_MODULES <= set(MODULE_KEYS), f"no key known for {product - set(MODULE_KEYS)}"
    required = {MODULE_KEYS[m] for m in product - OPTIONAL_MODULES}
    assert exec_depends - {"rviz2"} == required, (
        f"exec_depend lacks {required - exec_depends}, has unused {exec_depends - required - {'rviz2'}}")
    tests = imported_modules(REPO.joinpath("test").glob("*.py"))
    needed = {MODULE_KEYS[m] for m in (tests | product) & set(MODULE_KEYS)} - exec_depends
    assert needed <= test_depends, f"test_depend lacks {needed - test_depends}"
    assert test_depends - needed <= {"ros2launch", "ros2run"}, f"unused test_depend {test_depends - needed}"


def test_every_key_resolves_upstream_or_in_the_shipped_rosdep_file():
    exec_depends, test_depends, _ = package_dependencies()
    local = yaml.safe_load((REPO / "rosdep" / "rpl_perception.yaml").read_text(encoding="utf-8"))
    keys = exec_depends | test_depends
    unknown = keys - UPSTREAM_KEYS - ROS_PACKAGES - set(local)
    assert not unknown, f"no rosdep rule anywhere for {unknown}"
    assert set(local) <= keys, f"rosdep/rpl_perception.yaml defines unused keys {set(local) - keys}"
    assert not set(local) & UPSTREAM_KEYS, "a local rule would shadow the public one"
    pip_names = {key: rule["ubuntu"]["pip"]["packages"] for key, rule in local.items() if key.endswith("-pip")}
    assert pip_names["python3-safetensors-pip"] == ["safetensors"]
    # torch: the distributions' CPU build, never pip (PyPI's Linux wheel is the CUDA one)
    assert "pip" not in str(local["python3-torch-cpu"])
    assert local["python3-torch-cpu"] == {"debian": {"trixie": ["python3-torch"]}, "fedora": ["python3-torch"],
                                          "ubuntu": {"noble": ["python3-torch"]}}


def test_rosdep_resolves_the_shipped_rules(tmp_path):
    """With rosdep itself, offline: the shipped file as the only source, as the README adds it."""
    rosdep = venv_executable("rosdep")
    sources = tmp_path / "sources.list.d"
    sources.mkdir()
    (sources / "50-rpl-perception.list").write_text(f"yaml file://{REPO / 'rosdep' / 'rpl_perception.yaml'}\n")
    index = tmp_path / "index.yaml"
    index.write_text("%YAML 1.1\n---\ndistributions: {}\ntype: index\nversion: 4\n")
    env = dict(os.environ, ROSDEP_SOURCE_PATH=str(sources), ROS_HOME=str(tmp_path / "home"),
               ROSDISTRO_INDEX_URL=f"file://{index}", ROS_PYTHON_VERSION="3")
    update = subprocess.run([rosdep, "update"], env=env, capture_output=True, text=True, timeout=120)
    assert update.returncode == 0, update.stdout + update.stderr
    local = yaml.safe_load((REPO / "rosdep" / "rpl_perception.yaml").read_text(encoding="utf-8"))
    def resolve(key, os_name):
        result = subprocess.run([rosdep, "resolve", key, f"--os={os_name}"], env=env, capture_output=True,
                                text=True, timeout=60)
        return result.stdout.split() if result.returncode == 0 else result.stderr

    for key, rule in local.items():
        if key.endswith("-pip"):
            for os_name in ("ubuntu:noble", "ubuntu:jammy", "debian:bookworm", "fedora:40"):
                assert resolve(key, os_name) == ["#pip", *rule["ubuntu"]["pip"]["packages"]]
    for os_name, packages in (("ubuntu:noble", ["#apt", "python3-torch"]), ("debian:trixie", ["#apt", "python3-torch"]),
                              ("fedora:40", ["#yum", "python3-torch"])):
        assert resolve("python3-torch-cpu", os_name) == packages
    for os_name in ("ubuntu:jammy", "debian:bookworm"):  # too old there: rosdep stops and names the key
        assert "No definition of [python3-torch-cpu] for OS version" in resolve("python3-torch-cpu", os_name)


def test_setup_cfg_installs_scripts_where_ros2_run_looks_with_a_portable_interpreter():
    setup_cfg = configparser.ConfigParser()
    setup_cfg.read(REPO / "setup.cfg")
    assert setup_cfg["install"]["install_scripts"] == "$base/lib/rpl_perception"
    assert setup_cfg["develop"]["script_dir"] == "$base/lib/rpl_perception"
    assert setup_cfg["build_scripts"]["executable"] == "/usr/bin/env python3"


def test_ci_runs_the_readme_test_command():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    commands = [block.strip() for block in readme.split("```bash")[1:3]]
    test_command = next(c.split("```")[0].strip() for c in commands if "pytest" in c)
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8").strip().splitlines()
    assert ci[-1] == test_command, "the last line of .ci/run must be the README's test command"
    assert not any("ros2_tools" in line for line in ci), "../shared/ros2_tools no longer exists"
