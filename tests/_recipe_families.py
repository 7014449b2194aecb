"""Tiny random-weight models of the paper recipes' model families, and the 2-rank worker that runs
one OPD step of a recipe with its engine options (used by tests/test_recipe_families.py).

    torchrun --nproc_per_node=2 tests/_recipe_families.py RECIPE[,RECIPE...] WORLD_JSON OUT_ROOT

Each tiny model copies the *features* of the checkpoint the recipe names, read from that
checkpoint's ``config.json`` (``bench/model_configs/*.json``; :data:`REFERENCE` for the Qwen3
checkpoints that have no file there): the architecture (``model_type``: qwen3, qwen2 with its
q/k/v biases, llama), tied or untied embeddings, the grouped-query ratio (heads per key-value
head), an explicit ``head_dim`` decoupled from ``hidden / heads`` (Qwen3), the rope settings
(``rope_theta``; Llama-3's ``llama3`` rope scaling, unchanged) and the padded LM head: a head with
more rows than the tokenizer has tokens (Qwen3: 151,936 rows for 151,669 tokens; Qwen2.5: student
151,936 and teacher 152,064 rows for 151,665 tokens; Llama-3: 128,256 rows = tokens). Scaled: the
tokenizer is the tests' character tokenizer (``len(tok)`` tokens) and a head gets
``len(tok) + ceil(extra / 16)`` rows, ``extra`` = the real checkpoint's rows beyond its tokenizer
(Qwen3 +267 -> +17, Qwen2.5 +271 -> +17 and +399 -> +25, Llama +0 -> +0), so the order of the
widths is kept. Sizes are small: hidden = real / 64 (or heads x 8), 2 layers (teacher 3).
"""
from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PAPER = REPO / "recipes" / "paper"
CONFIG_DIR = REPO / "bench" / "model_configs"

# The Hub config.json values that matter here, for checkpoints without a bench/model_configs file.
_QWEN3 = dict(model_type="qwen3", vocab_size=151_936, rope_theta=1_000_000, rope_scaling=None, head_dim=128,
              attention_bias=False, max_position_embeddings=40_960)
REFERENCE = {
    "Qwen3-1.7B": dict(_QWEN3, hidden_size=2048, num_attention_heads=16, num_key_value_heads=8,
                       tie_word_embeddings=True, num_hidden_layers=28),
    "Qwen3-14B": dict(_QWEN3, hidden_size=5120, num_attention_heads=40, num_key_value_heads=8,
                      tie_word_embeddings=False, num_hidden_layers=40),
    "Qwen3-32B": dict(_QWEN3, hidden_size=5120, num_attention_heads=64, num_key_value_heads=8,
                      tie_word_embeddings=False, num_hidden_layers=64),
}
# Tokens of each family's tokenizer (len(tokenizer)): the width the logits are sliced to.
TOKENIZER_LEN = {"qwen3": 151_669, "qwen2": 151_665, "llama": 128_256}
PAD_SCALE = 16  # extra head rows of the real checkpoint per extra row of the tiny model

# recipe -> the TIP row run with it: one rule of each of the recipe's paper tables, every rule of the
# tables once over the five recipes (recipes/paper/table{3..8}.sh; tests/test_recipes.py TABLE_ROWS).
TIP_ROWS = {
    "qwen3-8b-4b": ("adaptive_kl", 0.5),        # Table 8
    "llama-70b-8b": ("soft_or_bottom", 0.5),    # Table 6
    "qwen2.5-14b-1.5b": ("q3", 0.2),            # Table 4
    "qwen3-14b-1.7b": ("entropy_sample", 0.5),  # Tables 3, 5, 7
    "qwen3-32b-1.7b": ("soft_or", 0.2),         # Tables 5, 6, 7
}
RECIPES = sorted(TIP_ROWS)
MAX_NEW_TOKENS = 8  # sampled tokens per response (per assistant turn): a size


def checkpoint_name(hub_id: str) -> str:
    return hub_id.split("/")[-1]


def real_config(hub_id: str) -> dict:
    """The named checkpoint's config.json (the fields used here)."""
    name = checkpoint_name(hub_id)
    path = CONFIG_DIR / f"{name}.json"
    if path.is_file():
        return json.loads(path.read_text())
    return dict(REFERENCE[name])


def recipe_yaml(recipe: str) -> dict:
    import yaml

    return yaml.safe_load((PAPER / f"{recipe}.yaml").read_text())


def extra_rows(cfg: dict) -> int:
    """Rows of the real LM head beyond the family's tokenizer."""
    return cfg["vocab_size"] - TOKENIZER_LEN[cfg["model_type"]]


def tiny_config(real: dict, tok, teacher: bool) -> dict:
    """Config kwargs of the tiny model of ``real``'s family (module docstring)."""
    group = real["num_attention_heads"] // real["num_key_value_heads"]  # query heads per kv head
    kv = 2
    heads = group * kv
    if real.get("head_dim"):  # explicit, decoupled from hidden / heads (Qwen3)
        head_dim, hidden = 8, max(16, real["hidden_size"] // 64)
    else:
        head_dim = 8
        hidden = heads * head_dim
    kw = dict(vocab_size=len(tok) + math.ceil(extra_rows(real) / PAD_SCALE), hidden_size=hidden,
              intermediate_size=2 * hidden, num_hidden_layers=3 if teacher else 2, num_attention_heads=heads,
              num_key_value_heads=kv, tie_word_embeddings=bool(real.get("tie_word_embeddings", False)),
              rope_theta=real.get("rope_theta", 10_000.0),
              max_position_embeddings=real.get("max_position_embeddings", 4096), initializer_range=0.2,
              pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=None)
    if real.get("head_dim"):
        kw["head_dim"] = head_dim
    if real.get("rope_scaling"):
        kw["rope_scaling"] = dict(real["rope_scaling"])
    if real["model_type"] == "qwen2":
        kw.update(use_sliding_window=False, sliding_window=None)
    return kw


def build_model(real: dict, tok, teacher: bool, seed: int):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(seed)
    config = AutoConfig.for_model(real["model_type"], **tiny_config(real, tok, teacher))
    model = AutoModelForCausalLM.from_config(config)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    return model


def features(model, tok) -> dict:
    """The family features of a (real-config or tiny) model, for comparison with the checkpoint's."""
    cfg = model.config if hasattr(model, "config") else model
    get = (lambda k, d=None: getattr(cfg, k, d)) if not isinstance(cfg, dict) else cfg.get
    rope = get("rope_parameters") or get("rope_scaling") or {}
    rows = get("vocab_size")
    tok_len = tok if isinstance(tok, int) else len(tok)
    return dict(model_type=get("model_type"), tied=bool(get("tie_word_embeddings")),
                gqa_group=get("num_attention_heads") // get("num_key_value_heads"),
                kv_heads_lt_heads=get("num_key_value_heads") < get("num_attention_heads"),
                head_dim_decoupled=bool(get("head_dim")) and get("head_dim") * get("num_attention_heads") != get(
                    "hidden_size"),
                rope_type=(rope or {}).get("rope_type", "default") if isinstance(rope, dict) else "default",
                rope_theta=float((rope or {}).get("rope_theta") or get("rope_theta") or 0.0),
                llama3_rope=({k: rope.get(k) for k in ("factor", "low_freq_factor", "high_freq_factor",
                                                      "original_max_position_embeddings")}
                             if isinstance(rope, dict) and rope.get("rope_type") == "llama3" else None),
                padded_head=rows > tok_len)


def write_prompts(path: Path, n: int = 8) -> str:
    with open(path, "w") as f:
        for i in range(n):
            a, b = i % 7 + 1, i % 5 + 2
            f.write(json.dumps({"prompt": f"{a}+{b}=", "answer": str(a + b)}) + "\n")
    return str(path)


def write_world(root: Path) -> dict:
    """Models of every recipe (student/teacher folders sharing one tokenizer per recipe), the math
    prompts, the DeepPlanning fixture with its split, and a tiny benchmark data root."""
    extra = [str(HERE), str(HERE / "eval")]
    sys.path[:0] = extra  # the tests' helpers, for these imports only
    try:
        from _agent_fakes import build_tool_tokenizer
        from _eval_fakes import write_tiny_data
        from _tiny_tokenizer import build_tiny_tokenizer
    finally:
        for p in extra:
            sys.path.remove(p)
    from eval.deepplanning import fixture as make_fixture
    from eval.deepplanning.data import write_split
    from eval.deepplanning.files import SCHEMA_RELPATH

    root.mkdir(parents=True, exist_ok=True)
    world = {"root": str(root), "math_prompts": write_prompts(root / "prompts.jsonl"), "models": {}}
    dp = make_fixture.build(root / "deepplanning_fixture")
    data = write_tiny_data(root / "data")
    write_split(dp["queries"], data / "deepplanning", seed=0, test_fraction=0.5)  # 1 train task, 1 test task
    train = data / "deepplanning" / "travel_train.jsonl"
    train.write_text(train.read_text() * 2)  # its one task twice: one prompt per rank
    # a size: the 9 tools' schemas without descriptions or arguments (the prompt carries them, one
    # token per character here); eval.run reads the data root's copy
    schema = data / SCHEMA_RELPATH
    schema.parent.mkdir(parents=True, exist_ok=True)
    schema.write_text(json.dumps([{"type": "function", "function": {"name": s["function"]["name"]}}
                                  for s in json.loads(Path(dp["schema"]).read_text())]))
    world.update(db=str(dp["database"]), schema=str(schema), data=str(data), travel_train=str(train),
                 split=str(data / "deepplanning" / "split.json"))
    for i, recipe in enumerate(RECIPES):
        spec = recipe_yaml(recipe)
        agentic = bool(spec["rollout"].get("environment"))
        tok = build_tool_tokenizer() if agentic else build_tiny_tokenizer()
        paths = {}
        for role, seed in (("student", 10 * i + 1), ("teacher", 10 * i + 2)):
            model = build_model(real_config(spec["model"][role]), tok, role == "teacher", seed)
            folder = root / recipe / role
            model.save_pretrained(folder)
            tok.save_pretrained(folder)
            paths[role] = str(folder)
        world["models"][recipe] = paths
    (root / "world.json").write_text(json.dumps(world, indent=1))
    return world


# ------------------------------------------------------------------ the recipe's run

def overrides(recipe: str, world: dict, out: str) -> list:
    """Only model paths, sizes, step counts, batch sizes and the CPU substitutes (named with their
    reasons in tests/test_recipe_families.py) differ from the recipe YAML, plus the TIP row of
    :data:`TIP_ROWS`, as the table scripts add it."""
    spec = recipe_yaml(recipe)
    models = world["models"][recipe]
    mbs = int(spec["engine"]["micro_batch_size"])
    ov = [f"model.student={models['student']}", f"model.teacher={models['teacher']}",
          f"train.output_dir={out}", "train.max_steps=1", "train.prompts_per_step=2",
          # 1 prompt per rank, 2 x micro_batch_size samples: two micro-batches per rank (accumulation)
          f"rollout.n={2 * mbs}", f"rollout.max_new_tokens={MAX_NEW_TOKENS}",
          "engine.device=cpu", "rollout.backend=hf"]
    rule, ratio = TIP_ROWS[recipe]
    ov += [f"tip.rule={rule}", f"tip.ratio={ratio}"]
    if spec["rollout"].get("environment"):
        opts = {"db_dir": world["db"], "schema_file": world["schema"], "split_file": world["split"],
                # a size: the default system prompt is thousands of characters (= tokens here)
                "system_prompt": "Plan the trip with the tools; answer inside <plan></plan>."}
        ov += [f"data.train_files={world['travel_train']}", f"rollout.environment_options={json.dumps(opts)}",
               "rollout.max_turns=2", "rollout.max_episode_tokens=64"]
    else:
        ov += [f"data.train_files={world['math_prompts']}"]
    return ov


def _engine_facts(tr) -> dict:
    """What the built trainer actually runs with (read from the objects, not the config)."""
    import torch

    from opsd import hooks
    from opsd.teacher import output_rows

    eng = tr.engine
    student = tr.student
    head = student.get_output_embeddings().weight
    local, full = tr.teacher.param_bytes()
    return dict(world=tr.world, zero_stage=int(eng.zero_optimization_stage()),
                offload_optimizer=bool(eng.zero_offload_optimizer()), offload_params=bool(eng.zero_offload_param()),
                bf16=bool(eng.bfloat16_enabled()), student_dtype=str(next(student.parameters()).dtype),
                teacher_dtype=str(tr.teacher.head_weight.dtype),
                gradient_checkpointing=bool(student.is_gradient_checkpointing),
                attn=student.config._attn_implementation, teacher_attn=tr.teacher.model.config._attn_implementation,
                teacher_sharding=tr.teacher.sharding, teacher_placement=tr.teacher.placement,
                teacher_local_bytes=local, teacher_full_bytes=full, teacher_rows=int(tr.teacher.width),
                student_rows=int(output_rows(student)), vocab_size=int(tr.vocab_size), tokenizer_len=len(tr.tokenizer),
                student_tied=bool(head is student.get_input_embeddings().weight),
                selector=hooks.active_selector_name(), loss_type=tr.cfg.loss.type, chunk_size=tr.cfg.loss.chunk_size,
                loss_impl=tr.cfg.loss.impl, packing=bool(tr.cfg.engine.packing),
                agentic=bool(tr.cfg.rollout.environment), backend=tr.backend.name, grad_accum=tr.grad_accum,
                torch_threads=torch.get_num_threads())


def run_recipe(recipe: str, world: dict, out: str) -> None:
    """One OPD step (then the checkpoint and the export) of ``recipe``; ``out/facts_rank{r}.json``."""
    import time

    from opsd.config import load_config
    from opsd.trainer import Trainer

    t0 = time.time()
    cfg = load_config(PAPER / f"{recipe}.yaml", overrides(recipe, world, out))
    tr = Trainer(cfg).setup()
    try:
        facts = _engine_facts(tr)
        # ZeRO-3 at 2 ranks: HF generate must keep the ranks stepping together (opsd.rollout.hf)
        facts["hf_synced_gpus"] = bool(tr.backend.lockstep)  # what it passes as synced_gpus
        tr.train()
        facts["steps"] = tr.step
    finally:
        tr.cleanup()
    facts["seconds"] = time.time() - t0
    rank = int(os.environ.get("RANK", "0"))
    Path(out, f"facts_rank{rank}.json").write_text(json.dumps(facts))


def main() -> str:
    """``RECIPES WORLD_JSON OUT_ROOT``: the comma-separated recipes one after the other in this
    process group (one start-up for all), each into ``OUT_ROOT/<recipe>``."""
    recipes, world_file, out_root = sys.argv[1:4]
    import conftest  # noqa: F401  (offline environment)
    import torch

    from opsd.plugins import registry
    from tip_patches.plugin import register

    torch.set_num_threads(1)
    if "tip" not in registry().sections:
        register(registry())
    world = json.loads(Path(world_file).read_text())
    for recipe in recipes.split(","):
        out = Path(out_root) / recipe
        out.mkdir(parents=True, exist_ok=True)
        run_recipe(recipe, world, str(out))
    return out_root


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    sys.path.insert(0, str(REPO))
    import _teardown

    _teardown.end_worker(main())
