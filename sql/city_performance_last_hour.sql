-- City performance in the last hour, from the raw events (ride_events).
-- Runs on ClickHouse 18.16 and 24.x alike; FINAL collapses re-delivered messages.
SELECT
    city,
    countIf(event_type = 'requested') AS requests,
    countIf(event_type = 'completed') AS completions,
    countIf(event_type = 'cancelled') AS cancellations,
    round(100 * countIf(event_type = 'completed') / greatest(countIf(event_type = 'requested'), 1), 1) AS completion_rate_pct,
    round(avg(estimated_fare), 2) AS avg_fare,
    uniqExact(user_id) AS unique_riders,
    count() AS events
FROM ride_events FINAL
WHERE timestamp >= now() - INTERVAL 1 HOUR
GROUP BY city
ORDER BY requests DESC, city
