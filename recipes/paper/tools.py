"""Helpers of ``recipes/paper/table*.sh`` (checks and the peak-memory report); the scripts call them.

    tools.py plan PLAN_FILE [--data-dir D] [--allow-unknown-bench]
    tools.py data --bench math500,aime24 [--data-dir D] [TRAIN_FILE ...]
    tools.py peak-mem --table 3 RESULTS.json ...

``plan`` (the scripts' DRY_RUN=1): each line of PLAN_FILE is ``kind`` + the command
(``python -m <module> args...``), separated by ASCII 0x1f. ``launch`` lines go through the launcher's
own ``--dry-run`` (``opsd.launch.main``: config validation, world-size checks, the resolved
torchrun/deepspeed command), ``eval`` lines through ``eval.run``'s option parsing and validation
plus the benchmark registry, ``compare`` lines through ``eval.compare``'s. All in this one process:
one interpreter start per table instead of one per row. Missing data files are reported as notes
(a dry run may happen before ``python -m eval.prepare``). Nothing touches the network or a GPU.

``data`` (before a real run): every benchmark file and training file must exist under the data
root; otherwise exit 1 naming the files and the command that writes them.

``peak-mem`` (Tables 3 and 4 have peak-memory rows, which eval.compare does not render): the
largest ``peak_mem_gb`` (CUDA max allocated, rank 0) over the steps of each run's
``metrics.jsonl`` (beside its ``results.json``), in Markdown, with the paper's value beside.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))  # the scripts run from the repository root, installed or not

SEP = "\x1f"
_NOTED = set()  # unknown benchmarks already reported


def _bench_paths(names, data_dir):
    from eval.benchmarks import benchmark_path, get_spec

    return {name: benchmark_path(get_spec(name), data_dir) for name in names}


def check_launch(args) -> str:
    from opsd.launch import main

    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            rc = main(args + ["--dry-run"])
    except SystemExit as e:  # argparse: unknown or malformed launcher flags
        rc = e.code
    return "" if rc == 0 else (err.getvalue().strip() or f"opsd.launch exited with {rc}")


def check_eval(args, allow_unknown_bench: bool) -> str:
    from eval.benchmarks import BenchmarkError, get_spec
    from eval.run import parse_args

    try:
        run_args = parse_args(args)
        run_args.validate()
    except (SystemExit, ValueError) as e:
        return f"eval.run options: {e}"
    for name in run_args.bench:
        try:
            get_spec(name)
        except BenchmarkError as e:
            if not allow_unknown_bench:
                return str(e)
            if name not in _NOTED:
                _NOTED.add(name)
                print(f"# note: {e} (allowed: this table cannot run yet)")
    return ""


def check_compare(args) -> str:
    from eval.compare import parse_args
    from eval.paper_tables import TABLES

    try:
        ns = parse_args(args)
    except SystemExit as e:
        return f"eval.compare options (exit {e.code})"
    if ns.table is not None and ns.table not in TABLES:
        return f"eval.compare --table {ns.table}: the paper's tables are {sorted(TABLES)}"
    return ""


def missing_data(benches, train_files, data_dir):
    """(what, path) for every needed file that is not there."""
    from eval.benchmarks import BenchmarkError

    out = []
    for name in dict.fromkeys(b for b in benches if b):
        try:
            path = _bench_paths([name], data_dir)[name]
        except BenchmarkError:
            continue  # reported by check_eval
        if not path.is_file():
            out.append((f"benchmark {name}", path))
    root = Path(data_dir)
    out += [("training prompts", root / t) for t in dict.fromkeys(train_files) if not (root / t).is_file()]
    return out


def cmd_plan(ns) -> int:
    problems, benches, launches = [], [], 0
    for lineno, line in enumerate(Path(ns.plan).read_text().splitlines(), 1):
        kind, *cmd = line.split(SEP)
        args = cmd[cmd.index("-m") + 2:] if "-m" in cmd else cmd  # the module's own arguments
        if kind == "launch":
            launches += 1
            err = check_launch(args)
        elif kind == "eval":
            err = check_eval(args, ns.allow_unknown_bench)
            if "--bench" in args:
                benches += args[args.index("--bench") + 1].split(",")
        elif kind == "compare":
            err = check_compare(args)
        else:
            err = f"unknown command kind {kind!r}"
        if err:
            problems.append(f"plan line {lineno} ({kind} {' '.join(args[:4])} ...): {err}")
    for what, path in missing_data(benches, [], ns.data_dir):
        print(f"# note: {what}: {path} is missing; a real run needs `python -m eval.prepare` first")
    for p in problems:
        print(f"dry-run error: {p}", file=sys.stderr)
    print(f"# validated {launches} launch(es): {'OK' if not problems else f'{len(problems)} problem(s)'}")
    return 1 if problems else 0


def cmd_data(ns) -> int:
    missing = missing_data(ns.bench.split(","), ns.train, ns.data_dir)
    if not missing:
        return 0
    listing = "\n".join(f"  {what}: {path}" for what, path in missing)
    print(f"error: data files are missing under {ns.data_dir}:\n{listing}\n"
          f"write them with `python -m eval.prepare{'' if ns.data_dir == 'data' else ' --data-dir ' + ns.data_dir}`"
          " (make data)", file=sys.stderr)
    return 1


def cmd_peak_mem(ns) -> int:
    import json

    from eval.paper_tables import PAIRS, find

    lines = [f"### Peak memory (GB), table {ns.table}", "",
             "| pair | rule | ratio | ours: max over steps of peak_mem_gb (rank 0) | paper |", "|---|---|---|---|---|"]
    for res in ns.results:
        run = Path(res).parent
        try:
            tags = json.loads(Path(res).read_text()).get("tags", {})
        except (OSError, ValueError):
            tags = {}
        pair, rule, ratio = tags.get("pair", "?"), tags.get("rule", "?"), tags.get("ratio", "?")
        peaks = []
        if (run / "metrics.jsonl").is_file():
            for line in (run / "metrics.jsonl").read_text().splitlines():
                try:
                    peaks.append(float(json.loads(line)["peak_mem_gb"]))
                except (ValueError, KeyError, TypeError):
                    continue
        try:
            paper = find(pair, "-", rule, float(ratio), ns.table, metric="peak_mem_gb")
        except ValueError:
            paper = []
        lines.append(f"| {PAIRS.get(pair, pair)} | {rule} | {ratio} | "
                     f"{f'{max(peaks):.1f}' if peaks else '-'} | {f'{paper[0].mean:.1f}' if paper else '-'} |")
    lines += ["", "The paper's runs used another framework (verl, FSDP with offload); compare the trend "
              "across ratios more than the absolute values."]
    print("\n".join(lines))
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="recipes/paper/tools.py", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    pp = sub.add_parser("plan")
    pp.add_argument("plan")
    pp.add_argument("--data-dir", default="data")
    pp.add_argument("--allow-unknown-bench", action="store_true")
    pd = sub.add_parser("data")
    pd.add_argument("--bench", default="")
    pd.add_argument("--data-dir", default="data")
    pd.add_argument("train", nargs="*", help="training files, relative to the data root")
    pm = sub.add_parser("peak-mem")
    pm.add_argument("--table", required=True)
    pm.add_argument("results", nargs="*")
    ns = p.parse_args(argv)
    return {"plan": cmd_plan, "data": cmd_data, "peak-mem": cmd_peak_mem}[ns.cmd](ns)


if __name__ == "__main__":
    sys.exit(main())
