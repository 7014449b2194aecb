"""The 9 travel tools over the fixture database: exact matching, result shapes, not-found texts,
and the database errors (missing folder, file, column)."""
import json
import shutil

import pytest

from eval.deepplanning.database import DatabaseError, check_task, clear_cache, load_task
from eval.deepplanning.tools import TOOL_NAMES, TravelTools, load_schemas, SchemaError


@pytest.fixture
def tools(db0):
    return TravelTools(db0)


def test_trains_are_grouped_by_route_wrapped_in_lists_and_exact(tools):
    out = json.loads(tools.call("query_train_info", {"origin": "Hefei", "destination": "Nanjing",
                                                     "depDate": "2025-11-12"}))
    assert [type(r) for r in out] == [list, list]  # one route per item, each wrapped in a list
    seg = out[0][0]["Segment 1"]
    assert seg["marketingTransportNo"] == "G7798" and seg["Remaining Seats"] == "6"
    assert seg["duration"] == 60 and out[0][0]["price"] == 90.0 and seg["depCityName"] == "Hefei"
    miss = tools.call("query_train_info", {"origin": "hefei", "destination": "Nanjing", "depDate": "2025-11-12"})
    assert miss == "No train information found from hefei to Nanjing on 2025-11-12"
    assert tools.call("query_train_info", {"origin": "Hefei", "destination": "Nanjing", "depDate": "2025-11-12",
                                           "seatClassName": "First Class Seat"}).startswith("No train information")


def test_a_transfer_route_is_priced_by_its_first_segment(tools, monkeypatch):
    """As officially: one item per route with ``Segment 1..n``; the price is the first segment's;
    a later train segment departs from the city part of the previous arrival station."""
    first = tools.db.routes["trains"][("Hefei", "Nanjing", "2025-11-12")][0]
    second = {**first, "price": "77", "arr_station_name": "Wuxi Station", "train_no": "G2"}
    monkeypatch.setattr(tools, "_routes", lambda *a: [[first, second, second]])
    item, = json.loads(tools.call("query_train_info", {"origin": "a", "destination": "b", "depDate": "c"}))[0]
    assert list(item) == ["Segment 1", "Segment 2", "Segment 3", "price"] and item["price"] == 90.0
    assert item["Segment 2"]["depCityName"] == first["arr_station_name"].split(" Station")[0]
    assert item["Segment 3"]["depCityName"] == "Wuxi" and item["Segment 3"]["marketingTransportNo"] == "G2"


def test_blank_seat_status_reads_available_and_flights_header_only(fixture_paths):
    tools = TravelTools(load_task(fixture_paths["database"], "1"))
    out = json.loads(tools.call("query_train_info", {"origin": "Dalian", "destination": "Harbin",
                                                     "depDate": "2025-11-13"}))
    assert out[0][0]["Segment 1"]["Remaining Seats"] == "Available"
    assert tools.call("query_flight_info", {"origin": "Harbin", "destination": "Dalian", "depDate": "2025-11-12"}) \
        == "No flight information found from Harbin to Dalian on 2025-11-12"


def test_hotels_ignore_the_city_and_filter_star_and_brand(tools):
    every = json.loads(tools.call("query_hotel_info", {"destination": "Anywhere", "checkinDate": "2025-11-12",
                                                       "checkoutDate": "2025-11-13"}))
    assert {h["name"] for h in every} == {"Orange Hotel Nanjing Confucius Temple Scenic Area", "Plain Inn Nanjing"}
    orange = next(h for h in every if h["name"].startswith("Orange"))
    assert orange["services"] == ["Swimming Pool", "Free WiFi"] and orange["price"] == "441.0"
    assert orange["decorationTime"] == "2021" and orange["hotelStar"] == "3"
    brand = json.loads(tools.call("query_hotel_info", {"destination": "Nanjing", "checkinDate": "d",
                                                       "checkoutDate": "e", "hotelBrands": "Plain Inn"}))
    assert [h["name"] for h in brand] == ["Plain Inn Nanjing"]
    assert tools.call("query_hotel_info", {"destination": "Nanjing", "checkinDate": "d", "checkoutDate": "e",
                                           "hotelStar": "5"}).startswith("No hotel information found in Nanjing")


def test_attraction_details_text_and_recommendations(tools):
    text = tools.call("query_attraction_details", {"attraction_name": "Nanjing Museum"})
    lines = dict(line.split("：", 1) for line in text.splitlines())
    assert lines["Opening Hours"] == "09:00 to 17:00" and lines["Closed Dates"] == "Wednesday"
    assert lines["Ticket Price"] == "0.0 RMB" and lines["Minimum Visit Duration"] == "1.0 hours"
    assert "Opening Hours：Open 24 Hours" in tools.call("query_attraction_details", {"attraction_name": "Laomendong"})
    assert tools.call("query_attraction_details", {"attraction_name": "Museum"}) == \
        "Detailed information not found for attraction Museum"
    rec = tools.call("recommend_attractions", {"city": "Beijing", "attraction_type": "Art Exhibition"}).splitlines()
    assert rec[0] == "Recommended attractions:" and len([l for l in rec if l.endswith("type attraction")]) == 2
    assert tools.call("recommend_attractions", {"city": "X", "attraction_type": "Theme Park"}) == \
        "No attraction recommendations found"


def test_locations_routes_and_restaurants(tools):
    loc = json.loads(tools.call("search_location", {"place_name": "Laomendong"}))
    assert loc == {"place_name": "Laomendong", "latitude": "32.012000", "longitude": "118.786000"}
    assert tools.call("search_location", {"place_name": "Laomen"}).startswith("Coordinate information not found")
    near = json.loads(tools.call("recommend_restaurants", {"latitude": "32.012000", "longitude": "118.786000"}))
    six = next(r for r in near if r["name"] == "Six Dynasties Pine Teahouse")
    assert six["tags"] == ["Birthday Package", "Private Room"] and six["price_per_person"] == "294.0"
    assert "tags" not in next(r for r in near if r["name"] == "Qinhuai Snack Hall")  # empty tags: no key
    # exact strings: 32.012 is not 32.012000
    assert tools.call("recommend_restaurants", {"latitude": "32.012", "longitude": "118.786000"}).startswith(
        "No recommended restaurants found near coordinates (32.012, 118.786000)")
    route = json.loads(tools.call("query_road_route_info", {"origin": "32.013000,118.787000",
                                                            "destination": "32.012000,118.786000"}))
    assert route["duration_in_minutes"] == 10 and route["distance_in_meters"] == 500 and route["cost"] == 0
    assert tools.call("query_road_route_info", {"origin": "1,2", "destination": "32.012000,118.786000"}) \
        .startswith("Coordinate 1,2 is not in query range")
    assert tools.call("query_road_route_info", {"origin": "32.012000,118.786000",
                                                "destination": "32.013000,118.787000"}) \
        == "No transportation information found from 32.012000,118.786000 to 32.013000,118.787000"
    detail = json.loads(tools.call("query_restaurant_details", {"restaurant_name": "Qinhuai Snack Hall"}))
    assert detail["id"] == "2" and detail["name"] == "Qinhuai Snack Hall"
    assert json.loads(tools.call("query_restaurant_details", {"restaurant_name": "Nope"}))["message"] == \
        "Detailed information not found for restaurant Nope"


def test_unknown_tool_is_an_error_object(tools):
    assert json.loads(tools.call("book_hotel", {}))["error"]


def test_tables_are_loaded_once_per_task(fixture_paths):
    clear_cache()
    a = load_task(fixture_paths["database"], "0")
    assert load_task(fixture_paths["database"], 0) is a
    assert load_task(fixture_paths["database"], "1") is not a


def test_missing_folder_file_and_column_name_task_and_file(fixture_paths, tmp_path):
    root = tmp_path / "db"
    shutil.copytree(fixture_paths["database"], root)
    with pytest.raises(DatabaseError, match=r"task 7: database folder .*id_7 is missing"):
        load_task(root, "7")
    (root / "id_1" / "hotels" / "hotels.csv").unlink()
    with pytest.raises(DatabaseError, match=r"task 1: .*hotels/hotels.csv is missing"):
        load_task(root, "1")
    csv_path = root / "id_0" / "restaurants" / "restaurants.csv"
    lines = csv_path.read_text().splitlines()
    csv_path.write_text("\n".join([lines[0].replace("price_per_person", "price")] + lines[1:]) + "\n")
    with pytest.raises(DatabaseError, match=r"task 0: .*restaurants.csv lacks column\(s\) \['price_per_person'\]"):
        load_task(root, "0")
    assert check_task(root, "0") == [f"task 0: {csv_path} lacks column(s) ['price_per_person']"]
    assert check_task(root, "7")[0].startswith("task 7: folder")


def test_schemas_shipped_and_fixture(fixture_paths):
    from eval.benchmarks import SHARED_DATA
    from eval.deepplanning.files import SCHEMA_RELPATH

    assert [s["function"]["name"] for s in load_schemas(fixture_paths["schema"])] == list(TOOL_NAMES)
    shipped = SHARED_DATA / SCHEMA_RELPATH
    if shipped.is_file():
        assert sorted(s["function"]["name"] for s in load_schemas(shipped)) == sorted(TOOL_NAMES)
    with pytest.raises(SchemaError, match="missing"):
        load_schemas(fixture_paths["schema"].parent / "nope.json")


def test_bench_runs_every_tool_on_the_padded_fixture(capsys):
    from eval.deepplanning import bench

    assert bench.main(["--pad", "50", "--seconds", "0.2"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["tools_in_mix"] == 9 and out["calls"] >= 10 and out["calls_per_s"] > 0
    assert out["records"] > 7 * 50


def test_extra_arguments_are_ignored(tools):
    got = tools.call("search_location", {"place_name": "Laomendong", "r": 1, "mode": "walk"})
    assert json.loads(got)["place_name"] == "Laomendong"
