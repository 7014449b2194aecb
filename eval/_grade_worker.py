"""Grading worker process: ``python -m eval._grade_worker`` (started by ``eval.grading.Grader``).

Protocol, one JSON object per line: the parent writes ``{"response", "gold", "answer_type",
"unanchored", "timeout"}``; the worker answers with the fields of ``GradeResult``. It prints
``ready`` once its imports are done, so the parent's per-call deadline never pays for importing
sympy. Grading runs in this process's main thread, so math-verify's signal alarms work here.
Its address space is capped (``$OPSD_GRADER_MEMORY_MB``, default 4096; 0 = no cap).
"""
from __future__ import annotations

import json
import logging
import os
import sys

# A pathological expression may also try to allocate without bound; cap the worker's address
# space (MiB, 0 = no cap) so it fails with MemoryError (graded wrong) instead of swapping the host.
MEMORY_ENV = "OPSD_GRADER_MEMORY_MB"


def _limit_memory() -> None:
    mb = int(os.environ.get(MEMORY_ENV, "4096"))
    if mb > 0:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (mb << 20, mb << 20))


def main() -> None:
    # math-verify logs every library timeout as a warning; the parent reports what matters.
    logging.basicConfig(level=logging.ERROR)
    _limit_memory()
    from eval.grading import grade_inline, result_to_dict

    import math_verify  # noqa: F401  (import cost paid before "ready")

    print("ready", flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        try:
            result = grade_inline(req["response"], req["gold"], req["answer_type"],
                                  req["unanchored"], req["timeout"])
            out = result_to_dict(result)
        except Exception as e:  # a bad gold (e.g. non-integer AIME gold) must not kill the worker
            out = {"correct": False, "extracted": None, "timed_out": False,
                   "error": f"{type(e).__name__}: {e}"}
        sys.stdout.write(json.dumps(out) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
