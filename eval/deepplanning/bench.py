"""Tool calls per second of the travel sandbox.

    python -m eval.deepplanning.bench                       # the test fixture, padded to ~7,700 rows
    python -m eval.deepplanning.bench --db DIR --task 0     # a real task folder (calls from its tables)

Without ``--db`` it builds the synthetic fixture of :mod:`eval.deepplanning.fixture` in a
temporary folder and pads every table with ``--pad`` filler rows (default 1,100 per table, about
the 7,708 records a real task has), so the filters scan realistic tables. Prints the first load
time, the cached load time, and calls/s over a fixed mix of all 9 tools (hits and misses).
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Tuple

from eval.deepplanning import fixture
from eval.deepplanning.database import TABLES, clear_cache, load_task
from eval.deepplanning.tools import TravelTools


def pad_tables(folder: Path, rows: int) -> None:
    """Append ``rows`` filler rows to every table (unique names, coordinates and keys)."""
    for rel, cols in TABLES.values():
        path = folder / rel
        with open(path, encoding="utf-8", newline="") as f:
            header = next(csv.reader(f))
        with open(path, "a", encoding="utf-8", newline="") as f:
            w = csv.DictWriter(f, fieldnames=header)
            for i in range(rows):
                w.writerow({c: _filler(c, i) for c in header})


def _filler(col: str, i: int) -> str:
    if col in ("origin", "destination"):
        return f"{30 + i / 1e4:.6f},{110 + i / 1e4:.6f}"
    if "lat" in col:
        return f"{30 + i / 1e4:.6f}"
    if "lon" in col:
        return f"{110 + i / 1e4:.6f}"
    if col in ("price", "price_per_person", "ticket_price", "cost", "duration", "duration_minutes",
               "distance_meters", "rating", "score", "min_visit_hours", "max_visit_hours"):
        return str(1 + i % 97)
    if col.endswith("_time"):
        return "09:00" if col.startswith("open") else "18:00"
    return f"filler {col} {i}"


def call_mix(task: str) -> List[Tuple[str, Dict[str, str]]]:
    """A fixed mix of calls on the fixture's task 0: every tool, hits and misses."""
    return [("query_train_info", {"origin": "Hefei", "destination": "Nanjing", "depDate": "2025-11-12"}),
            ("query_train_info", {"origin": "Hefei", "destination": "Shanghai", "depDate": "2025-11-12"}),
            ("query_flight_info", {"origin": "Hefei", "destination": "Nanjing", "depDate": "2025-11-12"}),
            ("query_hotel_info", {"destination": "Nanjing", "checkinDate": "2025-11-12",
                                  "checkoutDate": "2025-11-13", "hotelStar": "3"}),
            ("query_attraction_details", {"attraction_name": "Laomendong"}),
            ("recommend_attractions", {"city": "Nanjing", "attraction_type": "Art Exhibition"}),
            ("search_location", {"place_name": "Laomendong"}),
            ("query_road_route_info", {"origin": "32.013000,118.787000", "destination": "32.012000,118.786000"}),
            ("recommend_restaurants", {"latitude": "32.012000", "longitude": "118.786000"}),
            ("query_restaurant_details", {"restaurant_name": "Qinhuai Snack Hall"})]


def real_mix(tools: TravelTools) -> List[Tuple[str, Dict[str, str]]]:
    """Calls built from a real task's own rows (first train, hotel, attraction, restaurant, route)."""
    t = tools.db.tables
    mix = []
    if t["trains"]:
        r = t["trains"][0]
        mix.append(("query_train_info", {"origin": r["origin_city"], "destination": r["destination_city"],
                                         "depDate": r["dep_date"]}))
    if t["attractions"]:
        a = t["attractions"][0]
        mix += [("query_attraction_details", {"attraction_name": a["attraction_name"]}),
                ("recommend_attractions", {"city": a["city"]})]
    if t["restaurants"]:
        r = t["restaurants"][0]
        mix += [("recommend_restaurants", {"latitude": r["query_latitude"], "longitude": r["query_longitude"]}),
                ("query_restaurant_details", {"restaurant_name": r["restaurant_name"]})]
    if t["matrix"]:
        m = t["matrix"][0]
        mix.append(("query_road_route_info", {"origin": m["origin"], "destination": m["destination"]}))
    if t["locations"]:
        mix.append(("search_location", {"place_name": t["locations"][0]["poi_name"]}))
    mix.append(("query_hotel_info", {"destination": "x", "checkinDate": "d", "checkoutDate": "e", "hotelStar": "4"}))
    return mix


def run(db_root: Path, task: str, seconds: float, fixture: bool) -> Dict[str, float]:
    clear_cache()
    t0 = time.perf_counter()
    db = load_task(db_root, task)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    load_task(db_root, task)
    cached = time.perf_counter() - t0
    tools = TravelTools(db)
    mix = call_mix(task) if fixture else real_mix(tools)
    calls, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for name, args in mix:
            tools.call(name, args)
        calls += len(mix)
    elapsed = time.perf_counter() - t0
    return {"records": sum(len(v) for v in db.tables.values()), "first_load_s": first, "cached_load_s": cached,
            "calls": calls, "calls_per_s": calls / elapsed, "tools_in_mix": len({n for n, _ in mix})}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m eval.deepplanning.bench", description=__doc__.split("\n")[0])
    p.add_argument("--db", default=None, help="database folder of id_<N>/ (default: the padded fixture)")
    p.add_argument("--task", default="0")
    p.add_argument("--pad", type=int, default=1100, help="filler rows per fixture table")
    p.add_argument("--seconds", type=float, default=3.0)
    ns = p.parse_args(argv)
    if ns.db:
        out = run(Path(ns.db), ns.task, ns.seconds, fixture=False)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            paths = fixture.build(Path(tmp))
            pad_tables(paths["database"] / "id_0", ns.pad)
            out = run(paths["database"], "0", ns.seconds, fixture=True)
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in out.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
