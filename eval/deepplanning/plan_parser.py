"""Deterministic plan parser: the mandated plan text -> the structured plan the scorers read.

The official pipeline (``evaluation/convert_report.py``) has a hosted LLM (``qwen-plus``) rewrite
the plan as JSON. This parser is rule-based instead: it reads only lines in the mandated format
(FORMAT.md §2) and reports every line it could not read (``ParsedPlan.problems``) rather than
guessing. Consequences: a plan in a free-form layout that an LLM would still understand scores
lower here; an unreadable line is left out of the plan (the scorers then see, e.g., a missing
meal), never half-filled.

Accepted variations: ``**`` bold, ``#`` headings and ``-``/``*`` bullets around lines; full-width
``｜``, ``，``, ``：`` and ``￥``; fields split from the right, so names may contain commas; costs
as ``¥60/person``, ``60``, ``¥1,200``, ``650 RMB``, ``RMB 650 per person``, ``60元/人`` or
``free``; ``24:00`` as an end time (the official example ends days with ``20:00-24:00 | hotel |
Rest``; the scorers read it as 23:59, as officially); ``Day 2: Beijing`` or ``Day 2 (Nov 5)``
headers; activity types in any case; the official transport-mode words (``plane``, ``railway``,
``飞机``, ``火车``, ``高铁``, ``gaotie``). Separator lines (``---``) are skipped. Costs come out as
numbers, the transport mode and activity type lowercased, names verbatim.

Several ``<plan>`` blocks arrive joined (:func:`eval.deepplanning.prompts.extract_plan`); every day
of every block is read, and a day number seen before is noted in ``ParsedPlan.notes``.

Output shape (FORMAT.md §3)::

    {"budget_summary": {"transportation", "accommodation", "meals", "attractions_and_tickets",
                        "other", "total_estimated_budget", "currency"},
     "daily_plans": [{"day_number", "current_city", "accommodation": {"name", "price_per_night"}
                      (absent for "-"), "activities": [{"time_slot", "type", "details"}]}]}
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

ACTIVITY_TYPES = ("travel_intercity_public", "travel_city", "attraction", "meal", "hotel", "buffer")
BUDGET_KEYS = {"transportation": "transportation", "accommodation": "accommodation", "meals": "meals",
               "meal": "meals", "attractions & tickets": "attractions_and_tickets",
               "attractions and tickets": "attractions_and_tickets", "attractions": "attractions_and_tickets",
               "tickets": "attractions_and_tickets", "other": "other", "others": "other",
               "total estimated budget": "total_estimated_budget", "total": "total_estimated_budget",
               "total budget": "total_estimated_budget"}
_FULLWIDTH = str.maketrans({"｜": "|", "，": ",", "：": ":", "￥": "¥", "－": "-", "–": "-", "—": "-"})
_NUM = r"\d[\d,]*(?:\.\d+)?"
_PRICE = re.compile(rf"^(?:¥|RMB|CNY)?\s*({_NUM})\s*(?:yuan|元|RMB|CNY)?\s*(?:(?:/|per\b)[^,]*)?$", re.IGNORECASE)
_TAIL_PRICE = re.compile(rf"^(.*?)\s*,\s*((?:¥|RMB|CNY)?\s*{_NUM}[^,]*|free)\s*$", re.IGNORECASE)
_ACTIVITY = re.compile(r"^(\d{1,2}):(\d{2})\s*[-~]\s*(\d{1,2}):(\d{2})\s*\|\s*([A-Za-z_]+)\s*\|\s*(.*)$")
_DAY = re.compile(r"^Day\s*(\d+)\s*(?:[:(,.-].*)?$", re.IGNORECASE)
_SEPARATOR = re.compile(r"^[-=*_~—]{3,}$")
MODES = r"flight|train|airplane|plane|railway|飞机|火车|高铁|gaotie"
_HEADER = re.compile(r"^(Current City|Accommodation)\s*:\s*(.*)$", re.IGNORECASE)
_BUDGET_LINE = re.compile(r"^([A-Za-z &]+?)\s*:\s*(.*)$")


@dataclass
class ParsedPlan:
    plan: Dict[str, Any]
    problems: List[str] = field(default_factory=list)  # "line N: why", one per unread line
    notes: List[str] = field(default_factory=list)  # read, but worth a look (a repeated day number)
    lines: int = 0  # non-empty lines seen
    parsed: int = 0  # of which read into the plan

    @property
    def parsed_share(self) -> float:
        return self.parsed / self.lines if self.lines else 0.0

    @property
    def ok(self) -> bool:
        """At least one day was read (else the plan scores 0)."""
        return bool(self.plan["daily_plans"])


def clean_line(line: str) -> str:
    line = line.translate(_FULLWIDTH).replace("**", "").strip()
    line = re.sub(r"^#+\s*", "", line)
    return re.sub(r"^[-*•]\s+", "", line).strip()


def parse_price(text: str) -> Optional[float]:
    """``¥60/person`` / ``60`` / ``¥1,200`` / ``free`` -> a number; ``None`` if not a price."""
    text = text.strip()
    if text.lower() == "free":
        return 0.0
    m = _PRICE.match(text)
    return float(m.group(1).replace(",", "")) if m else None


def split_tail_price(text: str) -> Tuple[Optional[str], Optional[float]]:
    """``"<rest>, <price>"`` -> (rest, price), the price taken from the right."""
    m = _TAIL_PRICE.match(text.strip())
    if not m:
        return None, None
    price = parse_price(m.group(2))
    return (m.group(1).strip(), price) if price is not None else (None, None)


def _number(text: str, unit: str) -> Optional[float]:
    m = re.fullmatch(rf"\s*({_NUM})\s*{unit}\s*", text, re.IGNORECASE)
    return float(m.group(1).replace(",", "")) if m else None


def _from_to(text: str) -> Optional[Tuple[str, str]]:
    parts = [p.strip() for p in text.split(" - ")]
    return (parts[0], parts[1]) if len(parts) == 2 and all(parts) else None


# ------------------------------------------------------------------------- activity details

def _intercity(body: str) -> Tuple[Optional[dict], str]:
    rest, cost = split_tail_price(body)
    if rest is None:
        return None, "no price at the end (', ¥P/person')"
    head, _, stations = rest.partition(",")
    m = re.fullmatch(rf"\s*({MODES})\s+(\S+)\s*", head, re.IGNORECASE)
    if not m:
        return None, "expected 'flight|train NUMBER, From - To, ¥P/person'"
    ft = _from_to(stations)
    if ft is None:
        return None, "expected 'From - To' stations"
    return {"mode": m.group(1).lower(), "number": m.group(2), "from": ft[0], "to": ft[1], "cost": cost}, ""


def _travel_city(body: str) -> Tuple[Optional[dict], str]:
    rest, cost = split_tail_price(body)
    parts = rest.rsplit(",", 2) if rest is not None else []
    if len(parts) != 3:
        return None, "expected 'From - To, Xkm, Ymin, ¥P'"
    ft = _from_to(parts[0])
    distance, duration = _number(parts[1], "km"), _number(parts[2], "min(?:utes?)?")
    if ft is None or distance is None or duration is None:
        return None, "expected 'From - To, Xkm, Ymin, ¥P'"
    return {"from": ft[0], "to": ft[1], "distance": distance, "duration": duration, "cost": cost}, ""


def _attraction(body: str, city: Optional[str]) -> Tuple[Optional[dict], str]:
    name, cost = split_tail_price(body)
    if not name:
        return None, "expected 'Name, ¥P/person'"
    return {"name": name, "city": city, "cost": cost}, ""


def _meal(body: str) -> Tuple[Optional[dict], str]:
    meal_type, sep, rest = body.partition(",")
    name, cost = split_tail_price(rest) if sep else (None, None)
    if not name or meal_type.strip().lower() not in ("lunch", "dinner", "breakfast"):
        return None, "expected 'Lunch|Dinner, Name, ¥P/person'"
    return {"meal_type": meal_type.strip().lower(), "name": name, "cost": cost}, ""


def _hotel(body: str) -> Tuple[Optional[dict], str]:
    activity, sep, name = body.partition(",")
    if not sep or not name.strip():
        return None, "expected 'Check-in|Rest, Hotel name'"
    return {"activity": activity.strip(), "name": name.strip()}, ""


def parse_activity(kind: str, body: str, city: Optional[str]) -> Tuple[Optional[dict], str]:
    if kind == "travel_intercity_public":
        return _intercity(body)
    if kind == "travel_city":
        return _travel_city(body)
    if kind == "attraction":
        return _attraction(body, city)
    if kind == "meal":
        return _meal(body)
    if kind == "hotel":
        return _hotel(body)
    return {"description": body.strip()}, ""  # buffer


# ------------------------------------------------------------------------- the plan

def _end_city(current_city: str) -> str:
    m = re.search(r"from\s+(.+?)\s+to\s+(.+)$", current_city)
    return m.group(2).strip() if m else current_city.strip()


class _Reader:
    def __init__(self):
        self.days: List[dict] = []
        self.budget: Dict[str, Any] = {"currency": "CNY"}
        self.in_budget = False
        self.out = ParsedPlan({"budget_summary": self.budget, "daily_plans": self.days})

    def line(self, n: int, raw: str) -> None:
        line = clean_line(raw)
        if not line or _SEPARATOR.match(raw.strip()):
            return
        self.out.lines += 1
        why = self._read(line)
        if why:
            self.out.problems.append(f"line {n}: {why}: {raw.strip()[:120]}")
        else:
            self.out.parsed += 1

    def _read(self, line: str) -> str:
        m = _DAY.match(line)
        if m:
            self.in_budget = False
            number = int(m.group(1))
            if any(d["day_number"] == number for d in self.days):
                self.out.notes.append(f"day {number} appears again (several plans?); read as another day")
            self.days.append({"day_number": number, "current_city": "", "activities": []})
            return ""
        if re.fullmatch(r"budget summary\b[^0-9]*", line, re.IGNORECASE):
            self.in_budget = True
            return ""
        if self.in_budget:
            return self._budget(line)
        if not self.days:
            return "text before 'Day 1:'"
        m = _HEADER.match(line)
        if m:
            return self._header(m.group(1).lower(), m.group(2).strip())
        m = _ACTIVITY.match(line)
        if m:
            return self._activity(m)
        return "not in the plan format"

    def _header(self, key: str, value: str) -> str:
        day = self.days[-1]
        if key == "current city":
            day["current_city"] = value
            return "" if value else "empty Current City"
        if value in ("-", "", "None", "none", "N/A"):
            return ""  # no hotel that night: the key stays absent
        name, price = split_tail_price(value)
        if not name:
            return "expected 'Accommodation: Hotel, ¥P/room/night' or '-'"
        day["accommodation"] = {"name": name, "price_per_night": price}
        return ""

    def _activity(self, m: re.Match) -> str:
        h1, m1, h2, m2, kind, body = m.groups()
        kind = kind.lower()
        if kind not in ACTIVITY_TYPES:
            return f"unknown activity type {kind!r}"
        day = self.days[-1]
        details, why = parse_activity(kind, body, _end_city(day["current_city"]) or None)
        if details is None:
            return f"{kind}: {why}"
        slot = f"{int(h1):02d}:{m1}-{int(h2):02d}:{m2}"
        day["activities"].append({"time_slot": slot, "type": kind, "details": details})
        return ""

    def _budget(self, line: str) -> str:
        m = _BUDGET_LINE.match(line)
        key = BUDGET_KEYS.get(m.group(1).strip().lower()) if m else None
        if key is None:
            return "not a Budget Summary item"
        num = re.search(rf"(?:¥|RMB|CNY)?\s*({_NUM})", m.group(2))
        if num is None:
            return f"no amount for {key}"
        self.budget[key] = float(num.group(1).replace(",", ""))
        return ""


def parse_plan(text: Optional[str]) -> ParsedPlan:
    """Parse one plan text (the ``<plan>`` body); see the module docstring."""
    reader = _Reader()
    if not text or not text.strip():
        reader.out.problems.append("empty plan")
        return reader.out
    for n, raw in enumerate(text.splitlines(), 1):
        reader.line(n, raw)
    if not reader.days:
        reader.out.problems.append("no 'Day N:' line: nothing could be read as a daily plan")
    return reader.out
