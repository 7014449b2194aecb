"""Smoke test of ``bench/topk_teacher_error.py`` at tiny size (the README's top-k table comes from
it): it runs on a tiny world and a small synthetic vocabulary, prints the Markdown tables, and
its numbers obey what must hold: bucketing can only lower a divergence (every error is an
underestimate, shrinking as k grows), and k >= V is exact."""
import importlib.util
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "topk_teacher_error.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("topk_teacher_error", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_topk_teacher_error_script_smoke(bench, tiny_world, tmp_path, capsys):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: threads only add contention on a busy machine
    try:
        out = bench.main(["--world", str(tiny_world["root"]), "--ks", "4,16,512", "--prompts", "4", "--n", "2",
                          "--max-new-tokens", "6", "--micro-batch", "4", "--rows", "48", "--vocab", "500",
                          "--hidden", "80", "--regimes", "peaked", "--chunk-size", "16", "--no-recompute",
                          "--json", str(tmp_path / "raw.json")])
    finally:
        torch.set_num_threads(threads)
    text = capsys.readouterr().out
    assert "### toy" in text and "### synthetic-peaked" in text and "| k | Soft-OR kept-set overlap" in text
    assert (tmp_path / "raw.json").is_file()
    for name, res in out.items():
        rows = res["rows"]
        assert [r["k"] for r in rows] == [4, 16, 512]
        for lt in bench.LOSS_TYPES:
            rel = [r[lt]["rel"] for r in rows]
            assert all(a >= b - 1e-6 for a, b in zip(rel, rel[1:])), (name, lt, rel)  # finer buckets: closer
            assert all(r[lt]["loss_rel"] <= 1e-6 for r in rows), (name, lt)  # an underestimate
            assert rows[-1][lt]["rel"] < 1e-4 and rows[-1][lt]["grad_cos"] > 0.9999  # k >= V: exact
        for r in rows:
            assert 0 <= r["soft_or_overlap"] <= 1 and -1 <= r["soft_or_spearman"] <= 1
        assert rows[-1]["soft_or_overlap"] == 1.0
