"""eval.prepare: the local copy branch and the DAPO dedup/split (determinism, no leakage)."""
import json

import pytest

from eval import prepare
from eval.templates import DAPO_PREFIX, DAPO_SUFFIX


def dapo_rows():
    """12 raw rows: 2 exact duplicates, 1 whitespace variant, 1 conflicting pair."""
    rows = []
    for i in range(8):
        rows.append((f"Problem number {i}?", str(i)))
    rows += [("Problem number 1?", "1"), ("Problem number 2?", "2"),  # exact duplicates
             ("Problem  number 3?", "3"),  # whitespace variant
             ("Problem number 7?", "70")]  # conflicts with row 7 -> both dropped
    return [{"data_source": "math_dapo", "ability": "MATH",
             "prompt": [{"role": "user", "content": DAPO_PREFIX + q + DAPO_SUFFIX}],
             "reward_model": {"ground_truth": a, "style": "rule"}, "extra_info": {"index": f"id-{i}"}}
            for i, (q, a) in enumerate(rows)]


@pytest.fixture
def dapo_parquet(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    path = tmp_path / "dapo.parquet"
    pq.write_table(pa.Table.from_pylist(dapo_rows()), path)
    return path


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_dedup_and_split(dapo_parquet, tmp_path):
    info = prepare.prepare_dapo(dapo_parquet, tmp_path / "out", seed=0, val_fraction=0.2)
    # 12 rows -> 8 distinct prompts (normalized), problem 7 dropped for conflicting answers
    assert (info.source_rows, info.distinct_prompts, info.dropped_conflicting) == (12, 8, 1)
    train, val = read_jsonl(tmp_path / "out" / "train.jsonl"), read_jsonl(tmp_path / "out" / "validation.jsonl")
    assert (len(train), len(val)) == (6, 1) == (info.train, info.validation)
    assert set(train[0]) == {"prompt", "answer", "problem", "id"}
    assert train[0]["prompt"].startswith(DAPO_PREFIX) and not train[0]["problem"].startswith("Solve")
    prompts = [r["problem"] for r in train + val]
    assert len(set(prompts)) == 7 and not {r["problem"] for r in train} & {r["problem"] for r in val}
    assert "Problem number 7?" not in prompts


def test_exact_dedup_keeps_whitespace_variants(dapo_parquet, tmp_path):
    info = prepare.prepare_dapo(dapo_parquet, tmp_path / "out", dedup="exact")
    assert info.distinct_prompts == 9


def test_split_is_deterministic_and_seeded(dapo_parquet, tmp_path):
    prepare.prepare_dapo(dapo_parquet, tmp_path / "a", seed=3)
    prepare.prepare_dapo(dapo_parquet, tmp_path / "b", seed=3)
    for name in ("train.jsonl", "validation.jsonl"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    orders = set()
    for seed in range(6):
        prepare.prepare_dapo(dapo_parquet, tmp_path / f"s{seed}", seed=seed)
        orders.add(tuple(r["id"] for r in read_jsonl(tmp_path / f"s{seed}" / "train.jsonl")))
    assert len(orders) > 1


def test_split_on_a_slice_of_the_real_file(shared_data, tmp_path):
    parquet = shared_data / prepare.DAPO_RELPATH
    a = prepare.prepare_dapo(parquet, tmp_path / "a", seed=0, limit=300)
    b = prepare.prepare_dapo(parquet, tmp_path / "b", seed=0, limit=300)
    assert a == b and a.train + a.validation + a.dropped_conflicting == a.distinct_prompts
    assert a.validation == round(0.2 * (a.train + a.validation))
    assert (tmp_path / "a" / "train.jsonl").read_bytes() == (tmp_path / "b" / "train.jsonl").read_bytes()


def test_malformed_row_is_named():
    with pytest.raises(prepare.PrepareError, match="DAPO row 4: reward_model.ground_truth"):
        prepare.dapo_row({"prompt": [{"role": "user", "content": "q"}], "reward_model": {}}, 4)


def test_local_branch_copies_and_checks_manifest(shared_data, tmp_path):
    rc = prepare.main(["--data-dir", str(tmp_path / "data"), "--source", str(shared_data),
                       "--only", "math500,aime24,aime25"])
    assert rc is None
    for rel in ("MATH-500/test.jsonl", "AIME_2024/aime_2024_problems.parquet", "AIME_2025/train.jsonl"):
        assert (tmp_path / "data" / rel).read_bytes() == (shared_data / rel).read_bytes()


def test_manifest_mismatch_is_refused(tmp_path):
    src = tmp_path / "src"
    (src / "MATH-500").mkdir(parents=True)
    (src / "MATH-500" / "test.jsonl").write_text("{}\n")
    (src / "MANIFEST.json").write_text(json.dumps([{"file": "MATH-500/test.jsonl", "sha256": "0" * 64}]))
    with pytest.raises(prepare.PrepareError, match="differs from MANIFEST"):
        prepare.copy_local(src, "MATH-500/test.jsonl", tmp_path / "dest")
    assert not (tmp_path / "dest" / "MATH-500" / "test.jsonl").exists()
