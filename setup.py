"""rpl_perception: an ament_python ROS 2 package that also installs with plain pip.

colcon (ament_python) uses the data_files below to install the ament index marker, package.xml,
launch/ and config/ into share/rpl_perception; pip installs the same files under <prefix>/share.
"""

from glob import glob

from setuptools import find_packages, setup

package_name = "rpl_perception"

setup(
    name=package_name,
    version="0.1.0",
    description="Semantic segmentation with a Residual Pattern Learning anomaly branch, as a ROS 2 node",
    long_description=open("README.md", encoding="utf-8").read(),
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
        (f"share/{package_name}/config", glob("config/*.yaml") + glob("config/*.rviz")),
    ],
    install_requires=[
        "numpy>=1.24",
        "opencv-python-headless>=4.8",
        "safetensors>=0.4",
        "torch>=2.1",  # CPU-only machines: install torch==2.13.0 first (see README)
        "tqdm>=4.60",
    ],
    extras_require={
        # rclpy and messages from PyPI for machines without a ROS 2 distribution. Where one is
        # sourced, its PYTHONPATH entries come before site-packages, so it wins over these.
        "ros": ["ros-rclpy", "ros-sensor-msgs", "ros-std-msgs", "ros-diagnostic-msgs",
                "ros-rmw-fastrtps-cpp"],
        "onnx": ["onnx>=1.14", "onnxruntime>=1.16"],
        "eval": ["rosbags>=0.9.20", "matplotlib>=3.7"],
        "test": ["pytest>=7", "scikit-learn>=1.3", "pycocotools>=2.0.7", "onnx>=1.14",
                 "onnxruntime>=1.16", "rosbags>=0.9.20", "matplotlib>=3.7",
                 "mypy>=1.10"],  # the TensorRT API check (.ci/run adds tensorrt-stubs)
    },
    zip_safe=False,  # weights and samples are read as files next to the modules
    entry_points={
        "console_scripts": [
            "rpl-perception = rpl_perception.cli:main",
            "anomaly_node = rpl_perception.ros.node:main",
        ],
    },
)
