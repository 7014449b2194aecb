"""One DeepPlanning travel task's database: the seven CSV tables of ``<db>/id_<N>/``, loaded once.

Layout (official ``database_en/id_N/``; columns are the ones the tools and scorers read)::

    trains/trains.csv  flights/flights.csv  hotels/hotels.csv  attractions/attractions.csv
    restaurants/restaurants.csv  locations/locations_coords.csv  transportation/distance_matrix.csv

Every cell stays a string and every filter is an exact string match, as in the official tools
(``pandas.read_csv(dtype=str)``). One difference: an empty cell is ``""`` here, where pandas gives
NaN (the official results then show ``NaN``/``"nan"`` for it).

Two views of a name's rows, because the official code has two: the tools take the **first** row
of a name (pandas ``.iloc[0]``: ``attraction_by_name``, ``restaurant_by_name``,
``location_by_name``), the evaluation's loaders (``evaluation/utils.py``) key by the stripped name,
skip empty names and keep the **last** row (``hotel_index``, ``attraction_index``,
``restaurant_index``, ``location_index``, used by :mod:`eval.deepplanning.scoring`). They differ
only where a task repeats a name; :func:`count_duplicates` counts those
(``python -m eval.prepare --deepplanning-db DIR`` prints them).

A missing task folder, CSV file or column is a :class:`DatabaseError` naming the task id and the
file. Loaded tables are cached per folder (and file modification times), so the many episodes of
one task share one copy.
"""
from __future__ import annotations

import csv
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

_TRANSPORT = ["origin_city", "destination_city", "dep_date", "seat_class", "route_index", "segment_index",
              "seat_status", "dep_station_code", "dep_station_name", "arr_station_code", "arr_station_name",
              "dep_datetime", "arr_datetime", "duration", "price"]
TABLES: Dict[str, Tuple[str, List[str]]] = {  # table -> (path in the task folder, needed columns)
    "trains": ("trains/trains.csv", _TRANSPORT + ["train_type", "train_no"]),
    "flights": ("flights/flights.csv", _TRANSPORT + ["airline", "flight_no", "equip_size", "equip_type",
                                                     "manufacturer"]),
    "hotels": ("hotels/hotels.csv", ["name", "address", "latitude", "longitude", "decoration_time",
                                     "hotel_star", "price", "score", "brand", "services", "city"]),
    "attractions": ("attractions/attractions.csv",
                    ["attraction_id", "attraction_name", "city", "address", "latitude", "longitude",
                     "description", "rating", "opening_time", "closing_time", "closing_dates",
                     "min_visit_hours", "max_visit_hours", "ticket_price", "attraction_type"]),
    "restaurants": ("restaurants/restaurants.csv",
                    ["query_latitude", "query_longitude", "restaurant_id", "restaurant_name", "latitude",
                     "longitude", "price_per_person", "cuisine", "opening_time", "closing_time",
                     "nearby_attraction_name", "rating", "tags"]),
    "locations": ("locations/locations_coords.csv", ["poi_name", "latitude", "longitude", "poi_type"]),
    "matrix": ("transportation/distance_matrix.csv",
               ["origin", "destination", "distance_meters", "duration_minutes", "cost"]),
}
Row = Dict[str, str]


class DatabaseError(ValueError):
    """A task's database folder, file or column is missing or unreadable; names task and file."""


def task_dir(db_root: Path, task_id: str) -> Path:
    return Path(db_root) / f"id_{task_id}"


def read_table(path: Path, columns: List[str], task_id: str) -> List[Row]:
    """Rows of one CSV as dicts of strings; a missing file or column is a :class:`DatabaseError`."""
    if not path.is_file():
        raise DatabaseError(f"task {task_id}: {path} is missing")
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            reader = csv.DictReader(f)
            header = reader.fieldnames or []
            missing = [c for c in columns if c not in header]
            if missing:
                raise DatabaseError(f"task {task_id}: {path} lacks column(s) {missing}")
            return [{k: (v or "") for k, v in row.items() if k is not None} for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DatabaseError(f"task {task_id}: {path} cannot be read ({e})") from e


def check_task(db_root: Path, task_id: str) -> List[str]:
    """Problems of one task folder (missing folder, files, columns), each naming task and file;
    empty when the folder is complete. Reads only the header lines."""
    folder = task_dir(db_root, task_id)
    if not folder.is_dir():
        return [f"task {task_id}: folder {folder} is missing"]
    problems = []
    for rel, columns in TABLES.values():
        path = folder / rel
        if not path.is_file():
            problems.append(f"task {task_id}: {path} is missing")
            continue
        with open(path, encoding="utf-8-sig", newline="") as f:
            header = next(csv.reader(f), [])
        missing = [c for c in columns if c not in header]
        if missing:
            problems.append(f"task {task_id}: {path} lacks column(s) {missing}")
    return problems


@dataclass
class TaskDatabase:
    """The tables of one task, with the lookups the tools and scorers need (built once)."""

    task_id: str
    folder: Path
    tables: Dict[str, List[Row]]
    routes: Dict[str, Dict[Tuple[str, str, str], List[Row]]] = field(default_factory=dict)
    # the tools' view: the first row of a name
    attraction_by_name: Dict[str, Row] = field(default_factory=dict)
    restaurant_by_name: Dict[str, Row] = field(default_factory=dict)
    restaurants_near: Dict[Tuple[str, str], List[Row]] = field(default_factory=dict)
    location_by_name: Dict[str, Row] = field(default_factory=dict)
    matrix: Dict[Tuple[str, str], Row] = field(default_factory=dict)  # first row of an (origin, destination)
    matrix_coords: set = field(default_factory=set)
    # the scorer's view (official evaluation/utils.py): stripped names, the last row of a name
    hotel_index: Dict[str, Row] = field(default_factory=dict)
    attraction_index: Dict[str, Row] = field(default_factory=dict)
    restaurant_index: Dict[str, Row] = field(default_factory=dict)
    location_index: Dict[str, Row] = field(default_factory=dict)
    numbers: Dict[str, Dict[str, List[Row]]] = field(default_factory=dict)  # flights/trains: number -> rows
    station_city: Dict[str, str] = field(default_factory=dict)

    @classmethod
    def load(cls, db_root: Path, task_id: str) -> "TaskDatabase":
        folder = task_dir(db_root, task_id)
        if not folder.is_dir():
            raise DatabaseError(f"task {task_id}: database folder {folder} is missing "
                                "(unzip database_en.zip of the Hub data set Qwen/DeepPlanning)")
        tables = {name: read_table(folder / rel, cols, task_id) for name, (rel, cols) in TABLES.items()}
        db = cls(str(task_id), folder, tables)
        db._index()
        return db

    def _index(self) -> None:
        for kind in ("flights", "trains"):
            by_key: Dict[Tuple[str, str, str], List[Row]] = {}
            numbers: Dict[str, List[Row]] = {}
            col = "train_no" if kind == "trains" else "flight_no"
            for r in self.tables[kind]:
                by_key.setdefault((r["origin_city"], r["destination_city"], r["dep_date"]), []).append(r)
                if r[col].strip():
                    numbers.setdefault(r[col].strip(), []).append(r)
                # station -> city (official: flights, then trains, later rows win; blank cells skipped)
                for station, city in ((r["dep_station_name"], r["origin_city"]),
                                      (r["arr_station_name"], r["destination_city"])):
                    if station.strip() and city.strip():
                        self.station_city[station.strip()] = city.strip()
            self.routes[kind], self.numbers[kind] = by_key, numbers
        self.attraction_by_name = _first_by(self.tables["attractions"], "attraction_name")
        self.restaurant_by_name = _first_by(self.tables["restaurants"], "restaurant_name")
        self.location_by_name = _first_by(self.tables["locations"], "poi_name")
        for attr, (table, key) in SCORER_INDEXES.items():
            setattr(self, attr, _last_by(self.tables[table], key))
        for r in self.tables["restaurants"]:
            self.restaurants_near.setdefault((r["query_latitude"], r["query_longitude"]), []).append(r)
        for r in self.tables["matrix"]:
            self.matrix.setdefault((r["origin"], r["destination"]), r)
            self.matrix_coords.update((r["origin"], r["destination"]))


# scorer index -> (table, name column)
SCORER_INDEXES = {"hotel_index": ("hotels", "name"), "attraction_index": ("attractions", "attraction_name"),
                  "restaurant_index": ("restaurants", "restaurant_name"), "location_index": ("locations", "poi_name")}


def _first_by(rows: List[Row], key: str) -> Dict[str, Row]:
    """The tools' lookup: exact name, first row."""
    out: Dict[str, Row] = {}
    for r in rows:
        out.setdefault(r[key], r)
    return out


def _last_by(rows: List[Row], key: str) -> Dict[str, Row]:
    """The official evaluation's lookup: stripped name, empty names skipped, the last row wins."""
    out: Dict[str, Row] = {}
    for r in rows:
        if r[key].strip():
            out[r[key].strip()] = r
    return out


def count_duplicates(db_root: Path, task_id: str) -> Dict[str, int]:
    """Per scorer table (hotels, attractions, restaurants, locations): how many rows repeat an
    earlier row's (stripped) name. The tools answer with the first such row, the scorer (as
    officially) checks against the last. Reads only the name column; a missing file counts 0
    (:func:`check_task` reports it)."""
    folder, out = task_dir(db_root, task_id), {}
    for table, key in SCORER_INDEXES.values():
        path, seen, extra = folder / TABLES[table][0], set(), 0
        if path.is_file():
            with open(path, encoding="utf-8-sig", newline="") as f:
                for row in csv.DictReader(f):
                    name = (row.get(key) or "").strip()
                    extra += bool(name) and name in seen
                    seen.add(name)
        out[table] = extra
    return out


# ---------------------------------------------------------------------------------------------
# Cache: one loaded copy per task folder
# ---------------------------------------------------------------------------------------------

_CACHE: "OrderedDict[tuple, TaskDatabase]" = OrderedDict()
_LOCK = threading.Lock()
CACHE_SIZE = 32  # tasks kept; a training step touches at most prompts_per_step of them


def _cache_key(db_root: Path, task_id: str) -> tuple:
    folder = task_dir(db_root, task_id).resolve()
    mtimes = tuple((folder / rel).stat().st_mtime_ns if (folder / rel).exists() else 0
                   for rel, _ in TABLES.values())
    return (str(folder), mtimes)


def load_task(db_root, task_id) -> TaskDatabase:
    """The task's database, loaded on first use and cached (thread-safe)."""
    task_id = str(task_id)
    key = _cache_key(Path(db_root), task_id)
    with _LOCK:
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key]
        db = TaskDatabase.load(Path(db_root), task_id)
        _CACHE[key] = db
        while len(_CACHE) > CACHE_SIZE:
            _CACHE.popitem(last=False)
        return db


def clear_cache() -> None:
    with _LOCK:
        _CACHE.clear()


def cache_info() -> Optional[int]:
    return len(_CACHE)


def resolve_db_root(path) -> Path:
    """The folder holding ``id_<N>/``: ``path`` itself, or its ``database_en/`` (the zip's top
    folder) when ``path`` is where the zip was unpacked."""
    path = Path(path)
    inner = path / "database_en"
    return inner if not (path / "id_0").is_dir() and inner.is_dir() else path
