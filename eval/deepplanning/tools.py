"""The 9 DeepPlanning travel tools over one task's :class:`~eval.deepplanning.database.TaskDatabase`.

Semantics follow the official tools (``benchmark/deepplanning/travelplanning/tools`` of
QwenLM/Qwen-Agent, English texts): exact string filters, the same result shapes (JSON with
``indent=2``, or the attraction texts) and the same "not found" sentences, since a model trained
here is scored on those. Notable official behaviour kept on purpose:

- ``query_hotel_info`` and ``recommend_attractions`` ignore the city: every row of the task's
  table is a candidate (each task's database holds only its own cities);
- trains wrap each route in a one-element list, flights do not; a route's price is its first
  segment's;
- ``query_road_route_info`` first checks that both coordinates occur somewhere in the matrix.

The schemas are the shipped ``tool_schema_en.json`` (see :func:`load_schemas`).
"""
from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from eval.deepplanning.database import Row, TaskDatabase

TOOL_NAMES = ("query_train_info", "query_flight_info", "query_hotel_info", "query_attraction_details",
              "recommend_attractions", "search_location", "query_road_route_info", "recommend_restaurants",
              "query_restaurant_details")


class SchemaError(ValueError):
    """The tool schema file is missing or does not declare the 9 tools."""


def load_schemas(path: Path) -> List[dict]:
    """The OpenAI-style schemas of the 9 tools, in the file's order; checks that all are there."""
    path = Path(path)
    if not path.is_file():
        raise SchemaError(f"tool schema file {path} is missing (python -m eval.prepare copies it from "
                          "../shared/data)")
    try:
        schemas = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise SchemaError(f"{path}: not valid JSON ({e})") from e
    names = [s.get("function", {}).get("name") for s in schemas]
    missing = [n for n in TOOL_NAMES if n not in names]
    if missing:
        raise SchemaError(f"{path}: no schema for tool(s) {missing}")
    return [s for s in schemas if s["function"]["name"] in TOOL_NAMES]


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, indent=2)


def _int(text: str) -> int:
    return int(float(text)) if text.strip() else 0


def _float_or(text: str, default):
    try:
        return float(text)
    except ValueError:
        return default


class TravelTools:
    """Callable tools of one task: ``tools.call(name, arguments) -> str``."""

    def __init__(self, db: TaskDatabase):
        self.db = db
        self._dispatch: Dict[str, Callable[..., str]] = {n: getattr(self, n) for n in TOOL_NAMES}

    def call(self, name: str, arguments: Dict[str, Any]) -> str:
        """Run one tool; arguments it does not take are ignored (as the official tools do)."""
        fn = self._dispatch.get(name)
        if fn is None:  # official: an error object, not an exception
            return _json({"error": f"Tool {name} does not exist"})
        return fn(**{k: v for k, v in arguments.items() if k in _PARAMS[name]})

    # ------------------------------------------------------------------------- trains and flights

    def _routes(self, kind: str, origin, destination, depDate, seatClassName) -> Optional[List[List[Row]]]:
        rows = self.db.routes[kind].get((origin, destination, depDate), [])
        if seatClassName:
            rows = [r for r in rows if r["seat_class"] == seatClassName]
        if not rows:
            return None
        by_route: Dict[str, List[Row]] = {}
        for r in rows:
            by_route.setdefault(r["route_index"], []).append(r)
        # Official order: route_index and segment_index sorted as strings (pandas dtype=str).
        return [sorted(by_route[k], key=lambda r: r["segment_index"]) for k in sorted(by_route)]

    @staticmethod
    def _segment(r: Row, dep_city: str, transport_name: str, transport_no: str) -> Dict[str, Any]:
        return {"arrCityName": r["destination_city"], "arrStationCode": r["arr_station_code"],
                "arrStationName": r["arr_station_name"], "depCityName": dep_city,
                "depStationCode": r["dep_station_code"], "depStationName": r["dep_station_name"],
                "duration": _int(r["duration"]), "arrDateTime": r["arr_datetime"],
                "depDateTime": r["dep_datetime"], "marketingTransportName": transport_name,
                "marketingTransportNo": transport_no, "seatClassName": r["seat_class"],
                "Remaining Seats": r["seat_status"] if r["seat_status"].strip() else "Available"}

    @staticmethod
    def _route_items(routes: List[List[Row]], segment: Callable[[int, Row, List[Row]], Dict[str, Any]]) -> list:
        """One item per route: ``Segment i`` from ``segment(i, row, route)``, then the price (the
        first segment's)."""
        return [{**{f"Segment {i}": segment(i, r, segs) for i, r in enumerate(segs, 1)},
                 "price": _float_or(segs[0]["price"], 0)} for segs in routes]

    def query_train_info(self, origin=None, destination=None, depDate=None, seatClassName="") -> str:
        routes = self._routes("trains", origin, destination, depDate, seatClassName)
        if routes is None:
            return f"No train information found from {origin} to {destination} on {depDate}"

        def segment(i, r, segs):
            # a transfer's later segment departs from the previous arrival station's city part
            dep_city = r["origin_city"] if i == 1 else segs[i - 2]["arr_station_name"].split(" Station")[0]
            return self._segment(r, dep_city, r["train_type"], r["train_no"])

        return _json([[item] for item in self._route_items(routes, segment)])  # trains: one-element lists

    def query_flight_info(self, origin=None, destination=None, depDate=None, seatClassName="") -> str:
        routes = self._routes("flights", origin, destination, depDate, seatClassName)
        if routes is None:
            return f"No flight information found from {origin} to {destination} on {depDate}"

        def segment(i, r, segs):
            return {**self._segment(r, r["origin_city"], r["airline"], r["flight_no"]),
                    "equipSize": r["equip_size"], "equipType": r["equip_type"], "manufacturer": r["manufacturer"]}

        return _json(self._route_items(routes, segment))

    # ------------------------------------------------------------------------- hotels

    def query_hotel_info(self, destination=None, checkinDate=None, checkoutDate=None, hotelStar="",
                         hotelBrands="") -> str:
        rows = self.db.tables["hotels"]
        if hotelStar:
            rows = [r for r in rows if r["hotel_star"] == hotelStar]
        if hotelBrands:
            rows = [r for r in rows if r["brand"] == hotelBrands]
        if not rows:
            return (f"No hotel information found in {destination} from {checkinDate} to {checkoutDate}, "
                    "please check parameters or reduce constraints")
        out = []
        for r in rows:
            item = {"name": r["name"], "address": r["address"], "latitude": r["latitude"],
                    "longitude": r["longitude"], "decorationTime": r["decoration_time"],
                    "hotelStar": r["hotel_star"], "price": r["price"], "score": r["score"], "brand": r["brand"]}
            if r["services"].strip():
                item["services"] = r["services"].split(";")
            out.append(item)
        return _json(out)

    # ------------------------------------------------------------------------- attractions

    def query_attraction_details(self, attraction_name=None) -> str:
        r = self.db.attraction_by_name.get(attraction_name)
        if r is None:
            return f"Detailed information not found for attraction {attraction_name}"
        hours = (r["opening_time"] if r["opening_time"] == r["closing_time"]
                 else f"{r['opening_time']} to {r['closing_time']}")
        lines = [("Attraction ID", r["attraction_id"]), ("Attraction Name", r["attraction_name"]),
                 ("City", r["city"]), ("Address", r["address"]),
                 ("Coordinates", f"Latitude {r['latitude']}，Longitude {r['longitude']}"),
                 ("Description", r["description"]),
                 ("Rating", f"{_float_or(r['rating'], '')}(average visitor rating)"),
                 ("Opening Hours", hours), ("Closed Dates", r["closing_dates"]),
                 ("Minimum Visit Duration", f"{_float_or(r['min_visit_hours'], '')} hours"),
                 ("Maximum Visit Duration", f"{_float_or(r['max_visit_hours'], '')} hours"),
                 ("Ticket Price", f"{_float_or(r['ticket_price'], '0')} RMB"),
                 ("Attraction Type", r["attraction_type"])]
        return "\n".join(f"{label}：{value}" for label, value in lines)

    def recommend_attractions(self, city=None, attraction_type="") -> str:
        rows = self.db.tables["attractions"]
        if attraction_type:
            rows = [r for r in rows if r["attraction_type"] == attraction_type]
        if not rows:
            return "No attraction recommendations found"
        lines = ["Recommended attractions:\n"]
        lines += [f"{r['attraction_name']}, {r['description']}. This is a {r['attraction_type']} type attraction"
                  for r in rows]
        return "\n".join(lines)

    # ------------------------------------------------------------------------- places and routes

    def search_location(self, place_name=None) -> str:
        r = self.db.location_by_name.get(place_name)
        if r is None:
            return (f"Coordinate information not found for location {place_name}, please check: 1. Whether "
                    "the place name comes from other tool results; 2. Whether the place name is exactly "
                    "consistent with tool results, no abbreviation, renaming or additional description allowed")
        return _json({"place_name": r["poi_name"], "latitude": r["latitude"], "longitude": r["longitude"]})

    def query_road_route_info(self, origin=None, destination=None) -> str:
        for coord in (origin, destination):
            if coord not in self.db.matrix_coords:
                return (f"Coordinate {coord} is not in query range, please check:\n1. Whether coordinate comes "
                        "from valid tool query result, not manual input or fabrication;\n2. Whether coordinate "
                        "precision is exactly consistent with query result, 6 decimal places")
        r = self.db.matrix.get((origin, destination))
        if r is None:
            return f"No transportation information found from {origin} to {destination}"
        return _json({"origin": r["origin"], "destination": r["destination"],
                      "distance_in_meters": _int(r["distance_meters"]),
                      "duration_in_minutes": _int(r["duration_minutes"]), "cost": _int(r["cost"])})

    # ------------------------------------------------------------------------- restaurants

    @staticmethod
    def _restaurant(r: Row) -> Dict[str, Any]:
        item = {"name": r["restaurant_name"], "latitude": r["latitude"], "longitude": r["longitude"],
                "price_per_person": r["price_per_person"], "cuisine": r["cuisine"],
                "opening_time": r["opening_time"], "closing_time": r["closing_time"],
                "nearby_attraction_name": r["nearby_attraction_name"], "rating": r["rating"]}
        if r["tags"].strip():
            item["tags"] = r["tags"].split(";")
        return item

    def recommend_restaurants(self, latitude=None, longitude=None) -> str:
        rows = self.db.restaurants_near.get((str(latitude), str(longitude)), [])
        if not rows:
            return (f"No recommended restaurants found near coordinates ({latitude}, {longitude}), "
                    "please check coordinate source")
        return _json([self._restaurant(r) for r in rows])

    def query_restaurant_details(self, restaurant_name=None) -> str:
        r = self.db.restaurant_by_name.get(restaurant_name)
        if r is None:
            return _json({"message": f"Detailed information not found for restaurant {restaurant_name}",
                          "restaurant_name": restaurant_name})
        return _json({"id": r["restaurant_id"], **self._restaurant(r)})


_PARAMS = {n: set(inspect.signature(getattr(TravelTools, n)).parameters) - {"self"} for n in TOOL_NAMES}
