"""The 80/20 split, eval.prepare's database check, and eval.run on the fixture: Avg@n / Best@n,
sub-scores, resume after an interruption."""
import json
import shutil

import pytest

from eval.deepplanning import fixture as F
from eval import run
from eval.deepplanning.data import check_database, load_queries, split_ids, write_split
from eval.deepplanning.files import SCHEMA_RELPATH


def test_split_is_seeded_disjoint_and_80_20():
    ids = [str(i) for i in range(120)]
    a, b = split_ids(ids, seed=0), split_ids(list(reversed(ids)), seed=0)
    assert a == b and len(a["train"]) == 96 and len(a["test"]) == 24
    assert not set(a["train"]) & set(a["test"]) and set(a["train"]) | set(a["test"]) == set(ids)
    assert split_ids(ids, seed=1) != a


def test_write_split_and_record(fixture_paths, tmp_path):
    rec = write_split(fixture_paths["queries"], tmp_path / "dp", seed=0, test_fraction=0.5)
    test_rows = [json.loads(l) for l in (tmp_path / "dp" / "travel_test.jsonl").read_text().splitlines()]
    assert [r["id"] for r in test_rows] == rec["test"] and len(rec["test"]) == 1
    assert set(test_rows[0]) == {"id", "query", "meta_info"}
    assert json.loads((tmp_path / "dp" / "split.json").read_text())["source_sha256"] == rec["source_sha256"]


@pytest.fixture
def data_and_db(fixture_paths, tmp_path):
    """A data root holding the fixture's queries as the shipped query file, and a copy of its
    database (tests may break it)."""
    from eval.deepplanning.files import QUERY_RELPATH

    data, db = tmp_path / "data", tmp_path / "db"
    (data / QUERY_RELPATH).parent.mkdir(parents=True)
    shutil.copy(fixture_paths["queries"], data / QUERY_RELPATH)
    shutil.copytree(fixture_paths["database"], db)
    return data, db


def test_prepare_checks_a_database_folder(data_and_db, capsys):
    from eval import prepare

    data, db = data_and_db
    prepare.main(["--data-dir", str(data), "--only", "", "--deepplanning-db", str(db)])
    assert "OK (2 task folders" in capsys.readouterr().out
    (db / "id_1" / "locations" / "locations_coords.csv").unlink()
    with pytest.raises(SystemExit):
        prepare.main(["--data-dir", str(data), "--only", "", "--deepplanning-db", str(db)])
    assert "task 1: " in capsys.readouterr().err
    assert check_database(db, ["0", "1"]) == [f"task 1: {db / 'id_1/locations/locations_coords.csv'} is missing"]


def test_prepare_counts_duplicate_names(data_and_db, capsys):
    """A repeated name is not an error, but it is reported: the scorer keeps the last row (as the
    official loaders), the tools the first."""
    import csv

    from eval import prepare

    data, db = data_and_db
    hotels = db / "id_0" / "hotels" / "hotels.csv"
    rows = list(csv.DictReader(open(hotels, encoding="utf-8")))
    with open(hotels, "a", encoding="utf-8", newline="") as f:
        csv.DictWriter(f, fieldnames=list(rows[0])).writerow({**rows[0], "price": "400.0"})
    prepare.main(["--data-dir", str(data), "--only", "", "--deepplanning-db", str(db)])
    out = capsys.readouterr().out
    assert "OK (2 task folders" in out
    assert ("duplicate names (hotels 1 row(s) in 1 task(s), attractions 0 row(s) in 0 task(s), "
            "restaurants 0 row(s) in 0 task(s), locations 0 row(s) in 0 task(s))") in out


def test_missing_sub_scores_are_left_out_and_counted():
    """A sample whose scorer raised has reward 0 but no sub-scores: they are missing, not 0."""
    from eval.deepplanning.evaluate import SCORE_KEYS, update_metrics

    ok = {"correct": 1.0, "scores": {k: 1.0 for k in SCORE_KEYS}, "info": {}}
    err = {"correct": 0.0, "scores": {}, "info": {"score_error": "KeyError: 'x'"}, "score_error": "KeyError: 'x'"}
    entry = {"problems": [{"samples": [ok, err]}, {"samples": [ok, ok]}]}
    update_metrics(entry)
    m = entry["metrics"]
    assert m["mean@2"]["value"] == 0.75  # the reward of a failed scorer stays 0, as officially
    assert m["commonsense@2"]["value"] == 1.0 and m["commonsense@2"]["missing"] == 1
    assert entry["missing_sub_scores"] == {k: 1 for k in SCORE_KEYS} and entry["score_errors"] == 1
    entry = {"problems": [{"samples": [err, err]}]}
    update_metrics(entry)
    assert "commonsense@2" not in entry["metrics"] and entry["missing_sub_scores"]["commonsense"] == 2
    assert entry["score_errors"] == 2 and entry["metrics"]["mean@2"]["value"] == 0.0


def test_prepare_writes_the_real_split(tmp_path):
    from eval import prepare
    from eval.benchmarks import SHARED_DATA

    shared = SHARED_DATA
    if not (shared / SCHEMA_RELPATH).is_file():
        pytest.skip("../shared/data is not available")
    prepare.main(["--data-dir", str(tmp_path), "--source", str(shared), "--only", "deepplanning"])
    split = json.loads((tmp_path / "deepplanning" / "split.json").read_text())
    assert (len(split["train"]), len(split["test"])) == (96, 24)
    assert (tmp_path / SCHEMA_RELPATH).is_file()
    assert len(load_queries(tmp_path / "DeepPlanning/travelplanning/travelplanning_query_en.json")) == 120


def test_one_locator_names_what_it_looked_for_and_where(tmp_path, monkeypatch):
    """eval.deepplanning.files finds the schema in the data root, else in the shared copy; when
    neither has it, the error names both paths."""
    from eval.deepplanning import files

    data, shared = tmp_path / "data", tmp_path / "shared"
    monkeypatch.setattr(files, "SHARED_DATA", shared)
    with pytest.raises(FileNotFoundError, match=rf"DeepPlanning tool schema not found \(looked at "
                                                rf"{data / SCHEMA_RELPATH}, {shared / SCHEMA_RELPATH}"):
        files.schema_file(str(data))
    for root in (shared, data):
        (root / SCHEMA_RELPATH).parent.mkdir(parents=True)
        (root / SCHEMA_RELPATH).write_text("[]")
        assert files.schema_file(str(data)) == root / SCHEMA_RELPATH  # the data root's copy first
    monkeypatch.delenv(files.DB_ENV, raising=False)
    assert files.db_dir(str(data)) == data / files.DB_RELPATH
    monkeypatch.setenv(files.DB_ENV, str(tmp_path / "db"))
    assert files.db_dir(str(data)) == tmp_path / "db"
    assert files.split_file(str(data)) is None


# ------------------------------------------------------------------------- eval.run

@pytest.fixture
def dp_data(fixture_paths, tmp_path, monkeypatch):
    """A data root whose held-out split is the fixture's tasks 0 and 1."""
    data = tmp_path / "data"
    (data / "deepplanning").mkdir(parents=True)
    rows = [{"id": t, "query": F.QUERY[t], "meta_info": F.META[t]} for t in ("0", "1")]
    (data / "deepplanning" / "travel_test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (data / SCHEMA_RELPATH).parent.mkdir(parents=True)
    shutil.copy(fixture_paths["schema"], data / SCHEMA_RELPATH)
    monkeypatch.setenv("OPSD_DATA_DIR", str(data))
    monkeypatch.setenv("DEEPPLANNING_DB", str(fixture_paths["database"]))
    monkeypatch.setenv("DEEPPLANNING_MAX_TURNS", "4")
    monkeypatch.setenv("DEEPPLANNING_MAX_EPISODE_TOKENS", "20000")
    return data


class Answers:
    """Scripted policy for eval.run: one search, then alternately the gold plan and the
    wrong-train variant (task 0) / the older-hotel variant (task 1). ``fail_after`` final answers
    it raises (an interrupted evaluation)."""

    def __init__(self, fail_after=None):
        self.finals, self.fail_after = 0, fail_after

    def __call__(self, context, turn):
        from _agent_fakes import call_text

        task = "0" if "Hefei" in context else "1"
        if turn == 0:
            return call_text("search_location", place_name="Laomendong")
        if self.fail_after is not None and self.finals >= self.fail_after:
            raise KeyboardInterrupt
        self.finals += 1
        bad = F.variant_text("wrong_train" if task == "0" else "older_hotel")[2]
        return F.answer((F.GOLD[task] if self.finals % 2 else bad).replace("¥", ""))


def _args(tmp_path, **kw):
    base = dict(model=str(tmp_path / "model"), out=str(tmp_path / "res.json"), bench=["deepplanning_travel"],
                n=2, batch_size=1, progress=False, max_new_tokens=3000,
                tags={"pair": "qwen3-14b-1.7b", "rule": "all", "ratio": "1"})
    base.update(kw)
    return run.RunArgs(**base)


def test_eval_run_scores_avg_and_best_and_resumes(dp_data, tmp_path):
    from _agent_fakes import ScriptedBackend, build_tool_tokenizer

    tok = build_tool_tokenizer()
    with pytest.raises(KeyboardInterrupt):  # interrupted in the second task
        run.evaluate(_args(tmp_path), ScriptedBackend(tok, Answers(fail_after=2)), tok)
    partial = json.loads((tmp_path / "res.json").read_text())
    entry = partial["benchmarks"]["deepplanning_travel"]
    assert [p["id"] for p in entry["problems"]] == ["0"] and partial["status"] == "partial"

    policy = Answers()
    results = run.evaluate(_args(tmp_path), ScriptedBackend(tok, policy), tok)
    assert policy.finals == 2  # only task 1 was played again
    entry = results["benchmarks"]["deepplanning_travel"]
    assert results["status"] == "complete" and [p["id"] for p in entry["problems"]] == ["0", "1"]
    rewards = [[s["correct"] for s in p["samples"]] for p in entry["problems"]]
    assert rewards == [[1.0, pytest.approx(0.8)], [1.0, 0.75]]
    m = entry["metrics"]
    assert m["mean@2"]["value"] == pytest.approx((0.9 + 0.875) / 2)  # Avg@2
    assert m["pass@2"]["value"] == pytest.approx(1.0)  # Best@2
    assert m["commonsense@2"]["value"] == 1.0 and m["case_acc@2"]["value"] == 0.5
    assert entry["score_errors"] == 0 and set(entry["missing_sub_scores"].values()) == {0}
    sample = entry["problems"][0]["samples"][1]
    assert sample["turns"] == 2 and sample["tool_calls_ok"] == 1
    assert "train_seat_status" in sample["info"]["hard_failures"]
    assert entry["settings"]["max_turns"] == 4
    assert "deepplanning_travel" in run.summary(results)

    # Table 7's layout: Avg@16 rows read mean@n, Best@16 rows the best sample (pass@n)
    from eval import compare

    report = tmp_path / "t7.md"
    assert compare.main([str(tmp_path / "res.json"), "--table", "7", "--out", str(report)]) == 0
    text = report.read_text()
    row_avg = next(l for l in text.splitlines() if l.startswith("| OPD, all tokens (100%) [avg@16]"))
    row_best = next(l for l in text.splitlines() if l.startswith("| OPD, all tokens (100%) [best@16]"))
    assert "88.8" in row_avg and "11.7" in row_avg  # ours (88.75 %) beside the paper's 11.7
    assert "100.0" in row_best and "18.9" in row_best


def test_preflight_names_a_missing_database(dp_data, tmp_path, monkeypatch):
    monkeypatch.setenv("DEEPPLANNING_DB", str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="database folder .*nowhere is missing"):
        run.preflight(_args(tmp_path))
