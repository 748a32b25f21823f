"""Package metadata for tfaug."""

from pathlib import Path

from setuptools import find_packages, setup

setup(
    name="tfaug",
    version="0.1.0",
    description=(
        "Semi-supervised, task-driven data augmentation for medical image "
        "segmentation (Chaitanya et al., MedIA 2021) in TensorFlow 2 / Keras 3."
    ),
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["tfaug", "tfaug.*"]),
    include_package_data=True,
    package_data={"tfaug": ["configs/*.yaml", "configs/settings/*.yaml"]},
    install_requires=[
        # TensorFlow itself comes from an extra: `.[cpu]` (tensorflow-cpu) or `.[gpu]`
        # (tensorflow[and-cuda]); the two wheels must not be installed together. Never
        # add tf-keras or tensorflow-addons (see the README).
        "keras>=3.3,<4",
        "keras-tuner[bayesian]>=1.4.7,<2",
        "tf2onnx>=1.16,<2",
        "onnx>=1.16,<2",
        "onnxruntime>=1.18,<2",
        "nibabel>=5.0,<6",
        "SimpleITK>=2.3,<3",
        "numpy>=1.26,<3",
        "scipy>=1.11,<2",
        "matplotlib>=3.7,<4",
        "PyYAML>=6,<7",
        "tqdm>=4.60,<5",
        "tensorboard>=2.16,<3",
    ],
    extras_require={
        # < 2.21: PyPI's TensorFlow 2.21.0 prints its start-up log lines (oneDNN, CPU
        # features) whatever TF_CPP_MIN_LOG_LEVEL says, in every command and grid run log;
        # 2.20 honours it (tests/test_cli_quiet.py). Lift the cap when a release does again.
        "cpu": ["tensorflow-cpu>=2.16,<2.21"],
        "gpu": ["tensorflow[and-cuda]>=2.16,<2.21"],
        # pytest < 9: pytest-xdist 3.8's --dist loadgroup (pytest.ini) sets Item._nodeid,
        # which pytest 9 no longer reads, and would split the groups across workers.
        "test": ["pytest>=8,<9", "pytest-xdist>=3.5,<4", "medpy>=0.5,<0.6", "ruff>=0.5"],
    },
    entry_points={"console_scripts": ["tfaug=tfaug.cli:main"]},
)
