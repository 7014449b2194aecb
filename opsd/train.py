"""``python -m opsd.train --config X.yaml [section.key=value ...]``: one OPD run.

Works as a single process and under ``torchrun`` / ``deepspeed`` (see ``opsd.launch``).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys

from opsd.config import ConfigError, describe, load_config


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m opsd.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="YAML config (only what differs from the defaults)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("--list-options", action="store_true", help="print every option with its help and exit")
    p.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # set by `deepspeed`
    p.add_argument("overrides", nargs="*", help="section.key=value")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.list_options:
        print(describe())
        return 0
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    if args.print_config:
        import yaml

        print(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        return 0
    from opsd.trainer import Trainer

    return _run(Trainer(cfg))


def _run(trainer) -> int:
    from opsd.trainer import TrainingAborted

    try:
        try:
            trainer.setup()
        except ConfigError:
            raise
        except (FileNotFoundError, ValueError) as e:  # bad input files / rows / models: the message names them
            logging.getLogger("opsd").debug("setup failed", exc_info=True)
            print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
            return 2
        summary = trainer.train()
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    except TrainingAborted as e:  # rollout engine died / weight sync failed: the message says it all
        logging.getLogger("opsd").debug("training aborted", exc_info=True)
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        trainer.cleanup()
    if summary and trainer.rank == 0:
        print(json.dumps(summary))
    return 0


def cli(argv=None) -> int:
    """The process entry point (``python -m opsd.train``, ``opsd-train``, each rank under torchrun /
    deepspeed): :func:`main`, then an orderly teardown of the process group, so that a finished
    run exits with its own code (see :func:`opsd.engine.shutdown_distributed`). :func:`main` alone
    leaves the group up for callers that train again in the same process."""
    from opsd.engine import shutdown_distributed

    rc = 1
    try:
        rc = main(argv)
    finally:  # no barrier after a failure: a peer may never arrive
        shutdown_distributed(barrier=rc == 0)
    return rc


if __name__ == "__main__":
    sys.exit(cli())
