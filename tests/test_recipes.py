"""The recipes: every YAML validates through opsd.config (with the ``tip`` section where the paper
tables use it), and every paper-table script's dry run (DRY_RUN=1) exits 0 and plans the right
number of launches, each validated by the launcher's own ``--dry-run``. No GPU, no network."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from opsd.config import ConfigError, load_config

REPO = Path(__file__).resolve().parent.parent
RECIPES = REPO / "recipes"
PAPER = RECIPES / "paper"
ALL_YAML = sorted(RECIPES.rglob("*.yaml"))
PAPER_YAML = sorted(PAPER.glob("*.yaml"))

# Table -> (pairs, (rule, ratio) rows per pair), as in the paper (README in recipes/).
MATH = ("qwen3-8b-4b", "llama-70b-8b", "qwen2.5-14b-1.5b")
TABLE_ROWS = {
    "3": (MATH, [("all", 1.0)] + [("entropy_sample", r) for r in (0.5, 0.2, 0.1)]),
    "4": (MATH, [("all", 1.0), ("q3", 0.2), ("q3", 0.1)]),
    "5": (MATH, [("all", 1.0), ("entropy_sample", 0.5), ("entropy_sample", 0.2), ("soft_or", 0.5), ("soft_or", 0.2)]),
    "6": (MATH, [("soft_or", 0.5), ("soft_or_bottom", 0.5)]),
    "7": (("qwen3-14b-1.7b", "qwen3-32b-1.7b"),
          [("all", 1.0), ("entropy_sample", 0.5), ("entropy_sample", 0.2), ("q3", 0.2), ("soft_or", 0.5),
           ("soft_or", 0.2)]),
    "8": (("qwen3-8b-4b",), [("all", 1.0)] + [(rule, r) for rule in ("entropy_sample", "adaptive_kl")
                                               for r in (0.5, 0.2, 0.1)]),
}
LAUNCH = re.compile(r"^\[launch\] (.*)$", re.M)
EVAL = re.compile(r"^\[eval\] (.*)$", re.M)


@pytest.fixture(scope="module", autouse=True)
def tip_section():
    """Register the ``tip`` section whether or not the package is pip-installed."""
    from opsd.plugins import registry
    from tip_patches.plugin import register

    register(registry())


def test_recipe_files_found():
    assert (RECIPES / "toy" / "opd.yaml") in ALL_YAML
    assert {p.stem for p in PAPER_YAML} >= {p for pairs, _ in TABLE_ROWS.values() for p in pairs}
    for t in TABLE_ROWS:
        assert (PAPER / f"table{t}.sh").is_file()


@pytest.mark.parametrize("path", ALL_YAML, ids=lambda p: str(p.relative_to(RECIPES)))
def test_yaml_validates(path):
    cfg = load_config(path)
    assert cfg.model.student and cfg.model.teacher
    assert cfg.train.prompts_per_step >= 1


@pytest.mark.parametrize("path", PAPER_YAML, ids=lambda p: p.stem)
def test_paper_yaml_with_every_rule_of_its_tables(path):
    """Each paper YAML with the tip.* overrides its table scripts pass; the Table 9 settings."""
    rows = {row for pairs, table_rows in TABLE_ROWS.values() if path.stem in pairs for row in table_rows}
    assert rows, f"{path.name} is used by no table"
    for rule, ratio in sorted(rows):
        overrides = [] if rule == "all" else [f"tip.rule={rule}", f"tip.ratio={ratio}"]
        cfg = load_config(path, overrides)
        assert ("tip" in cfg.plugins) == (rule != "all")
    cfg = load_config(path)
    r = cfg.rollout
    assert (r.backend, r.n, r.temperature, r.top_p, r.tensor_parallel_size) == ("vllm", 16, 1.0, 1.0, 2)
    assert r.max_new_tokens == 8192 and cfg.train.prompts_per_step == 8 and cfg.loss.type == "reverse_kl"
    assert cfg.loss.chunk_size == 512 and cfg.model.student.startswith(("Qwen/", "meta-llama/"))
    assert "# not in paper" in path.read_text(), "choices the paper does not make must be marked"


def test_bad_override_is_refused():
    with pytest.raises(ConfigError, match="tip.ratio"):
        load_config(PAPER / "qwen3-8b-4b.yaml", ["tip.rule=soft_or", "tip.ratio=1.5"])


def _run(table, tmp_path, **env_extra):
    env = {k: v for k, v in os.environ.items()
           if k not in ("PAIRS", "NPROC", "HOSTFILE", "EXTRA_OVERRIDES", "LAUNCHER", "OPSD_DATA_DIR",
                        "ENTROPY_RULE", "ALLOW_MISSING", "DEEPPLANNING_DB")}
    env.update(DRY_RUN="1", PYTHON=sys.executable, OUT=str(tmp_path / "out"), HF_HUB_OFFLINE="1",
               HF_DATASETS_OFFLINE="1", **env_extra)
    return subprocess.run(["bash", str(PAPER / f"table{table}.sh")], cwd=str(tmp_path), env=env,
                          capture_output=True, text=True, timeout=120)


def _row_of(launch_cmd):
    """(pair, rule, ratio) of a printed launch command."""
    pair = re.search(r"recipes/paper/(\S+)\.yaml", launch_cmd).group(1)
    rule = re.search(r"tip\.rule=(\S+)", launch_cmd)
    ratio = re.search(r"tip\.ratio=(\S+)", launch_cmd)
    return pair, rule.group(1) if rule else "all", float(ratio.group(1)) if ratio else 1.0


def _expected_launches(table, pairs=None):
    table_pairs, rows = TABLE_ROWS[table]
    return len(pairs or table_pairs) * len(rows)


@pytest.mark.parametrize("table", ["3", "4", "5", "6", "8"])
def test_table_dry_run(table, tmp_path):
    proc = _run(table, tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    n = _expected_launches(table)
    launches = LAUNCH.findall(proc.stdout)
    assert len(launches) == n
    assert f"# validated {n} launch(es): OK" in proc.stdout  # each went through opsd.launch --dry-run
    assert proc.stdout.count(": valid | ") == n
    assert len(re.findall(r"^\[compare\] .* -m eval\.compare .*--table " + table, proc.stdout, re.M)) == 1
    # the planned (pair, rule, ratio) rows are the table's
    pairs, rows = TABLE_ROWS[table]
    assert {_row_of(cmd) for cmd in launches} == {(p, rule, ratio) for p in pairs for rule, ratio in rows}
    assert not (tmp_path / "out").exists(), "a dry run must not create run folders"


def test_eval_thinking_switch_matches_yaml(tmp_path):
    """eval.run's --enable-thinking must render prompts as training did (data.enable_thinking)."""
    proc = _run("3", tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for cmd in EVAL.findall(proc.stdout):
        pair = re.search(r"--tag pair=(\S+)", cmd).group(1)
        want = yaml.safe_load((PAPER / f"{pair}.yaml").read_text())["data"].get("enable_thinking")
        got = re.search(r"--enable-thinking (\S+)", cmd)
        assert (None if got is None else got.group(1) == "true") == want, cmd


def test_table8_evaluates_math_dapo(tmp_path):
    proc = _run("8", tmp_path, DAPO_EVAL_LIMIT="100")
    assert proc.returncode == 0, proc.stderr[-2000:]
    dapo = [c for c in EVAL.findall(proc.stdout) if "--bench dapo --limit 100" in c]
    assert len(dapo) == _expected_launches("8")


def test_table7_dry_run_and_the_missing_database(tmp_path):
    proc = _run("7", tmp_path, DEEPPLANNING_DB=str(tmp_path / "no-db"))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    launches = LAUNCH.findall(proc.stdout)
    assert len(launches) == _expected_launches("7")
    assert f"# validated {_expected_launches('7')} launch(es): OK" in proc.stdout
    assert all("rollout.environment_options=" in c and "no-db" in c for c in launches)
    assert "# note: the DeepPlanning travel database is not usable" in proc.stdout
    env = {k: v for k, v in os.environ.items() if k not in ("DRY_RUN", "OPSD_DATA_DIR", "EXTRA_OVERRIDES")}
    env.update(PYTHON=sys.executable, OUT=str(tmp_path / "out"), DEEPPLANNING_DB=str(tmp_path / "no-db"))
    real = subprocess.run(["bash", str(PAPER / "table7.sh")], cwd=str(tmp_path), env=env,
                          capture_output=True, text=True, timeout=120)  # a real run: stops before any GPU check
    assert real.returncode == 3 and not LAUNCH.findall(real.stdout)
    assert "needs the DeepPlanning travel database" in real.stderr and "no-db" in real.stderr


def test_pairs_hostfile_and_nproc(tmp_path):
    hosts = tmp_path / "hosts"
    hosts.write_text("node-a slots=4\nnode-b slots=4\n")
    proc = _run("6", tmp_path, PAIRS="qwen3-8b-4b", HOSTFILE=str(hosts))
    assert proc.returncode == 0, proc.stderr[-2000:]
    launches = LAUNCH.findall(proc.stdout)
    assert len(launches) == 2 and all("--launcher deepspeed" in c and f"--hostfile {hosts}" in c for c in launches)
    assert "2 node(s) x 4 = world size 8" in proc.stdout
    assert "does not pass it to the other nodes" in proc.stdout  # OPSD_PLUGINS vs the DeepSpeed runner
    # the launcher's dry run refuses a world size that does not divide the 8 prompts per step
    proc = _run("6", tmp_path, PAIRS="qwen3-8b-4b", NPROC="6")
    assert proc.returncode != 0
    assert "prompts_per_step=8 is not a multiple of the world size 6" in proc.stderr
    proc = _run("3", tmp_path, PAIRS="no-such-pair")
    assert proc.returncode != 0 and "no-such-pair" in proc.stderr
