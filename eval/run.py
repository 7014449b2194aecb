"""``python -m eval.run``: sample n responses per problem, grade them, write a results file.

    python -m eval.run --model runs/x/export --bench math500,aime24,aime25 --n 16 \\
        --out results.json --tag pair=qwen3-8b-4b --tag rule=soft_or_topk --tag ratio=0.5
    python -m eval.run --model artifacts/toy/student --bench toy --n 4 --out toy.json

Generation goes through the project's rollout interface (``opsd.rollout``): ``--backend hf``
builds ``HFGenerateBackend`` around an ``AutoModelForCausalLM``; ``--backend vllm`` asks
``opsd.rollout.make_backend`` for the vLLM backend (imported lazily). Each problem's prompt is the
benchmark template filled with the problem, rendered by the tokenizer's chat template.

Resuming: the results file is rewritten atomically after every batch of problems. Rerunning the
same command skips the problems already in the file; a file written under another config (see
``eval.results``) is refused with the differing options named. Ctrl-C keeps what is done.

Defaults follow the paper's evaluation (mean@16, temperature 1.0, top-p 1.0, 8192 new tokens);
``--max-new-tokens`` left unset uses each benchmark's own default (toy: 64).
"""
from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from eval import metrics
from eval.benchmarks import Benchmark, BenchmarkError, Problem, load_benchmark
from eval.grading import Grader, GradingConfig
from eval.results import (EvalConfig, ResultsError, benchmark_entry, model_fingerprint, open_results,
                          run_resumable, save_atomic)
from eval.templates import render, resolve_template

log = logging.getLogger(__name__)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


@dataclass
class RunArgs:
    """Options of one evaluation (the CLI flags, typed)."""

    model: str
    out: str
    bench: List[str] = field(default_factory=lambda: ["math500", "aime24", "aime25"])
    n: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: Optional[int] = None
    batch_size: int = 8
    template: Optional[str] = None
    limit: Optional[int] = None
    seed: int = 0
    backend: str = "hf"
    tokenizer: Optional[str] = None
    data_dir: Optional[str] = None
    chat_template: bool = True
    enable_thinking: Optional[bool] = None
    system_prompt: Optional[str] = None
    grading_timeout: float = 10.0
    tags: Dict[str, str] = field(default_factory=dict)
    overwrite: bool = False
    device: str = "auto"
    dtype: str = "auto"
    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = 0.85
    progress: bool = True

    def validate(self) -> None:
        if self.n < 1:
            raise ValueError(f"--n must be >= 1, got {self.n}")
        if self.batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise ValueError("--temperature must be >= 0 and --top-p in (0, 1]")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"--limit must be >= 1, got {self.limit}")
        if self.template is not None:
            resolve_template(self.template)
        if self.backend not in ("hf", "vllm"):
            raise ValueError(f"--backend {self.backend!r}: choose hf or vllm")
        validate_tags(self.tags)


def validate_tags(tags: Dict[str, str]) -> None:
    """``rule`` must be a TIP rule and ``ratio`` a number in (0, 1]: eval.compare matches on them."""
    from eval.paper_tables import RULE_LABELS

    if "rule" in tags and tags["rule"] not in RULE_LABELS:
        raise ValueError(f"--tag rule={tags['rule']}: choose one of {sorted(RULE_LABELS)}")
    if "ratio" in tags:
        try:
            ratio = float(tags["ratio"])
        except ValueError:
            raise ValueError(f"--tag ratio={tags['ratio']}: not a number") from None
        if not 0 < ratio <= 1:
            raise ValueError(f"--tag ratio={tags['ratio']}: must be in (0, 1]")


def eval_config(args: RunArgs) -> EvalConfig:
    grading = GradingConfig(timeout_s=args.grading_timeout)
    return EvalConfig(
        model=args.model, model_fingerprint=model_fingerprint(args.model),
        tokenizer=args.tokenizer or args.model, backend=args.backend, n=args.n,
        temperature=args.temperature, top_p=args.top_p, top_k=args.top_k, seed=args.seed,
        chat_template=args.chat_template, enable_thinking=args.enable_thinking,
        system_prompt=args.system_prompt,
        grading={"timeout_s": grading.timeout_s, "unanchored": grading.unanchored})


# ---------------------------------------------------------------------------------------------
# Model, tokenizer, backend (the CLI path; tests inject their own)
# ---------------------------------------------------------------------------------------------

def load_tokenizer(args: RunArgs):
    source = args.tokenizer or args.model
    path = Path(source)
    if (source.startswith((".", "/")) or path.exists()) and not path.is_dir():
        raise FileNotFoundError(f"--{'tokenizer' if args.tokenizer else 'model'} {source}: no such folder")
    if path.is_dir() and not any((path / f).is_file() for f in TOKENIZER_FILES):
        raise FileNotFoundError(
            f"{'--tokenizer' if args.tokenizer else '--model'} {source} has no tokenizer "
            f"(none of {', '.join(TOKENIZER_FILES)}); pass --tokenizer DIR")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(source)


def _torch_setup(args: RunArgs):
    import torch

    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = args.dtype if args.dtype != "auto" else ("bfloat16" if device == "cuda" else "float32")
    return device, getattr(torch, dtype)


def build_backend(args: RunArgs, tokenizer):
    """The rollout backend named by ``--backend`` (lazy imports; clear errors when missing)."""
    from opsd.config import RolloutConfig
    from opsd.rollout import make_backend

    cfg = RolloutConfig(backend=args.backend, n=args.n, batch_size=args.batch_size,
                        tensor_parallel_size=args.tensor_parallel_size,
                        gpu_memory_utilization=args.gpu_memory_utilization)
    if args.backend == "vllm":
        try:
            import opsd.rollout.vllm_backend  # noqa: F401
        except ImportError as e:
            raise RuntimeError(f"--backend vllm: opsd.rollout.vllm_backend is not available ({e}); "
                               "install vLLM and the vLLM backend, or use --backend hf") from e
        return make_backend(cfg, None, tokenizer, model_path=args.model, dtype=args.dtype, seed=args.seed)
    from transformers import AutoModelForCausalLM

    device, dtype = _torch_setup(args)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype).to(device)
    return make_backend(cfg, model, tokenizer, model_path=args.model)


# ---------------------------------------------------------------------------------------------
# Prompts and grading
# ---------------------------------------------------------------------------------------------

def encode_prompt(tokenizer, text: str, args: RunArgs) -> List[int]:
    """Token ids of one user message, through the chat template when there is one."""
    if args.chat_template and getattr(tokenizer, "chat_template", None):
        messages = ([{"role": "system", "content": args.system_prompt}] if args.system_prompt else [])
        messages.append({"role": "user", "content": text})
        kw = {} if args.enable_thinking is None else {"enable_thinking": args.enable_thinking}
        # tokenize=False then encode: the return type of tokenize=True changed across versions.
        rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **kw)
        return tokenizer.encode(rendered, add_special_tokens=False)
    return tokenizer.encode(text, add_special_tokens=True)


def sample_record(text: str, ids: Sequence[int], finished: bool, grade) -> Dict[str, Any]:
    return {"text": text, "correct": grade.correct, "extracted": grade.extracted,
            "finished": finished, "num_tokens": len(ids), "timed_out": grade.timed_out}


def update_metrics(entry: Dict[str, Any]) -> None:
    done = entry["problems"]
    if not done:
        return
    correct = [[s["correct"] for s in p["samples"]] for p in done]
    keys = [[s["extracted"] for s in p["samples"]] for p in done]
    entry["metrics"] = {k: vars(v) for k, v in metrics.compute_metrics(correct, keys).items()}


# ---------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------

def _seed(seed: int) -> None:
    # HF generate samples from torch's global RNG (SamplingConfig.seed is advisory for backends).
    try:
        import torch

        torch.manual_seed(seed)
    except ImportError:
        pass


def run_batch(batch: List[Problem], bench: Benchmark, settings: Dict[str, Any], offset: int,
              args: RunArgs, backend, tokenizer, grader: Grader) -> List[Dict[str, Any]]:
    """Generate and grade one batch of problems; the records to append."""
    from opsd.rollout.base import SamplingConfig

    prompts = [render(settings["template"], p.problem) for p in batch]
    prompt_ids = [encode_prompt(tokenizer, text, args) for text in prompts]
    sampling = SamplingConfig(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                              max_new_tokens=settings["max_new_tokens"], n=args.n, seed=args.seed + offset)
    _seed(args.seed + offset)
    out = backend.generate(prompt_ids, sampling)
    records = [{"id": p.id, "answer": p.answer, "prompt": text, "samples": []}
               for p, text in zip(batch, prompts)]
    for ids, finished, i in zip(out.response_ids, out.finished, out.prompt_index):
        text = tokenizer.decode(ids, skip_special_tokens=True)
        records[i]["samples"].append(sample_record(text, ids, finished, bench.grade(text, batch[i].answer, grader)))
    return records


def evaluate_benchmark(name: str, results: Dict[str, Any], args: RunArgs, backend, tokenizer,
                       grader: Grader) -> Dict[str, Any]:
    bench = load_benchmark(name, args.data_dir, args.limit)
    if bench.spec.answer_type == "deepplanning":  # multi-turn agent episodes with tools
        from eval.deepplanning.evaluate import evaluate_travel

        return evaluate_travel(bench, results, args, backend, tokenizer)
    settings = {"template": resolve_template(args.template or bench.spec.template),
                "max_new_tokens": args.max_new_tokens or bench.spec.max_new_tokens}
    return run_resumable(results, bench, settings, Path(args.out), args.batch_size, args.n,
                         lambda batch, offset: run_batch(batch, bench, settings, offset, args, backend,
                                                         tokenizer, grader),
                         update_metrics, args.progress)


def evaluate(args: RunArgs, backend, tokenizer, grader: Optional[Grader] = None) -> Dict[str, Any]:
    """Run (or resume) the evaluation; returns the results dict also written to ``args.out``."""
    args.validate()
    results = open_results(Path(args.out), eval_config(args), args.tags, args.overwrite)
    results["options"] = {"batch_size": args.batch_size, "limit": args.limit, "template": args.template,
                          "max_new_tokens": args.max_new_tokens, "data_dir": args.data_dir}
    own_grader = grader is None
    grader = grader or Grader(GradingConfig(timeout_s=args.grading_timeout))
    try:
        for name in args.bench:
            evaluate_benchmark(name, results, args, backend, tokenizer, grader)
        complete = all(len(e["problems"]) >= e["num_problems"] for e in results["benchmarks"].values())
        results["status"] = "complete" if complete else "partial"
        save_atomic(Path(args.out), results)
    finally:
        if own_grader:  # a caller's grader (and its worker process) stays theirs
            grader.close()
    return results


def summary(results: Dict[str, Any]) -> str:
    """One line per benchmark: mean@n ± SE, pass@n and maj@n, in percent."""
    lines = []
    for name, entry in results["benchmarks"].items():
        shown = [k for k in entry["metrics"] if not k.startswith("pass@")]
        shown += [k for k in entry["metrics"] if k.startswith("pass@")][-1:]  # pass@n
        parts = [f"{k} {100 * entry['metrics'][k]['value']:.1f}" +
                 (f" ± {100 * entry['metrics'][k]['stderr']:.1f}" if entry["metrics"][k]["stderr"] is not None else "")
                 for k in shown]
        lines.append(f"{name} ({len(entry['problems'])}/{entry['num_problems']}): " + ", ".join(parts))
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------

def _tags(values: Sequence[str]) -> Dict[str, str]:
    tags = {}
    for v in values:
        key, sep, value = v.partition("=")
        if not sep or not key:
            raise ValueError(f"--tag {v!r}: expected key=value")
        tags[key.strip()] = value.strip()
    return tags


def _bool(v: str) -> bool:
    if v.lower() not in ("true", "false", "1", "0"):
        raise argparse.ArgumentTypeError(f"expected true/false, got {v!r}")
    return v.lower() in ("true", "1")


def parse_args(argv: Optional[Sequence[str]] = None) -> RunArgs:
    p = argparse.ArgumentParser(prog="python -m eval.run", description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="HF model folder or hub id")
    p.add_argument("--out", required=True, help="results JSON (resumed when it exists)")
    p.add_argument("--bench", default="math500,aime24,aime25", help="comma-separated benchmarks")
    p.add_argument("--n", type=int, default=16, help="samples per problem")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0, help="0 = off")
    p.add_argument("--max-new-tokens", type=int, default=None, help="default: per benchmark")
    p.add_argument("--batch-size", type=int, default=8, help="problems per generate call and per save")
    p.add_argument("--template", default=None, help="boxed | plain | dapo | a text with {problem}")
    p.add_argument("--limit", type=int, default=None, help="first N problems of each benchmark")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--backend", default="hf", choices=["hf", "vllm"])
    p.add_argument("--tokenizer", default=None, help="tokenizer folder (default: --model)")
    p.add_argument("--data-dir", default=None, help="benchmark data root (default $OPSD_DATA_DIR or data/)")
    p.add_argument("--no-chat-template", dest="chat_template", action="store_false")
    p.add_argument("--enable-thinking", type=_bool, default=None, help="chat-template thinking switch")
    p.add_argument("--system-prompt", default=None)
    p.add_argument("--grading-timeout", type=float, default=10.0, help="seconds per graded answer")
    p.add_argument("--tag", action="append", default=[], help="metadata key=value (pair, rule, ratio, loss)")
    p.add_argument("--overwrite", action="store_true", help="discard an existing --out")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument("--tensor-parallel-size", type=int, default=1, help="vLLM")
    p.add_argument("--gpu-memory-utilization", type=float, default=0.85, help="vLLM")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    ns = p.parse_args(argv)
    ns.bench = [b.strip() for b in ns.bench.split(",") if b.strip()]
    ns.tags = _tags(ns.__dict__.pop("tag"))
    return RunArgs(**vars(ns))


def preflight(args: RunArgs) -> None:
    """Fail before loading any model: bad options, missing benchmark files, or an existing
    --out that this evaluation cannot resume."""
    args.validate()
    results = open_results(Path(args.out), eval_config(args), args.tags, args.overwrite)
    for name in args.bench:
        bench = load_benchmark(name, args.data_dir, args.limit)
        if bench.spec.answer_type == "deepplanning":
            from eval.deepplanning.evaluate import agent_settings, make_env

            make_env(args).close()  # the travel database and tool schema are there
            settings = agent_settings(bench, args)
        else:
            settings = {"template": resolve_template(args.template or bench.spec.template),
                        "max_new_tokens": args.max_new_tokens or bench.spec.max_new_tokens}
        benchmark_entry(results, name, bench.version, str(bench.path), settings,
                        len(bench.problems), Path(args.out))


def main(argv: Optional[Sequence[str]] = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    errors = (BenchmarkError, ResultsError, FileNotFoundError, ValueError, RuntimeError)
    try:
        args = parse_args(argv)
        preflight(args)
        tokenizer = load_tokenizer(args)
        backend = build_backend(args, tokenizer)
        results = evaluate(args, backend, tokenizer)
    except errors as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: finished problems are kept in --out; rerun the same command to "
              "resume", file=sys.stderr)
        return 130
    print(summary(results))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
