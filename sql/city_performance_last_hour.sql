-- City performance in the minutes that started in the last hour, from the job's per-minute
-- rollups (city_minutes, on-time events as in SPEC §3; late events are counted apart in
-- city_minute_late). Distinct riders stay exact over the hour: each minute row carries its
-- set of riders, and uniqExactArray counts the union. Reads about 60 rows per city, however
-- large ride_events grows. Runs on ClickHouse 18.16 and 24.x alike; FINAL keeps the newest
-- version of each minute.
SELECT
    city,
    sum(requested) AS requests,
    sum(completed) AS completions,
    sum(cancelled) AS cancellations,
    round(100 * sum(completed) / greatest(sum(requested), 1), 1) AS completion_rate_pct,
    round(sum(fare_sum) / nullIf(sum(fares), 0), 2) AS avg_fare,
    uniqExactArray(riders) AS unique_riders,
    sum(events) AS events
FROM city_minutes FINAL
WHERE minute >= now() - INTERVAL 1 HOUR
GROUP BY city
ORDER BY requests DESC, city
