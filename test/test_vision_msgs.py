"""The node's ``vision_msgs/Detection2DArray`` output, through the real publishing path.

vision_msgs is not on PyPI (a ROS distribution has it), so this test builds a copy of the interface
package from its message definitions — written here from the public vision_msgs (ROS 2, 4.x) message
specification: Point2D, Pose2D (vision_msgs' own), BoundingBox2D, ObjectHypothesis,
ObjectHypothesisWithPose, Detection2D, Detection2DArray — with the rosidl generators and ament_cmake
from PyPI (the ``test`` extra), CMake and a C compiler, then starts the node and checks what it
publishes. It skips, saying why, where the build tools are missing.
"""

import ctypes
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from rosgraph import wait_until
from test_node_obstacles import CAM, THRESHOLD, Listener, frame, graph, scene  # noqa: F401 - fixtures

MESSAGES = {
    "Point2D": "float64 x\nfloat64 y\n",
    "Pose2D": "vision_msgs/Point2D position\nfloat64 theta\n",
    "BoundingBox2D": "vision_msgs/Pose2D center\nfloat64 size_x\nfloat64 size_y\n",
    "ObjectHypothesis": "string class_id\nfloat64 score\n",
    "ObjectHypothesisWithPose": "ObjectHypothesis hypothesis\ngeometry_msgs/PoseWithCovariance pose\n",
    "Detection2D": "std_msgs/Header header\nObjectHypothesisWithPose[] results\nBoundingBox2D bbox\nstring id\n",
    "Detection2DArray": "std_msgs/Header header\nDetection2D[] detections\n",
}

CMAKE_LISTS = """cmake_minimum_required(VERSION 3.21)
project(vision_msgs)
find_package(ament_cmake REQUIRED)
find_package(rosidl_default_generators REQUIRED)
find_package(std_msgs REQUIRED)
find_package(geometry_msgs REQUIRED)
rosidl_generate_interfaces(${PROJECT_NAME} %s DEPENDENCIES std_msgs geometry_msgs)
# the PyPI wheels export the Python include folders of the machine they were built on: use ours
find_package(Python3 REQUIRED COMPONENTS Interpreter Development NumPy)
get_property(imported DIRECTORY PROPERTY IMPORTED_TARGETS)
foreach(target IN LISTS imported)
  get_target_property(includes ${target} INTERFACE_INCLUDE_DIRECTORIES)
  if(includes MATCHES "/opt/python/")
    set_target_properties(${target} PROPERTIES
      INTERFACE_INCLUDE_DIRECTORIES "${Python3_INCLUDE_DIRS};${Python3_NumPy_INCLUDE_DIRS}")
  endif()
endforeach()
ament_export_dependencies(rosidl_default_runtime)
ament_package()
"""

PACKAGE_XML = """<?xml version="1.0"?>
<package format="3">
  <name>vision_msgs</name>
  <version>0.0.0</version>
  <description>A test copy of the vision_msgs messages rpl_perception publishes</description>
  <maintainer email="test@example.com">rpl_perception tests</maintainer>
  <license>Apache-2.0</license>
  <buildtool_depend>ament_cmake</buildtool_depend>
  <buildtool_depend>rosidl_default_generators</buildtool_depend>
  <depend>std_msgs</depend>
  <depend>geometry_msgs</depend>
  <exec_depend>rosidl_default_runtime</exec_depend>
  <member_of_group>rosidl_interface_packages</member_of_group>
  <export><build_type>ament_cmake</build_type></export>
</package>
"""


def _missing_tools():
    prefix = Path(sys.prefix)
    missing = [tool for tool in ("cmake", "cc") if shutil.which(tool) is None]
    missing += [f"{package} (pip)" for package in ("ament_cmake", "rosidl_default_generators", "std_msgs", "geometry_msgs")
                if not (prefix / "share" / package / "cmake").is_dir()]
    try:
        import ament_package  # noqa: F401 - ament_cmake runs it
    except ImportError:
        missing.append("ament_package (pip: ros-ament-package)")
    return missing


@pytest.fixture(scope="module")
def interfaces(tmp_path_factory, ros_env):
    """Build and install the copy; make it importable in this process (sys.path, and the search path
    rosidl's type support loader reads); undone afterwards."""
    try:
        import vision_msgs.msg  # noqa: F401 - a ROS distribution's
        yield "installed"
        return
    except ImportError:
        pass
    missing = _missing_tools()
    if missing:
        pytest.skip(f"cannot build the vision_msgs test copy: missing {', '.join(missing)} "
                    "(pip install -e '.[test]'; CMake and a C compiler from the system)")
    root = tmp_path_factory.mktemp("vision_msgs")
    source, build, install = root / "src", root / "build", root / "install"
    (source / "msg").mkdir(parents=True)
    for name, text in MESSAGES.items():
        (source / "msg" / f"{name}.msg").write_text(text)
    (source / "CMakeLists.txt").write_text(CMAKE_LISTS % " ".join(f"msg/{name}.msg" for name in MESSAGES))
    (source / "package.xml").write_text(PACKAGE_XML)
    prefix = sys.prefix
    env = dict(os.environ, AMENT_PREFIX_PATH=prefix, PATH=os.pathsep.join((str(Path(sys.executable).parent),
                                                                           os.environ["PATH"])))
    configure = ["cmake", "-S", str(source), "-B", str(build), f"-DCMAKE_PREFIX_PATH={prefix}",
                 f"-DCMAKE_INSTALL_PREFIX={install}", f"-DPython3_EXECUTABLE={sys.executable}",
                 f"-DCMAKE_INSTALL_RPATH={install / 'lib'}", "-DBUILD_TESTING=OFF"]
    if shutil.which("ninja"):
        configure += ["-G", "Ninja"]
    for command in (configure, ["cmake", "--build", str(build), "--parallel", "2"], ["cmake", "--install", str(build)]):
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"{' '.join(command[:2])} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    site = install / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    patch = pytest.MonkeyPatch()
    patch.syspath_prepend(str(site))
    # rosidl's type support dispatch dlopens its libraries by file name, which the loader finds only on
    # the LD_LIBRARY_PATH the process started with, or among the libraries already loaded: load them
    for library in sorted((install / "lib").glob("libvision_msgs__*.so")):
        ctypes.CDLL(str(library), mode=ctypes.RTLD_GLOBAL)
    patch.setenv("AMENT_PREFIX_PATH", os.pathsep.join((str(install), os.environ["AMENT_PREFIX_PATH"])))
    yield "built"
    patch.undo()


def test_the_copy_round_trips_through_rclpy_serialisation(interfaces):
    from geometry_msgs.msg import PoseWithCovariance
    from rclpy.serialization import deserialize_message, serialize_message
    from vision_msgs.msg import Detection2D, Detection2DArray, ObjectHypothesisWithPose

    hypothesis = ObjectHypothesisWithPose(pose=PoseWithCovariance())
    hypothesis.hypothesis.class_id, hypothesis.hypothesis.score = "anomaly", 0.75
    message = Detection2DArray(detections=[Detection2D(id="7", results=[hypothesis])])
    message.detections[0].bbox.center.position.x = 12.5
    back = deserialize_message(serialize_message(message), Detection2DArray)
    assert back.detections[0].id == "7" and back.detections[0].bbox.center.position.x == 12.5
    assert back.detections[0].results[0].hypothesis.class_id == "anomaly"


def test_the_node_publishes_detections_with_the_image_header(graph, scene):  # noqa: F811 - fixtures
    import vision_msgs.msg as vision_msgs

    node, probe = graph
    outputs = node.obstacle_outputs[node.cameras[0]]
    assert "obstacles" in outputs.publishers, "the node did not find vision_msgs"
    listener = Listener(probe, {"obstacles": vision_msgs.Detection2DArray})
    try:
        wait_until(lambda: outputs.publishers["obstacles"].get_subscription_count(), "the listener to subscribe")
        outputs.tracker.reset()
        headers = []
        for _ in range(2):  # persistence: k = 2 of n = 3
            headers.append(frame(probe))
            listener.get("obstacles", headers[-1])
        assert listener.get("obstacles", headers[0]).detections == []
        detections = listener.get("obstacles", headers[-1])
        assert detections.header.frame_id == "front_optical" and detections.header.stamp == headers[-1].stamp
        assert sorted(d.id for d in detections.detections) == ["1", "2"]
        score, _ = scene
        for detection in detections.detections:
            assert detection.header.stamp == headers[-1].stamp
            assert detection.results[0].hypothesis.class_id == "anomaly"
            assert 0.5 < detection.results[0].hypothesis.score <= 1.0  # a mean score above the threshold
            centre = detection.bbox.center.position
            assert score[round(centre.y), round(centre.x)] > THRESHOLD  # the box's centre is on its object
            assert detection.bbox.size_x > 5 and detection.bbox.size_y > 5
    finally:
        listener.close(probe)
