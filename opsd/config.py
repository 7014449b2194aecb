"""Typed configuration: dataclass sections, YAML files holding only what differs from the
defaults, dotted ``key=value`` overrides, validation that names the option, and the resolved
config saved with the run.

    python -m opsd.train --config recipes/toy/opd.yaml loss.type=jsd train.max_steps=20

Each field's help text is written once, in the ``help`` metadata below; ``--help`` prints it.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Union, get_args, get_origin, get_type_hints

import yaml


def _f(default, help: str, **kw):
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"help": help}, **kw)
    return field(default=default, metadata={"help": help}, **kw)


class ConfigError(ValueError):
    """A configuration problem; the message names the option."""


@dataclass
class ModelConfig:
    student: str = _f("", "student model: HF folder or hub id (trained)")
    teacher: str = _f("", "teacher model: HF folder or hub id (frozen)")
    tokenizer: Optional[str] = _f(None, "tokenizer folder; default: the student's")
    dtype: str = _f("float32", "parameter dtype: float32 | bfloat16 | float16")
    attn_implementation: Optional[str] = _f(None, "HF attention implementation (eager, sdpa, flash_attention_2)")
    gradient_checkpointing: bool = _f(False, "activation checkpointing in the student")
    trust_remote_code: bool = _f(False, "passed to from_pretrained")
    teacher_tokenizer: str = _f("", "the teacher's own tokenizer (folder) when it differs from the student's: "
                                    "cross-tokenizer distillation (opsd.xtok, docs/cross-tokenizer.md); '' = shared")
    teacher_chat_template: Optional[str] = _f(None, "Jinja chat template of the teacher (file or string); "
                                                    "None = its tokenizer's own")

    def validate(self):
        if not self.student:
            raise ConfigError("model.student is required (a HF model folder or hub id)")
        _choice("model.dtype", self.dtype, ["float32", "bfloat16", "float16"])


@dataclass
class DataConfig:
    train_files: List[str] = _f([], "prompt files (jsonl, json, parquet) or folders of them")
    prompt_field: str = _f("prompt", "column with the user message (string) or chat messages (list)")
    answer_field: Optional[str] = _f("answer", "column with the gold answer used by the reward (optional)")
    messages_field: Optional[str] = _f(None, "column with multi-turn messages (only assistant spans trained)")
    system_prompt: Optional[str] = _f(None, "system message prepended to every prompt")
    prompt_template: str = _f("{prompt}", "format string applied to a string prompt")
    enable_thinking: Optional[bool] = _f(None, "chat-template thinking switch (None: template default)")
    max_prompt_length: int = _f(2048, "prompts longer than this (tokens) are dropped, with a count logged")
    shuffle: bool = _f(True, "shuffle prompts each epoch (seeded by train.seed)")
    teacher_field: str = _f("teacher", "with several teachers (`teachers:`): the column naming a row's teacher "
                                       "(rows without it: the first teacher listed)")
    teacher_router: Optional[str] = _f(None, "with several teachers: 'module:function' mapping a data row (dict: its "
                                             "prompt, answer, source_file, source_row, teacher column) to a "
                                             "teacher's name; replaces data.teacher_field")

    def validate(self):
        if not self.train_files:
            raise ConfigError("data.train_files is empty: give at least one jsonl/parquet file")
        _positive("data.max_prompt_length", self.max_prompt_length)


@dataclass
class RolloutConfig:
    backend: str = _f("hf", "generation backend: hf (HF generate, CPU/reference) | vllm")
    n: int = _f(1, "samples per prompt")
    temperature: float = _f(1.0, "sampling temperature (0 = greedy)")
    top_p: float = _f(1.0, "nucleus sampling threshold")
    top_k: int = _f(0, "top-k sampling (0 = off)")
    max_new_tokens: int = _f(256, "maximum response length in tokens")
    batch_size: int = _f(64, "HF backend: prompts generated together")
    tensor_parallel_size: int = _f(1, "vLLM: tensor-parallel size (must divide the world size)")
    gpu_memory_utilization: float = _f(0.5, "vLLM: fraction of GPU memory for weights and KV cache")
    sleep_level: int = _f(1, "vLLM: sleep level between phases (0 = no sleep, 1 = offload weights, 2 = discard)")
    enforce_eager: bool = _f(False, "vLLM: disable CUDA graphs")
    environment: Optional[str] = _f(None, "agentic rollouts: environment 'module:Class' (None = single-turn)")
    environment_options: Dict[str, Any] = _f({}, "agentic rollouts: keyword arguments of the environment class")
    max_turns: int = _f(8, "agentic rollouts: assistant turns per episode")
    max_episode_tokens: int = _f(1024, "agentic rollouts: tokens after the initial prompt (sampled + tool turns)")
    tool_parser: str = _f("qwen3", "agentic rollouts: tool-call format (qwen3 | qwen2.5 | hermes | module:Class)")
    tool_timeout_s: float = _f(10.0, "agentic rollouts: a tool call running longer is reported to the model as failed")
    max_score_error_share: float = _f(0.1, "agentic rollouts: stop the run when the environment's scorer raises on "
                                      "more than this share of a step's episodes (each such episode gets reward 0)")

    def validate(self):
        _choice("rollout.backend", self.backend, ["hf", "vllm"])
        if not isinstance(self.environment_options, dict):
            raise ConfigError(f"rollout.environment_options must be a mapping, got {self.environment_options!r}")
        if self.environment is not None:
            _positive("rollout.max_turns", self.max_turns)
            _positive("rollout.max_episode_tokens", self.max_episode_tokens)
            _positive("rollout.tool_timeout_s", self.tool_timeout_s)
            if not 0.0 <= self.max_score_error_share <= 1.0:
                raise ConfigError(f"rollout.max_score_error_share must be in [0, 1], got {self.max_score_error_share}")
        _positive("rollout.n", self.n)
        _positive("rollout.max_new_tokens", self.max_new_tokens)
        _positive("rollout.batch_size", self.batch_size)
        _positive("rollout.tensor_parallel_size", self.tensor_parallel_size)
        if self.temperature < 0:
            raise ConfigError(f"rollout.temperature must be >= 0, got {self.temperature}")
        if self.backend == "vllm" and self.temperature > 2:  # vLLM's SamplingParams range is [0, 2]
            raise ConfigError(f"rollout.temperature={self.temperature} is above 2, the most that "
                              "rollout.backend=vllm accepts (use rollout.backend=hf for hotter sampling)")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"rollout.top_p must be in (0, 1], got {self.top_p}")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ConfigError(f"rollout.gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}")
        _choice("rollout.sleep_level", self.sleep_level, [0, 1, 2])


LOSS_TYPES = ["reverse_kl", "forward_kl", "jsd"]
LOSS_IMPLS = ["fused", "autograd", "recompute"]  # loss.impl's one rule, also opsd.losses' guard


@dataclass
class LossConfig:
    type: str = _f("reverse_kl", "per-token divergence: reverse_kl (Eq. 1) | forward_kl | jsd")
    jsd_beta: float = _f(0.5, "JSD interpolation beta in (0, 1)")
    chunk_size: int = _f(512, "tokens per chunk of the vocabulary-wide passes")
    impl: str = _f("fused", "grad pass: fused (gradients in the chunked forward, closed form; ~3 chunk x V "
                            "buffers) | autograd (keeps the kept rows' K x V log-probs for backward) | recompute "
                            "(checkpoints each chunk, recomputed in backward)")
    teacher_topk: Optional[int] = _f(None, "keep only the teacher's top-k log-probs (+ tail bucket); None = exact")
    reward_fn: Optional[str] = _f(None, "verifiable reward 'module:function(response_text, answer) -> float'")
    reward_beta: Optional[float] = _f(None, "reward-weighted distillation temperature; None = off")
    cross_tokenizer: str = _f("bpm", "with model.teacher_tokenizer: bpm (byte-prefix marginal over the student's "
                                     "vocabulary) | strict (one-to-one boundaries, shared sub-vocabulary) | uld "
                                     "(sorted probabilities, a research peer)")
    keep_bound_rows: bool = _f(False, "cross-tokenizer: keep rows where BPM is a bound (default: left out of the "
                                      "loss and of TIP's ranking)")
    max_row_residual: float = _f(0.1, "cross-tokenizer (bpm): a row inside a teacher token whose teacher mass left "
                                      "unmapped (the emitted bytes' own token, continuing at a position not "
                                      "computed) exceeds this is a bound row (docs/cross-tokenizer.md)")
    min_map_coverage: float = _f(0.2, "cross-tokenizer: refuse a pair whose teacher->student map sends less than "
                                      "this share of the teacher's vocabulary to a student token")

    def validate(self):
        _choice("loss.cross_tokenizer", self.cross_tokenizer, ["bpm", "strict", "uld"])
        if not 0 <= self.max_row_residual <= 1:
            raise ConfigError(f"loss.max_row_residual must be in [0, 1], got {self.max_row_residual}")
        if not 0 <= self.min_map_coverage <= 1:
            raise ConfigError(f"loss.min_map_coverage must be in [0, 1], got {self.min_map_coverage}")
        if self.type not in LOSS_TYPES:
            raise ConfigError(f"loss.type={self.type!r} is unknown; choose one of {LOSS_TYPES}")
        if not 0 < self.jsd_beta < 1:
            raise ConfigError(f"loss.jsd_beta must be in (0, 1), got {self.jsd_beta}")
        _positive("loss.chunk_size", self.chunk_size)
        _choice("loss.impl", self.impl, LOSS_IMPLS)
        if self.teacher_topk is not None:
            _positive("loss.teacher_topk", self.teacher_topk)
        if self.reward_beta is not None:
            if self.reward_beta <= 0:
                raise ConfigError(f"loss.reward_beta must be > 0, got {self.reward_beta}")
            if not self.reward_fn:
                raise ConfigError("loss.reward_beta needs loss.reward_fn (the verifiable reward)")


@dataclass
class OptimConfig:
    lr: float = _f(1e-6, "peak learning rate (AdamW)")
    weight_decay: float = _f(0.0, "AdamW weight decay")
    betas: List[float] = _f([0.9, 0.999], "AdamW betas")
    eps: float = _f(1e-8, "AdamW epsilon")
    warmup_steps: int = _f(0, "linear warm-up steps (overrides warmup_ratio when > 0)")
    warmup_ratio: float = _f(0.0, "warm-up as a fraction of train.max_steps")
    min_lr_ratio: float = _f(0.0, "cosine floor as a fraction of lr")
    max_grad_norm: float = _f(1.0, "gradient clipping norm (0 = off)")

    def validate(self):
        if self.lr <= 0:
            raise ConfigError(f"optim.lr must be > 0, got {self.lr}")
        if len(self.betas) != 2:
            raise ConfigError(f"optim.betas must have two values, got {self.betas}")
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"optim.warmup_ratio must be in [0, 1), got {self.warmup_ratio}")


# Attention implementations that honour packed position ids (transformers 5.x): flash attention
# through its varlen kernels, sdpa switched to per-sequence sdpa (opsd.varlen_attention, no mask),
# eager and flex attention through a block-diagonal mask built from the position ids.
PACKING_ATTENTION = ("sdpa", "eager", "flex_attention", "flash_attention_2", "flash_attention_3")


@dataclass
class EngineConfig:
    zero_stage: int = _f(2, "DeepSpeed ZeRO stage: 0, 1, 2 or 3")
    offload_optimizer: bool = _f(False, "ZeRO: optimizer states on CPU")
    offload_params: bool = _f(False, "ZeRO-3: parameters on CPU")
    micro_batch_size: int = _f(4, "sequences per rank per micro-step")
    device: str = _f("auto", "auto | cpu | cuda")
    teacher_placement: str = _f("resident", "resident | offload (teacher to CPU while the student trains) | "
                                            "server (a vLLM teacher service at engine.teacher_url, "
                                            "opsd.teacher_service)")
    teacher_sharding: str = _f("none", "none (a full teacher per rank) | zero3 (teacher partitioned over the "
                                       "data-parallel ranks, DeepSpeed ZeRO-3 inference)")
    micro_batch_tokens: Optional[int] = _f(None, "token budget per rank per micro-step (padded: rows x longest; "
                                                 "packed: total length); None = micro_batch_size sequences")
    packing: bool = _f(False, "pack each micro-batch's sequences in one row without padding "
                              "(needs an attention implementation that honours packed position ids)")
    teacher_url: str = _f("", "teacher_placement=server: the teacher service's base URL (http://host:port)")
    teacher_server_output: str = _f("hidden", "teacher_placement=server: hidden (last hidden states; exact, the "
                                              "head is loaded locally) | topk (prompt log-probs, k = "
                                              "loss.teacher_topk)")
    teacher_timeout_s: float = _f(120.0, "teacher_placement=server: seconds one request may take")
    teacher_retries: int = _f(3, "teacher_placement=server: retries of a failed request before the run stops")
    teacher_backoff_s: float = _f(1.0, "teacher_placement=server: wait before the first retry (doubles each time)")
    teacher_concurrency: int = _f(4, "teacher_placement=server: requests in flight (one per micro-batch)")

    def validate(self):
        _choice("engine.zero_stage", self.zero_stage, [0, 1, 2, 3])
        _positive("engine.micro_batch_size", self.micro_batch_size)
        _choice("engine.device", self.device, ["auto", "cpu", "cuda"])
        _choice("engine.teacher_placement", self.teacher_placement, ["resident", "offload", "server"])
        _choice("engine.teacher_server_output", self.teacher_server_output, ["hidden", "topk"])
        _positive("engine.teacher_timeout_s", self.teacher_timeout_s)
        _positive("engine.teacher_concurrency", self.teacher_concurrency)
        if self.teacher_retries < 0 or self.teacher_backoff_s < 0:
            raise ConfigError(f"engine.teacher_retries and engine.teacher_backoff_s must be >= 0, got "
                              f"{self.teacher_retries} and {self.teacher_backoff_s}")
        if self.teacher_placement == "server":
            if not self.teacher_url.startswith(("http://", "https://")):
                raise ConfigError(f"engine.teacher_placement=server needs engine.teacher_url=http://host:port (the "
                                  f"URL `python -m opsd.teacher_service serve` prints), got {self.teacher_url!r}")
            if self.teacher_sharding != "none":
                raise ConfigError("engine.teacher_sharding=zero3 shards an in-process teacher; a served teacher "
                                  "(engine.teacher_placement=server) needs engine.teacher_sharding=none")
        _choice("engine.teacher_sharding", self.teacher_sharding, ["none", "zero3"])
        if self.micro_batch_tokens is not None:
            _positive("engine.micro_batch_tokens", self.micro_batch_tokens)
        if self.offload_params and self.zero_stage != 3:
            raise ConfigError("engine.offload_params needs engine.zero_stage=3")

    def check_with(self, cfg: "Config") -> None:
        """The engine options that depend on other sections."""
        longest = cfg.data.max_prompt_length
        if self.micro_batch_tokens is not None and self.micro_batch_tokens <= longest:
            raise ConfigError(
                f"engine.micro_batch_tokens={self.micro_batch_tokens} is not larger than data.max_prompt_length="
                f"{longest}: a prompt of up to {longest} tokens plus its response must fit one micro-batch; "
                "raise engine.micro_batch_tokens, lower data.max_prompt_length, or unset "
                "engine.micro_batch_tokens to count sequences (engine.micro_batch_size)")
        if self.teacher_placement == "server" and self.teacher_server_output == "topk" and not cfg.loss.teacher_topk:
            raise ConfigError("engine.teacher_server_output=topk needs loss.teacher_topk=K (the log-probabilities "
                              "per position the service returns)")
        attn = cfg.model.attn_implementation
        if self.packing and attn is not None and attn not in PACKING_ATTENTION:
            raise ConfigError(
                f"engine.packing=true needs an attention implementation that honours packed position ids; "
                f"model.attn_implementation={attn!r} does not: choose one of {list(PACKING_ATTENTION)}, "
                "or set engine.packing=false")


@dataclass
class TrainConfig:
    prompts_per_step: int = _f(8, "prompts per optimizer step, over all ranks")
    max_steps: int = _f(100, "optimizer steps")
    seed: int = _f(0, "seed of data order, sampling and initialisation")
    output_dir: str = _f("runs/default", "where config, metrics, checkpoints and the export go")
    save_every: int = _f(0, "checkpoint every N steps (0 = only at the end)")
    keep_checkpoints: int = _f(2, "checkpoints kept on disk")
    resume: str = _f("auto", "auto (latest checkpoint in output_dir, if any) | never | a checkpoint folder")
    export: bool = _f(True, "write a plain HF folder of the student at the end")
    eval_files: List[str] = _f([], "held-out prompt files evaluated before and after training")
    eval_limit: int = _f(256, "held-out prompts evaluated")
    eval_every: int = _f(0, "evaluate every N steps (0 = only before and after)")

    def validate(self):
        _positive("train.prompts_per_step", self.prompts_per_step)
        if self.max_steps < 0:
            raise ConfigError(f"train.max_steps must be >= 0, got {self.max_steps}")
        if self.resume not in ("auto", "never") and not Path(self.resume).exists():
            raise ConfigError(f"train.resume={self.resume!r}: no such checkpoint folder")


@dataclass
class LoggingConfig:
    log_every: int = _f(1, "console line every N steps")
    progress: bool = _f(True, "tqdm progress bar")
    wandb: bool = _f(False, "log to Weights & Biases (offline unless WANDB_MODE/API key are set)")
    wandb_project: str = _f("opsd", "wandb project")
    run_name: Optional[str] = _f(None, "run name; default: output_dir's name")


@dataclass
class TeacherSpec:
    """One of several teachers (the top-level ``teachers:`` list, :mod:`opsd.teachers`)."""

    name: str = _f("", "the name rows use to pick this teacher (data.teacher_field or data.teacher_router)")
    model: str = _f("", "HF folder or hub id; served: the checkpoint the service serves (its head is loaded here)")
    placement: Optional[str] = _f(None, "resident | offload | server; None = engine.teacher_placement")
    url: str = _f("", "placement=server: the service's base URL (http://host:port)")

    def validate(self, i: int, engine: "EngineConfig"):
        at = f"teachers[{i}]"
        if not self.name or not isinstance(self.name, str):
            raise ConfigError(f"{at}.name is required (rows name their teacher by it)")
        if not self.model:
            raise ConfigError(f"{at} ({self.name!r}).model is required (a HF model folder or hub id)")
        placement = self.placement or engine.teacher_placement
        _choice(f"{at}.placement", placement, ["resident", "offload", "server"])
        url = self.url or (engine.teacher_url if placement == "server" else "")
        if placement == "server" and not url.startswith(("http://", "https://")):
            raise ConfigError(f"{at} ({self.name!r}) is served: it needs url: http://host:port, got {url!r}")
        if placement != "server" and self.url:
            raise ConfigError(f"{at} ({self.name!r}).url is set but its placement is {placement!r}: "
                              "set placement: server")


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    # Several teachers (opsd.teachers): a list of TeacherSpec; empty = the one model.teacher.
    teachers: List[TeacherSpec] = field(default_factory=list)
    # Sections registered by plugins (opsd.plugins), e.g. ``tip``; absent = not activated.
    plugins: Dict[str, Any] = field(default_factory=dict)

    def validate(self) -> "Config":
        for f in fields(self):
            sec = getattr(self, f.name)
            if hasattr(sec, "validate"):
                sec.validate()
        self.engine.check_with(self)
        self._check_teachers()
        for sec in self.plugins.values():
            if hasattr(sec, "validate"):
                sec.validate()
        return self

    def _check_teachers(self) -> None:
        if not self.teachers:
            if not self.model.teacher:
                raise ConfigError("model.teacher is required (a HF model folder or hub id), or a `teachers:` list")
            return
        if self.model.teacher:
            raise ConfigError(f"model.teacher={self.model.teacher!r} and `teachers:` are both set: list every "
                              "teacher under `teachers:` (name, model, placement, url) and leave model.teacher unset")
        names = [t.name for t in self.teachers]
        for i, t in enumerate(self.teachers):
            t.validate(i, self.engine)
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ConfigError(f"teachers: the names {dup} are listed more than once")
        for option, value in (("model.teacher_tokenizer", self.model.teacher_tokenizer),
                              ("loss.teacher_topk", self.loss.teacher_topk)):
            if value:
                raise ConfigError(f"{option}={value!r} is not supported with several teachers (`teachers:`) yet: "
                                  "their logit sources are combined row by row, exact hidden-state sources only")
        if self.engine.teacher_placement == "server" and self.engine.teacher_server_output != "hidden":
            raise ConfigError("engine.teacher_server_output=topk is not supported with several teachers yet")

    def to_dict(self) -> dict:
        out = {f.name: dataclasses.asdict(getattr(self, f.name)) for f in fields(self)
               if f.name not in ("plugins", "teachers")}
        if self.teachers:
            out["teachers"] = [dataclasses.asdict(t) for t in self.teachers]
        for name, sec in self.plugins.items():
            out[name] = dataclasses.asdict(sec)
        return out

    def save(self, path: Union[str, Path]) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))


# ---------------------------------------------------------------- loading and overrides

def _choice(name, value, choices):
    if value not in choices:
        raise ConfigError(f"{name}={value!r} is not one of {choices}")


def _positive(name, value):
    if not (isinstance(value, (int, float)) and value > 0):
        raise ConfigError(f"{name} must be > 0, got {value!r}")


def _section_types() -> Dict[str, type]:
    from opsd.plugins import registry

    types = {f.name: f.default_factory().__class__ for f in fields(Config) if f.name not in ("plugins", "teachers")}
    for name, plug in registry().sections.items():
        types[name] = plug.config_cls
    return types


def _coerce(name: str, typ: Any, value: Any) -> Any:
    """Convert a YAML value to the field's declared type, or raise naming the option."""
    origin = get_origin(typ)
    if origin is Union:  # Optional[X]
        args = [a for a in get_args(typ) if a is not type(None)]
        if value is None:
            return None
        return _coerce(name, args[0], value)
    if origin in (list, List):
        if isinstance(value, str):
            value = [v for v in value.split(",") if v]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name} expects a list, got {value!r}")
        (inner,) = get_args(typ) or (Any,)
        return [_coerce(name, inner, v) for v in value]
    if typ is Any:
        return value
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{name} expects true/false, got {value!r}")
    if typ is int:
        if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, float) and value.is_integer())):
            raise ConfigError(f"{name} expects an integer, got {value!r}")
        return int(value)
    if typ is float:
        if isinstance(value, bool):
            raise ConfigError(f"{name} expects a number, got {value!r}")
        try:
            out = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{name} expects a number, got {value!r}") from None
        if math.isnan(out):
            raise ConfigError(f"{name} is NaN")
        return out
    if typ is str:
        if value is None or isinstance(value, (dict, list)):
            raise ConfigError(f"{name} expects a string, got {value!r}")
        return str(value)
    return value


def _build_section(sec_name: str, cls: type, values: dict):
    if not isinstance(values, dict):
        raise ConfigError(f"section {sec_name!r} must be a mapping, got {values!r}")
    hints = get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    kwargs = {}
    for key, value in values.items():
        if key not in known:
            near = difflib.get_close_matches(key, known, n=1)
            hint = f" (did you mean {sec_name}.{near[0]}?)" if near else f"; valid: {sorted(known)}"
            raise ConfigError(f"unknown option {sec_name}.{key}{hint}")
        kwargs[key] = _coerce(f"{sec_name}.{key}", hints[key], value)
    return cls(**kwargs)


def parse_overrides(overrides: List[str]) -> dict:
    """``["loss.type=jsd", "tip.ratio=0.2"]`` -> nested dict; values parsed as YAML scalars.
    Teachers by name: ``teachers.NAME.FIELD=value`` (``{"teachers": {NAME: {FIELD: value}}}``)."""
    out: dict = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form section.key=value")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        value = yaml.safe_load(raw) if raw.strip() else ""
        if parts[0] == "teachers":
            if len(parts) != 3 or not all(parts):
                raise ConfigError(f"override {item!r}: a teacher is set by name, teachers.NAME.FIELD=value "
                                  "(e.g. teachers.math.url=http://127.0.0.1:8000)")
            out.setdefault("teachers", {}).setdefault(parts[1], {})[parts[2]] = value
            continue
        if len(parts) != 2 or not all(parts):
            raise ConfigError(f"override {item!r}: the key must be section.option, e.g. loss.type")
        out.setdefault(parts[0], {})[parts[1]] = value
    return out


def _merge(base: dict, extra: dict) -> dict:
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in base.items()}
    for k, v in extra.items():
        if k == "teachers":
            out[k] = _merge_teachers(out.get(k), v)
        elif isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = {**out[k], **v}
        else:
            out[k] = v
    return out


def _merge_teachers(listed, by_name: dict) -> list:
    """The file's ``teachers:`` list with the overrides ``{NAME: {FIELD: value}}`` applied to the entry of
    that name; a name not listed adds a teacher (in the order given)."""
    if listed is None:
        listed = []
    if not isinstance(listed, (list, tuple)) or not all(isinstance(t, dict) for t in listed):
        raise ConfigError(f"`teachers:` must be a list of mappings (name, model, placement, url), got {listed!r}")
    out = [dict(t) for t in listed]
    for name, values in by_name.items():
        entry = next((t for t in out if t.get("name") == name), None)
        if entry is None:
            out.append({"name": name, **values})
        else:
            entry.update(values)
    return out


def load_config(path: Optional[Union[str, Path]] = None, overrides: Optional[List[str]] = None,
                validate: bool = True) -> Config:
    """Defaults <- YAML file <- overrides, then validation."""
    raw: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist")
        try:
            raw = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {p} is not valid YAML: {e}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"config file {p} must hold a mapping of sections")
    raw = _merge(raw, parse_overrides(overrides or []))
    return config_from_dict(raw, validate=validate)


def config_from_dict(raw: dict, validate: bool = True) -> Config:
    types = _section_types()
    cfg = Config()
    for sec_name, values in raw.items():
        if sec_name == "teachers":
            cfg.teachers = _teacher_specs(values)
            continue
        if sec_name not in types:
            near = difflib.get_close_matches(sec_name, types, n=1)
            hint = f" (did you mean {near[0]}?)" if near else ""
            raise ConfigError(f"unknown config section {sec_name!r}{hint}; known: {sorted(types)} "
                              "(plugin sections need their package installed)")
        section = _build_section(sec_name, types[sec_name], values or {})
        if sec_name in {f.name for f in fields(Config)}:
            setattr(cfg, sec_name, section)
        else:
            cfg.plugins[sec_name] = section
    return cfg.validate() if validate else cfg


def _teacher_specs(values) -> List[TeacherSpec]:
    """``teachers:``: a list of mappings (name, model, placement, url)."""
    if values is None:
        return []
    if not isinstance(values, (list, tuple)):
        raise ConfigError(f"`teachers:` must be a list of mappings (name, model, placement, url), got {values!r}")
    return [_build_section(f"teachers[{i}]", TeacherSpec, v) for i, v in enumerate(values)]


def describe() -> str:
    """Help text for every option, for ``--help``."""
    lines = []
    for sec_name, cls in {**_section_types(), "teachers[i]": TeacherSpec}.items():
        lines.append(f"[{sec_name}]")
        for f in fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            lines.append(f"  {sec_name}.{f.name} = {default!r}  # {f.metadata.get('help', '')}")
    return "\n".join(lines)
