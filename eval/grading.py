"""Answer grading: is a model response's final answer equivalent to the gold answer?

Extraction and equivalence are Hugging Face ``math-verify`` (``parse`` + ``verify``); this module
only adds the conventions the benchmarks need and a timeout that always holds.

Conventions (each one is tested in ``tests/eval/test_eval_grading.py``):

- **The last** ``\\boxed{}`` **counts.** math-verify deliberately merges boxes that sit close
  together (``\\boxed{1} and \\boxed{2}`` becomes the set {1, 2}) and, when the last box fails
  to parse, falls back to an earlier one. Both contradict the benchmark rule, so when a response
  contains ``\\boxed{`` we cut out the content of the last box (brace matching, our one hand rule)
  and hand only that to math-verify. An unclosed last box (a response cut at max_new_tokens) gives
  no answer.
- **No box**: math-verify's own anchors ("final answer is", "Answer:") and, by default, the last
  LaTeX/plain expression of the text (``GradingConfig.unanchored``), extraction_mode
  ``first_match`` so a failed parse of the chosen span is not replaced by an earlier span.
- **No extractable answer is wrong, not an error**: ``is_correct`` returns False.
- **AIME** (``answer_type="integer"``): the gold is an integer 0-999; it is built directly as a
  sympy Integer instead of being parsed. Leading zeros in the response ("033") are handled by
  math-verify itself (tested, no hand rule).
- **Gold answers** of MATH-500 are bare LaTeX; they are parsed as ``\\boxed{gold}`` so the whole
  string is one LaTeX unit.

Timeout. math-verify's own timeouts (``parse(parsing_timeout=)``, ``verify(timeout_seconds=)``)
use ``signal.alarm``: whole seconds, main thread only (a ValueError elsewhere), and unable to
interrupt a long C-level computation. So by default (``isolation="process"``) grading runs in a
persistent worker process (``eval._grade_worker``) whose main thread uses those library timeouts
as a cheap first line, while this process enforces a hard wall-clock deadline per call: a worker
that overruns is killed and restarted, and the answer counts as wrong (``timed_out=True``). This
works from any thread. The worker's memory is capped too (``eval._grade_worker``). ``isolation="inline"`` grades in-process (faster, no hard bound; library
timeouts only in the main thread).
"""
from __future__ import annotations

import atexit
import json
import logging
import os
import re
import select
import subprocess
import sys
import threading
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, List, Optional, Tuple

log = logging.getLogger(__name__)

ANSWER_TYPES = ("math", "integer")
ISOLATIONS = ("process", "inline")


@dataclass(frozen=True)
class GradingConfig:
    """How answers are graded.

    - ``timeout_s``: hard wall-clock bound of one grading call (process isolation)
    - ``isolation``: ``process`` (worker process, hard timeout) | ``inline`` (this process)
    - ``unanchored``: without a box or an "answer" anchor, take the last expression of the text
    - ``startup_timeout_s``: time the worker may take to import sympy/math-verify
    """

    timeout_s: float = 10.0
    isolation: str = "process"
    unanchored: bool = True
    startup_timeout_s: float = 120.0

    def __post_init__(self) -> None:
        if self.isolation not in ISOLATIONS:
            raise ValueError(f"grading isolation={self.isolation!r}: choose one of {ISOLATIONS}")
        if self.timeout_s <= 0:
            raise ValueError(f"grading timeout_s must be > 0, got {self.timeout_s}")

    @property
    def library_timeout(self) -> int:
        """Whole seconds for each math-verify alarm. One call runs up to 2 parses and 4
        comparisons, so an eighth of the hard bound lets the library give up first."""
        return max(1, int(self.timeout_s // 8))


@dataclass
class GradeResult:
    """Outcome of grading one response.

    ``extracted`` is a canonical string of the predicted answer (the majority-vote key), None when
    nothing could be extracted. ``timed_out``/``error`` say why a response was graded wrong
    without a verdict.
    """

    correct: bool
    extracted: Optional[str] = None
    timed_out: bool = False
    error: Optional[str] = None


# ---------------------------------------------------------------------------------------------
# Pure grading (runs in the worker process, or inline)
# ---------------------------------------------------------------------------------------------

def _find_last_box(text: str) -> Tuple[str, Optional[str]]:
    """Locate the last ``\\boxed``/``\\fbox``: ("none" | "unbraced" | "unclosed" | "closed",
    content of the closed box)."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return "none", None
    i = start + (6 if text.startswith("\\boxed", start) else 5)
    while i < len(text) and text[i].isspace():
        i += 1
    if i >= len(text) or text[i] != "{":
        return "unbraced", None
    depth = 0
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return "closed", text[i + 1 : j]
    return "unclosed", None


def last_boxed_content(text: str) -> Optional[str]:
    """Content of the last ``\\boxed{...}`` / ``\\fbox{...}`` in ``text`` (brace-matched), or
    None when the text has none or the last one is never closed."""
    return _find_last_box(text)[1]


@lru_cache(maxsize=2)
def _pred_configs(unanchored: bool) -> tuple:
    from math_verify import ExprExtractionConfig, LatexExtractionConfig

    return (
        LatexExtractionConfig(boxed_match_priority=0, try_extract_without_anchor=unanchored),
        ExprExtractionConfig(try_extract_without_anchor=unanchored),
    )


def _library_timeout(seconds: int) -> Optional[int]:
    # signal.alarm raises ValueError outside the main thread; there we must run without it.
    return seconds if threading.current_thread() is threading.main_thread() else None


def _strip_sentence_period(box: str) -> str:
    """``\\boxed{104.}``: a sentence-final period inside the box (seen in AIME 2024's own
    solutions) makes math-verify return the raw string; drop one trailing period ("..." stays)."""
    stripped = box.rstrip()
    if stripped.endswith(".") and not stripped.endswith(".."):
        return stripped[:-1]
    return box


_DIGITS_SYMBOL = re.compile(r"\(?(\d+)\)?")


def _integer_symbols_to_numbers(pred: List[Any]) -> List[Any]:
    """AIME rule: ``\\text{073}`` / ``\\textbf{(073)}`` parse to a sympy Symbol named "073";
    math-verify then compares it as a string, so "073" != "73". For integer answers, read a
    digits-only Symbol as the integer it spells (leading zeros allowed)."""
    import sympy

    out = []
    for x in pred:
        match = _DIGITS_SYMBOL.fullmatch(x.name) if isinstance(x, sympy.Symbol) else None
        out.append(sympy.Integer(int(match.group(1))) if match else x)
    return out


def extract_answer(response: str, unanchored: bool = True, timeout: int = 5) -> List[Any]:
    """math-verify's parse of the response's final answer ([] = no answer), per the module rules."""
    from math_verify import parse

    status, box = _find_last_box(response)
    if status == "unclosed":
        return []  # the answer was cut off at max_new_tokens
    if status == "closed":
        box = _strip_sentence_period(box)
        if not box.strip():
            return []
        text = "\\boxed{" + box + "}"
    else:  # no box, or "\\boxed 5": math-verify's own patterns
        text = response
    return parse(text, extraction_config=_pred_configs(unanchored), extraction_mode="first_match",
                 parsing_timeout=_library_timeout(timeout))


@lru_cache(maxsize=4096)
def _parse_gold_cached(gold: str, answer_type: str, timeout: int) -> Tuple[Any, ...]:
    # Gold answers repeat n times (n samples per problem), so parse each once.
    if answer_type == "integer":
        import sympy

        value = int(str(gold).strip())
        return (sympy.Integer(value), str(value))
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse

    return tuple(parse("\\boxed{" + str(gold) + "}",
                       extraction_config=(LatexExtractionConfig(), ExprExtractionConfig()),
                       extraction_mode="first_match", parsing_timeout=_library_timeout(timeout)))


def parse_gold(gold: Any, answer_type: str = "math", timeout: int = 5) -> List[Any]:
    """math-verify's parse of a gold answer (``integer``: built directly, must be an integer)."""
    if answer_type not in ANSWER_TYPES:
        raise ValueError(f"answer_type={answer_type!r}: choose one of {ANSWER_TYPES}")
    return list(_parse_gold_cached(str(gold), answer_type, timeout))


def _vote_key(pred: List[Any]) -> Optional[str]:
    # The first element is the sympy object when parsing succeeded, else the fallback string.
    return None if not pred else str(pred[0])


def grade_inline(response: str, gold: Any, answer_type: str = "math", unanchored: bool = True,
                 timeout: int = 5) -> GradeResult:
    """Grade in this process (no hard timeout). The library's alarms apply in the main thread."""
    from math_verify import verify

    pred = extract_answer(response or "", unanchored, timeout)
    if not pred:
        return GradeResult(correct=False, extracted=None)
    if answer_type == "integer":
        pred = _integer_symbols_to_numbers(pred)
    gold_parsed = parse_gold(gold, answer_type, timeout)
    if not gold_parsed:
        return GradeResult(correct=False, extracted=_vote_key(pred), error=f"gold {gold!r} did not parse")
    ok = verify(gold_parsed, pred, timeout_seconds=_library_timeout(timeout))
    return GradeResult(correct=bool(ok), extracted=_vote_key(pred))


# ---------------------------------------------------------------------------------------------
# Process isolation: a persistent worker with a hard per-call deadline
# ---------------------------------------------------------------------------------------------

_REPO_ROOT = Path(__file__).resolve().parent.parent


class _Worker:
    """One ``python -m eval._grade_worker`` child speaking JSON lines over its pipes."""

    def __init__(self, startup_timeout_s: float) -> None:
        env = dict(os.environ)
        # The child must import this package even from an uninstalled checkout.
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_REPO_ROOT), env.get("PYTHONPATH")]))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "eval._grade_worker"], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, env=env, text=True, bufsize=1)
        line = self._readline(startup_timeout_s)
        if line is None or line.strip() != "ready":
            self.kill()
            raise RuntimeError(f"grading worker did not start (got {line!r}); "
                               "run `python -m eval._grade_worker` to see its error")

    def _readline(self, timeout_s: float) -> Optional[str]:
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout_s)
        if not ready:
            return None
        return self.proc.stdout.readline()

    def request(self, payload: dict, timeout_s: float) -> Optional[dict]:
        """The worker's answer, or None when it overran ``timeout_s``. Raises EOFError when the
        worker died."""
        self.proc.stdin.write(json.dumps(payload) + "\n")
        self.proc.stdin.flush()
        line = self._readline(timeout_s)
        if line is None:
            return None
        if not line:
            raise EOFError(f"grading worker exited with code {self.proc.wait()}")
        return json.loads(line)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


class Grader:
    """Grades responses under a :class:`GradingConfig`; thread-safe; reuse one per evaluation."""

    def __init__(self, config: GradingConfig = GradingConfig()) -> None:
        self.config = config
        self._worker: Optional[_Worker] = None
        self._lock = threading.Lock()
        self.num_timeouts = 0

    def grade(self, response: str, gold: Any, answer_type: str = "math") -> GradeResult:
        if answer_type not in ANSWER_TYPES:
            raise ValueError(f"answer_type={answer_type!r}: choose one of {ANSWER_TYPES}")
        if self.config.isolation == "inline" or os.name != "posix":
            return grade_inline(response, gold, answer_type, self.config.unanchored,
                                self.config.library_timeout)
        payload = {"response": response or "", "gold": str(gold), "answer_type": answer_type,
                   "unanchored": self.config.unanchored, "timeout": self.config.library_timeout}
        with self._lock:
            return self._grade_in_worker(payload)

    def _grade_in_worker(self, payload: dict, retry: bool = True) -> GradeResult:
        if self._worker is None:
            self._worker = _Worker(self.config.startup_timeout_s)
        try:
            answer = self._worker.request(payload, self.config.timeout_s)
        except (EOFError, BrokenPipeError, OSError) as e:
            self.close()
            if retry:  # a worker killed from outside: try once more on a fresh one
                return self._grade_in_worker(payload, retry=False)
            return GradeResult(correct=False, error=f"grading worker died: {e}")
        if answer is None:  # overran the hard deadline: kill, count as wrong
            self.close()
            self.num_timeouts += 1
            log.warning("grading timed out after %.1fs; counted as wrong", self.config.timeout_s)
            return GradeResult(correct=False, timed_out=True)
        return GradeResult(**answer)

    def close(self) -> None:
        if self._worker is not None:
            self._worker.kill()
            self._worker = None


_graders: dict = {}
_graders_lock = threading.Lock()


def default_grader(config: GradingConfig = GradingConfig()) -> Grader:
    """A shared grader per config (one worker process each), closed at exit."""
    with _graders_lock:
        if config not in _graders:
            _graders[config] = Grader(config)
        return _graders[config]


@atexit.register
def _close_all() -> None:
    for grader in list(_graders.values()):
        grader.close()


def is_correct(response_text: str, gold_answer: Any, answer_type: str = "math",
               timeout_s: Optional[float] = None) -> bool:
    """True when the final answer of ``response_text`` equals ``gold_answer``.

    ``answer_type="integer"`` for AIME-style integer answers. No extractable answer, a timeout or
    a grading failure all give False. ``timeout_s`` bounds the call (default 10 s).
    """
    config = GradingConfig() if timeout_s is None else GradingConfig(timeout_s=timeout_s)
    return default_grader(config).grade(response_text, gold_answer, answer_type).correct


def reward(response_text: str, answer: Any) -> float:
    """1.0 / 0.0 verifiable reward in the trainer's ``loss.reward_fn`` signature
    (``eval.grading:reward``)."""
    return float(is_correct(response_text, answer))


def result_to_dict(result: GradeResult) -> dict:
    return asdict(result)
