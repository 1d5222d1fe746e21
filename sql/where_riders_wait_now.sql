-- Where riders are waiting right now (SPEC §5, table city_supply).
-- The latest minute of every city that has one in the last 15 minutes, the cities under the
-- most pressure first: riders waiting with no driver available at all (pressure is null),
-- then by pressure (waiting riders per available driver; above 2 is the alert's threshold),
-- then by waiting riders. Runs on ClickHouse 18.16 and on modern servers.
SELECT
    city,
    minute,
    waiting_riders,
    available_drivers,
    on_trip_drivers,
    rides_in_progress,
    requests,
    round(pressure, 2) AS pressure,
    is_final
FROM city_supply FINAL
WHERE (city, minute) IN (
    SELECT city, max(minute)
    FROM city_supply FINAL
    WHERE minute >= now() - INTERVAL 15 MINUTE
    GROUP BY city
)
ORDER BY
    (available_drivers = 0 AND waiting_riders > 0) DESC,
    ifNull(pressure, 0) DESC,
    waiting_riders DESC,
    city
