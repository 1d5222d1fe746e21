-- Rides per minute over the last hour, all cities: requested, completed and cancelled
-- (on-time events, from the per-minute rollups in city_minutes: about 60 rows per city).
-- Runs on ClickHouse 18.16 and 24.x alike; FINAL keeps the newest version of each minute.
SELECT
    minute,
    sum(requested) AS requested,
    sum(completed) AS completed,
    sum(cancelled) AS cancelled
FROM city_minutes FINAL
WHERE minute >= now() - INTERVAL 1 HOUR
GROUP BY minute
ORDER BY minute
