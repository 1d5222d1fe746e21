-- City performance in the minutes that started in the last hour, from the job's per-minute
-- rollups (city_minutes, on-time events as in SPEC §3; late events are counted apart in
-- city_minute_late). Reads about 60 rows per city, however large ride_events grows.
-- Counts and fares come from the newest version of each minute (FINAL, scalar columns
-- only). Distinct riders stay exact over the hour: each minute row carries its set of
-- riders and uniqExactArray counts the union; that needs no FINAL, because an earlier
-- version of a minute holds a subset of its newest one, so the union is the same.
-- Runs on ClickHouse 18.16 and 24.x alike.
SELECT
    city,
    requests,
    completions,
    cancellations,
    round(100 * completions / greatest(requests, 1), 1) AS completion_rate_pct,
    round(fare_sum / nullIf(fares, 0), 2) AS avg_fare,
    unique_riders,
    events
FROM (
    SELECT
        city,
        sum(requested) AS requests,
        sum(completed) AS completions,
        sum(cancelled) AS cancellations,
        sum(fare_sum) AS fare_sum,
        sum(fares) AS fares,
        sum(events) AS events
    FROM city_minutes FINAL
    WHERE minute >= now() - INTERVAL 1 HOUR
    GROUP BY city
) AS counts
ANY LEFT JOIN (
    SELECT city, uniqExactArray(riders) AS unique_riders
    FROM city_minutes
    WHERE minute >= now() - INTERVAL 1 HOUR
    GROUP BY city
) AS distinct_riders USING city
ORDER BY requests DESC, city
