-- Rides per minute over the last hour, all cities: requested, completed and cancelled.
-- Runs on ClickHouse 18.16 and 24.x alike; FINAL collapses re-delivered messages.
SELECT
    toStartOfMinute(timestamp) AS minute,
    countIf(event_type = 'requested') AS requested,
    countIf(event_type = 'completed') AS completed,
    countIf(event_type = 'cancelled') AS cancelled
FROM ride_events FINAL
WHERE timestamp >= now() - INTERVAL 1 HOUR
GROUP BY minute
ORDER BY minute
