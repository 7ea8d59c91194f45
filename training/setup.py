"""rpl_training: trains the RPL branch of rpl_perception (``rpl-train --config FILE``)."""

from setuptools import find_packages, setup

setup(
    name="rpl_training",
    version="0.1.0",
    description="Training of the Residual Pattern Learning anomaly branch (RPL + CoroCL) for rpl_perception",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["rpl_training", "rpl_training.*"]),
    package_data={"rpl_training": ["configs/*.yaml"]},
    install_requires=[
        "rpl_perception",
        "numpy>=1.24",
        "opencv-python-headless>=4.8",
        "pycocotools>=2.0.7",
        "pyyaml>=6.0",
        "torch>=2.1",
        "tqdm>=4.60",
    ],
    extras_require={
        "tensorboard": ["tensorboard>=2.12"],
        "test": ["pytest>=7"],
    },
    entry_points={"console_scripts": ["rpl-train = rpl_training.train:main"]},
)
