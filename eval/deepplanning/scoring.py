"""Scorers of a structured travel plan: personalized hard constraints, commonsense, metrics.

Every verdict follows the official evaluation (``evaluation/constraints_hard.py``,
``constraints_commonsense.py``, ``eval_converted.py``, ``utils.py`` of QwenLM/Qwen-Agent,
FORMAT.md §4-6), rule by rule, so that Table 7's numbers compare with the paper's;
``tests/eval/deepplanning/parity_cases.py`` pins each rule as input -> verdict pairs derived
from that code.

- **Personalized** (hard) constraints: the key's prefix picks the check and only the identity of
  the chosen item is tested, by exact string: ``flight_``/``train_`` (each ``outbound_``/
  ``inbound_`` number the constraint has is among the plan's intercity numbers of that mode; the
  modes include the official Chinese words), ``hotel_`` (``hotel_name`` among the
  accommodations), ``restaurant_`` (among the meal names), ``attraction_`` (all
  ``attraction_names`` among the attractions), ``budget_constraint`` (:func:`plan_cost` <=
  ``max_budget``). An unknown key is **not scored** (verdict ``None``); a check that raises on a
  malformed plan fails. Official per-task score: 1 only if at least one constraint was scored and
  all passed (so a task without constraints scores 0). Table 7's metric (ours): the fraction of
  the scored constraints passed (0 when none was scored).
- **Commonsense**: 8 dimensions of named checks; a dimension scores 1 only when all its checks
  pass; commonsense = mean over the 8. A plan without days fails every check.
- composite = (commonsense + official personalized) / 2; case_acc = 1 only if both are 1.

Official details kept on purpose (each pinned by a parity case):

- Two clock readers, as officially. Slots for overlaps, transfers, hours and durations:
  ``HH:MM-HH:MM`` with hours 0-23, and ``24:00`` read as 23:59; an end before the start is on the
  next day. The meal and sightseeing rules read ``int(h), int(m)`` with no range check, so there
  ``24:00`` is 24 h (1440 min) and the two-meal gap has no overnight wrap.
- Costs: the cost formula takes any value ``float()`` accepts, numeric strings included; the
  database price checks want a number (a string price is a mismatch), except the intercity price
  check, which also takes numeric strings.
- The two-meals-120-minutes-apart rule is checked only where the official meal rules check it:
  full days, arrivals before 15:00 with two meals, departures after 15:00 with two meals.
- Database names: stripped, and the last row of a repeated name wins (see
  :mod:`eval.deepplanning.database`); an empty hotel, attraction or restaurant table fails every
  check that reads it. Plan names are stripped for the database checks but compared verbatim by
  the hard constraints and the diversity checks.
- Official quirks followed for comparability: the sightseeing rule truncates float hours to whole
  minutes (09:20-12:40 reads 199 min); a coordinate written as a place name is reformatted by
  ``float`` before the matrix lookup (``32.013000`` -> ``32.013``), so it rarely matches and the
  pair is skipped; overlaps are found after a sort on start times only (ties keep the plan's order).

Differences that remain: activity ``start_time``/``end_time`` keys (never written by the
parser or the official converter's schema) are not read; a task whose database cannot be loaded
is an error here (officially every database check fails); a non-finite intercity cost fails the
price check here, where it stops the official evaluation of the plan.

Every check returns ``(passed, reason)``; reasons name what failed.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from eval.deepplanning.database import Row, TaskDatabase

Check = Tuple[Optional[bool], Optional[str]]  # None: not scored (an unknown constraint key)
FLIGHT_MODES = ("flight", "飞机", "airplane", "plane")
TRAIN_MODES = ("train", "火车", "railway", "高铁", "gaotie")
ALL_DAY = ("全天开放", "Open 24 Hours")

# ------------------------------------------------------------------------- small readers


def _float(value) -> Optional[float]:
    """``float(value)`` or None: the official cost reader (numbers and numeric strings)."""
    try:
        return float(value)
    except Exception:
        return None


def _is_number(value) -> bool:
    """The official price checks' test: an int or float (a numeric string is not)."""
    return isinstance(value, (int, float))


def _days(plan: dict) -> List[dict]:
    return plan.get("daily_plans", []) or []


def _day_acts(day: dict) -> List[dict]:
    return day.get("activities", []) or []


def _acts(days: Sequence[dict], kind: str) -> Iterable[Tuple[int, dict, dict, str]]:
    """(day index, activity, details, stripped name) of each activity of a type."""
    for i, day in enumerate(days):
        for act in _day_acts(day):
            if act.get("type") == kind:
                d = act.get("details") or {}
                yield i, act, d, (d.get("name") or "").strip()


def _fail(items: List[str], what: str) -> Check:
    return (False, f"{what}: {'; '.join(items)}") if items else (True, None)


# ------------------------------------------------------------------------- time readers


def clock(text) -> Optional[int]:
    """Minutes after midnight of ``H:MM``/``HH:MM`` (hours 0-23, minutes 0-59); ``24:00`` is
    23:59 (1439), as the official ``parse_time_hhmm``; anything else is None."""
    if not isinstance(text, str) or not text:
        return None
    text = text.strip()
    if text == "24:00":
        return 23 * 60 + 59
    m = re.fullmatch(r"(\d{1,2}):(\d{1,2})", text)
    if not m or int(m.group(1)) > 23 or int(m.group(2)) > 59:
        return None
    return int(m.group(1)) * 60 + int(m.group(2))


def slot_clocks(slot) -> Tuple[Optional[int], Optional[int]]:
    """(start, end) of ``"HH:MM-HH:MM"`` as read by :func:`clock`, no day wrap; text after the
    slot is ignored (the official pattern matches a prefix)."""
    m = re.match(r"\s*(\d{1,2}:\d{2})\s*-\s*(\d{1,2}:\d{2})\s*", slot) if isinstance(slot, str) else None
    return (clock(m.group(1)), clock(m.group(2))) if m else (None, None)


def slot_minutes(slot) -> Tuple[Optional[int], Optional[int]]:
    """(start, end) minutes of a slot; an end before the start is on the next day (+1440)."""
    s, e = slot_clocks(slot)
    if s is None or e is None:
        return None, None
    return s, e + 1440 if e < s else e


def within_hours(s: int, e: int, open_t: int, close_t: int) -> bool:
    """The official business-hours test on clock minutes, hours that may cross midnight."""
    slot_wraps = e < s
    if open_t <= close_t:
        return not slot_wraps and open_t <= s and e <= close_t
    if slot_wraps:
        return s >= open_t and e <= close_t
    return (s >= open_t and e >= open_t) or (s <= close_t and e <= close_t)


def _hm(text) -> Optional[Tuple[int, int]]:
    """The meal and sightseeing rules' reader: ``int`` of the two parts of ``H:M``, no range
    check (``24:00`` is (24, 0)); None if that fails."""
    try:
        h, m = map(int, text.split(":"))
        return h, m
    except Exception:
        return None


def _slot_part(act: dict, end: bool) -> Optional[str]:
    slot = act.get("time_slot", "")
    if slot and "-" in slot:
        parts = slot.split("-")
        return parts[1] if end else parts[0]
    return None


def _intercity_hour(day: dict, end: bool) -> Optional[float]:
    """Departure (end=False) or arrival hour of the day's first intercity activity whose time
    reads (official ``get_intercity_departure_time`` / ``_arrival_time``)."""
    for act in _day_acts(day):
        if act.get("type") == "travel_intercity_public":
            hm = _hm(_slot_part(act, end) or "")
            if hm is not None:
                return hm[0] + hm[1] / 60.0
    return None


def from_to(text) -> Tuple[Optional[str], Optional[str]]:
    if not isinstance(text, str):
        return None, None
    m = re.search(r"from\s+(.+?)\s+to\s+([^,]+)(?=[,\s]|$)", text)
    return (m.group(1).strip(), m.group(2).strip()) if m else (None, None)


def norm_city(text: Optional[str]) -> Optional[str]:
    return None if text is None else re.sub(r"[（(].*?[)）]", "", text).strip()


# ------------------------------------------------------------------------- cost


def plan_cost(plan: dict, people: int, rooms: int) -> Dict[str, float]:
    """The official cost formula (P people, R rooms): per day the first intercity activity whose
    cost reads, x P (only if > 0); each non-last day's hotel price (``price``, else
    ``price_per_night``, else ``cost``) x R; meals and tickets x P; each travel_city cost x
    max(1, ceil(P / 4)) taxis. A cost is anything ``float()`` reads; a 0 or unreadable one adds
    nothing."""
    days = _days(plan)
    taxis = max(1, (people + 3) // 4)
    parts = {"transportation": 0.0, "accommodation": 0.0, "meals": 0.0, "attractions": 0.0}
    for day in days:
        first = None
        for act in _day_acts(day):
            if act.get("type") == "travel_intercity_public" and first is None:
                first = _float((act.get("details") or {}).get("cost", 0))
        if first is not None and first > 0:
            parts["transportation"] += first * people
    for day in days[:-1]:
        acc = day.get("accommodation")
        if isinstance(acc, dict):
            price = acc.get("price") or acc.get("price_per_night") or acc.get("cost")
            if price and _float(price) is not None:
                parts["accommodation"] += _float(price) * rooms
    for kind, key, mult in (("meal", "meals", people), ("attraction", "attractions", people),
                            ("travel_city", "transportation", taxis)):
        for _, _, d, _ in _acts(days, kind):
            cost = d.get("cost")
            if cost and _float(cost) is not None:
                parts[key] += _float(cost) * mult
    parts["total"] = parts["transportation"] + parts["accommodation"] + parts["meals"] + parts["attractions"]
    return parts


# ------------------------------------------------------------------------- personalized


def _plan_items(plan: dict, kind: str) -> Iterable[dict]:
    """The details of a type's activities, read as strictly as the official extractors (a
    malformed plan raises, which fails the constraint)."""
    for day in plan["daily_plans"] if "daily_plans" in plan else []:
        if "activities" in day:
            for act in day["activities"]:
                if act.get("type") == kind:
                    yield act.get("details", {})


def _check_numbers(data: dict, plan: dict, prefix: str) -> Check:
    modes = FLIGHT_MODES if prefix == "flight" else TRAIN_MODES
    have = {d.get("number", "") for d in _plan_items(plan, "travel_intercity_public")
            if d.get("mode", "").lower() in modes}
    for direction in ("outbound", "inbound"):
        key = f"{direction}_{prefix}_no"
        if key in data and data[key] not in have:
            plan_has = sorted(map(str, have)) or "none"
            return False, f"{direction} {prefix} {data[key]} not in the plan (plan has {plan_has})"
    return True, None


def _check_hotel(data: dict, plan: dict) -> Check:
    want = data.get("hotel_name")
    if not want:
        return False, "constraint names no hotel"
    have = {day["accommodation"].get("name", "") for day in plan["daily_plans"] if day.get("accommodation")} \
        if "daily_plans" in plan else set()
    return (True, None) if want in have else (False, f"hotel {want!r} not among {sorted(map(str, have))}")


def _check_named(data: dict, plan: dict, field_name: str, kind: str) -> Check:
    want = data.get(field_name)
    if not want:
        return False, f"constraint names no {kind}"
    want = [want] if field_name == "restaurant_name" else want
    have = {d.get("name", "") for d in _plan_items(plan, "meal" if kind == "restaurant" else kind)}
    missing = [w for w in want if w not in have]
    return (True, None) if not missing else (False, f"{kind}(s) {missing} not in the plan")


def _check_budget(data: dict, plan: dict, meta: dict) -> Check:
    limit = data.get("max_budget")
    if limit is None or _float(limit) is None:
        return False, f"bad max_budget {limit!r}"
    if not plan.get("daily_plans", []):
        return False, "plan has no days"
    cost = plan_cost(plan, int(meta.get("people_number", 1)), int(meta.get("room_number", 1)))["total"]
    return (True, None) if cost <= float(limit) else (False, f"cost {cost:.2f} exceeds the budget {float(limit):.2f}")


def check_hard(key: str, data, plan: dict, meta: dict) -> Check:
    """One personalized constraint, dispatched on the key's prefix like the official scorer: an
    unknown key is not scored (None), an error while checking fails it."""
    try:
        if key.startswith("flight_"):
            return _check_numbers(data, plan, "flight")
        if key.startswith("train_"):
            return _check_numbers(data, plan, "train")
        if key.startswith("hotel_"):
            return _check_hotel(data, plan)
        if key.startswith("restaurant_"):
            return _check_named(data, plan, "restaurant_name", "restaurant")
        if key.startswith("attraction_"):
            return _check_named(data, plan, "attraction_names", "attraction")
        if key == "budget_constraint":
            return _check_budget(data, plan, meta)
        return None, f"unknown constraint type {key!r} (not scored)"
    except Exception as e:  # a malformed plan or constraint: the official scorer fails it
        return False, f"evaluation error: {type(e).__name__}: {e}"


@dataclass
class HardResult:
    results: Dict[str, Check]

    @property
    def scored(self) -> List[bool]:
        return [ok for ok, _ in self.results.values() if ok is not None]

    @property
    def fraction(self) -> float:
        """Table 7's metric: fraction of the scored constraints passed; 0 when none was scored."""
        return sum(self.scored) / len(self.scored) if self.scored else 0.0

    @property
    def all_passed(self) -> float:
        """The official 0/1: at least one scored constraint, and all passed."""
        return float(bool(self.scored) and all(self.scored))

    @property
    def failures(self) -> Dict[str, str]:
        return {k: r or "failed" for k, (ok, r) in self.results.items() if ok is False}


def score_hard(plan: dict, meta: dict) -> HardResult:
    """Every key of ``meta["hard_constraints"]`` (a ``budget_constraint`` outside it is not scored,
    as officially: en task 79)."""
    return HardResult({k: check_hard(k, v, plan, meta) for k, v in (meta.get("hard_constraints") or {}).items()})


# ------------------------------------------------------------------------- commonsense: route


def check_days(plan: dict, meta: dict, db: TaskDatabase) -> Check:
    want, have = int(meta.get("days") or 0), len(_days(plan))
    return (True, None) if want > 0 and have == want else (False, f"plan has {have} days, the trip {want}")


def check_closed_loop(plan: dict, meta: dict, db: TaskDatabase) -> Check:
    org, days = norm_city(meta.get("org")), _days(plan)
    start, _ = from_to(days[0].get("current_city", "")) if days else (None, None)
    _, end = from_to(days[-1].get("current_city", "")) if days else (None, None)
    if start and norm_city(start) != org:
        return False, f"day 1 departs from {start}, not {org}"
    if end and norm_city(end) != org:
        return False, f"the last day ends in {end}, not {org}"
    return True, None


def _station_city(db: TaskDatabase, station: str) -> Optional[str]:
    if not station:
        return None
    if station in db.station_city:
        return norm_city(db.station_city[station])
    m = re.match(r"^([\u4e00-\u9fa5]{2})", station)  # official fallback: first 2 Chinese characters
    return m.group(1) if m else None


def _leg_joins(db: TaskDatabase, details: dict, a: str, b: str) -> bool:
    """Both stations of an intercity leg map to cities, and those are a and b."""
    start, end = (details.get("from") or "").strip(), (details.get("to") or "").strip()
    city_a, city_b = (_station_city(db, start), _station_city(db, end)) if start and end else (None, None)
    return bool(city_a and city_b) and norm_city(city_a) == a and norm_city(city_b) == b


def check_intercity_route(plan: dict, meta: dict, db: TaskDatabase) -> Check:
    """Follow the traveller from the origin: each 'from A to B' day starts where the previous
    ended and has an intercity activity whose stations are in A and B; other days stay put."""
    here, bad = norm_city(meta.get("org")), []
    if not here:
        return False, "no origin city in the task"
    for n, day in enumerate(_days(plan), 1):
        a, b = from_to(day.get("current_city", ""))
        if a and b:
            if norm_city(a) != here:
                bad.append(f"day {n} leaves {a} but the traveller is in {here}")
            legs = [act.get("details") or {} for act in _day_acts(day)
                    if act.get("type") == "travel_intercity_public"]
            if not legs:
                bad.append(f"day {n} ({a} -> {b}) has no intercity activity")
            elif not any(_leg_joins(db, d, norm_city(a), norm_city(b)) for d in legs):
                bad.append(f"day {n} ({a} -> {b}) has no intercity activity between stations of those cities")
            here = norm_city(b)
        elif not norm_city(day.get("current_city", "")):
            bad.append(f"day {n} has no current city")
        elif norm_city(day.get("current_city", "")) != here:
            bad.append(f"day {n} is in {day.get('current_city')!r} but the traveller is in {here}")
    return _fail(bad, "route")


# ------------------------------------------------------------------------- commonsense: sandbox


def _price_problem(plan_value, db_value: Optional[str]) -> Optional[str]:
    """The official price rule: unchecked when the database price is blank or unreadable; else the
    plan's price must be a number that rounds to the same integer."""
    if not db_value:
        return None
    try:
        want = int(round(float(str(db_value))))
        if not _is_number(plan_value):
            return f"database {want}, plan has no numeric price ({plan_value!r})"
        return None if int(round(float(plan_value))) == want else f"database {want}, plan {plan_value}"
    except Exception:
        return None


def check_hotels_known(plan: dict, meta: dict, db: TaskDatabase) -> Check:
    if not db.hotel_index:
        return False, "the task's hotel table is empty"
    bad, days = [], _days(plan)
    for idx, day in enumerate(days):
        acc = day.get("accommodation")
        if not isinstance(acc, dict):
            continue
        name = (acc.get("name") or "").strip()
        if not name or (idx == len(days) - 1 and name == "-"):
            continue
        if name not in db.hotel_index:
            bad.append(f"hotel {name!r} is not in the database")
            continue
        problem = _price_problem(acc.get("price") or acc.get("cost") or acc.get("price_per_night"),
                                 db.hotel_index[name]["price"])
        if problem:
            bad.append(f"hotel {name!r}: {problem}")
    for i, _, _, name in _acts(days[:-1], "hotel"):
        if name and name not in db.hotel_index:
            bad.append(f"hotel {name!r} (day {i + 1}) is not in the database")
    return _fail(bad, "hotels")


def _check_listed(plan: dict, kind: str, index: Dict[str, Row], price_col: str, what: str) -> Check:
    if not index:
        return False, f"the task's {what} table is empty"
    bad = []
    for i, _, d, name in _acts(_days(plan), kind):
        if name not in index:  # an empty name is never in the index
            bad.append(f"{what} {name or '<empty>'!r} (day {i + 1}) is not in the database")
            continue
        problem = _price_problem(d.get("cost"), index[name][price_col])
        if problem:
            bad.append(f"{what} {name!r}: {problem}")
    return _fail(bad, what + "s")


def check_attractions_known(plan: dict, meta: dict, db: TaskDatabase) -> Check:
    return _check_listed(plan, "attraction", db.attraction_index, "ticket_price", "attraction")


def check_restaurants_known(plan: dict, meta: dict, db: TaskDatabase) -> Check:
    return _check_listed(plan, "meal", db.restaurant_index, "price_per_person", "restaurant")


def check_transport_known(plan: dict, meta: dict, db: TaskDatabase) -> Check:
    """Number, from, to and cost present; the number in flights (looked up first) or trains; a cost
    that ``float()`` reads must round to one of that number's prices."""
    bad = []
    for i, act, d, _ in _acts(_days(plan), "travel_intercity_public"):
        missing = [k for k in ("number", "from", "to", "cost") if d.get(k) in (None, "")]
        if missing:
            bad.append(f"day {i + 1} {act.get('time_slot') or '<no time_slot>'}: missing {missing}")
            continue
        number, cost = str(d["number"]).strip(), _float(d["cost"])
        rows = db.numbers["flights"].get(number) or db.numbers["trains"].get(number)
        if rows is None:
            bad.append(f"{number} is not in the database")
        elif cost is not None:
            prices = [p for p in (_float(r["price"]) for r in rows) if p is not None]
            try:
                matched = any(int(round(cost)) == int(round(p)) for p in prices)
            except (OverflowError, ValueError):  # inf / nan: officially the whole evaluation stops
                matched = False
            if prices and not matched:
                bad.append(f"{number} costs {sorted(set(prices))}, plan says {d['cost']}")
    return _fail(bad, "intercity transport")


# ------------------------------------------------------------------------- commonsense: structure


def check_accommodation_every_night(plan: dict, meta: dict, db: TaskDatabase) -> Check:
    days, bad = _days(plan), []
    for n, day in enumerate(days[:-1], 1):
        has_hotel = any(a.get("type") == "hotel" for a in _day_acts(day))
        if not (has_hotel and day.get("accommodation")):
            bad.append(f"day {n} lacks an accommodation or a hotel activity")
    last = days[-1].get("accommodation") if days else None
    if last and not isinstance(last, dict):
        bad.append(f"the last day has accommodation {last!r} (expected '-' or none)")
    elif last and (last.get("name") or "").strip() not in ("", "-"):
        bad.append(f"the last day has accommodation {last.get('name')!r} (expected '-' or none)")
    return _fail(bad, "accommodation")


def check_days_end_at_hotel(plan: dict, meta: dict, db: TaskDatabase) -> Check:
    bad = [f"day {n}" for n, day in enumerate(_days(plan)[:-1], 1)
           if not _day_acts(day) or _day_acts(day)[-1].get("type") != "hotel"]
    return _fail(bad, "last activity is not the hotel on")


def _meal_times(day: dict) -> List[Tuple[int, int]]:
    """(start, end) minutes of the day's meals as the meal rule reads them (``int`` parts, no range
    check, no overnight wrap), sorted by start."""
    out = []
    for act in _day_acts(day):
        if act.get("type") == "meal":
            s, e = _hm(_slot_part(act, False) or ""), _hm(_slot_part(act, True) or "")
            if s is not None and e is not None:
                out.append((s[0] * 60 + s[1], e[0] * 60 + e[1]))
    return sorted(out, key=lambda t: t[0])


def _gap(meals: List[Tuple[int, int]]) -> List[str]:
    gap = meals[1][0] - meals[0][1]
    return [f"lunch and dinner only {gap} min apart (< 120)"] if gap < 120 else []


def _leaving_meals(meals: List[Tuple[int, int]], hour: float) -> List[str]:
    n = len(meals)
    if hour < 9:
        return [f"leaves before 09:00 but has {n} meal(s)"] if n else []
    if hour < 15:
        return [f"leaves 09:00-15:00 but has {n} meals"] if n > 1 else []
    return (["leaves after 15:00 but has no meal"] if not n else []) + (_gap(meals) if n > 1 else [])


def _arriving_meals(meals: List[Tuple[int, int]], hour: float) -> List[str]:
    n = len(meals)
    if hour < 10:
        return [f"arrives before 10:00 but has {n} meal(s) (needs 2)"] if n < 2 else _gap(meals)
    if hour < 15:
        return (["arrives 10:00-15:00 but has no meal"] if not n else []) + (_gap(meals) if n >= 2 else [])
    return [f"arrives after 15:00 but has {n} meals"] if n > 1 else []


def _travel_days(plan: dict, org: str):
    """(day number, day, leaving hour or None, arriving hour or None, is travel day), following the
    traveller: only leaving the city the traveller is in, if not the origin, and arriving in a
    non-origin city count."""
    here = org
    for n, day in enumerate(_days(plan), 1):
        a, b = from_to(day.get("current_city", ""))
        if not (a and b):
            yield n, day, None, None, False
            continue
        a, b = norm_city(a), norm_city(b)
        leaving = _intercity_hour(day, end=False) if a == here and a != org else None
        arriving = _intercity_hour(day, end=True) if b != org else None
        here = b
        yield n, day, leaving, arriving, True


def check_meals_needed(plan: dict, meta: dict, db: TaskDatabase) -> Check:
    """Full days: 2 meals, 120 min apart. Travel days, from the first intercity departure /
    arrival hour: leaving <9 none, <15 at most 1, else at least 1; arriving <10 two, <15 at least
    1, else at most 1; the gap rule where two meals are allowed (see the module docstring)."""
    org = norm_city(meta.get("org"))
    if not org:
        return False, "no origin city in the task"
    bad = []
    for n, day, leaving, arriving, travel in _travel_days(plan, org):
        meals = _meal_times(day)
        if not travel:
            problems = ([f"a full day needs lunch and dinner, has {len(meals)} meal(s)"] if len(meals) < 2
                        else _gap(meals))
        else:
            problems = (_leaving_meals(meals, leaving) if leaving is not None else []) + \
                       (_arriving_meals(meals, arriving) if arriving is not None else [])
        bad += [f"day {n}: {p}" for p in problems]
    return _fail(bad, "meals")


def _duration_minutes(act: dict) -> int:
    """The sightseeing rule's activity length: hours from ``int`` parts, +24 h when negative,
    truncated to whole minutes (0 when unreadable)."""
    s, e = _hm(_slot_part(act, False) or ""), _hm(_slot_part(act, True) or "")
    if s is None or e is None:
        return 0
    hours = (e[0] + e[1] / 60.0) - (s[0] + s[1] / 60.0)
    return int((hours + 24 if hours < 0 else hours) * 60)


def _attraction_minutes(day: dict) -> int:
    """Minutes at attractions plus travel_city legs from or to one of the day's attractions."""
    names = {name for _, _, _, name in _acts([day], "attraction") if name}
    total = 0
    for a in _day_acts(day):
        d = a.get("details") or {}
        if a.get("type") == "attraction" or (a.get("type") == "travel_city" and (
                (d.get("from") or "").strip() in names or (d.get("to") or "").strip() in names)):
            total += _duration_minutes(a)
    return total


def check_attractions_needed(plan: dict, meta: dict, db: TaskDatabase) -> Check:
    """A full day: 2 attractions or 4 h of sightseeing; leaving after 16:00 or arriving before
    12:00: at least 1."""
    org = norm_city(meta.get("org"))
    if not org:
        return False, "no origin city in the task"
    bad = []
    for n, day, leaving, arriving, travel in _travel_days(plan, org):
        count = sum(1 for a in _day_acts(day) if a.get("type") == "attraction")
        if not travel and _attraction_minutes(day) / 60.0 < 4.0 and count < 2:
            bad.append(f"day {n}: a full day needs 2 attractions or 4 h of sightseeing")
        if leaving is not None and leaving > 16.0 and count < 1:
            bad.append(f"day {n}: leaves after 16:00 without an attraction")
        if arriving is not None and arriving < 12.0 and count < 1:
            bad.append(f"day {n}: arrives before 12:00 without an attraction")
    return _fail(bad, "attractions")


# ------------------------------------------------------------------------- commonsense: time


def check_no_overlap(plan: dict, meta: dict, db: TaskDatabase) -> Check:
    """Activities sorted by start (ties keep the plan's order); each must start no earlier than
    the previous one ends."""
    bad = []
    for n, day in enumerate(_days(plan), 1):
        spans = [(s, e, a.get("type") or "") for a in _day_acts(day) if a.get("time_slot")
                 for s, e in [slot_minutes(a.get("time_slot"))] if s is not None]
        spans.sort(key=lambda t: t[0])
        bad += [f"day {n}: {p[2]} and {c[2]} overlap" for p, c in zip(spans, spans[1:]) if c[0] < p[1]]
    return _fail(bad, "time overlaps")


ANCHORS = ("hotel", "attraction", "meal", "travel_intercity_public")


def _anchor_place(act: dict, arriving: bool) -> str:
    """Where an anchor is: an intercity leg's arrival (``to``) or departure (``from``) station,
    else the name; the type when the field is empty (as officially)."""
    d = act.get("details") or {}
    key = ("to" if arriving else "from") if act.get("type") == "travel_intercity_public" else "name"
    return (d.get(key) or act.get("type") or "").strip()


def _coords(db: TaskDatabase, name: str) -> Optional[str]:
    """The matrix key of a place: its locations row (both coordinates must read as numbers), else
    the name itself read as ``lat,lon`` and reformatted by ``float`` (as officially)."""
    row = db.location_index.get(name)
    if row is not None:
        lat, lon = row["latitude"].strip(), row["longitude"].strip()
        if lat and lon and _float(lat) is not None and _float(lon) is not None:
            return f"{lat},{lon}"
    m = re.match(r"\s*([\-0-9\.]+)\s*,\s*([\-0-9\.]+)\s*$", name)
    if m and _float(m.group(1)) is not None and _float(m.group(2)) is not None:
        return f"{float(m.group(1))},{float(m.group(2))}"
    return None


def _buffer_minutes(day: dict, prev_end: int, cur_start: int) -> int:
    """Buffer minutes between two anchors, with the official day-crossing adjustments: a buffer
    starting before the previous anchor ends is moved to the next day, and so is the next anchor
    when it starts before the previous one ends."""
    total = 0
    for act in _day_acts(day):
        if (act.get("type") or "").strip() != "buffer":
            continue
        s, e = slot_minutes(act.get("time_slot"))
        if s is None:
            continue
        if s < prev_end:
            s, e = s + 1440, e + 1440
        if cur_start < prev_end:
            cur_start += 1440
        if prev_end <= s and e <= cur_start:
            total += e - s
    return total


def _matrix_minutes(db: TaskDatabase, a: str, b: str) -> Optional[float]:
    ca, cb = _coords(db, a), _coords(db, b)
    row = db.matrix.get((ca, cb)) if ca and cb else None
    return _float(row["duration_minutes"]) if row is not None else None


def check_transfer_times(plan: dict, meta: dict, db: TaskDatabase) -> Check:
    """Between consecutive anchors, the gap minus buffers must be near the matrix's taxi time t:
    [min(max(0, t-5), floor(t/10)*10), max(t+5, ceil(t/10)*10)]. Pairs without coordinates or a
    matrix row are skipped (as officially)."""
    bad = []
    for n, day in enumerate(_days(plan), 1):
        anchors = [(s, e, a) for a in _day_acts(day) if a.get("type") in ANCHORS
                   for s, e in [slot_minutes(a.get("time_slot"))] if s is not None]
        for (_, pe, pa), (cs, _, ca) in zip(anchors, anchors[1:]):
            gap = cs - pe
            if pe > cs and pe - cs > 720:
                gap += 1440  # the next anchor is after midnight
            if gap < 0:
                continue  # an overlap: check_no_overlap's business
            a, b = _anchor_place(pa, True), _anchor_place(ca, False)
            if not a or not b or a == b:
                continue
            t = _matrix_minutes(db, a, b)
            if t is None:
                continue
            lo, hi = min(max(0.0, t - 5), (t // 10) * 10), max(t + 5, math.ceil(t / 10) * 10)
            net = gap - _buffer_minutes(day, pe, cs)
            if not lo <= net <= hi:
                bad.append(f"day {n}: {a} -> {b} takes {t:.0f} min, the plan leaves {net} min "
                           f"(allowed {lo:.0f}-{hi:.0f})")
    return _fail(bad, "transfer times")


# ------------------------------------------------------------------------- commonsense: hours


def _visits(plan: dict, kind: str, index: dict):
    """``(name, time slot text, table row)`` of each ``kind`` activity whose name the table has
    (an unknown name is the validated_* check's business)."""
    for _, act, _, name in _acts(_days(plan), kind):
        row = index.get(name) if name else None
        if row is not None:
            yield name, act.get("time_slot"), row


def check_attraction_hours(plan: dict, meta: dict, db: TaskDatabase) -> Check:
    if not db.attraction_index:
        return False, "the task's attraction table is empty"
    bad = []
    for name, slot, row in _visits(plan, "attraction", db.attraction_index):
        o, c = row["opening_time"].strip(), row["closing_time"].strip()
        if o in ALL_DAY and c in ALL_DAY:
            continue
        (s, e), ot, ct = slot_clocks(slot), clock(o), clock(c)
        if None in (s, e, ot, ct):
            bad.append(f"{name}: no usable opening hours or slot")
        elif not within_hours(s, e, ot, ct):
            bad.append(f"{name} at {slot} outside {o}-{c}")
    return _fail(bad, "attraction hours")


def check_restaurant_hours(plan: dict, meta: dict, db: TaskDatabase) -> Check:
    if not db.restaurant_index:
        return False, "the task's restaurant table is empty"
    bad = []
    for name, slot, row in _visits(plan, "meal", db.restaurant_index):
        (s, e), ot, ct = slot_clocks(slot), clock(row["opening_time"]), clock(row["closing_time"])
        if s is None or e is None:
            bad.append(f"{name}: no usable time slot")
        elif ot is not None and ct is not None and not within_hours(s, e, ot, ct):
            bad.append(f"{name} at {slot} outside {row['opening_time']}-{row['closing_time']}")
    return _fail(bad, "restaurant hours")


WEEKDAYS = {"monday": 1, "tuesday": 2, "wednesday": 3, "thursday": 4, "friday": 5, "saturday": 6,
            "sunday": 7, "周一": 1, "周二": 2, "周三": 3, "周四": 4, "周五": 5, "周六": 6, "周日": 7}


def _closed_days(text) -> set:
    return {WEEKDAYS[p.strip().lower()] for p in (text if isinstance(text, str) else "").split(",")
            if p.strip().lower() in WEEKDAYS}


def _weekday(depart_weekday: int, day_index: int) -> int:
    """1 = Monday; wraps past Sunday (the official loop subtracts 7 while above 7)."""
    day = depart_weekday + day_index
    while day > 7:
        day -= 7
    return day


def check_closed_days(plan: dict, meta: dict, db: TaskDatabase) -> Check:
    if not db.attraction_index:
        return False, "the task's attraction table is empty"
    start = meta.get("depart_weekday")
    if not start:
        return True, None
    try:
        start = int(start)
    except (TypeError, ValueError):
        return False, f"bad depart_weekday {start!r}"
    bad = []
    for i, _, _, name in _acts(_days(plan), "attraction"):
        row = db.attraction_index.get(name) if name else None
        if row and _weekday(start, i) in _closed_days(row["closing_dates"]):
            bad.append(f"{name} on day {i + 1} (weekday {_weekday(start, i)}; closed {row['closing_dates']})")
    return _fail(bad, "closed attractions visited")


# ------------------------------------------------------------------------- commonsense: duration, cost, diversity


def check_attraction_durations(plan: dict, meta: dict, db: TaskDatabase) -> Check:
    if not db.attraction_index:
        return False, "the task's attraction table is empty"
    bad = []
    for name, slot, row in _visits(plan, "attraction", db.attraction_index):
        s, e = slot_minutes(slot)
        lo, hi = _float(row["min_visit_hours"]), _float(row["max_visit_hours"])
        if s is None or lo is None or hi is None:
            bad.append(f"{name}: duration unknown")
        elif not lo <= (e - s) / 60 <= hi:
            bad.append(f"{name}: {(e - s) / 60:g} h outside {lo:g}-{hi:g} h")
    return _fail(bad, "attraction durations")


def check_meal_durations(plan: dict, meta: dict, db: TaskDatabase) -> Check:
    bad = []
    for _, act, _, name in _acts(_days(plan), "meal"):
        if not name:
            continue  # as officially: a meal without a name is not timed
        s, e = slot_minutes(act.get("time_slot"))
        if s is None:
            bad.append(f"{name}: no usable time slot")
        elif not 30 <= e - s <= 150:
            bad.append(f"{name}: {e - s} min outside 30-150 min")
    return _fail(bad, "meal durations")


def check_cost(plan: dict, meta: dict, db: TaskDatabase) -> Check:
    """|formula - total_estimated_budget| / total <= 10 %; the total may be a numeric string."""
    summary = plan.get("budget_summary", {})
    total = summary.get("total_estimated_budget") if summary else None
    if _float(total) is None:
        return False, f"no total_estimated_budget that reads as a number ({total!r})"
    total = float(total)
    cost = plan_cost(plan, int(meta.get("people_number", 1)), int(meta.get("room_number", 1)))["total"]
    if total == 0:
        return (True, None) if cost == 0 else (False, f"total 0 but the activities cost {cost:.2f}")
    err = abs(cost - total) / total
    return (True, None) if err <= 0.10 else (
        False, f"stated total {total:.2f} vs computed {cost:.2f} ({err:.1%} off, > 10%)")


def _no_repeat(plan: dict, kind: str) -> Check:
    seen = set()
    for _, _, d, _ in _acts(_days(plan), kind):
        name = d.get("name")  # not stripped, as officially
        if name and name in seen:
            return False, f"{name!r} appears twice"
        if name:
            seen.add(name)
    return True, None


def check_diverse_restaurants(plan: dict, meta: dict, db: TaskDatabase) -> Check:
    return _no_repeat(plan, "meal")


def check_diverse_attractions(plan: dict, meta: dict, db: TaskDatabase) -> Check:
    return _no_repeat(plan, "attraction")


# dimension -> its checks (names as in the official report)
DIMENSIONS = {
    "route": {"valid_trip_duration": check_days, "closed_loop_route_structure": check_closed_loop,
              "seamless_intercity_transfers": check_intercity_route},
    "sandbox": {"validated_accommodation": check_hotels_known, "validated_attractions": check_attractions_known,
                "validated_meals": check_restaurants_known, "validated_transportation": check_transport_known},
    "structure": {"traceable_accommodation": check_accommodation_every_night,
                  "ends_with_accommodation": check_days_end_at_hotel,
                  "essential_meal_coverage": check_meals_needed,
                  "essential_attraction_coverage": check_attractions_needed},
    "time": {"no_time_overlaps": check_no_overlap, "reasonable_transfer_time": check_transfer_times},
    "business_hours": {"attraction_visit_within_opening_hours": check_attraction_hours,
                       "dining_within_service_hours": check_restaurant_hours,
                       "avoidance_of_closure_days": check_closed_days},
    "duration": {"reasonable_duration_at_attractions": check_attraction_durations,
                 "reasonable_meal_duration": check_meal_durations},
    "cost": {"cost_calculation_correctness": check_cost},
    "diversity": {"diverse_meal_options": check_diverse_restaurants,
                  "diverse_attraction_options": check_diverse_attractions},
}


@dataclass
class CommonsenseResult:
    checks: Dict[str, Check]  # check name -> (passed, reason)

    def dimension(self, name: str) -> float:
        return float(all(self.checks[c][0] for c in DIMENSIONS[name]))

    @property
    def dimensions(self) -> Dict[str, float]:
        return {d: self.dimension(d) for d in DIMENSIONS}

    @property
    def score(self) -> float:
        return sum(self.dimensions.values()) / len(DIMENSIONS)

    @property
    def failures(self) -> Dict[str, str]:
        return {c: r or "failed" for c, (ok, r) in self.checks.items() if not ok}


def score_commonsense(plan: dict, meta: dict, db: TaskDatabase) -> CommonsenseResult:
    """All 20 checks; a plan without days fails every one (as officially)."""
    if not _days(plan):
        return CommonsenseResult({c: (False, "plan has no days") for dim in DIMENSIONS.values() for c in dim})
    return CommonsenseResult({c: fn(plan, meta, db) for dim in DIMENSIONS.values() for c, fn in dim.items()})


# ------------------------------------------------------------------------- per task and over samples


@dataclass
class TaskScore:
    personalized: float  # fraction of the scored hard constraints satisfied (Table 7's metric)
    personalized_all: float  # official per-task 0/1
    commonsense: float
    hard: Dict[str, Check] = field(default_factory=dict)
    checks: Dict[str, Check] = field(default_factory=dict)
    dimensions: Dict[str, float] = field(default_factory=dict)

    @property
    def composite(self) -> float:
        return (self.commonsense + self.personalized_all) / 2

    @property
    def case_acc(self) -> float:
        return float(self.commonsense == 1.0 and self.personalized_all == 1.0)


def score_plan(plan: dict, meta: dict, db: TaskDatabase) -> TaskScore:
    hard, cs = score_hard(plan, meta), score_commonsense(plan, meta, db)
    return TaskScore(hard.fraction, hard.all_passed, cs.score, hard.results, cs.checks, cs.dimensions)


def avg_at_k(per_task: Sequence[Sequence[float]]) -> float:
    """Task mean of per-task sample means."""
    return sum(sum(s) / len(s) for s in per_task) / len(per_task)


def best_at_k(per_task: Sequence[Sequence[float]]) -> float:
    """Task mean of each task's best sample."""
    return sum(max(s) for s in per_task) / len(per_task)
