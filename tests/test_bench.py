"""The loss-memory benchmarks run end to end at a tiny shape (each row in its own child process)."""
import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TINY = ["--vocab", "512", "--tokens", "64", "--hidden", "16", "--chunk-size", "16"]


def _start(script, *flags):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, str(REPO / "bench" / script), *TINY, *flags], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(proc):
    out, _ = proc.communicate(timeout=240)
    assert proc.returncode == 0, out
    return out


def _rows(out):
    return [[c.strip() for c in line.strip().strip("|").split("|")] for line in out.splitlines()
            if line.startswith("| ") and not line.startswith("| path") and not line.startswith("| ratio")]


def test_opd_and_tip_memory_benchmarks_at_a_tiny_shape():
    # Both scripts at once: the wall time is mostly the children's torch imports.
    opd = _start("opd_memory.py")
    tip = _start("tip_memory.py", "--ratios", "1.0,0.1")
    opd_out, tip_out = _finish(opd), _finish(tip)

    rows = _rows(opd_out)
    names = [r[0].split(":")[0] for r in rows]  # liger rows only with the bench extra installed
    assert [n for n in names if n != "liger"] == ["naive", "fused", "fused", "autograd", "recompute"], opd_out
    assert rows[0][3] == "1.00"
    losses = [float(r[5]) for r in rows]
    assert all(abs(x - losses[0]) < 1e-4 for x in losses), opd_out
    diffs = [float(x) for x in re.findall(r"- loss\(naive\)\| = (\S+)", opd_out)]
    assert len(diffs) == len(rows) - 1 and max(diffs) < 1e-4, opd_out
    assert "targets: peak <= 0.35x naive" in opd_out
    assert "one (N, V) float32 tensor: 64 x 512 x 4 B" in opd_out

    rows = _rows(tip_out)
    assert [(r[0], r[1]) for r in rows] == [("1.00", "64"), ("0.10", "7")]  # K = ceil(ratio * N)
    assert rows[0][3] == "—" and rows[1][3].endswith("%")
    assert "tip:soft_or@0.1" in tip_out
    assert "Where the memory goes at ratio 0.1 (K = 7 of N = 64 tokens)" in tip_out
    assert "measured alone" in tip_out
    assert "references (bench/opd_memory.py" in tip_out and "ratio 0.10: " in tip_out


def test_teacher_offload_benchmark_at_a_tiny_shape():
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, str(REPO / "bench" / "teacher_offload_memory.py"), "--steps", "1",
                          "--threads", "1"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    rows = {r[0]: r for r in _rows(out.stdout) if r[0] in ("resident", "offload")}
    assert set(rows) == {"resident", "offload"}, out.stdout
    for r in rows.values():
        score, train, step = map(float, r[1:4])
        assert 0 < score <= step and 0 < train <= step
    assert "128 response tokens per step" in out.stdout
    bad = subprocess.run([sys.executable, str(REPO / "bench" / "teacher_offload_memory.py"), "--placements", "gpu"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--placements" in bad.stderr


def test_cross_tokenizer_benchmark_at_a_tiny_shape():
    """bench/xtok.py: the same-tokenizer row and BPM rows (conditioned shares, lookback rows) all run."""
    out = _finish(_start("xtok.py", "--conditioned", "0.0,0.5", "--lookback", "0.1"))
    rows = [r for r in _rows(out) if r[0] != "teacher source"]
    assert [r[0] for r in rows] == ["same", "bpm, 0% rows conditioned, 10% lookback",
                                    "bpm, 50% rows conditioned, 10% lookback"], out
    # the peak over the inputs can be exactly 0 at this shape (no new page touched): its ratio reads n/a
    assert rows[0][2] in ("1.00", "n/a") and rows[0][4] == "1.00", out
    assert all(float(r[3]) > 0 for r in rows)  # wall s
    assert "map build (once per pair)" in out
