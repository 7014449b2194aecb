"""Scorers of a structured travel plan: personalized hard constraints, commonsense, metrics.

Facts from the official evaluation (``evaluation/constraints_hard.py``,
``constraints_commonsense.py``, ``eval_converted.py`` of QwenLM/Qwen-Agent), FORMAT.md §4-6:

- **Personalized** (hard) constraints: the constraint key's prefix picks the check and only the
  identity of the chosen item is tested, by exact string: ``flight_``/``train_`` (each
  ``outbound_``/``inbound_`` number among the plan's intercity numbers of that mode), ``hotel_``
  (``hotel_name`` among the accommodations), ``restaurant_`` (among the meal names),
  ``attraction_`` (all ``attraction_names`` among the attractions), ``budget_constraint``
  (:func:`plan_cost` <= ``max_budget``). Official per-task score: 1 only if all pass; Table 7's
  metric (ours): the fraction passed.
- **Commonsense**: 8 dimensions of named checks; a dimension scores 1 only when all its checks
  pass; commonsense = mean over the 8.
- composite = (commonsense + official personalized) / 2; case_acc = 1 only if both are 1.

Every check returns ``(passed, reason)``; reasons name what failed.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from eval.deepplanning.database import TaskDatabase

Check = Tuple[bool, Optional[str]]
FLIGHT_MODES = ("flight", "airplane", "plane")
TRAIN_MODES = ("train", "railway")

# ------------------------------------------------------------------------- plan accessors


def _acts(plan: dict, kind: str) -> Iterable[Tuple[int, dict, dict]]:
    for i, day in enumerate(plan.get("daily_plans") or []):
        for act in day.get("activities") or []:
            if act.get("type") == kind:
                yield i, act, act.get("details") or {}


def _names(plan: dict, kind: str) -> List[str]:
    return [str(d.get("name") or "").strip() for _, _, d in _acts(plan, kind)]


def _numbers(plan: dict, modes: Sequence[str]) -> set:
    return {str(d.get("number") or "").strip() for _, _, d in _acts(plan, "travel_intercity_public")
            if str(d.get("mode") or "").lower() in modes}


def _num(value) -> Optional[float]:
    """A cost as the official scorers take it: a number (a string cost is not a number)."""
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def plan_cost(plan: dict, people: int, rooms: int) -> Dict[str, float]:
    """The official cost formula (P people, R rooms): per day only the first intercity activity,
    cost x P; hotel price x R on every day but the last; meals and tickets x P; each travel_city
    cost x ceil(P / 4) taxis (at least 1)."""
    days = plan.get("daily_plans") or []
    taxis = max(1, math.ceil(people / 4))
    parts = {"transportation": 0.0, "accommodation": 0.0, "meals": 0.0, "attractions": 0.0}
    for day in days:
        first = next((a for a in day.get("activities") or [] if a.get("type") == "travel_intercity_public"), None)
        cost = _num((first or {}).get("details", {}).get("cost"))
        parts["transportation"] += (cost or 0.0) * people
    for day in days[:-1]:
        acc = day.get("accommodation")
        price = _num(acc.get("price_per_night")) if isinstance(acc, dict) else None
        parts["accommodation"] += (price or 0.0) * rooms
    for kind, key, mult in (("meal", "meals", people), ("attraction", "attractions", people),
                            ("travel_city", "transportation", taxis)):
        for _, _, d in _acts(plan, kind):
            parts[key] += (_num(d.get("cost")) or 0.0) * mult
    parts["total"] = sum(parts.values())
    return parts


# ------------------------------------------------------------------------- personalized


def _check_numbers(data: dict, plan: dict, prefix: str) -> Check:
    modes = FLIGHT_MODES if prefix == "flight" else TRAIN_MODES
    have = _numbers(plan, modes)
    for direction in ("outbound", "inbound"):
        want = data.get(f"{direction}_{prefix}_no")
        if want is not None and str(want) not in have:
            return False, f"{direction} {prefix} {want} not in the plan (plan has {sorted(have) or 'none'})"
    return True, None


def _check_hotel(data: dict, plan: dict) -> Check:
    want = data.get("hotel_name")
    if not want:
        return False, "constraint names no hotel"
    have = [str((d.get("accommodation") or {}).get("name") or "").strip()
            for d in plan.get("daily_plans") or [] if isinstance(d.get("accommodation"), dict)]
    return (True, None) if want in have else (False, f"hotel {want!r} not among {have}")


def _check_restaurant(data: dict, plan: dict) -> Check:
    want = data.get("restaurant_name")
    if not want:
        return False, "constraint names no restaurant"
    have = _names(plan, "meal")
    return (True, None) if want in have else (False, f"restaurant {want!r} not among the meals {have}")


def _check_attractions(data: dict, plan: dict) -> Check:
    want = data.get("attraction_names") or []
    if not want:
        return False, "constraint names no attraction"
    have = set(_names(plan, "attraction"))
    missing = [a for a in want if a not in have]
    return (True, None) if not missing else (False, f"attraction(s) {missing} not in the plan")


def _check_budget(data: dict, plan: dict, meta: dict) -> Check:
    try:
        limit = float(data["max_budget"])
    except (KeyError, TypeError, ValueError):
        return False, f"bad max_budget {data.get('max_budget')!r}"
    if not plan.get("daily_plans"):
        return False, "plan has no days"
    cost = plan_cost(plan, int(meta.get("people_number", 1)), int(meta.get("room_number", 1)))["total"]
    return (True, None) if cost <= limit else (False, f"cost {cost:.2f} exceeds the budget {limit:.2f}")


def check_hard(key: str, data: dict, plan: dict, meta: dict) -> Check:
    """One personalized constraint, dispatched on the key's prefix like the official scorer."""
    prefix = key.split("_", 1)[0]
    if prefix in ("flight", "train"):
        return _check_numbers(data, plan, prefix)
    if prefix == "hotel":
        return _check_hotel(data, plan)
    if prefix == "restaurant":
        return _check_restaurant(data, plan)
    if prefix == "attraction":
        return _check_attractions(data, plan)
    if key == "budget_constraint":
        return _check_budget(data, plan, meta)
    return False, f"unknown constraint type {key!r}"


@dataclass
class HardResult:
    results: Dict[str, Check]

    @property
    def fraction(self) -> float:
        return sum(ok for ok, _ in self.results.values()) / len(self.results) if self.results else 1.0

    @property
    def all_passed(self) -> float:
        return float(all(ok for ok, _ in self.results.values()))

    @property
    def failures(self) -> Dict[str, str]:
        return {k: r or "failed" for k, (ok, r) in self.results.items() if not ok}


def score_hard(plan: dict, meta: dict) -> HardResult:
    """Every key of ``meta["hard_constraints"]`` (a ``budget_constraint`` outside it is not scored,
    as officially: en task 79)."""
    return HardResult({k: check_hard(k, v or {}, plan, meta)
                       for k, v in (meta.get("hard_constraints") or {}).items()})


# ------------------------------------------------------------------------- time helpers


def _hhmm(text: str) -> Optional[int]:
    m = re.fullmatch(r"\s*(\d{1,2}):(\d{2})\s*", text or "")
    if not m or int(m.group(1)) > 23 or int(m.group(2)) > 59:
        return None
    return int(m.group(1)) * 60 + int(m.group(2))


def slot_minutes(slot: Optional[str]) -> Tuple[Optional[int], Optional[int]]:
    """``"HH:MM-HH:MM"`` -> (start, end) minutes; an end before the start is on the next day."""
    start_end = (slot or "").split("-")
    if len(start_end) != 2:
        return None, None
    s, e = _hhmm(start_end[0]), _hhmm(start_end[1])
    if s is None or e is None:
        return None, None
    return s, e + 1440 if e < s else e


def within_hours(slot: str, open_t: int, close_t: int) -> bool:
    """The official business-hours test, with hours that may cross midnight."""
    parts = slot.split("-")
    s, e = _hhmm(parts[0]), _hhmm(parts[1])
    slot_wraps = e < s
    if open_t <= close_t:
        return not slot_wraps and open_t <= s and e <= close_t
    if slot_wraps:
        return s >= open_t and e <= close_t
    return (s >= open_t and e >= open_t) or (s <= close_t and e <= close_t)


def from_to(text: str) -> Tuple[Optional[str], Optional[str]]:
    m = re.search(r"from\s+(.+?)\s+to\s+([^,]+)(?=[,\s]|$)", text or "")
    return (m.group(1).strip(), m.group(2).strip()) if m else (None, None)


def norm_city(text: Optional[str]) -> Optional[str]:
    return None if text is None else re.sub(r"[（(].*?[)）]", "", text).strip()


def _first_intercity_time(day: dict, end: bool) -> Optional[float]:
    for act in day.get("activities") or []:
        if act.get("type") == "travel_intercity_public":
            parts = (act.get("time_slot") or "").split("-")
            t = _hhmm(parts[1 if end else 0]) if len(parts) == 2 else None
            if t is not None:
                return t / 60
    return None


def _weekday(depart_weekday: int, day_index: int) -> int:
    return (depart_weekday - 1 + day_index) % 7 + 1


WEEKDAYS = {"monday": 1, "tuesday": 2, "wednesday": 3, "thursday": 4, "friday": 5, "saturday": 6,
            "sunday": 7, "周一": 1, "周二": 2, "周三": 3, "周四": 4, "周五": 5, "周六": 6, "周日": 7}


def _closed_days(text: str) -> set:
    return {WEEKDAYS[p.strip().lower()] for p in (text or "").split(",") if p.strip().lower() in WEEKDAYS}


def _fail(items: List[str], what: str) -> Check:
    return (False, f"{what}: {'; '.join(items)}") if items else (True, None)


# ------------------------------------------------------------------------- commonsense: route


def _days(plan: dict) -> List[dict]:
    return plan.get("daily_plans") or []


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
    city = db.station_city.get(station)
    if city:
        return norm_city(city)
    m = re.match(r"^([\u4e00-\u9fa5]{2})", station)  # official fallback: first 2 Chinese characters
    return m.group(1) if m else None


def check_intercity_route(plan: dict, meta: dict, db: TaskDatabase) -> Check:
    """Follow the traveller from the origin: each 'from A to B' day starts where the previous
    ended and has an intercity activity whose stations are in A and B; other days stay put."""
    here, bad = norm_city(meta.get("org")), []
    for n, day in enumerate(_days(plan), 1):
        a, b = from_to(day.get("current_city", ""))
        if a and b:
            if norm_city(a) != here:
                bad.append(f"day {n} leaves {a} but the traveller is in {here}")
            legs = [d for _, _, d in _acts({"daily_plans": [day]}, "travel_intercity_public")]
            if not any(_station_city(db, str(d.get("from") or "").strip()) == norm_city(a)
                       and _station_city(db, str(d.get("to") or "").strip()) == norm_city(b) for d in legs):
                bad.append(f"day {n} ({a} -> {b}) has no intercity activity between stations of those cities")
            here = norm_city(b)
        elif norm_city(day.get("current_city", "")) != here:
            bad.append(f"day {n} is in {day.get('current_city')!r} but the traveller is in {here}")
    return _fail(bad, "route")


# ------------------------------------------------------------------------- commonsense: sandbox


def _price_matches(plan_value, db_value: str) -> Optional[bool]:
    """None when the database has no usable price (not checked, as officially)."""
    try:
        want = int(round(float(db_value)))
    except (TypeError, ValueError):
        return None
    got = _num(plan_value)
    return got is not None and int(round(got)) == want


def check_hotels_known(plan: dict, meta: dict, db: TaskDatabase) -> Check:
    bad, days = [], _days(plan)
    for n, day in enumerate(days, 1):
        acc = day.get("accommodation")
        if isinstance(acc, dict) and (acc.get("name") or "").strip():
            name = acc["name"].strip()
            if name not in db.hotel_by_name:
                bad.append(f"hotel {name!r} is not in the database")
            elif _price_matches(acc.get("price_per_night"), db.hotel_by_name[name]["price"]) is False:
                bad.append(f"hotel {name!r} costs {db.hotel_by_name[name]['price']}, plan says "
                           f"{acc.get('price_per_night')!r}")
    for i, _, d in _acts({"daily_plans": days[:-1]}, "hotel"):
        if (d.get("name") or "").strip() and d["name"].strip() not in db.hotel_by_name:
            bad.append(f"hotel {d['name']!r} (day {i + 1}) is not in the database")
    return _fail(bad, "hotels")


def _check_named(plan: dict, kind: str, index: Dict[str, dict], price_col: str, what: str) -> Check:
    bad = []
    for i, _, d in _acts(plan, kind):
        name = str(d.get("name") or "").strip()
        if name not in index:
            bad.append(f"{what} {name or '<empty>'!r} (day {i + 1}) is not in the database")
        elif _price_matches(d.get("cost"), index[name][price_col]) is False:
            bad.append(f"{what} {name!r} costs {index[name][price_col]}, plan says {d.get('cost')!r}")
    return _fail(bad, what + "s")


def check_attractions_known(plan: dict, meta: dict, db: TaskDatabase) -> Check:
    return _check_named(plan, "attraction", db.attraction_by_name, "ticket_price", "attraction")


def check_restaurants_known(plan: dict, meta: dict, db: TaskDatabase) -> Check:
    return _check_named(plan, "meal", db.restaurant_by_name, "price_per_person", "restaurant")


def check_transport_known(plan: dict, meta: dict, db: TaskDatabase) -> Check:
    numbers = {**db.transport_numbers("flights"), **db.transport_numbers("trains")}
    bad = []
    for i, act, d in _acts(plan, "travel_intercity_public"):
        missing = [k for k in ("number", "from", "to", "cost") if d.get(k) in (None, "")]
        if missing:
            bad.append(f"day {i + 1} {act.get('time_slot')}: missing {missing}")
            continue
        rows = numbers.get(str(d["number"]).strip())
        if rows is None:
            bad.append(f"{d['number']} is not in the database")
        elif _num(d["cost"]) is not None:
            prices = [p for p in (_price_matches(d["cost"], r["price"]) for r in rows) if p is not None]
            if prices and not any(prices):
                bad.append(f"{d['number']} costs {sorted({r['price'] for r in rows})}, plan says {d['cost']}")
    return _fail(bad, "intercity transport")


# ------------------------------------------------------------------------- commonsense: structure


def check_accommodation_every_night(plan: dict, meta: dict, db: TaskDatabase) -> Check:
    days, bad = _days(plan), []
    for n, day in enumerate(days[:-1], 1):
        has_hotel = any(True for _ in _acts({"daily_plans": [day]}, "hotel"))
        if not (has_hotel and day.get("accommodation")):
            bad.append(f"day {n} lacks an accommodation or a hotel activity")
    last = days[-1].get("accommodation") if days else None
    if isinstance(last, dict) and (last.get("name") or "-").strip() != "-":
        bad.append(f"the last day has accommodation {last.get('name')!r} (expected '-')")
    return _fail(bad, "accommodation")


def check_days_end_at_hotel(plan: dict, meta: dict, db: TaskDatabase) -> Check:
    bad = [f"day {n}" for n, day in enumerate(_days(plan)[:-1], 1)
           if not day.get("activities") or day["activities"][-1].get("type") != "hotel"]
    return _fail(bad, "last activity is not the hotel on")


def _meal_slots(day: dict) -> List[Tuple[int, int]]:
    return sorted(s for s in (slot_minutes(a.get("time_slot")) for a in day.get("activities") or []
                              if a.get("type") == "meal") if s[0] is not None)


def _two_meals_apart(meals: List[Tuple[int, int]]) -> Optional[str]:
    if len(meals) >= 2 and meals[1][0] - meals[0][1] < 120:
        return f"lunch and dinner only {meals[1][0] - meals[0][1]} min apart (< 120)"
    return None


def _meal_rule(meals, leaving: Optional[float], arriving: Optional[float]) -> List[str]:
    """The meal counts a travel day needs, from its first intercity departure / arrival hour."""
    bad, n = [], len(meals)
    if leaving is not None:
        if leaving < 9 and n:
            bad.append(f"leaves before 09:00 but has {n} meal(s)")
        elif 9 <= leaving < 15 and n > 1:
            bad.append(f"leaves 09:00-15:00 but has {n} meals")
        elif leaving >= 15 and not n:
            bad.append("leaves after 15:00 but has no meal")
    if arriving is not None:
        if arriving < 10 and n < 2:
            bad.append(f"arrives before 10:00 but has {n} meal(s) (needs 2)")
        elif 10 <= arriving < 15 and not n:
            bad.append("arrives 10:00-15:00 but has no meal")
        elif arriving >= 15 and n > 1:
            bad.append(f"arrives after 15:00 but has {n} meals")
    return bad


def _travel_days(plan: dict, meta: dict):
    """(day number, day, leaving hour or None, arriving hour or None, is travel day), following the
    traveller: only leaving a non-origin city and arriving in a non-origin city count."""
    org = norm_city(meta.get("org"))
    here = org
    for n, day in enumerate(_days(plan), 1):
        a, b = from_to(day.get("current_city", ""))
        if not (a and b):
            yield n, day, None, None, False
            continue
        leaving = _first_intercity_time(day, end=False) if norm_city(a) == here and norm_city(a) != org else None
        arriving = _first_intercity_time(day, end=True) if norm_city(b) != org else None
        here = norm_city(b)
        yield n, day, leaving, arriving, True


def check_meals_needed(plan: dict, meta: dict, db: TaskDatabase) -> Check:
    bad = []
    for n, day, leaving, arriving, travel in _travel_days(plan, meta):
        meals = _meal_slots(day)
        problems = _meal_rule(meals, leaving, arriving) if travel else (
            [] if len(meals) >= 2 else [f"a full day needs lunch and dinner, has {len(meals)} meal(s)"])
        gap = _two_meals_apart(meals)  # any day with two meals (a day that may not have two fails anyway)
        bad += [f"day {n}: {p}" for p in problems + ([gap] if gap else [])]
    return _fail(bad, "meals")


def _attraction_minutes(day: dict) -> int:
    names = {str((a.get("details") or {}).get("name") or "").strip() for a in day.get("activities") or []
             if a.get("type") == "attraction"}
    total = 0
    for a in day.get("activities") or []:
        d = a.get("details") or {}
        related = a.get("type") == "attraction" or (
            a.get("type") == "travel_city" and (str(d.get("from") or "").strip() in names
                                                or str(d.get("to") or "").strip() in names))
        s, e = slot_minutes(a.get("time_slot"))
        if related and s is not None:
            total += e - s
    return total


def check_attractions_needed(plan: dict, meta: dict, db: TaskDatabase) -> Check:
    bad = []
    for n, day, leaving, arriving, travel in _travel_days(plan, meta):
        count = sum(1 for a in day.get("activities") or [] if a.get("type") == "attraction")
        if not travel and count < 2 and _attraction_minutes(day) < 240:
            bad.append(f"day {n}: a full day needs 2 attractions or 4 h of sightseeing")
        if leaving is not None and leaving > 16 and count < 1:
            bad.append(f"day {n}: leaves after 16:00 without an attraction")
        if arriving is not None and arriving < 12 and count < 1:
            bad.append(f"day {n}: arrives before 12:00 without an attraction")
    return _fail(bad, "attractions")


# ------------------------------------------------------------------------- commonsense: time


def check_no_overlap(plan: dict, meta: dict, db: TaskDatabase) -> Check:
    bad = []
    for n, day in enumerate(_days(plan), 1):
        spans = sorted((s, e, a.get("type")) for a in day.get("activities") or []
                       for s, e in [slot_minutes(a.get("time_slot"))] if s is not None)
        bad += [f"day {n}: {p[2]} and {c[2]} overlap" for p, c in zip(spans, spans[1:]) if c[0] < p[1]]
    return _fail(bad, "time overlaps")


ANCHORS = ("hotel", "attraction", "meal", "travel_intercity_public")


def _anchor_place(act: dict, arriving: bool) -> str:
    d = act.get("details") or {}
    if act.get("type") == "travel_intercity_public":
        return str(d.get("to" if arriving else "from") or "").strip()
    return str(d.get("name") or "").strip()


def _coords(db: TaskDatabase, name: str) -> Optional[str]:
    row = db.location_by_name.get(name)
    if row and row["latitude"] and row["longitude"]:
        return f"{row['latitude']},{row['longitude']}"
    return name if re.fullmatch(r"\s*-?\d+(\.\d+)?\s*,\s*-?\d+(\.\d+)?\s*", name) else None


def _buffer_minutes(day: dict, start: int, end: int) -> int:
    spans = [slot_minutes(a.get("time_slot")) for a in day.get("activities") or [] if a.get("type") == "buffer"]
    return sum(e - s for s, e in spans if s is not None and start <= s and e <= end)


def check_transfer_times(plan: dict, meta: dict, db: TaskDatabase) -> Check:
    """Between consecutive anchors, the gap minus buffers must be near the matrix's taxi time t:
    [min(max(0, t-5), floor(t/10)*10), max(t+5, ceil(t/10)*10)]. Pairs without coordinates or a
    matrix row are skipped (as officially)."""
    bad = []
    for n, day in enumerate(_days(plan), 1):
        anchors = [(s, e, a) for a in day.get("activities") or [] if a.get("type") in ANCHORS
                   for s, e in [slot_minutes(a.get("time_slot"))] if s is not None]
        for (_, pe, pa), (cs, _, ca) in zip(anchors, anchors[1:]):
            gap = cs - pe + (1440 if pe - cs > 720 else 0)
            if gap < 0:
                continue  # an overlap: check_no_overlap's business
            a, b = _anchor_place(pa, True), _anchor_place(ca, False)
            if not a or not b or a == b:
                continue
            ca_, cb_ = _coords(db, a), _coords(db, b)
            row = db.matrix.get((ca_, cb_)) if ca_ and cb_ else None
            if row is None or not row["duration_minutes"].strip():
                continue
            t = float(row["duration_minutes"])
            lo, hi = min(max(0.0, t - 5), (t // 10) * 10), max(t + 5, math.ceil(t / 10) * 10)
            net = gap - _buffer_minutes(day, pe, cs)
            if not lo <= net <= hi:
                bad.append(f"day {n}: {a} -> {b} takes {t:.0f} min, the plan leaves {net} min "
                           f"(allowed {lo:.0f}-{hi:.0f})")
    return _fail(bad, "transfer times")


# ------------------------------------------------------------------------- commonsense: hours


def check_attraction_hours(plan: dict, meta: dict, db: TaskDatabase) -> Check:
    bad = []
    for i, act, d in _acts(plan, "attraction"):
        row = db.attraction_by_name.get(str(d.get("name") or "").strip())
        if row is None:
            continue
        o, c = row["opening_time"].strip(), row["closing_time"].strip()
        if o in ("Open 24 Hours", "全天开放") and c in ("Open 24 Hours", "全天开放"):
            continue
        ot, ct, (s, _) = _hhmm(o), _hhmm(c), slot_minutes(act.get("time_slot"))
        if ot is None or ct is None or s is None:
            bad.append(f"{d['name']}: no usable opening hours or slot")
        elif not within_hours(act["time_slot"], ot, ct):
            bad.append(f"{d['name']} at {act['time_slot']} outside {o}-{c}")
    return _fail(bad, "attraction hours")


def check_restaurant_hours(plan: dict, meta: dict, db: TaskDatabase) -> Check:
    bad = []
    for i, act, d in _acts(plan, "meal"):
        row = db.restaurant_by_name.get(str(d.get("name") or "").strip())
        if row is None:
            continue
        s, _ = slot_minutes(act.get("time_slot"))
        ot, ct = _hhmm(row["opening_time"]), _hhmm(row["closing_time"])
        if s is None:
            bad.append(f"{d['name']}: no usable time slot")
        elif ot is not None and ct is not None and not within_hours(act["time_slot"], ot, ct):
            bad.append(f"{d['name']} at {act['time_slot']} outside {row['opening_time']}-{row['closing_time']}")
    return _fail(bad, "restaurant hours")


def check_closed_days(plan: dict, meta: dict, db: TaskDatabase) -> Check:
    try:
        start = int(meta.get("depart_weekday") or 0)
    except (TypeError, ValueError):
        return False, f"bad depart_weekday {meta.get('depart_weekday')!r}"
    if not start:
        return True, None
    bad = []
    for i, _, d in _acts(plan, "attraction"):
        row = db.attraction_by_name.get(str(d.get("name") or "").strip())
        if row and _weekday(start, i) in _closed_days(row["closing_dates"]):
            bad.append(f"{d['name']} on day {i + 1} (weekday {_weekday(start, i)}; closed {row['closing_dates']})")
    return _fail(bad, "closed attractions visited")


# ------------------------------------------------------------------------- commonsense: duration, cost, diversity


def check_attraction_durations(plan: dict, meta: dict, db: TaskDatabase) -> Check:
    bad = []
    for i, act, d in _acts(plan, "attraction"):
        row = db.attraction_by_name.get(str(d.get("name") or "").strip())
        if row is None:
            continue
        s, e = slot_minutes(act.get("time_slot"))
        try:
            lo, hi = float(row["min_visit_hours"]), float(row["max_visit_hours"])
        except ValueError:
            lo = hi = None
        if s is None or lo is None:
            bad.append(f"{d['name']}: duration unknown")
        elif not lo <= (e - s) / 60 <= hi:
            bad.append(f"{d['name']}: {(e - s) / 60:g} h outside {lo:g}-{hi:g} h")
    return _fail(bad, "attraction durations")


def check_meal_durations(plan: dict, meta: dict, db: TaskDatabase) -> Check:
    bad = []
    for i, act, d in _acts(plan, "meal"):
        s, e = slot_minutes(act.get("time_slot"))
        if s is None:
            bad.append(f"{d.get('name')}: no usable time slot")
        elif not 30 <= e - s <= 150:
            bad.append(f"{d.get('name')}: {e - s} min outside 30-150 min")
    return _fail(bad, "meal durations")


def check_cost(plan: dict, meta: dict, db: TaskDatabase) -> Check:
    total = (plan.get("budget_summary") or {}).get("total_estimated_budget")
    if _num(total) is None:
        return False, f"no numeric total_estimated_budget ({total!r})"
    cost = plan_cost(plan, int(meta.get("people_number", 1)), int(meta.get("room_number", 1)))["total"]
    if total == 0:
        return (True, None) if cost == 0 else (False, f"total 0 but the activities cost {cost:.2f}")
    err = abs(cost - total) / total
    return (True, None) if err <= 0.10 else (
        False, f"stated total {total:.2f} vs computed {cost:.2f} ({err:.1%} off, > 10%)")


def _no_repeat(plan: dict, kind: str) -> Check:
    seen = set()
    for _, _, d in _acts(plan, kind):
        name = d.get("name")
        if name and name in seen:
            return False, f"{name!r} appears twice"
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
    personalized: float  # fraction of hard constraints satisfied (Table 7's metric)
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
