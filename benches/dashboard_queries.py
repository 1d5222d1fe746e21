"""Latency of every dashboard query over a large history (run by `scripts/bench queries`).

Usage: dashboard_queries.py CLICKHOUSE_URL DATABASE GRAFANA_DASHBOARD_JSON SNAPSHOT_URL [RUNS]

DATABASE must hold the history (scripts/bench fills it: 30 days of city_metrics, raw
events and their per-minute rollups). Each Grafana panel query (the plugin's macros expanded
for "last 1 hour", as the dashboard opens), the raw-table queries those panels ran before
the rollups (RAW_BEFORE, for comparison on the same data) and the built-in dashboard's whole
/api/snapshot (all its queries in one request) run RUNS times (default 20) after one
warm-up; prints p50 / p95 / max in milliseconds per query, as a table and as JSON lines.
"""
import json
import re
import statistics
import sys
import time
import urllib.parse
import urllib.request


# The panels' queries before the per-minute rollups (issue 16): they scanned ride_events.
RAW_BEFORE = {
    "Pipeline freshness": "SELECT round((toUInt64(now()) * 1000 - max(timestamp_ms)) / 1000, 1) AS freshness_seconds\nFROM ride_events",
    "Events in the last 5 minutes": "SELECT count() AS events, countIf(is_late = 1) AS late_events\nFROM ride_events FINAL\nWHERE timestamp >= now() - INTERVAL 5 MINUTE",
    "Late events and dead letters per minute": "SELECT time, sum(late) AS late_events, sum(dead) AS dead_letters\nFROM (\n    SELECT toStartOfMinute(timestamp) AS time, countIf(is_late = 1) AS late, toUInt64(0) AS dead\n    FROM ride_events FINAL\n    WHERE $__timeFilter(timestamp)\n    GROUP BY time\n    UNION ALL\n    SELECT toStartOfMinute(received_at) AS time, toUInt64(0) AS late, count() AS dead\n    FROM dead_letters FINAL\n    WHERE $__timeFilter(received_at)\n    GROUP BY time\n)\nGROUP BY time\nORDER BY time",
    "Ride requests per minute": "SELECT toStartOfMinute(timestamp) AS time, city, countIf(event_type = 'requested') AS requests\nFROM ride_events FINAL\nWHERE $__timeFilter(timestamp) AND is_late = 0\nGROUP BY time, city\nORDER BY time, city",
    "Cities in the last hour": "SELECT city, countIf(event_type = 'requested') AS requests, countIf(event_type = 'completed') AS completions,\n    countIf(event_type = 'cancelled') AS cancellations,\n    round(100 * countIf(event_type = 'completed') / greatest(countIf(event_type = 'requested'), 1), 1) AS completion_rate_pct,\n    round(avg(estimated_fare), 2) AS avg_fare, uniqExact(user_id) AS unique_riders, count() AS events\nFROM ride_events FINAL\nWHERE timestamp >= now() - INTERVAL 1 HOUR\nGROUP BY city\nORDER BY requests DESC, city",
}


def expand(sql, start, end, interval_s):
    sql = re.sub(r"\$__timeFilter\(([^)]*)\)",
                 lambda m: f"{m[1]} >= toDateTime({start}) AND {m[1]} <= toDateTime({end})", sql)
    sql = re.sub(r"\$__timeInterval\(([^)]*)\)",
                 lambda m: f"toStartOfInterval(toDateTime({m[1]}), INTERVAL {interval_s} second)", sql)
    sql = sql.replace("$__fromTime", f"toDateTime({start})").replace("$__toTime", f"toDateTime({end})")
    return sql.replace("$__interval_s", str(interval_s))


def timed(fn, runs):
    fn()  # warm-up
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    times.sort()
    p95 = times[min(len(times) - 1, int(round(0.95 * len(times))) - 1)]
    return statistics.median(times), p95, times[-1]


def main():
    url, database, dashboard, snapshot_url = sys.argv[1:5]
    runs = int(sys.argv[5]) if len(sys.argv) > 5 else 20
    panels = json.load(open(dashboard))["panels"]
    end = int(time.time())
    start = end - 3600
    results = []

    def query(sql):
        params = urllib.parse.urlencode({"database": database})
        body = (sql + "\nFORMAT Null").encode()
        request = urllib.request.Request(f"{url}/?{params}", data=body, method="POST")
        with urllib.request.urlopen(request, timeout=120) as response:
            response.read()

    for panel in panels:
        sql = expand(panel["targets"][0]["rawSql"], start, end, 10)
        results.append(("grafana: " + panel["title"], *timed(lambda: query(sql), runs)))
    for title, raw in RAW_BEFORE.items():
        sql = expand(raw, start, end, 10)
        results.append(("before (raw scan): " + title, *timed(lambda: query(sql), runs)))

    def snapshot():
        with urllib.request.urlopen(snapshot_url, timeout=120) as response:
            body = json.loads(response.read())
            assert body["ok"], body

    results.append(("built-in dashboard: /api/snapshot (all panels)", *timed(snapshot, runs)))
    width = max(len(r[0]) for r in results)
    print(f"{'query':<{width}}  {'p50 ms':>8}  {'p95 ms':>8}  {'max ms':>8}")
    for name, p50, p95, worst in results:
        print(f"{name:<{width}}  {p50:8.1f}  {p95:8.1f}  {worst:8.1f}")
    for name, p50, p95, worst in results:
        print(json.dumps({"query": name, "p50_ms": round(p50, 1), "p95_ms": round(p95, 1),
                          "max_ms": round(worst, 1), "runs": runs}))


if __name__ == "__main__":
    main()
