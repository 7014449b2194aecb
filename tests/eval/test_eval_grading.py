"""Grading: hand cases for each convention of eval.grading, the timeout path, threads."""
import threading
import time

import pytest

from eval.grading import (Grader, GradingConfig, extract_answer, grade_inline, is_correct,
                          last_boxed_content)


@pytest.fixture(scope="module")
def grader():
    g = Grader(GradingConfig())
    yield g
    g.close()


@pytest.mark.parametrize("response, gold, answer_type, expected", [
    # boxed answers
    (r"so the answer is $\boxed{5}$.", "5", "math", True),
    (r"so the answer is $\boxed{6}$.", "5", "math", False),
    # the last box counts, even when math-verify would merge close boxes into a set
    (r"First \boxed{5} then \boxed{7}", "7", "math", True),
    (r"First \boxed{5} then \boxed{7}", "5", "math", False),
    (r"\boxed{3}, no wait: \boxed{4}", "3", "math", False),
    # an unparseable or empty last box does not fall back to an earlier box
    (r"\boxed{5} hmm \boxed{\frac{}{}}", "5", "math", False),
    (r"\boxed{5} hmm \boxed{}", "5", "math", False),
    # a truncated (unclosed) last box is no answer
    (r"\boxed{5} and finally \boxed{12", "12", "math", False),
    # LaTeX fractions and equivalent forms
    (r"\boxed{\dfrac{1}{2}}", r"\frac12", "math", True),
    (r"\boxed{0.5}", r"\frac{1}{2}", "math", True),
    (r"\boxed{\frac{3}{4}}", r"\frac{1}{2}", "math", False),
    (r"\boxed{\frac{\sqrt{3}}{2}}", r"\frac{\sqrt3}{2}", "math", True),
    (r"\boxed{(3, \frac{\pi}{2})}", r"\left( 3, \frac{\pi}{2} \right)", "math", True),
    (r"\boxed{\text{Evelyn}}", r"\text{Evelyn}", "math", True),
    # plain expressions and anchors without a box
    ("The answer is 1/2", r"\frac{1}{2}", "math", True),
    ("Answer: 34", "34", "math", True),
    # AIME: integers 0-999, leading zeros on either side
    (r"\boxed{033}", "33", "integer", True),
    (r"\boxed{25}", "025", "integer", True),
    ("The final answer is 033", "33", "integer", True),
    (r"$\boxed{\textbf{(073)}}$", "073", "integer", True),
    (r"\boxed{\text{073}}", "73", "integer", True),
    (r"\boxed{\text{073}}", "74", "integer", False),
    (r"\boxed{0}", "000", "integer", True),
    # a sentence-final period inside the box
    (r"so $CE = \boxed{104.}$", "104", "integer", True),
    # no extractable answer is wrong, not an error
    ("I could not solve this.", "3", "math", False),
    ("", "3", "math", False),
    ("", "3", "integer", False),
])
def test_hand_cases(grader, response, gold, answer_type, expected):
    assert grader.grade(response, gold, answer_type).correct is expected
    assert grade_inline(response, gold, answer_type).correct is expected


def test_math_verify_merges_close_boxes():
    """Why the last-box rule exists: the library alone reads two close boxes as a set. If this
    starts failing, math-verify changed and the rule may be redundant."""
    from math_verify import parse

    parsed = parse(r"First \boxed{5} then \boxed{7}")
    assert str(parsed[0]) in ("{5, 7}", "{7, 5}")
    assert str(extract_answer(r"First \boxed{5} then \boxed{7}")[0]) == "7"


def test_last_boxed_content_brace_matching():
    assert last_boxed_content(r"\boxed{\frac{1}{2}} x") == r"\frac{1}{2}"
    assert last_boxed_content(r"\boxed{1} \fbox{2}") == "2"
    assert last_boxed_content(r"\boxed{1} \boxed{\frac{1}{2") is None
    assert last_boxed_content("no box") is None


def test_is_correct_public_api():
    assert is_correct(r"\boxed{42}", "42") is True
    assert is_correct(r"\boxed{042}", 42, answer_type="integer") is True
    assert is_correct("nothing here", "42") is False


def test_extracted_key_is_canonical(grader):
    a = grader.grade(r"\boxed{\frac{1}{2}}", "1")
    b = grader.grade(r"\boxed{0.5}", "1")
    assert a.extracted == b.extracted == "1/2"
    assert grader.grade("no answer", "1").extracted is None


def test_bad_integer_gold_is_an_error_not_a_crash(grader):
    result = grader.grade(r"\boxed{3}", "three", "integer")
    assert result.correct is False and "three" in result.error
    assert grader.grade(r"\boxed{3}", "3", "integer").correct  # the worker survived


def test_hard_timeout_kills_and_recovers():
    """A comparison that outlasts the hard deadline (library alarm at 1 s > 0.5 s deadline) is
    killed, counted wrong and flagged; the next call gets a fresh worker."""
    g = Grader(GradingConfig(timeout_s=0.5))
    try:
        g.grade(r"\boxed{1}", "1")  # start the worker outside the timed part
        start = time.perf_counter()
        result = g.grade(r"\boxed{9^{9^{9^{9}}}}", "3")
        assert time.perf_counter() - start < 4.0
        assert result.timed_out and not result.correct
        assert g.num_timeouts == 1
        assert g.grade(r"\boxed{2}", "2").correct
    finally:
        g.close()


def test_library_timeout_inside_worker_counts_wrong():
    # 8 s bound -> 1 s library alarms: math-verify gives up by itself, no kill needed.
    g = Grader(GradingConfig(timeout_s=8.0))
    try:
        result = g.grade(r"\boxed{9^{9^{9^{9}}}}", "3")
        assert not result.correct and not result.timed_out
    finally:
        g.close()


@pytest.mark.parametrize("isolation", ["process", "inline"])
def test_grading_from_a_thread(isolation):
    """math-verify's signal alarms raise outside the main thread; grading must still work."""
    g = Grader(GradingConfig(isolation=isolation))
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("r", g.grade(r"\boxed{\frac{2}{4}}", r"\frac12")))
    t.start()
    t.join(60)
    g.close()
    assert out["r"].correct and out["r"].error is None


def test_config_validation():
    with pytest.raises(ValueError, match="isolation"):
        GradingConfig(isolation="thread")
    with pytest.raises(ValueError, match="timeout_s"):
        GradingConfig(timeout_s=0)
    assert GradingConfig(timeout_s=10).library_timeout == 1
    assert GradingConfig(timeout_s=40).library_timeout == 5
