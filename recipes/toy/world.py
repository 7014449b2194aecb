"""Build a toy world: ``make world`` (arithmetic, ``artifacts/toy``), ``make world-agent``
(tool-calling lookups, ``artifacts/agent_toy``).

    python recipes/toy/world.py --world toy                       # checks the committed world, rebuilds what is stale
    python recipes/toy/world.py --world agent --force             # rebuilds every part (~50 min on 2 CPU cores)
    python recipes/toy/world.py --world toy --out /tmp/toy --quick   # seconds; untrained, for tests

The builder is :mod:`opsd.toy.world` (the worlds: :mod:`opsd.toy.build`, :mod:`opsd.toy.agent_build`);
this entry point adds the TIP quadrants of the student's tokens to the build's report
(:mod:`tip_patches.report`), which is why it lives here: opsd never imports tip_patches. Prints the
sizes, held-out accuracies, quadrants and wall time.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib
from typing import Dict, Optional, Sequence

from tip_patches.report import quadrant_lines, quadrant_shares

WORLDS = {"toy": "opsd.toy.build", "agent": "opsd.toy.agent_build"}


def world(name: str):
    """The :class:`opsd.toy.world.ToyWorld` of ``name`` (a key of WORLDS)."""
    return importlib.import_module(WORLDS[name]).WORLD


def ensure(name: str, out: Optional[str] = None, cfg=None) -> Dict[str, str]:
    """Build world ``name`` if missing or stale (with its quadrants) and return its paths."""
    return world(name).ensure(out, cfg, quadrants=quadrant_shares)


def summary(name: str, info: dict) -> str:
    c = info["config"]
    extra = quadrant_lines(info["quadrants"], c["entropy_threshold"], c["kl_threshold"]) if "quadrants" in info else []
    return world(name).summary(info, extra)


def main(argv: Optional[Sequence[str]] = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--world", choices=sorted(WORLDS), default="toy", help="which world (default: toy)")
    ap.add_argument("--out", default=None, help="output folder (default: artifacts/toy or artifacts/agent_toy)")
    ap.add_argument("--quick", action="store_true", help="tiny untrained world in seconds (tests, smoke runs)")
    ap.add_argument("--force", action="store_true", help="rebuild every part, even valid ones")
    ap.add_argument("--seed", type=int, default=None, help="world seed (default 0)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default 2)")
    ap.add_argument("--no-eval", action="store_true", help="skip the held-out evaluation and quadrants")
    args = ap.parse_args(argv)
    w = world(args.world)
    cfg = w.quick_config() if args.quick else w.default_config()
    cfg = dataclasses.replace(cfg, **{k: v for k, v in (("seed", args.seed), ("threads", args.threads))
                                      if v is not None}, evaluate=not args.no_eval)
    out = args.out or w.default_out
    info = w.build(out, cfg, force=args.force, quadrants=quadrant_shares)
    print(f"{w.name} at {out}")
    print(summary(args.world, info))
    return info


if __name__ == "__main__":
    main()
