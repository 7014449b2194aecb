"""Two training runs, step by step and bit for bit: the logged per-step metrics (timings and memory
left out) and the final exported weights. What a refactor must leave unchanged.

    python -m opsd.train --config recipes/toy/opd.yaml train.max_steps=20 train.eval_files=[] \\
        logging.progress=false train.output_dir=/tmp/before/opd          # on the old commit
    ... the same with train.output_dir=/tmp/after/opd                      # on the new one
    python bench/compare_runs.py /tmp/before/opd /tmp/after/opd

Exit status 0 when both agree exactly, 1 otherwise. The metrics file rounds to 6 digits; the
exported weights (``train.export``, on by default) are compared exactly.
"""
import argparse
import json
import sys
from pathlib import Path

from safetensors.torch import load_file

SKIP = ("time", "peak_mem_gb")


def metrics(run: Path) -> list:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]


def weights(run: Path) -> dict:
    files = sorted((run / "export").glob("*.safetensors"))
    if not files:
        raise SystemExit(f"{run}: no export/*.safetensors (run with train.export=true)")
    out = {}
    for f in files:
        out.update(load_file(str(f)))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("a", type=Path)
    ap.add_argument("b", type=Path)
    args = ap.parse_args(argv)
    ma, mb = metrics(args.a), metrics(args.b)
    keys = sorted({k for row in ma + mb for k in row if k not in SKIP and not k.endswith("_s")})
    diff = [(x.get("step"), k, x.get(k), y.get(k)) for x, y in zip(ma, mb) for k in keys if x.get(k) != y.get(k)]
    wa, wb = weights(args.a), weights(args.b)
    common = sorted(wa.keys() & wb.keys())
    unequal = [k for k in common if not wa[k].equal(wb[k])]
    only = sorted(wa.keys() ^ wb.keys())
    same_w = not unequal and not only
    print(f"steps {len(ma)} vs {len(mb)}; {len(keys)} metrics compared per step; differing entries: {len(diff)}"
          + (f" (first: {diff[:3]})" if diff else ""))
    print(f"final exported weights bit-identical: {same_w} ({len(common) - len(unequal)} of {len(common)} common "
          f"tensors equal" + (f"; differing: {unequal[:5]}" if unequal else "")
          + (f"; in one export only: {only}" if only else "") + ")")
    print("losses:", ", ".join(f"{row['loss']:.6f}" for row in ma if "loss" in row))
    return 0 if (len(ma) == len(mb) and not diff and same_w) else 1


if __name__ == "__main__":
    sys.exit(main())
