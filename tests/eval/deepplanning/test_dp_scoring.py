"""Plan extraction, the rule-based parser, and the scorers on the fixture's gold plan and variants."""

import pytest

from eval.deepplanning import fixture as F
from eval.deepplanning.database import load_task
from eval.deepplanning.plan_parser import parse_plan, parse_price
from eval.deepplanning.prompts import extract_plan
from eval.deepplanning.scoring import (DIMENSIONS, avg_at_k, best_at_k, plan_cost, score_commonsense, score_hard,
                                       score_plan)


def _score(fixture_paths, task, text):
    parsed = parse_plan(text)
    return parsed, score_plan(parsed.plan, F.META[task], load_task(fixture_paths["database"], task))


def _failing(s):
    return sorted(["hard:" + k for k, (ok, _) in s.hard.items() if not ok] +
                  [k for k, (ok, _) in s.checks.items() if not ok])


# ------------------------------------------------------------------------- extraction and parsing

def test_extract_plan_after_last_think_joins_every_plan_block():
    text = "<think>draft <plan>not this</plan></think>a<PLAN> one </PLAN> b <plan>two</plan>"
    assert extract_plan(text) == "one\n\ntwo"
    assert extract_plan("<think><plan>x</plan></think>no plan") is None
    assert extract_plan(None) is None


@pytest.mark.parametrize("task", ["0", "1"])
def test_gold_plan_parses_every_line(task):
    parsed = parse_plan(F.GOLD[task])
    assert parsed.problems == [] and parsed.parsed == parsed.lines and parsed.parsed_share == 1.0
    day1 = parsed.plan["daily_plans"][0]
    assert day1["accommodation"]["price_per_night"] in (441.0, 233.0)
    assert "accommodation" not in parsed.plan["daily_plans"][1]  # "-" on the last day
    first = day1["activities"][0]
    assert first["type"] == "travel_intercity_public" and first["details"]["mode"] == "train"
    assert isinstance(first["details"]["cost"], float)


def test_parser_accepts_the_documented_variations():
    text = ("**Day 1:**\n**Current City:** from A to B\nAccommodation：Inn, West, ￥1,200/room/night\n"
            "8:05-09:00 ｜ travel_intercity_public ｜ Flight MU5101，Airport X - Airport Y，¥650/person\n"
            "09:00-10:00 | attraction | Park, North Gate, free\n"
            "10:00-11:00 | meal | Lunch, Wang's, Noodles, 35\n"
            "- 11:00-11:10 | travel_city | Park, North Gate - Inn, West, 0.5km, 10min, ¥0\n"
            "### Budget Summary\n- Total Estimated Budget: ¥2,345.5 (all included)\n")
    parsed = parse_plan(text)
    assert parsed.problems == []
    day = parsed.plan["daily_plans"][0]
    assert day["accommodation"] == {"name": "Inn, West", "price_per_night": 1200.0}
    acts = day["activities"]
    assert acts[0]["time_slot"] == "08:05-09:00"
    assert acts[0]["details"] == {"mode": "flight", "number": "MU5101", "from": "Airport X", "to": "Airport Y",
                                  "cost": 650.0}
    assert acts[1]["details"]["name"] == "Park, North Gate" and acts[1]["details"]["cost"] == 0.0
    assert acts[2]["details"] == {"meal_type": "lunch", "name": "Wang's, Noodles", "cost": 35.0}
    assert acts[3]["details"]["from"] == "Park, North Gate" and acts[3]["details"]["to"] == "Inn, West"
    assert parsed.plan["budget_summary"]["total_estimated_budget"] == 2345.5


def test_parser_reports_lines_it_cannot_read_and_never_guesses():
    text = ("Here you go\nDay 1:\nCurrent City: Nanjing\n"
            "10:00-12:00 | attraction | Nanjing Deji Plaza, about thirty yuan\n"
            "12:00-13:00 | sightseeing | Somewhere, ¥5\n13:00-14:00 | meal | Nanjing Noodles\n"
            "Enjoy your trip!\n")
    parsed = parse_plan(text)
    assert parsed.plan["daily_plans"][0]["activities"] == []
    assert [p.split(":")[0] for p in parsed.problems] == ["line 1", "line 4", "line 5", "line 6", "line 7"]
    assert "unknown activity type 'sightseeing'" in parsed.problems[2]
    assert parsed.lines == 7 and parsed.parsed == 2
    assert not parse_plan("just prose, no days").ok
    assert parse_price("¥60/person") == 60 and parse_price("sixty") is None


def _official_style(plan: str) -> str:
    """The gold plan written the way the official prompt's example writes plans."""
    for old, new in [("19:30-20:00 | hotel | Rest", "19:30-24:00 | hotel | Rest"),
                     ("Accommodation: Orange", "Accommodation：Orange"), ("¥441/room/night", "￥441/room/night"),
                     ("Hefei South Station - Nanjing South Station, ¥90/person",
                      "Hefei South Station - Nanjing South Station, 90 RMB/person"),
                     ("Lunch, Six Dynasties Pine Teahouse, ¥294/person", "Lunch, Six Dynasties Pine Teahouse, ￥294 per person"),
                     ("Day 2:", "---\n**Day 2 (2025-11-13):**"), ("18:00-19:00 | meal", "18:00-19:00 | Meal"),
                     ("**Budget Summary**", "**Budget Summary**:"),
                     ("- Transportation: ¥745", "   **Transportation: 745 RMB**. Train 90*3*2=540 RMB; taxis 205 RMB"),
                     ("- Total Estimated Budget: ¥2899", "   **Total Estimated Budget: 2899 RMB**")]:
        assert old in plan, old
        plan = plan.replace(old, new)
    return plan


def test_parser_reads_plans_written_like_the_official_example(fixture_paths):
    answer = ("<think>draft</think>Sure! Here is your itinerary.\n<plan>\n" + _official_style(F.GOLD["0"]) +
              "\n</plan>\nHave a nice trip, and tell me if you want changes.")
    parsed = parse_plan(extract_plan(answer))
    assert parsed.problems == [] and parsed.notes == []
    day1, day2 = parsed.plan["daily_plans"]
    assert day1["accommodation"] == {"name": "Orange Hotel Nanjing Confucius Temple Scenic Area", "price_per_night": 441.0}
    assert day1["activities"][-1]["time_slot"] == "19:30-24:00" and day2["day_number"] == 2
    assert day1["activities"][0]["details"]["cost"] == 90.0 and day1["activities"][6]["details"]["cost"] == 294.0
    assert day1["activities"][12]["type"] == "meal"
    assert parsed.plan["budget_summary"]["transportation"] == 745 and parsed.plan["budget_summary"]["total_estimated_budget"] == 2899
    _, s = _score(fixture_paths, "0", extract_plan(answer))
    assert _failing(s) == [] and s.case_acc == 1.0


def test_parser_reports_commentary_missing_budget_and_repeated_plans(fixture_paths):
    no_budget = F.GOLD["0"].split("**Budget Summary**")[0]
    text = extract_plan(f"<plan>Here it is:\n{no_budget}</plan> and again <plan>{no_budget}\nEnjoy!</plan>")
    parsed, s = _score(fixture_paths, "0", text)
    assert [p.split(": ", 1)[1] for p in parsed.problems] == ["text before 'Day 1:': Here it is:",
                                                             "not in the plan format: Enjoy!"]
    assert parsed.notes == ["day 1 appears again (several plans?); read as another day",
                            "day 2 appears again (several plans?); read as another day"]
    assert len(parsed.plan["daily_plans"]) == 4 and "total_estimated_budget" not in parsed.plan["budget_summary"]
    assert not s.checks["valid_trip_duration"][0] and not s.checks["cost_calculation_correctness"][0]


def test_parser_and_scorers_never_crash_on_mangled_plans(fixture_paths):
    """Seeded random damage to the gold plans (characters dropped or inserted, lines repeated,
    swapped or cut): every non-empty line is either read or reported, and the scorers take the
    result."""
    import random

    dbs = {t: load_task(fixture_paths["database"], t) for t in F.GOLD}
    noise = list("：￥¥|｜-–:,，0123456789 ") + ["24:00", "RMB", "Day 3:", "**", "<plan>", "\n"]
    for i in range(150):
        rng = random.Random(i)
        task = rng.choice(sorted(F.GOLD))
        lines = F.GOLD[task].splitlines()
        for _ in range(rng.randint(1, 8)):
            j = rng.randrange(len(lines))
            op, line = rng.randrange(5), lines[j]
            k = rng.randrange(len(line) + 1)
            if op == 0:
                lines[j] = line[:k] + line[k + 1:]
            elif op == 1:
                lines[j] = line[:k] + rng.choice(noise) + line[k:]
            elif op == 2:
                lines.insert(j, line)
            elif op == 3:
                lines[j], lines[-1 - j] = lines[-1 - j], line
            else:
                lines[j] = line[:k]
        parsed = parse_plan("\n".join(lines))
        unread = [p for p in parsed.problems if p.startswith("line ")]
        assert parsed.parsed + len(unread) == parsed.lines, i
        if parsed.ok:
            score_plan(parsed.plan, F.META[task], dbs[task])


# ------------------------------------------------------------------------- scores

@pytest.mark.parametrize("task", ["0", "1"])
def test_gold_plans_score_one(fixture_paths, task):
    _, s = _score(fixture_paths, task, F.GOLD[task])
    assert _failing(s) == []
    assert (s.personalized, s.personalized_all, s.commonsense, s.composite, s.case_acc) == (1, 1, 1, 1, 1)


@pytest.mark.parametrize("name", [v[0] for v in F.VARIANTS])
def test_each_variant_fails_exactly_its_check(fixture_paths, name):
    task, check, text = F.variant_text(name)
    parsed, s = _score(fixture_paths, task, text)
    assert parsed.problems == []
    assert _failing(s) == [check]
    n_hard = len(F.META[task]["hard_constraints"])
    if check.startswith("hard:"):
        assert s.personalized == pytest.approx(1 - 1 / n_hard) and s.personalized_all == 0 and s.commonsense == 1
        assert s.case_acc == 0 and s.composite == 0.5
    else:
        assert s.personalized == 1 and s.commonsense == pytest.approx(1 - 1 / len(DIMENSIONS))
        reason = s.checks[check][1]
        assert reason  # the failing check says why


def test_cost_formula_by_hand():
    plan = {"daily_plans": [
        {"accommodation": {"name": "H", "price_per_night": 100.0}, "activities": [
            {"type": "travel_intercity_public", "details": {"cost": 50.0}},
            {"type": "travel_intercity_public", "details": {"cost": 999.0}},  # a second leg: not counted
            {"type": "travel_city", "details": {"cost": 10.0}},
            {"type": "meal", "details": {"cost": 20.0}}, {"type": "attraction", "details": {"cost": 5.0}}]},
        {"accommodation": {"name": "H", "price_per_night": 100.0}, "activities": []}]}  # last day: no hotel cost
    cost = plan_cost(plan, people=5, rooms=3)
    # 50*5 + 10*ceil(5/4)=20 ; 100*3 ; 20*5 ; 5*5
    assert cost == {"transportation": 270.0, "accommodation": 300.0, "meals": 100.0, "attractions": 25.0,
                    "total": 695.0}


def test_string_costs_fail_the_price_checks_but_count_in_the_cost(fixture_paths, db0):
    parsed = parse_plan(F.GOLD["0"])
    for day in parsed.plan["daily_plans"]:
        for act in day["activities"]:
            if act["type"] == "meal":
                act["details"]["cost"] = str(int(act["details"]["cost"]))  # "294": what an LLM converter may emit
    cs = score_commonsense(parsed.plan, F.META["0"], db0)
    assert not cs.checks["validated_meals"][0] and "plan has no numeric price ('294')" in cs.checks["validated_meals"][1]
    assert cs.checks["cost_calculation_correctness"] == (True, None)  # float("294") counts, as officially
    assert plan_cost(parsed.plan, 3, 2)["meals"] == 1182.0


def test_a_plan_without_days_fails_everything(db0):
    s = score_plan({"daily_plans": []}, F.META["0"], db0)
    assert (s.personalized, s.commonsense) == (0, 0)
    assert s.hard["budget_constraint"] == (False, "plan has no days")


def test_avg_and_best_at_k():
    per_task = [[0.25, 0.75], [0.0, 0.5]]
    assert avg_at_k(per_task) == pytest.approx(0.375) and best_at_k(per_task) == pytest.approx(0.625)


def test_every_constraint_key_of_the_120_tasks_has_a_check():
    from eval.benchmarks import SHARED_DATA
    from eval.deepplanning.data import load_queries
    from eval.deepplanning.files import QUERY_RELPATH

    path = SHARED_DATA / QUERY_RELPATH
    if not path.is_file():
        pytest.skip(f"{path} is not available")
    keys = {}
    empty = {"daily_plans": []}
    for t in load_queries(path):
        for key, (ok, reason) in score_hard(empty, t["meta_info"]).results.items():
            keys[key] = keys.get(key, 0) + 1
            # each key reaches a real check, which an empty plan fails
            assert not ok and "unknown" not in reason and "names no" not in reason, (t["id"], key, reason)
    assert len(keys) == 38 and sum(keys.values()) == 496  # FORMAT.md's counts
