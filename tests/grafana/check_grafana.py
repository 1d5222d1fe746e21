"""Checks grafana/ the way Grafana and the official ClickHouse plugin would use it.

Usage: check_grafana.py GRAFANA_DIR CLICKHOUSE_URL DATABASE MODERN_DDL_FILE

1. Structure: every provisioning YAML and the dashboard JSON have the fields Grafana's file
   provisioning reads (apiVersion, datasources/providers/groups, panels with gridPos and
   targets, the alert rules' refIds, `for`, threshold), they refer to the provisioned data
   source uid, and the dashboard has the panels the ops team asked for (the supply table
   is sql/where_riders_wait_now.sql verbatim, the pressure chart draws the threshold 2).
2. Queries: every panel's and the alert rule's SQL, with the plugin's macros expanded as
   grafana-clickhouse-datasource v4 does (pkg/macros/macros.go), runs
   a. against the local ClickHouse (the test filled DATABASE with a job's output), and must
      return rows with the columns the panel expects;
   b. in chDB (a modern ClickHouse) on tables made from MODERN_DDL_FILE and filled with a
      copy of the local rows, with the same columns.
Prints one line per check; exits non-zero on the first failure.
"""
import json
import re
import sys
import time
import urllib.parse
import urllib.request

import yaml
from chdb import session

DS_UID = "ridepulse-clickhouse"
PLUGIN = "grafana-clickhouse-datasource"

# The columns each panel must return (by title), independent of the dashboard file.
EXPECTED = {
    "Pipeline freshness": ["freshness_seconds"],
    "Events in the last 5 minutes": ["events", "late_events"],
    "Late events and dead letters per minute": ["time", "late_events", "dead_letters"],
    "Ride requests per minute": ["time", "city", "requests"],
    "Cancellation rate (5-minute windows)": ["time", "city", "cancellation_rate_pct"],
    "Completion rate (5-minute windows)": ["time", "city", "completion_rate_pct"],
    "Average fare (5-minute windows)": ["time", "city", "avg_fare"],
    "Unique riders (5-minute windows)": ["time", "city", "unique_riders"],
    "Cities in the last hour": [
        "city", "requests", "completions", "cancellations", "completion_rate_pct",
        "avg_fare", "unique_riders", "events",
    ],
    "Where riders wait now": [
        "city", "minute", "waiting_riders", "available_drivers", "on_trip_drivers",
        "rides_in_progress", "requests", "pressure", "is_final",
    ],
    "Available drivers per minute": ["time", "city", "available_drivers"],
    "Waiting riders per minute": ["time", "city", "waiting_riders"],
    "Pressure (waiting riders per available driver)": ["time", "city", "pressure"],
    "alert: Cancellation rate above 30 %": ["city", "cancellation_rate_pct"],
    "alert: Pressure above 2": ["city", "pressure"],
}
ALERTS = {t for t in EXPECTED if t.startswith("alert: ")}
# Queries with no clock in their rows: both servers must return exactly the same rows.
SAME_ON_BOTH = ["Where riders wait now", "alert: Pressure above 2"]
# Tables the panels read, copied from the local server into chDB.
# city_minute_late is not copied: the DDL's materialized view fills it from the ride_events copy.
TABLES = ["ride_events", "city_metrics", "city_minutes", "dead_letters", "city_supply"]
# Panels that may legitimately be empty on a healthy pipeline (no late events in a minute).
MAY_BE_EMPTY = set()


def fail(message):
    print(f"FAIL {message}")
    sys.exit(1)


def ok(message):
    print(f"ok   {message}")


def expand(sql, start, end, interval_s):
    """The plugin's macros (v4), for a dashboard time range [start, end] in Unix seconds."""
    def dt(t):
        return f"toDateTime({t})"

    def dt64(t):
        return f"fromUnixTimestamp64Milli({t * 1000})"

    sql = re.sub(r"\$__timeFilter_ms\(([^)]*)\)",
                 lambda m: f"{m[1]} >= {dt64(start)} AND {m[1]} <= {dt64(end)}", sql)
    sql = re.sub(r"\$__timeFilter\(([^)]*)\)",
                 lambda m: f"{m[1]} >= {dt(start)} AND {m[1]} <= {dt(end)}", sql)
    sql = re.sub(r"\$__timeInterval\(([^)]*)\)",
                 lambda m: f"toStartOfInterval(toDateTime({m[1]}), INTERVAL {interval_s} second)", sql)
    sql = sql.replace("$__fromTime_ms", dt64(start)).replace("$__toTime_ms", dt64(end))
    sql = sql.replace("$__fromTime", dt(start)).replace("$__toTime", dt(end))
    sql = sql.replace("$__interval_s", str(interval_s))
    if "$__" in sql:
        fail(f"unexpanded macro in: {sql}")
    return sql


def check_structure(root):
    ds = yaml.safe_load(open(f"{root}/provisioning/datasources/ridepulse-clickhouse.yaml"))
    assert ds["apiVersion"] == 1
    (source,) = ds["datasources"]
    assert source["type"] == PLUGIN and source["uid"] == DS_UID, source
    json_data = source["jsonData"]
    for key in ["host", "port", "protocol", "username", "defaultDatabase"]:
        assert key in json_data, f"datasource jsonData.{key} missing"
    assert json_data["protocol"] in ("http", "native")
    assert source["secureJsonData"]["password"] == "$CLICKHOUSE_PASSWORD", "password from env"
    ok("datasource provisioning")

    providers = yaml.safe_load(open(f"{root}/provisioning/dashboards/ridepulse.yaml"))
    assert providers["apiVersion"] == 1
    (provider,) = providers["providers"]
    assert provider["type"] == "file" and provider["options"]["path"], provider
    ok("dashboard provider provisioning")

    dash = json.load(open(f"{root}/dashboards/ridepulse.json"))
    assert dash["uid"] and dash["title"] and dash["refresh"] == "10s", dash.get("refresh")
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)), "panel ids unique"
    queries = []
    for panel in dash["panels"]:
        for key in ["h", "w", "x", "y"]:
            assert isinstance(panel["gridPos"][key], int), (panel["title"], key)
        assert panel["type"] in ("timeseries", "stat", "table"), panel["type"]
        (target,) = panel["targets"]
        assert target["datasource"] == {"type": PLUGIN, "uid": DS_UID}, target["datasource"]
        assert target["editorType"] == "sql" and target["rawSql"].strip()
        queries.append((panel["title"], target["rawSql"]))
    titles = {title for title, _ in queries}
    missing = set(EXPECTED) - titles - ALERTS
    assert not missing, f"panels missing: {missing}"
    for prefix, value in [("Cancellation rate", 30), ("Pressure", 2)]:
        panel = next(p for p in dash["panels"] if p["title"].startswith(prefix))
        steps = panel["fieldConfig"]["defaults"]["thresholds"]["steps"]
        assert any(s["value"] == value for s in steps), f"{prefix}: {value} threshold drawn"
        assert panel["fieldConfig"]["defaults"]["custom"]["thresholdsStyle"]["mode"] != "off"
    shipped = open(f"{root}/../sql/where_riders_wait_now.sql").read().strip()
    (wait,) = [sql for title, sql in queries if title == "Where riders wait now"]
    assert wait.strip() == shipped, "the supply table runs sql/where_riders_wait_now.sql as shipped"
    ok(f"dashboard: {len(queries)} panels, refresh {dash['refresh']}, 30 % and pressure 2 thresholds drawn")

    alerts = yaml.safe_load(open(f"{root}/provisioning/alerting/ridepulse-alerts.yaml"))
    assert alerts["apiVersion"] == 1
    (group,) = alerts["groups"]
    rules = {rule["uid"]: rule for rule in group["rules"]}
    assert len(rules) == len(group["rules"]), "alert rule uids unique"
    for uid, title, value in [
        ("ridepulse-cancellation-rate", "Cancellation rate above 30 %", 30),
        ("ridepulse-supply-pressure", "Pressure above 2", 2),
    ]:
        rule = rules[uid]
        assert rule["title"] == title, rule["title"]
        refs = {d["refId"]: d for d in rule["data"]}
        assert rule["condition"] in refs and rule["for"] == "5m", rule
        assert refs["A"]["datasourceUid"] == DS_UID
        threshold = refs[rule["condition"]]["model"]
        assert threshold["type"] == "threshold" and threshold["expression"] in refs
        assert threshold["conditions"][0]["evaluator"] == {"type": "gt", "params": [value]}
        ok(f"alert rule: {title} ({uid}): > {value} for 5m")
        queries.append(("alert: " + rule["title"], refs["A"]["model"]["rawSql"]))
    return queries


def http_raw(url, database, sql, **settings):
    params = urllib.parse.urlencode({"database": database, **settings})
    request = urllib.request.Request(f"{url}/?{params}", data=sql.encode(), method="POST")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.read().decode()
    except urllib.error.HTTPError as error:
        fail(f"ClickHouse refused:\n{sql}\n{error.read().decode()}")


def http_query(url, database, sql):
    return json.loads(http_raw(url, database, sql, default_format="JSON"))


def main():
    root, url, database, ddl_file = sys.argv[1:5]
    queries = check_structure(root)
    end = int(time.time())
    start = end - 3600
    interval_s = 10

    # a. the local server, filled by the test
    local = {}
    for title, sql in queries:
        expanded = expand(sql, start, end, interval_s)
        result = http_query(url, database, expanded)
        columns = [c["name"] for c in result["meta"]]
        if columns != EXPECTED[title]:
            fail(f"{title}: columns {columns}, expected {EXPECTED[title]}")
        if not result["data"] and title not in MAY_BE_EMPTY:
            fail(f"{title}: no rows on the local server\n{expanded}")
        local[title] = result["data"]
        ok(f"local ClickHouse: {title}: {len(result['data'])} rows")

    # b. chDB, modern DDL, the same rows
    s = session.Session()
    for statement in open(ddl_file).read().split(";"):
        if statement.strip():
            s.query(statement)
    for table in TABLES:
        rows = http_raw(url, database, f"SELECT * FROM {table} FORMAT JSONEachRow",
                        output_format_json_quote_64bit_integers=0)
        if rows.strip():
            s.query(f"INSERT INTO ridepulse.{table} FORMAT JSONEachRow\n{rows}")
        ok(f"chDB: copied {len(rows.splitlines())} rows of {table}")
    for title, sql in queries:
        s.query("USE ridepulse")
        result = json.loads(s.query(expand(sql, start, end, interval_s), "JSON").bytes())
        columns = [c["name"] for c in result["meta"]]
        if columns != EXPECTED[title]:
            fail(f"chDB: {title}: columns {columns}, expected {EXPECTED[title]}")
        if not result["data"] and title not in MAY_BE_EMPTY:
            fail(f"chDB: {title}: no rows")
        ok(f"chDB: {title}: {len(result['data'])} rows")
        if title in SAME_ON_BOTH:
            def text(rows):
                return [{k: None if v is None else str(v) for k, v in row.items()} for row in rows]
            ordered = "ORDER BY" in sql  # without one, rows come in any order
            same = text(result["data"]) == text(local[title]) if ordered else \
                sorted(map(json.dumps, text(result["data"]))) == sorted(map(json.dumps, text(local[title])))
            if not same:
                fail(f"{title}: chDB {result['data']} vs local {local[title]}")
            print(f"same {title}: {json.dumps(text(result['data']))}")


if __name__ == "__main__":
    main()
