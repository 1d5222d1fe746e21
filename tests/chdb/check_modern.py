"""Runs ridepulse's modern-server DDL and shipped SQL in chDB (an embedded modern ClickHouse).

Usage: check_modern.py DDL_FILE SQL_FILE...
Creates the tables from DDL_FILE, inserts a small known set of events (one re-delivered
message, one late event, one outside the last hour), the per-minute rollup rows the job would
write for them (city_minutes: an update row replaced by its final row; the late event only in
city_minute_late, which the DDL's materialized view fills from the raw rows) and of
city_supply rows (a row replaced
by a newer version, a city with no driver available, a city whose latest row is over 15
minutes old), runs each SQL file and prints its result as JSON lines:
{"file": ..., "rows": [...]}. Exits non-zero on any error.
"""
import json
import sys
import time

from chdb import session


def main():
    ddl_file, sql_files = sys.argv[1], sys.argv[2:]
    s = session.Session()
    for statement in open(ddl_file).read().split(";"):
        if statement.strip():
            s.query(statement)
    now_ms = int(time.time() * 1000)
    rows = []
    # (minute, city) -> on-time events, as the job's minute buckets hold them
    buckets = {}

    def event(offset, event_type, minutes_ago, city, user, fare, late=0):
        ts = now_ms - int(minutes_ago * 60_000)
        if not late:
            b = buckets.setdefault((ts // 60_000 * 60, city), {})
            b[offset] = (event_type, user, fare, ts)
        fare_sql = "NULL" if fare is None else repr(fare)
        rows.append(
            f"('{event_type}', 'ride-{offset}', fromUnixTimestamp64Milli({ts}, 'UTC'), {ts}, '{city}', "
            f"'{user}', NULL, {fare_sql}, 48.1, 17.1, 48.2, 17.2, 0, {offset}, {late}, now())"
        )

    event(1, "requested", 10, "bratislava", "u1", 8.5)
    event(2, "requested", 9, "bratislava", "u2", 11.5)
    event(3, "completed", 5, "bratislava", "u1", None)
    event(4, "requested", 8, "brno", "u3", 7.0)
    event(5, "cancelled", 4, "brno", "u3", None)
    event(6, "requested", 30, "brno", "u4", 9.0, late=1)
    event(7, "requested", 90, "brno", "u5", 9.0)  # outside the last hour
    event(2, "requested", 9, "bratislava", "u2", 11.5)  # offset 2 re-delivered
    s.query(
        "INSERT INTO ridepulse.ride_events (event_type, ride_id, timestamp, timestamp_ms, city, "
        "user_id, driver_id, estimated_fare, pickup_lat, pickup_lng, dropoff_lat, dropoff_lng, "
        "kafka_partition, kafka_offset, is_late, ingested_at) VALUES " + ", ".join(rows)
    )
    minute_rows = []
    for (m, city), events in sorted(buckets.items()):
        values = list(events.values())  # a re-delivered offset is one event
        count = {t: sum(1 for v in values if v[0] == t) for t in
                 ["requested", "accepted", "started", "completed", "cancelled"]}
        fares = [v[2] for v in values if v[2] is not None]
        riders = sorted({v[1] for v in values})
        newest = max(v[3] for v in values)
        common = (f"toDateTime({m}, 'UTC'), '{city}', {len(values)}, {count['requested']}, "
                  f"{count['accepted']}, {count['started']}, {count['completed']}, {count['cancelled']}, "
                  f"{sum(fares)!r}, {len(fares)}, {len(riders)}, {riders!r}, {newest}")
        minute_rows.append(f"({common}, 0, 1, now())")  # an update, replaced below
        minute_rows.append(f"({common}, 1, {2**63 + len(values)}, now())")
    s.query("INSERT INTO ridepulse.city_minutes VALUES " + ", ".join(minute_rows))
    supply = []

    def minute(city, minutes_ago, available, waiting, version):
        m = (now_ms // 60_000 - minutes_ago) * 60
        pressure = "NULL" if available == 0 else repr(waiting / available)
        supply.append(f"(toDateTime({m}, 'UTC'), '{city}', {available}, 4, {waiting}, 4, 7, {pressure}, 1, {version}, now())")

    minute("bratislava", 3, 10, 5, 1)
    minute("bratislava", 2, 8, 24, 1)
    minute("bratislava", 2, 6, 24, 2)  # replaces the row above: pressure 4
    minute("brno", 2, 0, 3, 1)  # riders waiting, no driver available: first
    minute("kosice", 1, 20, 10, 1)
    minute("praha", 30, 1, 50, 1)  # not now any more
    s.query(
        "INSERT INTO ridepulse.city_supply (minute, city, available_drivers, on_trip_drivers, "
        "waiting_riders, rides_in_progress, requests, pressure, is_final, version, updated_at) "
        "VALUES " + ", ".join(supply)
    )
    # The late event re-delivered (the job re-inserts raw rows after a restart): its
    # position is already in the set, so it still counts once.
    s.query(
        "INSERT INTO ridepulse.ride_events (event_type, ride_id, timestamp, timestamp_ms, city, "
        "user_id, driver_id, estimated_fare, pickup_lat, pickup_lng, dropoff_lat, dropoff_lng, "
        "kafka_partition, kafka_offset, is_late, ingested_at) VALUES "
        + [r for r in rows if r.startswith("('requested', 'ride-6'")][0]
    )
    late = s.query(
        "SELECT city, toString(uniqExactMerge(late_events)) FROM ridepulse.city_minute_late "
        "GROUP BY city ORDER BY city", "JSONCompact")
    data = json.loads(late.bytes() if hasattr(late, "bytes") else str(late))
    print(json.dumps({"file": "city_minute_late", "rows": data["data"]}))
    for path in sql_files:
        sql = open(path).read().strip().rstrip(";")
        s.query("USE ridepulse")
        result = s.query(sql, "JSONCompact")
        data = json.loads(result.bytes() if hasattr(result, "bytes") else str(result))
        print(json.dumps({"file": path.rsplit("/", 1)[-1], "rows": data["data"]}))


if __name__ == "__main__":
    main()
