"""Build lxmert_fast: the Python package (its Triton kernels in ``lxmert_fast/kernels/``) and,
when ``csrc/`` has sources, the pybind11 feature loader."""
import glob

from setuptools import find_packages, setup

ext_modules = []
sources = sorted(glob.glob("csrc/*.cpp"))
if sources:
    from pybind11.setup_helpers import Pybind11Extension

    ext_modules.append(
        Pybind11Extension(
            "lxmert_fast._featstore",
            sources,
            include_dirs=["csrc"],
            cxx_std=17,
            extra_compile_args=["-O3", "-pthread"],
            extra_link_args=["-pthread"],
        )
    )

setup(
    name="lxmert_fast",
    version="0.1.0",
    description="LXMERT as a performance-engineered training system",
    packages=find_packages(include=["lxmert_fast", "lxmert_fast.*"]),
    ext_modules=ext_modules,
    python_requires=">=3.10",
    install_requires=["torch>=2.5", "numpy", "safetensors", "tokenizers", "tqdm"],
    extras_require={
        "triton": ["triton>=3.0"],
        "train": ["deepspeed>=0.15", "tensorboard", "matplotlib", "ninja"],
        "dev": ["pytest", "pytest-benchmark", "transformers>=4.40", "triton>=3.0",
                "deepspeed>=0.15", "tensorboard", "matplotlib", "ninja", "peft>=0.21"],
    },
)
