"""Answer grading: is a model response's final answer equivalent to the gold answer?

Extraction and equivalence are Hugging Face ``math-verify`` (``parse`` + ``verify``); this module
only adds the conventions the benchmarks need and a timeout that always holds.

Conventions (each one is tested in ``tests/eval/test_eval_grading.py``):

- **The last** ``\\boxed{}`` **counts.** math-verify deliberately merges boxes that sit close
  together (``\\boxed{1} then \\boxed{2}`` becomes the set {1, 2}) and, when the last box fails
  to parse, falls back to an earlier one. Both contradict the benchmark rule, so when a response
  contains ``\\boxed{`` we cut out the content of the last box (brace matching, our one hand rule)
  and hand only that to math-verify. An unclosed last box (a response cut at max_new_tokens) gives
  no answer.
- **One box per answer.** A multi-answer problem answered ``$x=\\boxed{-2}$ and $x=\\boxed{1}$``
  (gold ``1,-2``) is right: the last box and the boxes before it that are joined to it only by
  connectives (commas, "and", "or", math delimiters, spacing, an ``x =`` before the box; at most
  60 characters apart) are read as one list "-2, 1". The list is compared as a whole, so it must
  be the gold's set: ``\\boxed{-2} and \\boxed{1}`` is wrong for the single gold ``1`` (two answers
  given), and so is a run with an extra or a missing answer. One answer boxed twice in two forms
  ("``\\boxed{15\\frac{39}{40}}`` or ``\\boxed{\\frac{639}{40}}``", a MATH-500 gold solution)
  is a one-element set, which math-verify equates with the element (forms sympy holds exactly
  equal only: ``\\boxed{0.5} or \\boxed{\\frac12}`` stays a two-element set). Boxes joined by words
  ("\\boxed{5} then \\boxed{7}", "no wait:") are not one statement: the last box alone counts.
- **A "final answer" after the last box overrides it.** Text after the last box that says "final
  answer is X" / "Final Answer: X" (the Minerva / lm-eval closing line) means the box was an
  intermediate result, so X is the answer (math-verify's anchored extraction from the phrase on).
  Without that phrase, text after the box is ignored, and when no answer follows the phrase the
  box still counts.
- **No box**: math-verify's own anchors ("final answer is", "Answer:") and, by default, the last
  LaTeX/plain expression of the text (``GradingConfig.unanchored``), extraction_mode
  ``first_match`` so a failed parse of the chosen span is not replaced by an earlier span.
- **No extractable answer is wrong, not an error**: ``is_correct`` returns False.
- **AIME** (``answer_type="integer"``): the gold is an integer 0-999; it is built directly as a
  sympy Integer instead of being parsed. Leading zeros in the response ("033") are handled by
  math-verify itself (tested, no hand rule).
- **Gold answers** of MATH-500 are bare LaTeX; they are parsed as ``\\boxed{gold}`` so the whole
  string is one LaTeX unit.

Notations math-verify misreads (``normalize_answer``, applied alike to the box content, the gold
and a box-free response; each decision is tested in both directions):

- **Euler's number** ``\\mathrm{e}`` (also ``\\mathrm e``, ``{\\rm e}``): the upright e is the ISO
  way to write the constant. math-verify turns it into the plain symbol "e" (and fails to parse
  ``\\frac{1}{\\mathrm{e}}`` at all), so ``1-\\frac{1}{\\mathrm{e}}`` never matched
  ``1-e^{-1}``. It is rewritten to ``{e}``, which math-verify reads as the constant, like a
  bare ``e``.
- **Thousands separators** inside math: groups of exactly three digits after a leading group of
  one to three, separated by a thin or other TeX space (``\\,`` ``\\;`` ``\\:`` ``\\ `` ``~``) or a
  plain space (SI style): ``10\\,000`` and ``1 000`` are 10000 and 1000. math-verify read them as
  products (``10*0``, so ``\\boxed{10\\,000}`` was graded equal to 0). Digit groups of another
  length (``12 34``) are left alone. Cost: a list written with spaces only ("100 200") reads as
  one number; commas remain the list separator.
- **Primes** are part of a name: ``E'`` is not ``E`` (math-verify strips quote characters, so it
  was). A prime after a single letter becomes ``^{\\prime}`` (``E''`` -> ``^{\\prime\\prime}``), so
  ``E'`` = ``E^{\\prime}`` = ``E^\\prime``, and ``E'`` differs from ``E`` and from ``E''``.
  Apostrophes inside words ("Bob's") are untouched.
- **Mixed numbers**: an integer, a space and a proper fraction (``3128 1/2``) is the mixed number
  6257/2, the MATH convention (math-verify read 3129/2). It is rewritten to the improper fraction;
  ``3 5/4`` (numerator not below the denominator) is not a mixed number and is left alone.
  ``3128\\frac{1}{2}`` was already read as a mixed number by math-verify.
- **Script letters** ``\\mathcal{B}``, ``\\mathscr{B}``, ``\\mathfrak{B}`` (braced or not) each
  name a symbol of their own: equal to the same letter in the same typeface, not to ``B``, not to
  ``\\mathbf{B}`` and not to each other. In the same problem a point ``B`` and a set or basis
  ``\\mathcal{B}`` are different objects, which is why the typeface is used; plain typeface
  changes (``\\mathrm``, ``\\mathbf``, ``\\text``) stay math-verify's (the letter itself).
  math-verify had read all three as one symbol "math{b}", and ``\\mathcal B`` not at all. Like
  every symbol in math-verify, the letter's case is ignored.

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
        """Whole seconds for each math-verify alarm. One call runs up to 3 parses (a final answer
        after the box, the box, the gold) and 4 comparisons, so an eighth of the hard bound lets
        the library give up first."""
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

def _box_at(text: str, start: int) -> Tuple[str, Optional[str], int]:
    """The ``\\boxed``/``\\fbox`` starting at ``start``: (status, content of a closed box, index
    just past it); status is "unbraced" | "unclosed" | "closed"."""
    i = start + (6 if text.startswith("\\boxed", start) else 5)
    while i < len(text) and text[i].isspace():
        i += 1
    if i >= len(text) or text[i] != "{":
        return "unbraced", None, i
    depth = 0
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return "closed", text[i + 1 : j], j + 1
    return "unclosed", None, len(text)


def _last_box_start(text: str, end: Optional[int] = None) -> int:
    end = len(text) if end is None else end
    return max(text.rfind("\\boxed", 0, end), text.rfind("\\fbox", 0, end))


def _find_last_box(text: str) -> Tuple[str, Optional[str]]:
    """Locate the last ``\\boxed``/``\\fbox``: ("none" | "unbraced" | "unclosed" | "closed",
    content of the closed box)."""
    start = _last_box_start(text)
    return ("none", None) if start < 0 else _box_at(text, start)[:2]


# What may stand between two boxes of one multi-answer statement ("$x=\\boxed{-2}$ and
# $x=\\boxed{1}$"): math delimiters, commas, "and"/"or", spacing, then "x =" before the next box.
_BOX_JOIN = re.compile(
    r"(?:\s|\$|\\[()]|,|;|\band\b|\bor\b|\\q?quad|\\text\{\s*(?:and|or)\s*\})*"
    r"(?:[A-Za-z](?:_\{?\w+\}?)?\s*=\s*)?")
_MAX_JOINED_BOXES = 8
_MAX_BOX_GAP = 60  # characters; a longer gap is prose, not a connective


def _final_boxes(text: str) -> Tuple[str, Optional[str], int]:
    """The final answer's boxes: (status of the last box, content, end index). A run of closed
    boxes joined only by ``_BOX_JOIN`` (one box per answer) becomes one list "a, b"."""
    start = _last_box_start(text)
    if start < 0:
        return "none", None, len(text)
    status, content, end = _box_at(text, start)
    if status != "closed":
        return status, content, end
    parts = [content]
    while len(parts) < _MAX_JOINED_BOXES:
        prev = _last_box_start(text, start)
        if prev < 0:
            break
        prev_status, prev_content, prev_end = _box_at(text, prev)
        if (prev_status != "closed" or not 0 <= start - prev_end <= _MAX_BOX_GAP
                or not _BOX_JOIN.fullmatch(text, prev_end, start)):
            break
        parts.append(prev_content)
        start = prev
    return "closed", ", ".join(reversed(parts)), end


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


# Pre-normalization of answer strings (box content, gold, a box-free response) before math-verify.
# Each rule fixes a parse that math-verify gets wrong; see the module docstring for the decisions.
# All patterns are linear-time (no nested unbounded repeats), so the time bound is unaffected.
_EULER = re.compile(r"\\mathrm\s*\{\s*e\s*\}|\\mathrm\s+e(?![A-Za-z])|\{\s*\\rm\s+e\s*\}")
_PRIME = re.compile(r"(?<![A-Za-z\\])([A-Za-z])('+)(?![A-Za-z])")
_SCRIPT_LETTER = re.compile(
    r"\\(mathcal|mathscr|mathfrak)\s*(?:\{\s*([A-Za-z])\s*\}|([A-Za-z])(?![A-Za-z]))")
# At most 12 digits per part: int() of a huge digit run is slow (and refused past 4300 digits).
_MIXED_NUMBER = re.compile(
    r"(?<![\w.^_/])(\d{1,12})[ \t]+(\d{1,12})[ \t]*/[ \t]*(\d{1,12})(?![\w/^]|\.\d)")
_THOUSANDS = re.compile(r"(?<![\d.,])\d{1,3}(?:(?:[ ~]|\\[,;: ]|\\thinspace)+\d{3})+(?![\d/])")
_FINAL_ANSWER = re.compile(r"(?i)final answer(?:\s+is\b|\s*:)")


def _mixed_number(m: "re.Match") -> str:
    whole, num, den = m.groups()
    if not 0 < int(num) < int(den):
        return m.group(0)  # "3 5/4" is not a mixed number; leave it to math-verify
    # The improper fraction: math-verify reads "a/b" in LaTeX and in plain text alike.
    return f"{int(whole) * int(den) + int(num)}/{den}"


def normalize_answer(text: str) -> str:
    """Rewrite the notations math-verify misreads into ones it reads as intended:
    ``\\mathrm{e}`` -> ``{e}`` (Euler's number), ``E'`` -> ``E^{\\prime}`` (it drops quotes),
    ``\\mathcal{B}`` -> a symbol of its own, ``3 1/2`` -> ``7/2``, ``10\\,000`` ->
    ``10000``."""
    text = _EULER.sub("{e}", text)
    text = _PRIME.sub(lambda m: m.group(1) + "^{" + "\\prime" * len(m.group(2)) + "}", text)
    text = _SCRIPT_LETTER.sub(
        lambda m: "\\text{" + m.group(1) + (m.group(2) or m.group(3)) + "}", text)
    text = _MIXED_NUMBER.sub(_mixed_number, text)
    return _THOUSANDS.sub(lambda m: re.sub(r"\D", "", m.group(0).replace("\\thinspace", "")), text)


def extract_answer(response: str, unanchored: bool = True, timeout: int = 5) -> List[Any]:
    """math-verify's parse of the response's final answer ([] = no answer), per the module rules."""
    from math_verify import parse

    status, box, box_end = _final_boxes(response)
    if status == "unclosed":
        return []  # the answer was cut off at max_new_tokens
    if status == "closed":
        after = _final_answer_after(response[box_end:], timeout)
        if after:
            return after
        box = _strip_sentence_period(box)
        if not box.strip():
            return []
        text = "\\boxed{" + normalize_answer(box) + "}"
    else:  # no box, or "\\boxed 5": math-verify's own patterns
        text = normalize_answer(response)
    return parse(text, extraction_config=_pred_configs(unanchored), extraction_mode="first_match",
                 parsing_timeout=_library_timeout(timeout))


def _final_answer_after(tail: str, timeout: int) -> List[Any]:
    """A "final answer is X" / "Final Answer: X" stated after the last box overrides it (the box
    was an intermediate result). Parsed from the phrase on, anchored only, so other text after a
    box ("this answer took 3 steps") is no answer."""
    anchor = _FINAL_ANSWER.search(tail)
    if anchor is None:
        return []
    from math_verify import parse

    return parse(normalize_answer(tail[anchor.start():]), extraction_config=_pred_configs(False),
                 extraction_mode="first_match", parsing_timeout=_library_timeout(timeout))


@lru_cache(maxsize=4096)
def _parse_gold_cached(gold: str, answer_type: str, timeout: int) -> Tuple[Any, ...]:
    # Gold answers repeat n times (n samples per problem), so parse each once.
    if answer_type == "integer":
        import sympy

        value = int(str(gold).strip())
        return (sympy.Integer(value), str(value))
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse

    return tuple(parse("\\boxed{" + normalize_answer(str(gold)) + "}",
                       extraction_config=(LatexExtractionConfig(), ExprExtractionConfig()),
                       extraction_mode="first_match", parsing_timeout=_library_timeout(timeout)))


def parse_gold(gold: Any, answer_type: str = "math", timeout: int = 5) -> List[Any]:
    """math-verify's parse of a gold answer (``integer``: built directly, must be an integer)."""
    if answer_type not in ANSWER_TYPES:
        raise ValueError(f"answer_type={answer_type!r}: choose one of {ANSWER_TYPES}")
    return list(_parse_gold_cached(str(gold), answer_type, timeout))


def _vote_key(pred: List[Any]) -> Optional[str]:
    # The first element is the sympy object when parsing succeeded, else the fallback string.
    # One answer boxed twice ("\boxed{2/4} or \boxed{1/2}") parses to a one-element set; vote
    # with the element so it counts with the single-box form.
    import sympy

    if not pred:
        return None
    first = pred[0]
    if isinstance(first, sympy.FiniteSet) and len(first) == 1:
        first = next(iter(first))
    return str(first)


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
