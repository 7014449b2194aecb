"""A small synthetic DeepPlanning database for travel tasks 0 and 1 (FORMAT.md, "Test fixture").

    python -m eval.deepplanning.fixture OUT_DIR [--score]

writes ``OUT_DIR/database/id_{0,1}/`` (the seven CSV tables; flights.csv header-only),
``OUT_DIR/queries.json`` (the two tasks with the real meta_info of the shipped query file, written
out here so the fixture needs no shared data) and ``OUT_DIR/tool_schema.json`` (our small schemas
of the 9 tools, same names and arguments as the shipped ones).

``GOLD[task]`` is a plan that satisfies every personalized constraint and every commonsense check
on this database; ``VARIANTS`` are copies of task 0's (one of task 1's) plan that each break
exactly one check, named in the variant. The numbers (prices, times, matrix rows) are chosen by
hand so that each variant changes only what it names: e.g. the distractor restaurant of the
restaurant variant sits at the same coordinates and costs the same as the one it replaces.
"""
from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from eval.deepplanning.database import TABLES

# ------------------------------------------------------------------------- tasks (real meta_info)

META = {
    "0": {"org": "Hefei", "dest": ["Nanjing"], "days": 2, "depart_date": "2025-11-12",
          "return_date": "2025-11-13", "people_number": 3, "room_number": 2, "depart_weekday": 3,
          "hard_constraints": {
              "train_seat_status": {"people_number": 3, "outbound_train_no": "G7798", "inbound_train_no": "G3031",
                                    "outbound_seat_status": "6", "inbound_seat_status": "7"},
              "hotel_star_service_required": {"hotel_name": "Orange Hotel Nanjing Confucius Temple Scenic Area",
                                              "required_service": "Swimming Pool", "hotel_star": 3,
                                              "hotel_price": 441.0},
              "restaurant_specific_tag_nearby": {"attraction_name": "Laomendong",
                                                 "restaurant_name": "Six Dynasties Pine Teahouse",
                                                 "required_tag": "Birthday Package", "price_per_person": 294.0},
              "attraction_must_visit_named": {"attraction_names": ["Nanjing Deji Plaza",
                                                                   "Nanjing City Wall Taicheng Scenic Area"]},
              "budget_constraint": {"max_budget": 3000}}},
    "1": {"org": "Harbin", "dest": ["Dalian"], "days": 2, "depart_date": "2025-11-12",
          "return_date": "2025-11-13", "people_number": 4, "room_number": 2, "depart_weekday": 3,
          "hard_constraints": {
              "train_seat_status": {"people_number": 4, "outbound_train_no": "G710", "inbound_train_no": "G725",
                                    "outbound_seat_status": "7", "inbound_seat_status": "8"},
              "hotel_newest_decoration": {"hotel_name": "Hanting Hotel Dalian Xian Road Commercial Street",
                                          "hotel_price": 233.0, "decoration_time": 2025},
              "restaurant_specific_tag_nearby": {"attraction_name": "Xinghai Bay Boardwalk",
                                                 "restaurant_name": "Yuanben Tang Restaurant",
                                                 "required_tag": "Private Room", "price_per_person": 61.0},
              "attraction_all_of_type": {"attraction_names": ["Qingniwa Bridge Commercial Area",
                                                              "Donggang Business District"],
                                         "attraction_type": "Leisure Experience"}}},
}
QUERY = {"0": "Two days from Hefei to Nanjing on 2025-11-12, three people by train, two rooms in a 3-star "
              "hotel with a pool, budget 3000 yuan; must see Nanjing Deji Plaza and Nanjing City Wall "
              "Taicheng Scenic Area; one meal near Laomendong with a birthday package.",
         "1": "Two days from Harbin to Dalian on 2025-11-12, four people by train, two rooms in a hotel "
              "renovated in 2025; a meal near Xinghai Bay Boardwalk with a private room; all Leisure "
              "Experience attractions."}

# ------------------------------------------------------------------------- places: name -> (lat, lon, type)

PLACES = {
    "0": {"Hefei South Station": ("31.798000", "117.290000", "station"),
          "Nanjing South Station": ("31.968000", "118.798000", "station"),
          "Orange Hotel Nanjing Confucius Temple Scenic Area": ("32.020000", "118.788000", "hotel"),
          "Plain Inn Nanjing": ("32.020000", "118.788000", "hotel"),  # same spot: hotel variant
          "Nanjing Deji Plaza": ("32.043000", "118.784000", "attraction"),
          "Confucius Temple": ("32.043000", "118.784000", "attraction"),  # same spot as Deji
          "Nanjing City Wall Taicheng Scenic Area": ("32.065000", "118.795000", "attraction"),
          "Laomendong": ("32.012000", "118.786000", "attraction"),
          "Nanjing Museum": ("32.012000", "118.786000", "attraction"),  # closed Wednesdays
          "Laomendong Art Gallery": ("32.012000", "118.786000", "attraction"),  # min 2 h
          "Xuanwu Lake Park": ("32.075000", "118.800000", "attraction"),
          "Six Dynasties Pine Teahouse": ("32.013000", "118.787000", "restaurant"),
          "Pine Garden Bistro": ("32.013000", "118.787000", "restaurant"),  # no birthday package
          "Qinhuai Snack Hall": ("32.020500", "118.789000", "restaurant"),
          "Golden Banquet Hall": ("32.020500", "118.789000", "restaurant"),  # expensive
          "Jinling Noodle House": ("32.020500", "118.789000", "restaurant")},
    "1": {"Harbin West Station": ("45.700000", "126.600000", "station"),
          "Dalian North Station": ("38.960000", "121.600000", "station"),
          "Hanting Hotel Dalian Xian Road Commercial Street": ("38.920000", "121.590000", "hotel"),
          "Dalian Harbour Hotel": ("38.920000", "121.590000", "hotel"),  # decorated 2015
          "Qingniwa Bridge Commercial Area": ("38.915000", "121.630000", "attraction"),
          "Donggang Business District": ("38.930000", "121.670000", "attraction"),
          "Xinghai Bay Boardwalk": ("38.880000", "121.590000", "attraction"),
          "Yuanben Tang Restaurant": ("38.882000", "121.592000", "restaurant"),
          "Seaside Dumpling House": ("38.881000", "121.591000", "restaurant")},
}

# consecutive anchors of the plans: (from, to, duration_minutes, distance_meters, cost)
MATRIX = {
    "0": [("Nanjing South Station", "Orange Hotel Nanjing Confucius Temple Scenic Area", 30, 8000, 35),
          ("Orange Hotel Nanjing Confucius Temple Scenic Area", "Nanjing Deji Plaza", 20, 3000, 15),
          ("Nanjing Deji Plaza", "Six Dynasties Pine Teahouse", 20, 4000, 18),
          ("Six Dynasties Pine Teahouse", "Laomendong", 10, 500, 0),
          ("Laomendong", "Nanjing City Wall Taicheng Scenic Area", 30, 6000, 25),
          ("Nanjing City Wall Taicheng Scenic Area", "Qinhuai Snack Hall", 20, 5000, 20),
          ("Qinhuai Snack Hall", "Orange Hotel Nanjing Confucius Temple Scenic Area", 30, 7000, 30),
          ("Orange Hotel Nanjing Confucius Temple Scenic Area", "Xuanwu Lake Park", 20, 4000, 16),
          ("Xuanwu Lake Park", "Jinling Noodle House", 20, 3000, 14),
          ("Jinling Noodle House", "Nanjing South Station", 30, 9000, 32)],
    "1": [("Dalian North Station", "Hanting Hotel Dalian Xian Road Commercial Street", 30, 10000, 40),
          ("Hanting Hotel Dalian Xian Road Commercial Street", "Qingniwa Bridge Commercial Area", 20, 3000, 15),
          ("Qingniwa Bridge Commercial Area", "Donggang Business District", 20, 4000, 18),
          ("Donggang Business District", "Yuanben Tang Restaurant", 30, 8000, 30),
          ("Yuanben Tang Restaurant", "Hanting Hotel Dalian Xian Road Commercial Street", 30, 7000, 28),
          ("Hanting Hotel Dalian Xian Road Commercial Street", "Xinghai Bay Boardwalk", 30, 9000, 35),
          ("Xinghai Bay Boardwalk", "Seaside Dumpling House", 10, 800, 0),
          ("Seaside Dumpling House", "Dalian North Station", 30, 12000, 45)],
}

# (train_no, origin, dest, date, dep station, arr station, dep HH:MM, arr HH:MM, minutes, price, seats)
TRAINS = {
    "0": [("G7798", "Hefei", "Nanjing", "2025-11-12", "Hefei South Station", "Nanjing South Station",
           "08:00", "09:00", 60, "90.0", "6"),
          ("G7000", "Hefei", "Nanjing", "2025-11-12", "Hefei South Station", "Nanjing South Station",
           "08:00", "09:00", 60, "90.0", "1"),  # the low-seat distractor
          ("G3031", "Nanjing", "Hefei", "2025-11-13", "Nanjing South Station", "Hefei South Station",
           "16:30", "17:30", 60, "90.0", "7")],
    "1": [("G710", "Harbin", "Dalian", "2025-11-12", "Harbin West Station", "Dalian North Station",
           "07:00", "11:00", 240, "300.0", "7"),
          ("G725", "Dalian", "Harbin", "2025-11-13", "Dalian North Station", "Harbin West Station",
           "17:00", "21:00", 240, "300.0", "")],  # blank seats -> "Available"
}

# name -> (star, price, score, brand, services, decoration year)
HOTELS = {
    "0": {"Orange Hotel Nanjing Confucius Temple Scenic Area": ("3", "441.0", "4.6", "Orange Hotel",
                                                                "Swimming Pool;Free WiFi", "2021"),
          "Plain Inn Nanjing": ("3", "300.0", "4.2", "Plain Inn", "Free WiFi", "2018")},
    "1": {"Hanting Hotel Dalian Xian Road Commercial Street": ("2", "233.0", "4.5", "Hanting Hotel",
                                                               "Free WiFi;Laundry", "2025"),
          "Dalian Harbour Hotel": ("3", "233.0", "4.3", "Harbour", "Free WiFi", "2015")},
}

# name -> (open, close, closed days, min h, max h, ticket, type, rating)
ATTRACTIONS = {
    "0": {"Nanjing Deji Plaza": ("10:00", "22:00", "", "1", "3", "0", "City Landmark", "4.8"),
          "Confucius Temple": ("10:00", "22:00", "", "1", "3", "0", "Historical and Cultural", "4.7"),
          "Nanjing City Wall Taicheng Scenic Area": ("08:00", "18:00", "", "1", "3", "30",
                                                     "Historical and Cultural", "4.6"),
          "Laomendong": ("Open 24 Hours", "Open 24 Hours", "", "1", "2", "0", "Leisure Experience", "4.5"),
          "Nanjing Museum": ("09:00", "17:00", "Wednesday", "1", "2", "0", "Art Exhibition", "4.9"),
          "Laomendong Art Gallery": ("Open 24 Hours", "Open 24 Hours", "", "2", "3", "0", "Art Exhibition", "4.1"),
          "Xuanwu Lake Park": ("06:00", "20:00", "", "2", "4", "0", "Natural Scenery", "4.7")},
    "1": {"Qingniwa Bridge Commercial Area": ("Open 24 Hours", "Open 24 Hours", "", "1", "3", "0",
                                              "Leisure Experience", "4.5"),
          "Donggang Business District": ("Open 24 Hours", "Open 24 Hours", "", "1", "3", "0",
                                         "Leisure Experience", "4.2"),
          "Xinghai Bay Boardwalk": ("09:00", "21:00", "", "1", "3", "0", "Natural Scenery", "4.6")},
}

# name -> (price, cuisine, open, close, near attraction, rating, tags)
RESTAURANTS = {
    "0": {"Six Dynasties Pine Teahouse": ("294.0", "Huaiyang", "11:00", "22:00", "Laomendong", "4.7",
                                          "Birthday Package;Private Room"),
          "Pine Garden Bistro": ("294.0", "Huaiyang", "11:00", "22:00", "Laomendong", "4.4", "Private Room"),
          "Qinhuai Snack Hall": ("60.0", "Snacks", "10:00", "21:00", "Laomendong", "4.3", ""),
          "Golden Banquet Hall": ("200.0", "Banquet", "10:00", "21:00", "Laomendong", "4.5", "Private Room"),
          "Jinling Noodle House": ("40.0", "Noodles", "10:00", "21:00", "Xuanwu Lake Park", "4.2", "")},
    "1": {"Yuanben Tang Restaurant": ("61.0", "Seafood", "10:00", "22:00", "Xinghai Bay Boardwalk", "4.0",
                                      "Private Room"),
          "Seaside Dumpling House": ("45.0", "Dumplings", "10:00", "21:00", "Xinghai Bay Boardwalk", "4.1", "")},
}

CITY = {"0": "Nanjing", "1": "Dalian"}


def _write(path: Path, columns: List[str], rows: List[Dict[str, str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        w.writerows(rows)


def _coord(task: str, name: str) -> str:
    lat, lon, _ = PLACES[task][name]
    return f"{lat},{lon}"


def _train_rows(task: str) -> List[Dict[str, str]]:
    rows = []
    for i, (no, o, d, date, ds, as_, dt, at, minutes, price, seats) in enumerate(TRAINS[task]):
        rows.append({"origin_city": o, "destination_city": d, "dep_date": date, "seat_class": "Second Class Seat",
                     "route_index": str(i), "segment_index": "0", "seat_status": seats,
                     "dep_station_code": ds[:3].upper(), "dep_station_name": ds, "arr_station_code": as_[:3].upper(),
                     "arr_station_name": as_, "dep_datetime": f"{date} {dt}", "arr_datetime": f"{date} {at}",
                     "duration": str(minutes), "train_type": "High-speed", "train_no": no, "price": price})
    return rows


def build_task(task: str, root: Path) -> Path:
    folder = root / f"id_{task}"
    cols = {name: c for name, (_, c) in TABLES.items()}
    path = {name: folder / rel for name, (rel, _) in TABLES.items()}
    _write(path["trains"], cols["trains"], _train_rows(task))
    _write(path["flights"], cols["flights"], [])
    _write(path["hotels"], cols["hotels"], [
        {"name": n, "address": f"{CITY[task]} {n} Road", "latitude": PLACES[task][n][0],
         "longitude": PLACES[task][n][1], "decoration_time": year, "hotel_star": star, "price": price,
         "score": score, "brand": brand, "services": services, "city": CITY[task]}
        for n, (star, price, score, brand, services, year) in HOTELS[task].items()])
    _write(path["attractions"], cols["attractions"], [
        {"attraction_id": str(i), "attraction_name": n, "city": CITY[task], "address": f"{CITY[task]} {n}",
         "latitude": PLACES[task][n][0], "longitude": PLACES[task][n][1], "description": f"About {n}",
         "rating": rating, "opening_time": o, "closing_time": c, "closing_dates": closed,
         "min_visit_hours": lo, "max_visit_hours": hi, "ticket_price": ticket, "attraction_type": kind}
        for i, (n, (o, c, closed, lo, hi, ticket, kind, rating)) in enumerate(ATTRACTIONS[task].items())])
    _write(path["restaurants"], cols["restaurants"], [
        {"query_latitude": PLACES[task][near][0], "query_longitude": PLACES[task][near][1],
         "restaurant_id": str(i), "restaurant_name": n, "latitude": PLACES[task][n][0],
         "longitude": PLACES[task][n][1], "price_per_person": price, "cuisine": cuisine, "opening_time": o,
         "closing_time": c, "nearby_attraction_name": near, "rating": rating, "tags": tags}
        for i, (n, (price, cuisine, o, c, near, rating, tags)) in enumerate(RESTAURANTS[task].items())])
    _write(path["locations"], cols["locations"], [
        {"poi_name": n, "latitude": lat, "longitude": lon, "poi_type": kind}
        for n, (lat, lon, kind) in PLACES[task].items()])
    _write(path["matrix"], cols["matrix"], [
        {"origin": _coord(task, a), "destination": _coord(task, b), "distance_meters": str(dist),
         "duration_minutes": str(minutes), "cost": str(cost)}
        for a, b, minutes, dist, cost in MATRIX[task]])
    return folder


def tool_schemas() -> List[dict]:
    """Our small schemas of the 9 tools (names and arguments of the shipped file)."""
    from opsd.environment import function_schema

    s = "string"
    spec = [("query_train_info", {"origin": s, "destination": s, "depDate": s, "seatClassName": s}, 3),
            ("query_flight_info", {"origin": s, "destination": s, "depDate": s, "seatClassName": s}, 3),
            ("query_hotel_info", {"destination": s, "checkinDate": s, "checkoutDate": s, "hotelStar": s,
                                  "hotelBrands": s}, 3),
            ("query_attraction_details", {"attraction_name": s}, 1),
            ("recommend_attractions", {"city": s, "attraction_type": s}, 1),
            ("search_location", {"place_name": s}, 1),
            ("query_road_route_info", {"origin": s, "destination": s}, 2),
            ("recommend_restaurants", {"latitude": s, "longitude": s}, 2),
            ("query_restaurant_details", {"restaurant_name": s}, 1)]
    return [function_schema(name, f"Fixture tool {name}.", params, list(params)[:n]) for name, params, n in spec]


def build(out: Path) -> Dict[str, Path]:
    """Write the fixture; returns its paths (database, queries, schema)."""
    out = Path(out)
    for task in ("0", "1"):
        build_task(task, out / "database")
    queries = [{"id": t, "query": QUERY[t], "meta_info": META[t]} for t in ("0", "1")]
    (out / "queries.json").write_text(json.dumps(queries, ensure_ascii=False, indent=1))
    (out / "tool_schema.json").write_text(json.dumps(tool_schemas(), indent=1))
    return {"database": out / "database", "queries": out / "queries.json", "schema": out / "tool_schema.json"}


# ------------------------------------------------------------------------- plans

GOLD = {"0": """Day 1:
Current City: from Hefei to Nanjing
Accommodation: Orange Hotel Nanjing Confucius Temple Scenic Area, ¥441/room/night
08:00-09:00 | travel_intercity_public | train G7798, Hefei South Station - Nanjing South Station, ¥90/person
09:00-09:30 | travel_city | Nanjing South Station - Orange Hotel Nanjing Confucius Temple Scenic Area, 8km, 30min, ¥35
09:30-10:00 | hotel | Check-in, Orange Hotel Nanjing Confucius Temple Scenic Area
10:00-10:20 | travel_city | Orange Hotel Nanjing Confucius Temple Scenic Area - Nanjing Deji Plaza, 3km, 20min, ¥15
10:20-12:20 | attraction | Nanjing Deji Plaza, ¥0/person
12:20-12:40 | travel_city | Nanjing Deji Plaza - Six Dynasties Pine Teahouse, 4km, 20min, ¥18
12:40-14:00 | meal | Lunch, Six Dynasties Pine Teahouse, ¥294/person
14:00-14:10 | travel_city | Six Dynasties Pine Teahouse - Laomendong, 0.5km, 10min, ¥0
14:10-15:40 | attraction | Laomendong, ¥0/person
15:40-16:10 | travel_city | Laomendong - Nanjing City Wall Taicheng Scenic Area, 6km, 30min, ¥25
16:10-17:40 | attraction | Nanjing City Wall Taicheng Scenic Area, ¥30/person
17:40-18:00 | travel_city | Nanjing City Wall Taicheng Scenic Area - Qinhuai Snack Hall, 5km, 20min, ¥20
18:00-19:00 | meal | Dinner, Qinhuai Snack Hall, ¥60/person
19:00-19:30 | travel_city | Qinhuai Snack Hall - Orange Hotel Nanjing Confucius Temple Scenic Area, 7km, 30min, ¥30
19:30-20:00 | hotel | Rest, Orange Hotel Nanjing Confucius Temple Scenic Area

Day 2:
Current City: from Nanjing to Hefei
Accommodation: -
08:30-09:00 | hotel | Check-out, Orange Hotel Nanjing Confucius Temple Scenic Area
09:00-09:20 | travel_city | Orange Hotel Nanjing Confucius Temple Scenic Area - Xuanwu Lake Park, 4km, 20min, ¥16
09:20-12:20 | attraction | Xuanwu Lake Park, ¥0/person
12:20-12:40 | travel_city | Xuanwu Lake Park - Jinling Noodle House, 3km, 20min, ¥14
12:40-13:40 | meal | Lunch, Jinling Noodle House, ¥40/person
13:40-14:10 | travel_city | Jinling Noodle House - Nanjing South Station, 9km, 30min, ¥32
14:10-16:30 | buffer | Waiting at the station
16:30-17:30 | travel_intercity_public | train G3031, Nanjing South Station - Hefei South Station, ¥90/person

**Budget Summary**
- Transportation: ¥745
- Accommodation: ¥882
- Meals: ¥1182
- Attractions & Tickets: ¥90
- Total Estimated Budget: ¥2899
""",
        "1": """Day 1:
Current City: from Harbin to Dalian
Accommodation: Hanting Hotel Dalian Xian Road Commercial Street, ¥233/room/night
07:00-11:00 | travel_intercity_public | train G710, Harbin West Station - Dalian North Station, ¥300/person
11:00-11:30 | travel_city | Dalian North Station - Hanting Hotel Dalian Xian Road Commercial Street, 10km, 30min, ¥40
11:30-12:00 | hotel | Check-in, Hanting Hotel Dalian Xian Road Commercial Street
12:00-12:20 | travel_city | Hanting Hotel Dalian Xian Road Commercial Street - Qingniwa Bridge Commercial Area, 3km, 20min, ¥15
12:20-14:20 | attraction | Qingniwa Bridge Commercial Area, ¥0/person
14:20-14:40 | travel_city | Qingniwa Bridge Commercial Area - Donggang Business District, 4km, 20min, ¥18
14:40-16:40 | attraction | Donggang Business District, ¥0/person
16:40-17:10 | travel_city | Donggang Business District - Yuanben Tang Restaurant, 8km, 30min, ¥30
17:10-18:30 | meal | Dinner, Yuanben Tang Restaurant, ¥61/person
18:30-19:00 | travel_city | Yuanben Tang Restaurant - Hanting Hotel Dalian Xian Road Commercial Street, 7km, 30min, ¥28
19:00-19:30 | hotel | Rest, Hanting Hotel Dalian Xian Road Commercial Street

Day 2:
Current City: from Dalian to Harbin
Accommodation: -
08:30-09:00 | hotel | Check-out, Hanting Hotel Dalian Xian Road Commercial Street
09:00-09:30 | travel_city | Hanting Hotel Dalian Xian Road Commercial Street - Xinghai Bay Boardwalk, 9km, 30min, ¥35
09:30-11:30 | attraction | Xinghai Bay Boardwalk, ¥0/person
11:30-11:40 | travel_city | Xinghai Bay Boardwalk - Seaside Dumpling House, 0.8km, 10min, ¥0
11:40-12:40 | meal | Lunch, Seaside Dumpling House, ¥45/person
12:40-13:10 | travel_city | Seaside Dumpling House - Dalian North Station, 12km, 30min, ¥45
13:10-17:00 | buffer | Waiting at the station
17:00-21:00 | travel_intercity_public | train G725, Dalian North Station - Harbin West Station, ¥300/person

**Budget Summary**
- Transportation: ¥2611
- Accommodation: ¥466
- Meals: ¥424
- Attractions & Tickets: ¥0
- Total Estimated Budget: ¥3501
"""}

# (variant name, task, the one check it must fail ("hard:<key>" or the commonsense check name),
#  [(old text, new text), ...]).  Totals are recomputed by hand where a price changes.
VARIANTS: List[Tuple[str, str, str, List[Tuple[str, str]]]] = [
    ("wrong_train", "0", "hard:train_seat_status", [("train G7798,", "train G7000,")]),
    ("hotel_without_pool", "0", "hard:hotel_star_service_required",
     [("Orange Hotel Nanjing Confucius Temple Scenic Area, ¥441", "Plain Inn Nanjing, ¥300"),
      ("Orange Hotel Nanjing Confucius Temple Scenic Area", "Plain Inn Nanjing"),
      ("Accommodation: ¥882", "Accommodation: ¥600"), ("¥2899", "¥2617")]),
    ("restaurant_without_tag", "0", "hard:restaurant_specific_tag_nearby",
     [("Six Dynasties Pine Teahouse", "Pine Garden Bistro")]),
    ("missing_must_visit", "0", "hard:attraction_must_visit_named", [("Nanjing Deji Plaza", "Confucius Temple")]),
    ("over_budget", "0", "hard:budget_constraint",
     [("Qinhuai Snack Hall", "Golden Banquet Hall"), ("Dinner, Golden Banquet Hall, ¥60", "Dinner, Golden Banquet Hall, ¥200"),
      ("Meals: ¥1182", "Meals: ¥1602"), ("¥2899", "¥3319")]),
    ("wrong_arrival_station", "0", "seamless_intercity_transfers",
     [("Nanjing South Station - Hefei South Station", "Nanjing South Station - Hefei Station")]),
    ("hotel_price_mismatch", "0", "validated_accommodation", [("¥441/room/night", "¥400/room/night")]),
    ("day_not_ending_at_hotel", "0", "ends_with_accommodation",
     [("19:30-20:00 | hotel | Rest, Orange Hotel Nanjing Confucius Temple Scenic Area\n", "")]),
    ("overlapping_slots", "0", "no_time_overlaps", [("10:00-10:20 | travel_city", "09:50-10:20 | travel_city")]),
    ("slow_transfer", "0", "reasonable_transfer_time",
     [("12:40-14:00 | meal | Lunch", "13:00-14:00 | meal | Lunch")]),
    ("closed_on_wednesday", "0", "avoidance_of_closure_days",
     [("14:10-15:40 | attraction | Laomendong,", "14:10-15:40 | attraction | Nanjing Museum,")]),
    ("visit_too_short", "0", "reasonable_duration_at_attractions",
     [("14:10-15:40 | attraction | Laomendong,", "14:10-15:40 | attraction | Laomendong Art Gallery,")]),
    ("wrong_total", "0", "cost_calculation_correctness", [("¥2899", "¥2000")]),
    ("repeated_restaurant", "0", "diverse_meal_options",
     [("Lunch, Jinling Noodle House, ¥40", "Lunch, Qinhuai Snack Hall, ¥60"),
      ("Xuanwu Lake Park - Jinling Noodle House", "Xuanwu Lake Park - Qinhuai Snack Hall"),
      ("Jinling Noodle House - Nanjing South Station", "Qinhuai Snack Hall - Nanjing South Station")]),
    ("older_hotel", "1", "hard:hotel_newest_decoration",
     [("Hanting Hotel Dalian Xian Road Commercial Street", "Dalian Harbour Hotel")]),
]


def variant_text(name: str) -> Tuple[str, str, str]:
    """(task, expected failing check, plan text) of a variant; every replacement must apply."""
    for vname, task, check, edits in VARIANTS:
        if vname == name:
            text = GOLD[task]
            for old, new in edits:
                if old not in text:
                    raise ValueError(f"variant {name}: {old!r} not in the plan")
                text = text.replace(old, new)
            return task, check, text
    raise KeyError(name)


def answer(plan: str, thinking: Optional[str] = "I have everything I need.") -> str:
    """A final assistant message around a plan, as a thinking model writes it."""
    return (f"<think>{thinking}</think>\n" if thinking is not None else "") + f"Here is the plan.\n<plan>\n{plan}</plan>"


def score_all(paths: Dict[str, Path]) -> List[str]:
    """One line per fixture plan (gold, variants): parsed lines, personalized, commonsense, failures."""
    from eval.deepplanning.database import load_task
    from eval.deepplanning.plan_parser import parse_plan
    from eval.deepplanning.scoring import score_plan

    plans = [(f"gold_{t}", t, "-", GOLD[t]) for t in GOLD]
    plans += [(name, *variant_text(name)) for name, *_ in VARIANTS]
    lines = []
    for name, task, want, text in plans:
        parsed = parse_plan(text)
        s = score_plan(parsed.plan, META[task], load_task(paths["database"], task))
        failed = ["hard:" + k for k, (ok, _) in s.hard.items() if ok is False] + [k for k, (ok, _) in s.checks.items() if not ok]
        lines.append(f"{name:24s} task {task} parsed {parsed.parsed}/{parsed.lines} personalized {s.personalized:.3f} "
                     f"(official {s.personalized_all:.0f}) commonsense {s.commonsense:.3f} "
                     f"failed {failed or '-'} expected {want}")
    return lines


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--score"]
    if len(args) != 1:
        raise SystemExit("usage: python -m eval.deepplanning.fixture OUT_DIR [--score]")
    built = build(Path(args[0]))
    for what, p in built.items():
        print(f"{what}: {p}")
    if "--score" in sys.argv:
        print("\n".join(score_all(built)))
