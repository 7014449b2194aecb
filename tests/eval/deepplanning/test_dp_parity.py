"""Parity with the official DeepPlanning evaluation: every case of parity_cases.py (input -> the
official verdict), the coverage of those cases, and the rules where this project once differed."""
import pytest

import parity_cases as P
from eval.deepplanning.database import TaskDatabase, count_duplicates
from eval.deepplanning.scoring import DIMENSIONS, clock, score_plan, slot_minutes
from eval.deepplanning.tools import TravelTools

CHECKS = [c for dim in DIMENSIONS.values() for c in dim]


@pytest.fixture(scope="session")
def case_db(tmp_path_factory):
    """The task database a case needs (the fixture, or the fixture with its rows added), built once."""
    root, cache = tmp_path_factory.mktemp("parity"), {}

    def get(case: P.Case) -> TaskDatabase:
        key = (case.task, case.db)
        if key not in cache:
            folder = P.build_db(root / f"db{len(cache)}", case.task, case.db)
            cache[key] = TaskDatabase.load(folder.parent, case.task)
        return cache[key]
    return get


def verdict(case: P.Case, db: TaskDatabase):
    s = score_plan(case.plan(), case.task_meta(), db)
    if case.check.startswith("hard:"):
        return s.hard.get(case.check[5:], (None, "key absent"))[0]
    if case.check.startswith("score:"):
        return getattr(s, case.check[6:])
    return s.checks[case.check][0]


def run(case_db, *names):
    return {n: verdict(P.BY_NAME[n], case_db(P.BY_NAME[n])) for n in names}


@pytest.mark.parametrize("case", P.CASES, ids=[c.name for c in P.CASES])
def test_official_verdict(case_db, case):
    assert verdict(case, case_db(case)) == case.expect, case.why


def test_every_check_and_key_has_a_pass_and_a_fail_case():
    seen = {}
    for c in P.CASES:
        seen.setdefault(c.check, set()).add(c.expect)
    for check in CHECKS:
        assert {True, False} <= seen.get(check, set()), check
    for key in P.KEY_FIELDS:  # the 38 keys of the 120 tasks
        assert {True, False} <= seen.get(f"hard:{key}", set()), key
    assert len(P.KEY_FIELDS) == 38


# ------------------------------------------------------------------------- the rules that once differed


def test_2400_reads_as_2359_in_the_time_checks(case_db):
    """The official example ends days with 20:00-24:00: 24:00 is 23:59 in slots (time checks) and
    24 h in the meal rule, never a dropped activity."""
    assert clock("24:00") == 1439 and clock("24:01") is None and clock("00:00") == 0
    assert slot_minutes("20:00-24:00") == (1200, 1439) and slot_minutes("23:00-01:00") == (1380, 1500)
    assert run(case_db, "transfer_rest_to_2400_short", "rest_2400_case_acc", "visit_to_2400", "meal_to_2400",
               "meals_end_2400_counted", "overlap_2400_then_2358", "transfer_rest_to_2400_ok") == {
        "transfer_rest_to_2400_short": False, "rest_2400_case_acc": 0.0, "visit_to_2400": True,
        "meal_to_2400": True, "meals_end_2400_counted": True, "overlap_2400_then_2358": False,
        "transfer_rest_to_2400_ok": True}


def test_duplicate_names_keep_the_last_row_for_the_scorer_and_the_first_for_the_tools(case_db, tmp_path):
    assert run(case_db, "hotel_dup_last_row_wins", "hotel_dup_last_row_price", "hotel_db_name_padded",
               "attraction_dup_last_row_wins", "meal_dup_last_row_wins", "transfer_dup_location_last_row",
               "attraction_hours_dup_last_row", "visit_dup_last_row") == {
        "hotel_dup_last_row_wins": False, "hotel_dup_last_row_price": True, "hotel_db_name_padded": True,
        "attraction_dup_last_row_wins": False, "meal_dup_last_row_wins": False,
        "transfer_dup_location_last_row": True, "attraction_hours_dup_last_row": False, "visit_dup_last_row": False}
    edits = (("attractions", P.WALL, (("ticket_price", "40"),)), ("hotels", P.ORANGE, (("price", "400"),)))
    folder = P.build_db(tmp_path, "0", edits)
    db = TaskDatabase.load(folder.parent, "0")
    details = TravelTools(db).call("query_attraction_details", {"attraction_name": P.WALL})
    assert "Ticket Price：30.0 RMB" in details  # the official tool answers with the first row (.iloc[0])
    assert db.attraction_by_name[P.WALL]["ticket_price"] == "30" and db.attraction_index[P.WALL]["ticket_price"] == "40"
    assert count_duplicates(folder.parent, "0") == {"hotels": 1, "attractions": 1, "restaurants": 0, "locations": 0}


def test_numeric_string_costs_count_where_the_official_code_reads_float(case_db):
    """The cost formula, the stated total and the intercity price check read float(); the hotel,
    ticket and meal price checks want a number."""
    assert run(case_db, "budget_counts_string_costs", "cost_string_costs_counted", "cost_total_string",
               "transport_cost_string", "transport_cost_string_off", "meal_price_string", "hotel_price_string") == {
        "budget_counts_string_costs": False, "cost_string_costs_counted": True, "cost_total_string": True,
        "transport_cost_string": True, "transport_cost_string_off": False, "meal_price_string": False,
        "hotel_price_string": False}


def test_chinese_transport_modes_count_for_train_and_flight_constraints(case_db):
    assert run(case_db, "train_mode_gaotie", "train_mode_gaotie_chinese", "train_mode_huoche", "flight_mode_feiji",
               "train_mode_bus") == {"train_mode_gaotie": True, "train_mode_gaotie_chinese": True,
                                     "train_mode_huoche": True, "flight_mode_feiji": True, "train_mode_bus": False}


def test_unknown_constraint_key_is_not_scored(case_db):
    assert run(case_db, "unknown_key_not_scored", "unknown_key_leaves_the_rest", "unknown_key_leaves_the_fraction",
               "only_unknown_keys_score_0") == {"unknown_key_not_scored": None, "unknown_key_leaves_the_rest": 1.0,
                                                "unknown_key_leaves_the_fraction": 1.0, "only_unknown_keys_score_0": 0.0}


def test_task_without_hard_constraints_scores_zero(case_db):
    assert run(case_db, "no_constraints_score_0", "no_constraints_fraction_0") == {
        "no_constraints_score_0": 0.0, "no_constraints_fraction_0": 0.0}


def test_two_meal_gap_only_inside_the_meal_rules(case_db):
    assert run(case_db, "meals_gap_unchecked_without_rule", "meals_leave_late_close", "meals_arrive_early_close",
               "meals_arrive_midday_close", "meals_gap_exactly_120") == {
        "meals_gap_unchecked_without_rule": True, "meals_leave_late_close": False, "meals_arrive_early_close": False,
        "meals_arrive_midday_close": False, "meals_gap_exactly_120": True}
