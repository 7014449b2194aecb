"""Several teachers (opsd.teachers): rows routed by a field or a router, each row's loss from its
own teacher, per-teacher metrics, unknown teachers refused before training."""
import json

import pytest
import torch
import yaml
from _runs import read_metrics
from _tiny_world import save_tiny_lm

from opsd.config import ConfigError, load_config

FIELDS = ["loss", "reverse_kl", "tokens", "kept_frac"]


@pytest.fixture(scope="module")
def two_teachers(tiny_world, tmp_path_factory):
    """A second teacher (other seed, width 40, logit rows padded to 8) beside the tiny world's
    (width 48, rows padded to 16), and the train rows with a ``teacher`` column: a, b, missing."""
    from transformers import AutoTokenizer

    root = tmp_path_factory.mktemp("teacher_b")
    tok = AutoTokenizer.from_pretrained(tiny_world["teacher"])
    b = save_tiny_lm(root / "b", tok, hidden=40, layers=2, seed=7)
    rows = [json.loads(x) for x in open(tiny_world["train"])]
    path = root / "train_routed.jsonl"
    with open(path, "w") as f:
        for i, r in enumerate(rows):
            if i % 3 != 2:  # every third row has no field: the first teacher
                r["teacher"] = "a" if i % 3 == 0 else "b"
            r["source"] = "alpha" if i % 2 else "beta"
            f.write(json.dumps(r) + "\n")
    return {**tiny_world, "a": tiny_world["teacher"], "b": b, "routed": str(path)}


def route_by_source(row):
    """A router (data.teacher_router): by a column the loader keeps (data.teacher_field)."""
    return {"alpha": "a", "beta": "b"}[row["source"]]


def route_badly(row):
    return {"alpha": "a"}[row["source"]]  # KeyError on the 'beta' rows


def _cfg(w, tmp_path, teachers, extra=(), steps=1, out="run"):
    path = tmp_path / f"{out}.yaml"
    path.write_text(yaml.safe_dump({"teachers": [{"name": n, "model": m} for n, m in teachers]}))
    return path, [f"model.student={w['student']}", f"data.train_files={w['routed']}",
                  f"train.output_dir={tmp_path / out}", f"train.max_steps={steps}", "train.prompts_per_step=4",
                  "rollout.n=2", "rollout.max_new_tokens=6", "engine.micro_batch_size=3", "optim.lr=0.01",
                  "logging.progress=false", "train.export=false", *extra]


def _run(w, tmp_path, teachers, extra=(), steps=1, out="run"):
    from opsd.train import main

    path, overrides = _cfg(w, tmp_path, teachers, extra, steps, out)
    main(["--config", str(path), *overrides])
    return read_metrics(tmp_path / out)


def _pool(w, tmp_path, teachers, extra=()):
    from transformers import AutoTokenizer

    from opsd.trainer import build_teacher

    path, overrides = _cfg(w, tmp_path, teachers, extra)
    cfg = load_config(path, overrides)
    return cfg, build_teacher(cfg, torch.device("cpu"), AutoTokenizer.from_pretrained(w["student"]))


@pytest.mark.parametrize("packed", [False, True])
def test_each_position_reads_its_own_teachers_logits(two_teachers, tmp_path, packed):
    """The pool's source, row by row, equals the row's own teacher scoring the whole micro-batch."""
    from opsd.batching import collate
    from opsd.teacher import load_teacher

    w = two_teachers
    cfg, pool = _pool(w, tmp_path, [("a", w["a"]), ("b", w["b"])])
    g = torch.Generator().manual_seed(0)
    B, L = 5, 12
    ids = torch.randint(3, 40, (B, L), generator=g)
    lengths = [12, 9, 11, 7, 10]
    am = torch.zeros(B, L, dtype=torch.long)
    lm = torch.zeros(B, L, dtype=torch.long)
    for r, n in enumerate(lengths):
        am[r, :n] = 1
        lm[r, 4:n - 1] = 1
    seq = {"input_ids": ids, "attention_mask": am, "loss_mask": lm}
    batch = collate(seq, list(range(B)), pad_id=0, packed=packed)
    meta = [{"teacher": t} for t in ["b", "a", "b", None, "a"]]  # row 3: no field -> a
    owner = [1, 0, 1, 0, 0]
    vocab = min(pool.width, 56)
    (src,) = pool.score_phase([batch], vocab, meta)
    got = src.rows(torch.arange(len(src)))
    mask = batch["loss_mask"].bool()
    per_seq = torch.cat([torch.full((int(lm[r].sum()),), owner[r]) for r in range(B)])
    assert len(src) == int(mask.sum()) == per_seq.numel()
    for t, path in enumerate([w["a"], w["b"]]):
        one = load_teacher(cfg, torch.device("cpu"), path)
        (ref,) = one.score_phase([batch], vocab)
        want = ref.rows(torch.arange(len(ref)))
        torch.testing.assert_close(got[per_seq == t], want[per_seq == t], rtol=1e-5, atol=1e-5)
        assert not torch.allclose(got[per_seq != t], want[per_seq != t], atol=1e-3)  # the other teacher's rows differ
    # a slice and a mixed index read the same rows
    torch.testing.assert_close(src.rows(slice(2, 9)), got[2:9])
    # token groups label each loss position with its teacher (per-teacher metrics)
    assert torch.equal(batch["token_groups"][mask], per_seq)
    assert pool.group_names({}) == {0: "teacher=a", 1: "teacher=b"}


def test_rows_losses_equal_their_own_teachers(two_teachers, tmp_path):
    """Step 1 (the student before any update, the same rollouts in every run): a pool whose teachers
    are all A equals the plain single-teacher run of A (the pool's cutting and joining changes
    nothing), and in the {a: A, b: B} run a's rows equal a's rows scored by A, b's rows b's scored
    by B; per-teacher metrics are logged."""
    from _runs import run_overrides

    from opsd.train import main

    w = two_teachers
    both = _run(w, tmp_path, [("a", w["a"]), ("b", w["b"])], out="ab")[0]
    all_a = _run(w, tmp_path, [("a", w["a"]), ("b", w["a"])], out="aa")[0]
    all_b = _run(w, tmp_path, [("a", w["b"]), ("b", w["b"])], out="bb")[0]
    single = {}
    for name in ("a", "b"):
        out = tmp_path / f"single_{name}"
        main(run_overrides({**w, "teacher": w[name], "train": w["routed"]}, out, 1))
        single[name] = read_metrics(out)[0]
    for pool, one in ((all_a, single["a"]), (all_b, single["b"])):
        for k in ("loss", "reverse_kl", "teacher_entropy", "tokens"):
            assert pool[k] == pytest.approx(one[k], rel=1e-5), k
    ka, kb = "group/teacher=a/reverse_kl", "group/teacher=b/reverse_kl"
    rel = lambda x, y: abs(x - y) / abs(y)  # noqa: E731
    print(f"pool of A vs single A: loss {rel(all_a['loss'], single['a']['loss']):.1e}; pool of B vs single B: "
          f"{rel(all_b['loss'], single['b']['loss']):.1e}; a's rows {rel(both[ka], all_a[ka]):.1e}, "
          f"b's rows {rel(both[kb], all_b[kb]):.1e} (relative)")
    assert both["group/teacher=a/tokens"] > 0 and both["group/teacher=b/tokens"] > 0
    assert both["group/teacher=a/tokens"] + both["group/teacher=b/tokens"] == both["tokens"]
    assert both[ka] == pytest.approx(all_a[ka], rel=1e-5)
    assert both[kb] == pytest.approx(all_b[kb], rel=1e-5)
    assert abs(both[kb] - all_a[kb]) > 1e-3 * abs(both[kb])  # scored by the other teacher it differs
    # the step's mean is the token-weighted mean of the two groups
    mix = (both[ka] * both["group/teacher=a/tokens"] + both[kb] * both["group/teacher=b/tokens"]) / both["tokens"]
    assert both["reverse_kl"] == pytest.approx(mix, rel=1e-5)
    assert both["teachers/a/sequences"] + both["teachers/b/sequences"] == 8


def test_router_and_tip_diagnostics_per_teacher(two_teachers, tmp_path):
    """data.teacher_router routes by another column; TIP's quadrant shares come per teacher."""
    w = two_teachers
    m = _run(w, tmp_path, [("a", w["a"]), ("b", w["b"])], out="routed",
             extra=["data.teacher_router=test_teachers:route_by_source", "data.teacher_field=source",
                    "tip.rule=soft_or", "tip.ratio=0.5"])[0]
    for name in ("a", "b"):
        assert f"tip/teacher={name}/q3_frac" in m and f"tip/teacher={name}/kept_frac" in m
    assert m["group/teacher=a/tokens"] + m["group/teacher=b/tokens"] == m["tokens"]


def test_unknown_teacher_is_refused_before_any_teacher_loads(two_teachers, tmp_path, capsys):
    from opsd.train import main

    w = two_teachers
    bad = tmp_path / "bad.jsonl"
    rows = [json.loads(x) for x in open(w["routed"])][:6]
    rows[4]["teacher"] = "c"
    bad.write_text("".join(json.dumps(r) + "\n" for r in rows))
    path, overrides = _cfg({**w, "routed": str(bad)}, tmp_path, [("a", "/nonexistent/a"), ("b", "/nonexistent/b")])
    assert main(["--config", str(path), *overrides]) == 2  # the teachers' paths do not exist: never loaded
    err = capsys.readouterr().err
    assert "UnknownTeacherError" in err and "bad.jsonl row 4: teacher 'c' is not one of the teachers listed (['a', 'b'])" in err
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
    # a router that fails on a row: the row and the cause, before any teacher loads
    path, overrides = _cfg(w, tmp_path, [("a", "/nonexistent/a"), ("b", "/nonexistent/b")],
                           ["data.teacher_router=test_teachers:route_badly", "data.teacher_field=source"])
    assert main(["--config", str(path), *overrides]) == 2
    err = capsys.readouterr().err
    assert "train_routed.jsonl row 0: the teacher router route_badly failed: KeyError: 'beta'" in err, err


def test_teachers_config_errors(two_teachers, tmp_path):
    w = two_teachers
    path, overrides = _cfg(w, tmp_path, [("a", w["a"]), ("b", w["b"])])
    load_config(path, overrides)  # fine as is
    for extra, match in [([f"model.teacher={w['a']}"], "both set"),
                         (["loss.teacher_topk=8"], "teacher_topk.*several teachers"),
                         ([f"model.teacher_tokenizer={w['a']}"], "teacher_tokenizer.*several teachers")]:
        with pytest.raises(ConfigError, match=match):
            load_config(path, [*overrides, *extra])
    for teachers, match in [([{"name": "a", "model": "x"}, {"name": "a", "model": "y"}], r"\['a'\].*more than once"),
                            ([{"name": "a", "model": "x", "placement": "server"}], r"teachers\[0\].*url"),
                            ([{"name": "a", "model": "x", "url": "http://h:1"}], "placement is 'resident'"),
                            ([{"name": "a"}], r"teachers\[0\].*model is required"),
                            ([{"name": "a", "model": "x", "port": 1}], r"unknown option teachers\[0\]\.port")]:
        path.write_text(yaml.safe_dump({"teachers": teachers}))
        with pytest.raises(ConfigError, match=match):
            load_config(path, overrides)
    # the resolved config (saved with every run) reads back
    path.write_text(yaml.safe_dump({"teachers": [{"name": "a", "model": w["a"]}]}))
    cfg = load_config(path, overrides)
    again = tmp_path / "saved.yaml"
    cfg.save(again)
    assert load_config(again).teachers == cfg.teachers


def test_teachers_set_by_name_on_the_command_line(two_teachers, tmp_path):
    """teachers.NAME.FIELD=value changes the listed teacher of that name or adds one."""
    w = two_teachers
    path, overrides = _cfg(w, tmp_path, [("a", w["a"]), ("b", w["b"])])
    cfg = load_config(path, [*overrides, "teachers.b.placement=server", "teachers.b.url=http://127.0.0.1:9",
                             f"teachers.c.model={w['b']}"])
    assert [(t.name, t.model, t.placement, t.url) for t in cfg.teachers] == [
        ("a", w["a"], None, ""), ("b", w["b"], "server", "http://127.0.0.1:9"), ("c", w["b"], None, "")]
    cfg = load_config(None, [*overrides, f"teachers.only.model={w['a']}"])  # no file: a list from the CLI
    assert [(t.name, t.model) for t in cfg.teachers] == [("only", w["a"])]
    for bad, match in [("teachers.b=x", "teachers.NAME.FIELD=value"), ("teachers.b.port=1", r"unknown option teachers\[1\]\.port"),
                       ("teachers.b.placement=server", r"teachers\[1\].*url")]:
        with pytest.raises(ConfigError, match=match):
            load_config(path, [*overrides, bad])


@pytest.mark.slow
def test_two_ranks_with_a_sharded_teacher_in_the_pool(two_teachers, tmp_path):
    """2 gloo ranks, ZeRO-3, both teachers ZeRO-3-sharded: a rank whose micro-batch has no row of a
    teacher still calls it (its gathers are collectives), so nothing hangs (bounded wait), and the
    losses equal the same pool unsharded on 2 ranks."""
    import socket
    import sys

    from _procs import run_bounded
    from test_distributed import ROOT, _env

    w = two_teachers

    def torchrun(out, extra):
        path, overrides = _cfg(w, tmp_path, [("a", w["a"]), ("b", w["b"])], ["engine.zero_stage=3", *extra],
                               steps=2, out=out)
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}",
               "-m", "opsd.train", "--config", str(path), *overrides]
        rc, _, err = run_bounded(cmd, 420, f"{out}: the 2-rank run", cwd=ROOT, env=_env())
        assert rc == 0, err[-4000:]
        return read_metrics(tmp_path / out)

    sharded = torchrun("sharded", ["engine.teacher_sharding=zero3"])
    full = torchrun("full", [])
    for a, b in zip(sharded, full):
        for k in ("loss", "reverse_kl", "group/teacher=a/reverse_kl", "group/teacher=b/reverse_kl"):
            assert a[k] == pytest.approx(b[k], rel=1e-4, abs=1e-6), (k, a[k], b[k])
    # micro-batches of 3 sequences, rows a/b/a...: some micro-batch on some rank lacked a teacher
    assert any(m["teachers/a/sequences"] != m["teachers/b/sequences"] for m in sharded)
    # the pool's counts are both ranks' (4 prompts x 2 samples per step; one rank alone holds 4)
    assert all(m["teachers/a/sequences"] + m["teachers/b/sequences"] == 8 for m in sharded + full)


def test_an_empty_micro_batch_gives_an_empty_source(two_teachers, tmp_path):
    """A rank's empty micro-batch (token budgets, uneven ranks): no loss position, no teacher call
    (unsharded), an empty routed source."""
    from opsd.batching import collate

    w = two_teachers
    _, pool = _pool(w, tmp_path, [("a", w["a"]), ("b", w["b"])])
    seq = {"input_ids": torch.ones(2, 4, dtype=torch.long), "attention_mask": torch.ones(2, 4, dtype=torch.long),
           "loss_mask": torch.ones(2, 4, dtype=torch.long)}
    for packed in (False, True):
        empty = collate(seq, [], pad_id=0, packed=packed)
        (src,) = pool.score_phase([empty], 56, [])
        assert len(src) == 0 and src.rows(slice(0, 0)).shape[0] == 0
