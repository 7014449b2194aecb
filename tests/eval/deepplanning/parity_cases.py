"""The official DeepPlanning scoring rules as input -> verdict pairs.

Each :class:`Case` is a structured plan (the fixture's gold plan, eval.deepplanning.fixture.GOLD,
with edits), the task's meta (with edits), optionally rows added to the fixture database, the check it pins
and the verdict the official evaluation gives (QwenLM/Qwen-Agent
``benchmark/deepplanning/travelplanning/evaluation/``, commit 31a4d36: ``constraints_hard.py``,
``constraints_commonsense.py``, ``eval_converted.py``, ``utils.py``). The verdicts were derived by
reading that code; ``why`` names the rule. test_dp_parity.py checks that
:mod:`eval.deepplanning.scoring` gives every verdict.

``check`` is a commonsense check name (verdict: passed), ``hard:<key>`` (True, False, or None
when the official scorer does not score the key) or ``score:<field>`` (a task-level number:
``personalized_all``, ``personalized``, ``commonsense``, ``case_acc``).

Gold plan of task 0 (Hefei -> Nanjing, 3 people, 2 rooms, departs Wednesday): day 1 arrives at
09:00 on G7798, checks in at the Orange Hotel, visits Deji Plaza (open 10-22, 1-3 h), lunch at
Six Dynasties Pine Teahouse (11-22, 294/person), Laomendong (open all day, 1-2 h), the City Wall
(8-18, 1-3 h, ticket 30), dinner at Qinhuai Snack Hall (10-21, 60), rests at the hotel; day 2
visits Xuanwu Lake Park (6-20, 2-4 h), lunch at Jinling Noodle House, waits at the station and
leaves at 16:30 on G3031. The matrix times between consecutive places are 10-30 min.
"""
from __future__ import annotations

import copy
import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from eval.deepplanning import fixture as F

from eval.deepplanning.database import TABLES
from eval.deepplanning.plan_parser import parse_plan

Edit = Callable[[dict], None]
DbEdit = Tuple[str, Optional[str], Tuple[Tuple[str, str], ...]]  # (table, copied row's name or None: empty the table, overrides)
NAME_COL = {"hotels": "name", "attractions": "attraction_name", "restaurants": "restaurant_name",
            "locations": "poi_name"}


@dataclass(frozen=True)
class Case:
    name: str
    check: str
    expect: Any
    why: str
    text: Tuple[Tuple[str, str], ...] = ()  # replacements in the gold text, before parsing
    edit: Optional[Edit] = None  # then applied to the parsed plan
    meta: Optional[Edit] = None  # applied to a copy of the task's meta
    db: Tuple[DbEdit, ...] = ()
    task: str = "0"

    def plan(self) -> dict:
        text = F.GOLD[self.task]
        for old, new in self.text:
            if old not in text:
                raise ValueError(f"case {self.name}: {old!r} is not in the gold plan")
            text = text.replace(old, new)
        plan = copy.deepcopy(parse_plan(text).plan)
        if self.edit:
            self.edit(plan)
        return plan

    def task_meta(self) -> dict:
        meta = copy.deepcopy(F.META[self.task])
        if self.meta:
            self.meta(meta)
        return meta


def build_db(root: Path, task: str, edits: Tuple[DbEdit, ...]) -> Path:
    """The fixture database of a task with rows added (a copy of the named row with overrides,
    appended) or a table emptied; returns the folder of ``id_<task>``."""
    folder = F.build_task(task, Path(root))
    for table, name, overrides in edits:
        path, cols = folder / TABLES[table][0], TABLES[table][1]
        with open(path, encoding="utf-8", newline="") as f:
            rows = list(csv.DictReader(f))
            header = list(rows[0]) if rows else cols
        if name is None:
            rows = []
        else:
            row = dict(next(r for r in rows if r[NAME_COL[table]] == name))
            row.update(dict(overrides))
            rows.append(row)
        with open(path, "w", encoding="utf-8", newline="") as f:
            w = csv.DictWriter(f, fieldnames=header)
            w.writeheader()
            w.writerows(rows)
    return folder


# ------------------------------------------------------------------------- plan edits


def act(plan: dict, day: int, kind: str, nth: int = 0) -> dict:
    """The nth activity of a type on a day (1-based day)."""
    return [a for a in plan["daily_plans"][day - 1]["activities"] if a["type"] == kind][nth]


def slot(day: int, kind: str, value: str, nth: int = 0) -> Edit:
    return lambda p: act(p, day, kind, nth).__setitem__("time_slot", value)


def detail(day: int, kind: str, nth: int = 0, **fields) -> Edit:
    return lambda p: act(p, day, kind, nth)["details"].update(fields)


def each(kind: str, **fields) -> Edit:
    def edit(p):
        for d in p["daily_plans"]:
            for a in d["activities"]:
                if a["type"] == kind:
                    a["details"].update(fields)
    return edit


def stringify(kind: str) -> Edit:
    """Every cost of a type as a numeric string ("294"), as an LLM converter may write it."""
    def edit(p):
        for d in p["daily_plans"]:
            for a in d["activities"]:
                if a["type"] == kind:
                    a["details"]["cost"] = str(int(a["details"]["cost"]))
    return edit


def drop(day: int, kind: str, nth: int = 0) -> Edit:
    return lambda p: p["daily_plans"][day - 1]["activities"].remove(act(p, day, kind, nth))


def day_set(day: int, **fields) -> Edit:
    return lambda p: p["daily_plans"][day - 1].update(fields)


def both(*edits: Edit) -> Edit:
    def edit(p):
        for e in edits:
            e(p)
    return edit


def meta_set(**fields) -> Edit:
    return lambda m: m.update(fields)


def constraints(value: Dict[str, Any]) -> Edit:
    return lambda m: m.__setitem__("hard_constraints", value)


ORANGE = "Orange Hotel Nanjing Confucius Temple Scenic Area"
WALL = "Nanjing City Wall Taicheng Scenic Area"
REST_LINE = "19:30-20:00 | hotel | Rest, " + ORANGE
TAXI_HOME = f"19:00-19:30 | travel_city | Qinhuai Snack Hall - {ORANGE}, 7km, 30min, ¥30"
DAY2_FULL = day_set(2, current_city="Nanjing")  # day 2 as a full day in Nanjing (no travel rule)
REST_2400_SHORT = ((TAXI_HOME + "\n" + REST_LINE,  # the plan: a 10-min taxi into a Rest to 24:00
                    TAXI_HOME.replace("19:00-19:30", "19:00-19:10").replace("30min", "10min")
                    + "\n19:10-24:00 | hotel | Rest, " + ORANGE),)

# ------------------------------------------------------------------------- personalized constraints

# the 38 keys of the 120 English tasks (FORMAT.md §4) and the number fields each carries there
KEY_FIELDS = {
    **{f"restaurant_{k}": ("restaurant_name",) for k in (
        "specific_tag_nearby", "must_eat_named", "highest_rated", "cheapest_nearby_attraction",
        "specific_cuisine_nearby", "closest_to_attraction")},
    **{f"hotel_{k}": ("hotel_name",) for k in (
        "star_service_required", "cheapest_brand", "price_range", "newest_decoration", "cheapest_star",
        "star_highest_rated", "brand_highest_rated", "highest_rated")},
    **{f"attraction_{k}": ("attraction_names",) for k in (
        "type_highest_rated", "top_rated_must_visit", "must_visit_named", "all_of_type", "all_free_attractions")},
    "train_departure_time_range": ("outbound",), "train_cheapest_direct": ("outbound",),
    "train_earliest_departure_direct": ("outbound",), "train_latest_arrival_direct": ("inbound",),
    "train_seat_class": ("outbound", "inbound"), "train_cheapest_train_type": ("outbound",),
    "train_seat_status": ("outbound", "inbound"), "train_shortest_duration_direct": ("inbound",),
    "flight_cheapest_direct": ("outbound",), "flight_seat_status": ("outbound", "inbound"),
    "flight_arrival_time_range": ("inbound",), "flight_cheapest_airline_direct": ("outbound",),
    "flight_cheapest_manufacturer_direct": ("outbound",), "flight_earliest_departure_direct": ("outbound",),
    "flight_shortest_duration_direct": ("outbound",), "flight_departure_time_range": ("outbound",),
    "flight_seat_class": ("outbound", "inbound"), "flight_earliest_airline_direct": ("outbound",),
    "budget_constraint": ("max_budget",),
}
NUMBERS = {"outbound": "G7798", "inbound": "G3031"}
AS_FLIGHTS = each("travel_intercity_public", mode="flight")


def _key_data(key: str, ok: bool) -> Dict[str, Any]:
    fields = KEY_FIELDS[key]
    prefix = key.split("_", 1)[0]
    if prefix in ("train", "flight"):
        return {f"{d}_{prefix}_no": NUMBERS[d] if ok else "X999" for d in fields}
    return {"hotel_name": ORANGE if ok else "Plain Inn Nanjing",
            "restaurant_name": "Qinhuai Snack Hall" if ok else "Golden Banquet Hall",
            "attraction_names": ["Laomendong", WALL] if ok else ["Laomendong", "Nanjing Museum"],
            "max_budget": 2899.0 * (1 if ok else 0.99)}[fields[0]]


def _key_cases() -> List[Case]:
    out = []
    for key in KEY_FIELDS:
        for ok in (True, False):
            data = _key_data(key, ok)
            data = data if isinstance(data, dict) else {KEY_FIELDS[key][0]: data}
            out.append(Case(f"{key}_{'met' if ok else 'missed'}", f"hard:{key}", ok,
                            "the key's prefix picks an identity check of the named item (budget: cost <= max)",
                            edit=AS_FLIGHTS if key.startswith("flight_") else None,
                            meta=constraints({key: data})))
    return out


HARD: List[Case] = _key_cases() + [
    Case("unknown_key_not_scored", "hard:restaurantX_cheapest", None, "an unknown key gives (None, msg): not scored",
         meta=constraints({"restaurantX_cheapest": {"restaurant_name": "Qinhuai Snack Hall"}})),
    Case("unknown_key_leaves_the_rest", "score:personalized_all", 1.0, "calculate_hard_score skips None verdicts",
         meta=constraints({"unknown_thing": {}, "hotel_highest_rated": {"hotel_name": ORANGE}})),
    Case("unknown_key_leaves_the_fraction", "score:personalized", 1.0, "ours: the fraction over scored keys",
         meta=constraints({"unknown_thing": {}, "hotel_highest_rated": {"hotel_name": ORANGE}})),
    Case("no_constraints_score_0", "score:personalized_all", 0.0, "score = 1 only if total > 0 and all pass",
         meta=constraints({})),
    Case("no_constraints_fraction_0", "score:personalized", 0.0, "ours follows: nothing scored is 0",
         meta=constraints({})),
    Case("only_unknown_keys_score_0", "score:personalized_all", 0.0, "all None: total 0",
         meta=constraints({"unknown_thing": {}})),
    Case("train_mode_gaotie", "hard:train_seat_status", True, "train modes: train 火车 railway 高铁 gaotie",
         edit=each("travel_intercity_public", mode="gaotie")),
    Case("train_mode_gaotie_chinese", "hard:train_seat_status", True, "train modes include 高铁",
         edit=each("travel_intercity_public", mode="高铁")),
    Case("train_mode_huoche", "hard:train_seat_status", True, "train modes include 火车",
         edit=each("travel_intercity_public", mode="火车")),
    Case("train_mode_uppercase", "hard:train_seat_status", True, "the mode is lowercased",
         edit=each("travel_intercity_public", mode="Railway")),
    Case("train_mode_bus", "hard:train_seat_status", False, "other modes are not trains",
         edit=each("travel_intercity_public", mode="bus")),
    Case("flight_mode_feiji", "hard:flight_seat_status", True, "flight modes: flight 飞机 airplane plane",
         edit=each("travel_intercity_public", mode="飞机"),
         meta=constraints({"flight_seat_status": {"outbound_flight_no": "G7798", "inbound_flight_no": "G3031"}})),
    Case("flight_constraint_on_trains", "hard:flight_seat_status", False, "a train is not a flight",
         meta=constraints({"flight_seat_status": {"outbound_flight_no": "G7798", "inbound_flight_no": "G3031"}})),
    Case("train_number_padded", "hard:train_seat_status", False, "numbers compare unstripped",
         edit=detail(1, "travel_intercity_public", number="G7798 ")),
    Case("train_key_present_but_none", "hard:train_seat_class", False, "a present key is required, even None",
         meta=constraints({"train_seat_class": {"outbound_train_no": "G7798", "inbound_train_no": None}})),
    Case("train_no_numbers_given", "hard:train_seat_class", True, "no number fields: nothing required",
         meta=constraints({"train_seat_class": {"seat_class": "Second Class"}})),
    Case("constraint_data_none", "hard:train_seat_class", False, "an error while checking fails the key",
         meta=constraints({"train_seat_class": None})),
    Case("malformed_details_fail", "hard:train_seat_status", False, "details None: the extractor raises",
         edit=lambda p: act(p, 1, "travel_intercity_public").__setitem__("details", None)),
    Case("hotel_name_missing", "hard:hotel_highest_rated", False, "no hotel_name: fails",
         meta=constraints({"hotel_highest_rated": {"hotel_star": 3}})),
    Case("hotel_padded_in_plan", "hard:hotel_highest_rated", False, "accommodation names compare unstripped",
         edit=lambda p: [d["accommodation"].update(name=ORANGE + " ") for d in p["daily_plans"] if "accommodation" in d],
         meta=constraints({"hotel_highest_rated": {"hotel_name": ORANGE}})),
    Case("hotel_only_on_last_day", "hard:hotel_highest_rated", True, "every day's accommodation counts",
         edit=both(day_set(1, accommodation={"name": "Plain Inn Nanjing", "price_per_night": 300.0}),
                   day_set(2, accommodation={"name": ORANGE})),
         meta=constraints({"hotel_highest_rated": {"hotel_name": ORANGE}})),
    Case("restaurant_name_missing", "hard:restaurant_must_eat_named", False, "no restaurant_name: fails",
         meta=constraints({"restaurant_must_eat_named": {}})),
    Case("attraction_names_empty", "hard:attraction_must_visit_named", False, "no attraction_names: fails",
         meta=constraints({"attraction_must_visit_named": {"attraction_names": []}})),
    Case("attraction_padded_in_plan", "hard:attraction_must_visit_named", False, "names compare unstripped",
         edit=detail(1, "attraction", 2, name=WALL + " ")),
    Case("budget_at_the_limit", "hard:budget_constraint", True, "cost <= max_budget",
         meta=constraints({"budget_constraint": {"max_budget": 2899}})),
    Case("budget_as_string", "hard:budget_constraint", True, "max_budget is read with float()",
         meta=constraints({"budget_constraint": {"max_budget": "3000"}})),
    Case("budget_unreadable", "hard:budget_constraint", False, "float(max_budget) fails",
         meta=constraints({"budget_constraint": {"max_budget": "3k"}})),
    Case("budget_missing", "hard:budget_constraint", False, "no max_budget",
         meta=constraints({"budget_constraint": {}})),
    Case("budget_no_days", "hard:budget_constraint", False, "a plan without days fails",
         edit=lambda p: p.__setitem__("daily_plans", [])),
    Case("budget_counts_string_costs", "hard:budget_constraint", False,
         "cost formula: float() of numeric strings (meals '294', '60', '40' counted: 2899 > 2800)",
         edit=stringify("meal"), meta=constraints({"budget_constraint": {"max_budget": 2800}})),
    Case("budget_skips_unreadable_cost", "hard:budget_constraint", True,
         "an unreadable cost adds nothing (meals 1182 less -> 1717 <= 2000)",
         edit=each("meal", cost="¥294"), meta=constraints({"budget_constraint": {"max_budget": 2000}})),
    Case("budget_first_readable_intercity", "hard:budget_constraint", False,
         "per day, the first intercity cost that reads: a second leg at 500 counts when the first is unreadable",
         edit=both(detail(1, "travel_intercity_public", cost="n/a"),
                   lambda p: p["daily_plans"][0]["activities"].insert(1, {
                       "time_slot": "09:00-09:00", "type": "travel_intercity_public",
                       "details": {"mode": "train", "number": "G1", "from": "a", "to": "b", "cost": 500}})),
         meta=constraints({"budget_constraint": {"max_budget": 3000}})),
    Case("budget_taxis_for_five", "hard:budget_constraint", False,
         "travel_city x max(1, (P+3)//4): 5 people need 2 taxis (4312 > 4200; one taxi would be 4107)",
         meta=both(meta_set(people_number=5), constraints({"budget_constraint": {"max_budget": 4200}}))),
]

# ------------------------------------------------------------------------- commonsense

ROUTE: List[Case] = [
    Case("days_match", "valid_trip_duration", True, "len(days) == meta days > 0"),
    Case("days_extra", "valid_trip_duration", False, "one day more",
         edit=lambda p: p["daily_plans"].append(copy.deepcopy(p["daily_plans"][1]))),
    Case("days_meta_zero", "valid_trip_duration", False, "meta days 0", meta=meta_set(days=0)),
    Case("loop_closed", "closed_loop_route_structure", True, "day 1 from org, last day to org"),
    Case("loop_starts_elsewhere", "closed_loop_route_structure", False, "day 1 from another city",
         edit=day_set(1, current_city="from Shanghai to Nanjing")),
    Case("loop_ends_elsewhere", "closed_loop_route_structure", False, "last day to another city",
         edit=day_set(2, current_city="from Nanjing to Shanghai")),
    Case("loop_single_cities", "closed_loop_route_structure", True, "no 'from A to B': nothing to check",
         edit=both(day_set(1, current_city="Nanjing"), day_set(2, current_city="Nanjing"))),
    Case("loop_city_note", "closed_loop_route_structure", True, "cities lose a bracketed note",
         edit=day_set(2, current_city="from Nanjing to Hefei (Anhui)")),
    Case("route_follows", "seamless_intercity_transfers", True, "stations map to the day's cities"),
    Case("route_wrong_station", "seamless_intercity_transfers", False, "an unknown station maps to no city",
         edit=detail(2, "travel_intercity_public", to="Hefei Station")),
    Case("route_chinese_fallback", "seamless_intercity_transfers", False,
         "an unknown station maps to its first 2 Chinese characters (南京 != Nanjing)",
         edit=detail(1, "travel_intercity_public", to="南京南站")),
    Case("route_no_intercity", "seamless_intercity_transfers", False, "a travel day needs an intercity activity",
         edit=drop(2, "travel_intercity_public")),
    Case("route_city_without_travel", "seamless_intercity_transfers", False,
         "a single-city day must be where the traveller is",
         edit=day_set(1, current_city="Nanjing")),
    Case("route_leg_without_from", "seamless_intercity_transfers", False, "a leg without 'from' is skipped",
         edit=detail(1, "travel_intercity_public", **{"from": ""})),
    Case("route_no_origin", "seamless_intercity_transfers", False, "meta without org fails",
         meta=meta_set(org="")),
]

SANDBOX: List[Case] = [
    Case("hotel_known", "validated_accommodation", True, "name and rounded price match"),
    Case("hotel_price_off", "validated_accommodation", False, "441 != 400", text=(("¥441/room", "¥400/room"),)),
    Case("hotel_price_rounds", "validated_accommodation", True, "441.4 rounds to 441",
         edit=lambda p: p["daily_plans"][0]["accommodation"].update(price_per_night=441.4)),
    Case("hotel_price_string", "validated_accommodation", False, "a string price is not a number",
         edit=lambda p: p["daily_plans"][0]["accommodation"].update(price_per_night="441")),
    Case("hotel_cost_key", "validated_accommodation", True, "price, else cost, else price_per_night",
         edit=lambda p: p["daily_plans"][0]["accommodation"].update(price=None, cost=441, price_per_night=999)),
    Case("hotel_price_key", "validated_accommodation", True, "'price' is read before price_per_night",
         edit=lambda p: p["daily_plans"][0]["accommodation"].update(price=441, price_per_night=None)),
    Case("hotel_name_padded", "validated_accommodation", True, "plan names are stripped",
         edit=lambda p: p["daily_plans"][0]["accommodation"].update(name=f"  {ORANGE} ")),
    Case("hotel_unknown_activity", "validated_accommodation", False, "hotel activities of non-last days are checked",
         edit=detail(1, "hotel", 1, name="Nowhere Inn")),
    Case("hotel_unknown_last_activity", "validated_accommodation", True, "the last day's hotel activities are not",
         edit=detail(2, "hotel", name="Nowhere Inn")),
    Case("hotel_last_day_dash", "validated_accommodation", True, "'-' on the last day is skipped",
         edit=day_set(2, accommodation={"name": "-"})),
    Case("hotel_dup_last_row_wins", "validated_accommodation", False,
         "the index keeps the last row of a name: 400 now", db=(("hotels", ORANGE, (("price", "400.0"),)),)),
    Case("hotel_dup_last_row_price", "validated_accommodation", True, "the plan at the last row's price",
         text=(("¥441/room", "¥400/room"),), db=(("hotels", ORANGE, (("price", "400.0"),)),)),
    Case("hotel_db_name_padded", "validated_accommodation", True, "database names are stripped",
         text=(("¥441/room", "¥400/room"),), db=(("hotels", ORANGE, (("name", f" {ORANGE} "), ("price", "400")),),)),
    Case("hotel_db_price_blank", "validated_accommodation", True, "a blank database price is not checked",
         text=(("¥441/room", "¥1/room"),), db=(("hotels", ORANGE, (("price", ""),)),)),
    Case("hotel_table_empty", "validated_accommodation", False, "an empty hotel index fails",
         db=(("hotels", None, ()),)),
    Case("attractions_known", "validated_attractions", True, "names and tickets match"),
    Case("attraction_unknown", "validated_attractions", False, "a name not in the database",
         edit=detail(1, "attraction", name="Confucius Temple X")),
    Case("attraction_empty_name", "validated_attractions", False, "an empty name is not in the database",
         edit=detail(1, "attraction", name="")),
    Case("attraction_ticket_string", "validated_attractions", False, "a string ticket is not a number",
         edit=detail(1, "attraction", 2, cost="30")),
    Case("attraction_ticket_half_even", "validated_attractions", True, "30.5 rounds (half to even) to 30",
         edit=detail(1, "attraction", 2, cost=30.5)),
    Case("attraction_ticket_missing", "validated_attractions", False, "no cost is no number",
         edit=lambda p: act(p, 1, "attraction", 2)["details"].pop("cost")),
    Case("attraction_dup_last_row_wins", "validated_attractions", False, "the last row's ticket (40) counts",
         db=(("attractions", WALL, (("ticket_price", "40"),)),)),
    Case("attraction_db_ticket_blank", "validated_attractions", True, "a blank ticket is not checked",
         edit=detail(1, "attraction", 2, cost=999), db=(("attractions", WALL, (("ticket_price", ""),)),)),
    Case("attraction_table_empty", "validated_attractions", False, "an empty attraction index fails",
         db=(("attractions", None, ()),)),
    Case("meals_known", "validated_meals", True, "names and prices match"),
    Case("meal_unknown", "validated_meals", False, "a restaurant not in the database",
         edit=detail(1, "meal", name="Nowhere Diner")),
    Case("meal_price_string", "validated_meals", False, "a string price is not a number", edit=each("meal", cost="60")),
    Case("meal_dup_last_row_wins", "validated_meals", False, "the last row's price (70) counts",
         db=(("restaurants", "Qinhuai Snack Hall", (("price_per_person", "70"),)),)),
    Case("meal_table_empty", "validated_meals", False, "an empty restaurant index fails",
         db=(("restaurants", None, ()),)),
    Case("transport_known", "validated_transportation", True, "number known, price matches"),
    Case("transport_unknown_number", "validated_transportation", False, "number not in flights or trains",
         edit=detail(1, "travel_intercity_public", number="G1")),
    Case("transport_missing_field", "validated_transportation", False, "number, from, to, cost required",
         edit=detail(1, "travel_intercity_public", cost=None)),
    Case("transport_cost_string", "validated_transportation", True, "the intercity price check reads float(cost)",
         edit=detail(1, "travel_intercity_public", cost="90")),
    Case("transport_cost_string_off", "validated_transportation", False, "float('95') != 90",
         edit=detail(1, "travel_intercity_public", cost="95")),
    Case("transport_cost_unreadable", "validated_transportation", True, "an unreadable cost is not checked",
         edit=detail(1, "travel_intercity_public", cost="ninety")),
    Case("transport_cost_rounds", "validated_transportation", True, "89.6 rounds to 90",
         edit=detail(1, "travel_intercity_public", cost=89.6)),
]

STRUCTURE: List[Case] = [
    Case("accommodation_traced", "traceable_accommodation", True, "non-last days: hotel activity + accommodation"),
    Case("accommodation_no_activity", "traceable_accommodation", False, "day 1 without a hotel activity",
         edit=both(drop(1, "hotel", 1), drop(1, "hotel", 0))),
    Case("accommodation_no_field", "traceable_accommodation", False, "day 1 without accommodation",
         edit=lambda p: p["daily_plans"][0].pop("accommodation")),
    Case("accommodation_last_named", "traceable_accommodation", False, "the last day names a hotel",
         edit=day_set(2, accommodation={"name": ORANGE, "price_per_night": 441.0})),
    Case("accommodation_last_blank", "traceable_accommodation", True, "a blank last-day name is allowed",
         edit=day_set(2, accommodation={"name": "  "})),
    Case("accommodation_last_not_dict", "traceable_accommodation", False, "a non-dict last accommodation fails",
         edit=day_set(2, accommodation="none")),
    Case("ends_at_hotel", "ends_with_accommodation", True, "non-last days end with a hotel activity"),
    Case("ends_elsewhere", "ends_with_accommodation", False, "day 1 ends with a taxi", edit=drop(1, "hotel", 1)),
    Case("meals_ok", "essential_meal_coverage", True, "arrive 09:00 with 2 meals; leave 16:30 with 1"),
    Case("meals_arrive_early_one_meal", "essential_meal_coverage", False, "arrive < 10:00 needs 2 meals",
         edit=drop(1, "meal", 1)),
    Case("meals_arrive_early_close", "essential_meal_coverage", False, "two meals < 120 min apart",
         edit=slot(1, "meal", "15:30-16:30", 1)),
    Case("meals_gap_exactly_120", "essential_meal_coverage", True, "a gap of 120 min is enough",
         edit=slot(1, "meal", "16:00-17:00", 1)),
    Case("meals_end_2400_counted", "essential_meal_coverage", True,
         "the meal rule reads int('24')*60: a dinner to 24:00 counts", edit=slot(1, "meal", "22:00-24:00", 1)),
    Case("meals_arrive_late_two", "essential_meal_coverage", False, "arrive >= 15:00: at most 1 meal",
         edit=slot(1, "travel_intercity_public", "08:00-15:00")),
    Case("meals_arrive_midday_none", "essential_meal_coverage", False, "arrive 10-15 needs a meal",
         edit=both(slot(1, "travel_intercity_public", "08:00-11:00"), drop(1, "meal", 1), drop(1, "meal", 0))),
    Case("meals_arrive_midday_close", "essential_meal_coverage", False, "arrive 10-15 with 2 meals: gap checked",
         edit=both(slot(1, "travel_intercity_public", "08:00-11:00"), slot(1, "meal", "15:00-16:00", 1))),
    Case("meals_leave_early_meal", "essential_meal_coverage", False, "leave < 09:00: no meal",
         edit=slot(2, "travel_intercity_public", "08:30-09:30")),
    Case("meals_leave_midday_two", "essential_meal_coverage", False, "leave 09-15: at most 1 meal",
         edit=both(slot(2, "travel_intercity_public", "14:30-15:30"),
                   lambda p: p["daily_plans"][1]["activities"].append(
                       {"time_slot": "10:00-10:40", "type": "meal",
                        "details": {"meal_type": "lunch", "name": "Golden Banquet Hall", "cost": 200.0}}))),
    Case("meals_leave_late_none", "essential_meal_coverage", False, "leave >= 15:00 needs a meal",
         edit=drop(2, "meal")),
    Case("meals_leave_late_close", "essential_meal_coverage", False, "leave >= 15:00 with 2 meals: gap checked",
         edit=lambda p: p["daily_plans"][1]["activities"].append(
             {"time_slot": "14:00-14:30", "type": "meal",
              "details": {"meal_type": "dinner", "name": "Golden Banquet Hall", "cost": 200.0}})),
    Case("meals_gap_unchecked_without_rule", "essential_meal_coverage", True,
         "no departure time (unreadable slot): no leaving rule, so no gap check",
         edit=both(slot(2, "travel_intercity_public", "--"),
                   lambda p: p["daily_plans"][1]["activities"].append(
                       {"time_slot": "14:00-14:30", "type": "meal",
                        "details": {"meal_type": "dinner", "name": "Golden Banquet Hall", "cost": 200.0}}))),
    Case("meals_full_day_one", "essential_meal_coverage", False, "a full day needs 2 meals", edit=DAY2_FULL),
    Case("meals_no_origin", "essential_meal_coverage", False, "meta without org fails", meta=meta_set(org=None)),
    Case("attractions_ok", "essential_attraction_coverage", True, "arrive < 12 with attractions; leave > 16 with one"),
    Case("attractions_arrive_early_none", "essential_attraction_coverage", False, "arrive < 12:00 needs 1",
         edit=lambda p: p["daily_plans"][0].update(
             activities=[a for a in p["daily_plans"][0]["activities"] if a["type"] != "attraction"])),
    Case("attractions_leave_late_none", "essential_attraction_coverage", False, "leave > 16:00 needs 1",
         edit=drop(2, "attraction")),
    Case("attractions_leave_at_16", "essential_attraction_coverage", True, "leaving at 16:00 is not > 16",
         edit=both(drop(2, "attraction"), slot(2, "travel_intercity_public", "16:00-17:00"))),
    Case("attractions_full_day_short", "essential_attraction_coverage", False,
         "a full day: 1 attraction, 3 h + 40 min of taxis < 4 h", edit=DAY2_FULL),
    Case("attractions_full_day_4h_truncated", "essential_attraction_coverage", False,
         "3 h 20 + 2 taxis of 20 min, but float hours truncate each (199 + 19 + 19 = 237 < 240)",
         edit=both(DAY2_FULL, slot(2, "attraction", "09:20-12:40"))),
    Case("attractions_full_day_4h", "essential_attraction_coverage", True,
         "09:20-12:45 reads 204 min, + 19 + 19 = 242 >= 240", edit=both(DAY2_FULL, slot(2, "attraction", "09:20-12:45"))),
    Case("attractions_full_day_overnight", "essential_attraction_coverage", True,
         "a slot ending before it starts adds 24 h", edit=both(DAY2_FULL, slot(2, "attraction", "20:00-01:00"))),
]

TIME: List[Case] = [
    Case("no_overlap", "no_time_overlaps", True, "gapless slots"),
    Case("overlap_one_minute", "no_time_overlaps", False, "starts 1 min before the previous ends",
         edit=slot(1, "travel_city", "08:59-09:30")),
    Case("overlap_adjacent_zero", "no_time_overlaps", True, "a 0-min slot at the previous end is no overlap",
         edit=slot(1, "hotel", "09:30-09:30")),
    Case("overlap_same_start_order", "no_time_overlaps", False,
         "sorted by start only, ties in plan order: a long slot then a 0-min one at its start",
         edit=slot(1, "travel_city", "09:30-09:30", 1)),
    Case("overlap_2400_then_2359", "no_time_overlaps", True, "24:00 is 23:59: a slot from 23:59 follows it",
         edit=both(slot(1, "hotel", "19:30-24:00", 1),
                   lambda p: p["daily_plans"][0]["activities"].append(
                       {"time_slot": "23:59-23:59", "type": "buffer", "details": {"description": "sleep"}}))),
    Case("overlap_2400_then_2358", "no_time_overlaps", False, "a slot from 23:58 overlaps 19:30-24:00",
         edit=both(slot(1, "hotel", "19:30-24:00", 1),
                   lambda p: p["daily_plans"][0]["activities"].append(
                       {"time_slot": "23:58-23:59", "type": "buffer", "details": {"description": "sleep"}}))),
    Case("overlap_overnight_last", "no_time_overlaps", True, "a last slot past midnight ends the next day",
         edit=slot(1, "hotel", "19:30-07:00", 1)),
    Case("overlap_unreadable_ignored", "no_time_overlaps", True, "an unreadable slot is skipped",
         edit=slot(1, "travel_city", "25:00-26:00")),
    Case("transfer_ok", "reasonable_transfer_time", True, "each gap within the matrix time +- 5 / 10"),
    Case("transfer_slow", "reasonable_transfer_time", False, "lunch 20 min late: gap 40 for 20",
         text=(("12:40-14:00 | meal | Lunch", "13:00-14:00 | meal | Lunch"),)),
    Case("transfer_rest_to_2400_short", "reasonable_transfer_time", False,
         "a Rest to 24:00 is an anchor (23:59): a 10-min gap for a 30-min taxi fails", text=REST_2400_SHORT),
    Case("transfer_rest_to_2400_ok", "reasonable_transfer_time", True, "the official example's 20:00-24:00 Rest",
         text=((REST_LINE, "19:30-24:00 | hotel | Rest, " + ORANGE),)),
    Case("transfer_low_bound", "reasonable_transfer_time", True, "t=20: 15 min is the low end",
         edit=slot(1, "meal", "12:35-14:00")),
    Case("transfer_below_low", "reasonable_transfer_time", False, "t=20: 14 min is too fast",
         edit=slot(1, "meal", "12:34-14:00")),
    Case("transfer_high_bound", "reasonable_transfer_time", True, "t=20: 25 min is the high end",
         edit=slot(1, "meal", "12:45-14:00")),
    Case("transfer_above_high", "reasonable_transfer_time", False, "t=20: 26 min is too slow",
         edit=slot(1, "meal", "12:46-14:00")),
    Case("transfer_buffer_subtracted", "reasonable_transfer_time", True, "buffers between anchors are subtracted",
         edit=both(slot(1, "meal", "13:00-14:00"), lambda p: p["daily_plans"][0]["activities"].insert(
             7, {"time_slot": "12:40-13:00", "type": "buffer", "details": {"description": "queue"}}))),
    Case("transfer_unknown_place_skipped", "reasonable_transfer_time", True, "no coordinates: the pair is skipped",
         edit=both(slot(1, "meal", "13:30-14:00"), detail(1, "meal", name="Nowhere Diner"))),
    Case("transfer_coordinates_reformatted", "reasonable_transfer_time", True,
         "a 'lat,lon' name is reformatted by float (32.013000 -> 32.013): no matrix row, skipped",
         edit=both(slot(1, "meal", "13:30-14:00"), detail(1, "meal", name="32.013000,118.787000"))),
    Case("transfer_dup_location_last_row", "reasonable_transfer_time", True,
         "locations keep the last row: coordinates without matrix rows, so the slow pair is skipped",
         edit=slot(1, "meal", "18:30-19:00", 1),
         db=(("locations", "Qinhuai Snack Hall", (("latitude", "32.030000"),)),)),
    Case("transfer_dup_location_first_row", "reasonable_transfer_time", False,
         "control: without the duplicate the slow pair fails", edit=slot(1, "meal", "18:30-19:00", 1)),
    Case("transfer_overnight_pair", "reasonable_transfer_time", True,
         "a next anchor > 12 h 'before' the previous end is after midnight: 23:50 -> 00:20 is 30 min for 30",
         edit=both(slot(1, "meal", "18:00-23:50", 1), slot(1, "hotel", "00:20-01:00", 1))),
    Case("transfer_overnight_pair_slow", "reasonable_transfer_time", False,
         "23:50 -> 00:50 is 60 min for 30", edit=both(slot(1, "meal", "18:00-23:50", 1), slot(1, "hotel", "00:50-01:00", 1))),
]

HOURS: List[Case] = [
    Case("attraction_in_hours", "attraction_visit_within_opening_hours", True, "slots within opening hours"),
    Case("attraction_before_opening", "attraction_visit_within_opening_hours", False, "Deji opens 10:00",
         edit=slot(1, "attraction", "09:00-11:00")),
    Case("attraction_to_closing", "attraction_visit_within_opening_hours", True, "ending at closing time",
         edit=slot(1, "attraction", "20:00-22:00")),
    Case("attraction_to_2400", "attraction_visit_within_opening_hours", False, "24:00 is 23:59 > 22:00",
         edit=slot(1, "attraction", "21:00-24:00")),
    Case("attraction_all_day_2400", "attraction_visit_within_opening_hours", True, "'Open 24 Hours' is not checked",
         edit=slot(1, "attraction", "22:00-24:00", 1)),
    Case("attraction_unreadable_slot", "attraction_visit_within_opening_hours", False, "an unreadable slot fails",
         edit=slot(1, "attraction", "10:20-25:00")),
    Case("attraction_hours_missing", "attraction_visit_within_opening_hours", False,
         "no opening time in the database fails", db=(("attractions", "Nanjing Deji Plaza", (("opening_time", ""),)),)),
    Case("attraction_hours_overnight", "attraction_visit_within_opening_hours", True,
         "hours 18:00-02:00 cross midnight; a visit 23:00-01:00 fits",
         edit=slot(1, "attraction", "23:00-01:00"),
         db=(("attractions", "Nanjing Deji Plaza", (("opening_time", "18:00"), ("closing_time", "02:00"))),)),
    Case("attraction_hours_overnight_morning", "attraction_visit_within_opening_hours", True,
         "hours 18:00-02:00: a visit 00:00-01:30 is in the morning part",
         edit=slot(1, "attraction", "00:00-01:30"),
         db=(("attractions", "Nanjing Deji Plaza", (("opening_time", "18:00"), ("closing_time", "02:00"))),)),
    Case("attraction_hours_dup_last_row", "attraction_visit_within_opening_hours", False,
         "the last row's opening time (12:00) counts",
         db=(("attractions", "Nanjing Deji Plaza", (("opening_time", "12:00"),)),)),
    Case("attraction_hours_table_empty", "attraction_visit_within_opening_hours", False, "empty index fails",
         db=(("attractions", None, ()),)),
    Case("dining_in_hours", "dining_within_service_hours", True, "meals within service hours"),
    Case("dining_before_opening", "dining_within_service_hours", False, "Six Dynasties opens 11:00",
         edit=slot(1, "meal", "10:30-11:30")),
    Case("dining_midnight_slot", "dining_within_service_hours", False, "a slot crossing midnight, hours do not",
         edit=slot(1, "meal", "23:30-00:30", 1)),
    Case("dining_slot_unreadable", "dining_within_service_hours", False, "an unreadable meal slot fails",
         edit=slot(1, "meal", "lunch time")),
    Case("dining_hours_missing", "dining_within_service_hours", True, "no service hours: not checked",
         edit=slot(1, "meal", "06:00-07:00"),
         db=(("restaurants", "Six Dynasties Pine Teahouse", (("opening_time", ""),)),)),
    Case("dining_table_empty", "dining_within_service_hours", False, "empty index fails",
         db=(("restaurants", None, ()),)),
    Case("closure_ok", "avoidance_of_closure_days", True, "no attraction on its closing day"),
    Case("closure_wednesday", "avoidance_of_closure_days", False, "Nanjing Museum closes Wednesdays, day 1",
         edit=detail(1, "attraction", 1, name="Nanjing Museum")),
    Case("closure_day2_thursday", "avoidance_of_closure_days", True, "day 2 is Thursday",
         edit=detail(2, "attraction", name="Nanjing Museum")),
    Case("closure_weekday_wraps", "avoidance_of_closure_days", False, "depart Tuesday (2)... day 2 is Wednesday",
         edit=detail(2, "attraction", name="Nanjing Museum"), meta=meta_set(depart_weekday=2)),
    Case("closure_sunday_wraps", "avoidance_of_closure_days", False, "Sunday + 1 is Monday",
         edit=detail(2, "attraction", name="Nanjing Museum"), meta=meta_set(depart_weekday=7),
         db=(("attractions", "Nanjing Museum", (("closing_dates", "Monday, 周五"),)),)),
    Case("closure_no_weekday", "avoidance_of_closure_days", True, "no depart_weekday: not checked",
         edit=detail(1, "attraction", 1, name="Nanjing Museum"), meta=meta_set(depart_weekday=None)),
    Case("closure_weekday_string", "avoidance_of_closure_days", False, "'3' reads as 3",
         edit=detail(1, "attraction", 1, name="Nanjing Museum"), meta=meta_set(depart_weekday="3")),
    Case("closure_weekday_bad", "avoidance_of_closure_days", False, "an unreadable weekday fails",
         meta=meta_set(depart_weekday="Wed")),
    Case("closure_table_empty", "avoidance_of_closure_days", False, "empty index fails",
         db=(("attractions", None, ()),)),
]

DURATION: List[Case] = [
    Case("visit_lengths_ok", "reasonable_duration_at_attractions", True, "within min-max visit hours"),
    Case("visit_too_short", "reasonable_duration_at_attractions", False, "Laomendong Art Gallery needs 2 h",
         edit=detail(1, "attraction", 1, name="Laomendong Art Gallery")),
    Case("visit_too_long", "reasonable_duration_at_attractions", False, "Laomendong 1-2 h, 2 h 1 min",
         edit=slot(1, "attraction", "14:10-16:11", 1)),
    Case("visit_to_2400", "reasonable_duration_at_attractions", True, "22:00-24:00 is 119 min, within 1-2 h",
         edit=slot(1, "attraction", "22:00-24:00", 1)),
    Case("visit_overnight", "reasonable_duration_at_attractions", True, "23:00-01:00 is 2 h",
         edit=slot(1, "attraction", "23:00-01:00", 1)),
    Case("visit_from_0000", "reasonable_duration_at_attractions", True, "00:00 is a time",
         edit=slot(1, "attraction", "00:00-01:30", 1)),
    Case("visit_slot_unreadable", "reasonable_duration_at_attractions", False, "an unreadable slot fails",
         edit=slot(1, "attraction", "14:10-24:30", 1)),
    Case("visit_hours_missing", "reasonable_duration_at_attractions", False, "no min_visit_hours fails",
         db=(("attractions", "Laomendong", (("min_visit_hours", ""),)),)),
    Case("visit_dup_last_row", "reasonable_duration_at_attractions", False, "the last row's limits (2-3 h) count",
         db=(("attractions", "Laomendong", (("min_visit_hours", "2"), ("max_visit_hours", "3"))),)),
    Case("meal_lengths_ok", "reasonable_meal_duration", True, "30-150 min"),
    Case("meal_29", "reasonable_meal_duration", False, "29 min", edit=slot(1, "meal", "18:00-18:29", 1)),
    Case("meal_30", "reasonable_meal_duration", True, "30 min", edit=slot(1, "meal", "18:00-18:30", 1)),
    Case("meal_150", "reasonable_meal_duration", True, "150 min", edit=slot(1, "meal", "18:00-20:30", 1)),
    Case("meal_151", "reasonable_meal_duration", False, "151 min", edit=slot(1, "meal", "18:00-20:31", 1)),
    Case("meal_to_2400", "reasonable_meal_duration", True, "22:00-24:00 is 119 min",
         edit=slot(1, "meal", "22:00-24:00", 1)),
    Case("meal_overnight", "reasonable_meal_duration", True, "23:00-00:30 is 90 min",
         edit=slot(1, "meal", "23:00-00:30", 1)),
    Case("meal_unreadable", "reasonable_meal_duration", False, "an unreadable slot fails",
         edit=slot(1, "meal", "18:00-18:60", 1)),
    Case("meal_unnamed_unchecked", "reasonable_meal_duration", True, "a meal without a name is not timed",
         edit=both(slot(1, "meal", "18:00-18:05", 1), detail(1, "meal", 1, name=" "))),
]

COST: List[Case] = [
    Case("cost_matches", "cost_calculation_correctness", True, "stated total within 10 %"),
    Case("cost_wrong_total", "cost_calculation_correctness", False, "2000 vs 2899", text=(("¥2899", "¥2000"),)),
    Case("cost_total_string", "cost_calculation_correctness", True, "the total is read with float()",
         edit=lambda p: p["budget_summary"].update(total_estimated_budget="2899")),
    Case("cost_string_costs_counted", "cost_calculation_correctness", True,
         "numeric string costs count in the formula", edit=stringify("meal")),
    Case("cost_unreadable_costs_skipped", "cost_calculation_correctness", False,
         "costs float() cannot read add nothing (1717 vs 2899)", edit=each("meal", cost="¥294")),
    Case("cost_ten_percent", "cost_calculation_correctness", True, "|2899 - 3221| / 3221 = 9.99 %",
         edit=lambda p: p["budget_summary"].update(total_estimated_budget=3221)),
    Case("cost_over_ten_percent", "cost_calculation_correctness", False, "|2899 - 3222| / 3222 > 10 %",
         edit=lambda p: p["budget_summary"].update(total_estimated_budget=3222.1)),
    Case("cost_no_summary", "cost_calculation_correctness", False, "no budget_summary",
         edit=lambda p: p.__setitem__("budget_summary", {})),
    Case("cost_no_total", "cost_calculation_correctness", False, "no total (budget lines missing)",
         edit=lambda p: p["budget_summary"].pop("total_estimated_budget")),
    Case("cost_zero_total_zero_cost", "cost_calculation_correctness", True, "0 == 0",
         edit=lambda p: (p["budget_summary"].update(total_estimated_budget=0),
                         [a["details"].update(cost=0) for d in p["daily_plans"] for a in d["activities"] if "cost" in a["details"]],
                         p["daily_plans"][0]["accommodation"].update(price_per_night=0))),
]

DIVERSITY: List[Case] = [
    Case("meals_diverse", "diverse_meal_options", True, "no restaurant twice"),
    Case("meals_repeat", "diverse_meal_options", False, "a restaurant twice", edit=detail(2, "meal", name="Qinhuai Snack Hall")),
    Case("meals_repeat_padded", "diverse_meal_options", True, "names compare unstripped",
         edit=detail(2, "meal", name="Qinhuai Snack Hall ")),
    Case("attractions_diverse", "diverse_attraction_options", True, "no attraction twice"),
    Case("attractions_repeat", "diverse_attraction_options", False, "an attraction twice",
         edit=detail(2, "attraction", name="Laomendong")),
    Case("attractions_repeat_empty", "diverse_attraction_options", True, "empty names are not compared",
         edit=both(detail(1, "attraction", name=""), detail(2, "attraction", name=""))),
]

PLAN_LEVEL: List[Case] = [
    Case("gold_commonsense", "score:commonsense", 1.0, "the gold plan passes all 8 dimensions"),
    Case("no_days_commonsense", "score:commonsense", 0.0, "a plan without days fails every check",
         edit=lambda p: p.__setitem__("daily_plans", [])),
    Case("rest_2400_case_acc", "score:case_acc", 0.0, "the issue's plan: short taxi into a Rest to 24:00",
         text=REST_2400_SHORT),
]

CASES: List[Case] = HARD + ROUTE + SANDBOX + STRUCTURE + TIME + HOURS + DURATION + COST + DIVERSITY + PLAN_LEVEL
BY_NAME: Dict[str, Case] = {c.name: c for c in CASES}
assert len(BY_NAME) == len(CASES), "case names must be unique"
