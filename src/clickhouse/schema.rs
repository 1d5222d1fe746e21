//! SPEC §4's tables, and the DDL for whichever ClickHouse the user runs.
//!
//! The statements are generated from the server's `version()`: modern servers (24.x and
//! anything since 20.1) get `LowCardinality(String)`, `DateTime64(3, 'UTC')` and a 90-day
//! `TTL` on `ride_events`; Debian's 18.16 gets the documented equivalents: plain `String`
//! (LowCardinality was experimental then), `DateTime('UTC')` (whole seconds) plus the exact
//! `timestamp_ms` column that both variants carry, and no TTL (drop old daily partitions
//! with `ALTER TABLE ... DROP PARTITION`). Column names are identical on both, so the
//! shipped dashboard SQL runs on either.
//!
//! Dashboards read small tables, never a scan of `ride_events`: `city_minutes` (the job's
//! per-minute rollup rows, upserted like `city_metrics`) and `city_minute_late` (late events
//! per city and minute, aggregated by ClickHouse from `ride_events` inserts as a *set* of
//! (partition, offset), so a re-delivered raw row cannot count twice; see
//! docs/semantics.md).
//!
//! `ridepulse migrate` is idempotent (`IF NOT EXISTS`, then [`verify`]); every job verifies
//! the columns at start, so a wrong table stops it with a message naming table and column
//! rather than failing later in the middle of a RowBinary stream.

use std::fmt::Write as _;

use super::{execute, query_text, ClickHouseError};
use crate::config::ClickHouseConfig;

/// What a server version supports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Features {
    /// `LowCardinality(String)` without experimental settings (19.x+).
    pub low_cardinality: bool,
    /// `DateTime64(3)` (20.1+).
    pub datetime64: bool,
    /// Table `TTL` (19.6+).
    pub ttl: bool,
}

impl Features {
    /// Features of a `version()` string such as `18.16.1` or `24.8.4.13`.
    pub fn of_version(version: &str) -> Result<Features, ClickHouseError> {
        let mut parts = version.trim().split('.').map(|p| p.parse::<u32>());
        let (Some(Ok(major)), Some(Ok(minor))) = (parts.next(), parts.next()) else {
            return Err(ClickHouseError::Version(version.to_string()));
        };
        let at_least = |ma: u32, mi: u32| (major, minor) >= (ma, mi);
        Ok(Features {
            low_cardinality: at_least(19, 0),
            datetime64: at_least(20, 1),
            ttl: at_least(19, 6),
        })
    }

    /// A modern server (everything on).
    pub const MODERN: Features = Features {
        low_cardinality: true,
        datetime64: true,
        ttl: true,
    };

    fn city_type(self) -> &'static str {
        if self.low_cardinality {
            "LowCardinality(String)"
        } else {
            "String"
        }
    }

    fn moment_type(self) -> &'static str {
        if self.datetime64 {
            "DateTime64(3, 'UTC')"
        } else {
            "DateTime('UTC')"
        }
    }
}

/// The tables ridepulse writes, in creation order.
pub const TABLES: [&str; 6] = [
    "city_metrics",
    "city_supply",
    "city_minutes",
    "ride_events",
    "checkpoints",
    "dead_letters",
];

/// Late events per city and minute: filled by [`LATE_VIEW`] from `ride_events` inserts.
pub const LATE_TABLE: &str = "city_minute_late";
/// The materialized view that feeds [`LATE_TABLE`].
pub const LATE_VIEW: &str = "city_minute_late_mv";

/// One column: name and the type the server reports in `system.columns`.
fn columns(table: &str, features: Features) -> Vec<(&'static str, String)> {
    let city = features.city_type().to_string();
    let moment = features.moment_type().to_string();
    let t = |s: &str| s.to_string();
    match table {
        "city_metrics" => vec![
            ("window_start", t("DateTime('UTC')")),
            ("window_end", t("DateTime('UTC')")),
            ("city", city),
            ("total_events", t("UInt64")),
            ("requests", t("UInt64")),
            ("completions", t("UInt64")),
            ("cancellations", t("UInt64")),
            ("avg_fare", t("Nullable(Float64)")),
            ("unique_riders", t("UInt64")),
            ("is_final", t("UInt8")),
            ("version", t("UInt64")),
            ("updated_at", moment),
        ],
        "city_supply" => vec![
            ("minute", t("DateTime('UTC')")),
            ("city", city),
            ("available_drivers", t("UInt64")),
            ("on_trip_drivers", t("UInt64")),
            ("waiting_riders", t("UInt64")),
            ("rides_in_progress", t("UInt64")),
            ("requests", t("UInt64")),
            ("pressure", t("Nullable(Float64)")),
            ("is_final", t("UInt8")),
            ("version", t("UInt64")),
            ("updated_at", moment),
        ],
        "city_minutes" => vec![
            ("minute", t("DateTime('UTC')")),
            ("city", city),
            ("events", t("UInt64")),
            ("requested", t("UInt64")),
            ("accepted", t("UInt64")),
            ("started", t("UInt64")),
            ("completed", t("UInt64")),
            ("cancelled", t("UInt64")),
            ("fare_sum", t("Float64")),
            ("fares", t("UInt64")),
            ("unique_riders", t("UInt64")),
            ("riders", t("Array(String)")),
            ("max_event_ms", t("Int64")),
            ("is_final", t("UInt8")),
            ("version", t("UInt64")),
            ("updated_at", moment),
        ],
        "ride_events" => vec![
            ("event_type", city.clone()),
            ("ride_id", t("String")),
            ("timestamp", moment),
            ("timestamp_ms", t("Int64")),
            ("city", city),
            ("user_id", t("String")),
            ("driver_id", t("Nullable(String)")),
            ("estimated_fare", t("Nullable(Float64)")),
            ("pickup_lat", t("Nullable(Float64)")),
            ("pickup_lng", t("Nullable(Float64)")),
            ("dropoff_lat", t("Nullable(Float64)")),
            ("dropoff_lng", t("Nullable(Float64)")),
            ("kafka_partition", t("UInt32")),
            ("kafka_offset", t("UInt64")),
            ("is_late", t("UInt8")),
            ("ingested_at", t("DateTime('UTC')")),
        ],
        "checkpoints" => vec![
            ("consumer_group", t("String")),
            ("topic", t("String")),
            ("kafka_partition", t("UInt32")),
            ("next_offset", t("Int64")),
            ("max_event_ms", t("Nullable(Int64)")),
            ("written_to", t("Int64")),
            ("finalized_through", t("UInt64")),
            ("written_at_us", t("UInt64")),
        ],
        "dead_letters" => vec![
            ("source_topic", t("String")),
            ("kafka_partition", t("UInt32")),
            ("kafka_offset", t("UInt64")),
            ("error", t("String")),
            ("reason", t("String")),
            ("payload", t("String")),
            ("received_at", t("DateTime('UTC')")),
        ],
        other => unreachable!("no table {other}"),
    }
}

/// The `CREATE TABLE IF NOT EXISTS` statement of one table for a server with `features`.
pub fn create_table(database: &str, table: &str, features: Features) -> String {
    let mut sql = format!("CREATE TABLE IF NOT EXISTS {database}.{table}\n(\n");
    let cols = columns(table, features);
    for (i, (name, ty)) in cols.iter().enumerate() {
        let comma = if i + 1 < cols.len() { "," } else { "" };
        let _ = writeln!(sql, "    {name} {ty}{comma}");
    }
    sql.push_str(")\n");
    let clauses = match table {
        // One row per (city, window_start); the highest version wins at merge and with
        // FINAL. Monthly partitions keep part counts low for a table of a few rows a minute;
        // granules of 256 rows (not 8192: a month per city) let a panel's last hour read
        // a few hundred rows per city instead of thousands.
        "city_metrics" => "ENGINE = ReplacingMergeTree(version)\n\
             PARTITION BY toYYYYMM(window_start)\n\
             ORDER BY (city, window_start)\n\
             SETTINGS index_granularity = 256"
            .to_string(),
        // SPEC §5: one row per (city, minute), upserted like city_metrics.
        "city_supply" => "ENGINE = ReplacingMergeTree(version)\n\
             PARTITION BY toYYYYMM(minute)\n\
             ORDER BY (city, minute)"
            .to_string(),
        // The job's per-minute rollups, upserted like city_metrics: the dashboards' source.
        // Granules of 64 rows: a row carries its minute's riders (kilobytes), and the
        // last hour of a city is 60 rows, so a panel reads about one granule per city.
        "city_minutes" => "ENGINE = ReplacingMergeTree(version)\n\
             PARTITION BY toYYYYMM(minute)\n\
             ORDER BY (city, minute)\n\
             SETTINGS index_granularity = 64"
            .to_string(),
        // The key ends with the Kafka partition and offset: a re-delivered message has the
        // same key and collapses into one row at merge (and with FINAL).
        "ride_events" => {
            let ttl = if features.ttl {
                "\nTTL toDateTime(timestamp) + INTERVAL 90 DAY"
            } else {
                ""
            };
            format!(
                "ENGINE = ReplacingMergeTree\n\
                 PARTITION BY toYYYYMMDD(timestamp)\n\
                 ORDER BY (city, timestamp, kafka_partition, kafka_offset){ttl}"
            )
        }
        // Malformed messages (also on the DLQ topic), so dashboards can count them; keyed by
        // their position, so a re-delivery collapses at merge. Monthly partitions: few rows.
        "dead_letters" => "ENGINE = ReplacingMergeTree\n\
             PARTITION BY toYYYYMM(received_at)\n\
             ORDER BY (source_topic, kafka_partition, kafka_offset)"
            .to_string(),
        // A job's resume point per partition; the newest row wins.
        "checkpoints" => "ENGINE = ReplacingMergeTree(written_at_us)\n\
             ORDER BY (consumer_group, topic, kafka_partition)"
            .to_string(),
        other => unreachable!("no table {other}"),
    };
    sql.push_str(&clauses);
    sql
}

/// Columns added after a table's first release: `migrate` adds them to tables made by an
/// older ridepulse (table, column, type, the column it follows).
const ADDED_COLUMNS: [(&str, &str, &str, &str); 1] =
    [("dead_letters", "reason", "String", "error")];

/// Every statement `migrate` runs, in order.
pub fn statements(database: &str, features: Features) -> Vec<String> {
    let mut all = vec![format!("CREATE DATABASE IF NOT EXISTS {database}")];
    all.extend(TABLES.iter().map(|t| create_table(database, t, features)));
    all.extend(late_statements(database, features));
    all
}

/// Late events per (city, minute of their event time), kept by ClickHouse as the exact set
/// of their (partition, offset): `ride_events` is keyed by that pair, so a message the job
/// re-delivers after a restart adds an element already in the set and counts once
/// (`uniqExactMerge(late_events)`). A count (SummingMergeTree) would count it twice. Late
/// events are a small share, so the sets stay small; on-time events are in `city_minutes`.
/// The minute comes from `timestamp_ms`, exact and of one type on every server.
pub fn late_statements(database: &str, features: Features) -> [String; 2] {
    let city = features.city_type();
    [
        format!(
            "CREATE TABLE IF NOT EXISTS {database}.{LATE_TABLE}\n(\n    \
             minute DateTime('UTC'),\n    city {city},\n    \
             late_events AggregateFunction(uniqExact, UInt32, UInt64)\n)\n\
             ENGINE = AggregatingMergeTree\n\
             PARTITION BY toYYYYMM(minute)\n\
             ORDER BY (city, minute)\n\
             SETTINGS index_granularity = 256"
        ),
        format!(
            "CREATE MATERIALIZED VIEW IF NOT EXISTS {database}.{LATE_VIEW} TO {database}.{LATE_TABLE}\n\
             AS SELECT toDateTime(intDiv(timestamp_ms, 60000) * 60) AS minute, city,\n    \
             uniqExactState(kafka_partition, kafka_offset) AS late_events\n\
             FROM {database}.ride_events\n\
             WHERE is_late = 1\n\
             GROUP BY minute, city"
        ),
    ]
}

/// The server's `version()`.
pub async fn server_version(config: &ClickHouseConfig) -> Result<String, ClickHouseError> {
    let client = super::connect_server(config);
    Ok(
        query_text(&client, &config.url, "SELECT version()", "TabSeparated")
            .await?
            .trim()
            .to_string(),
    )
}

/// What `migrate` did.
#[derive(Debug)]
pub struct Migration {
    /// The server's version.
    pub version: String,
    /// The features the DDL used.
    pub features: Features,
    /// The statements run.
    pub statements: Vec<String>,
}

/// Creates the database and tables if missing, then verifies their columns.
pub async fn migrate(config: &ClickHouseConfig) -> Result<Migration, ClickHouseError> {
    let version = server_version(config).await?;
    let features = Features::of_version(&version)?;
    let client = super::connect_server(config);
    let statements = statements(&config.database, features);
    for statement in &statements {
        execute(&client, &config.url, statement).await?;
    }
    let mut statements = statements;
    for (table, column, ty, after) in ADDED_COLUMNS {
        let sql = format!(
            "SELECT count() FROM system.columns WHERE database = '{}' AND table = '{table}' AND name = '{column}'",
            config.database.replace('\'', "\\'")
        );
        if query_text(&client, &config.url, &sql, "TabSeparated")
            .await?
            .trim()
            == "0"
        {
            let alter = format!(
                "ALTER TABLE {}.{table} ADD COLUMN {column} {ty} AFTER {after}",
                config.database
            );
            execute(&client, &config.url, &alter).await?;
            statements.push(alter);
        }
    }
    verify(config).await?;
    Ok(Migration {
        version,
        features,
        statements,
    })
}

/// How the verified tables encode their time columns (a table made on an older server keeps
/// its `DateTime` after an upgrade, so this is read from the table, not the version).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// `city_metrics.updated_at` is `DateTime64(3)` (else `DateTime`).
    pub metrics_ms: bool,
    /// `ride_events.timestamp` is `DateTime64(3)` (else `DateTime`).
    pub events_ms: bool,
    /// `city_supply.updated_at` is `DateTime64(3)` (else `DateTime`).
    pub supply_ms: bool,
    /// `city_minutes.updated_at` is `DateTime64(3)` (else `DateTime`).
    pub minutes_ms: bool,
}

/// Checks that every table has the columns this version of ridepulse writes (by name, with
/// a type of the same encoding; a time column may be either `DateTime` or `DateTime64(3)`),
/// and returns how its time columns are encoded.
pub async fn verify(config: &ClickHouseConfig) -> Result<Layout, ClickHouseError> {
    let client = super::connect_server(config);
    let database = &config.database;
    let mut layout = Layout {
        metrics_ms: false,
        events_ms: false,
        supply_ms: false,
        minutes_ms: false,
    };
    for table in TABLES {
        let qualified = format!("{database}.{table}");
        let listing = query_text(
            &client,
            &config.url,
            &format!(
                "SELECT name, type FROM system.columns WHERE database = '{}' AND table = '{}'",
                database.replace('\'', "\\'"),
                table
            ),
            "TabSeparated",
        )
        .await?;
        let actual: Vec<(String, String)> = listing
            .lines()
            .filter_map(|l| l.split_once('\t'))
            .map(|(n, t)| (n.to_string(), t.replace("\\'", "'")))
            .collect();
        if actual.is_empty() {
            return Err(ClickHouseError::Schema {
                table: qualified,
                problem: "does not exist".into(),
            });
        }
        for (name, ty) in columns(table, Features::MODERN) {
            let found = actual.iter().find(|(n, _)| n == name);
            let moment = ty.starts_with("DateTime64");
            if let (true, Some((_, actual_ty))) = (moment, found) {
                let precise = actual_ty.starts_with("DateTime64(3");
                if precise || same_type(actual_ty, "DateTime") {
                    match table {
                        "city_metrics" => layout.metrics_ms = precise,
                        "city_supply" => layout.supply_ms = precise,
                        "city_minutes" => layout.minutes_ms = precise,
                        _ => layout.events_ms = precise,
                    }
                    continue;
                }
            }
            match found {
                None => {
                    return Err(ClickHouseError::Schema {
                        table: qualified,
                        problem: format!("column `{name}` is missing (expected {ty})"),
                    })
                }
                Some((_, actual_ty)) if !same_type(actual_ty, &ty) => {
                    return Err(ClickHouseError::Schema {
                        table: qualified,
                        problem: format!("column `{name}` is {actual_ty}, expected {ty}"),
                    })
                }
                Some(_) => {}
            }
        }
    }
    // The late-event rollup is fed by ClickHouse itself: without its view, late events
    // would silently go uncounted on the dashboards.
    for name in [LATE_TABLE, LATE_VIEW] {
        let found = query_text(
            &client,
            &config.url,
            &format!(
                "SELECT count() FROM system.tables WHERE database = '{}' AND name = '{name}'",
                database.replace('\'', "\\'")
            ),
            "TabSeparated",
        )
        .await?;
        if found.trim() == "0" {
            return Err(ClickHouseError::Schema {
                table: format!("{database}.{name}"),
                problem: "does not exist (run `ridepulse migrate`)".into(),
            });
        }
    }
    Ok(layout)
}

/// Type equality up to what does not change the RowBinary encoding: a `LowCardinality`
/// wrapper and a DateTime's time zone.
fn same_type(actual: &str, expected: &str) -> bool {
    fn normal(ty: &str) -> String {
        let mut t = ty.replace(' ', "");
        if let Some(inner) = t
            .strip_prefix("LowCardinality(")
            .and_then(|r| r.strip_suffix(')'))
        {
            t = inner.to_string();
        }
        if t.starts_with("DateTime(") {
            t = "DateTime".into();
        }
        if t.starts_with("DateTime64(3") {
            t = "DateTime64(3)".into();
        }
        t
    }
    normal(actual) == normal(expected)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn features_follow_the_version() {
        let old = Features::of_version("18.16.1").unwrap();
        assert!(!old.low_cardinality && !old.datetime64 && !old.ttl);
        assert_eq!(Features::of_version("24.8.4.13").unwrap(), Features::MODERN);
        assert!(Features::of_version("nonsense").is_err());
    }

    #[test]
    fn legacy_ddl_avoids_modern_types() {
        let ddl = statements("ridepulse", Features::of_version("18.16.1").unwrap()).join("\n");
        assert!(
            !ddl.contains("DateTime64") && !ddl.contains("TTL") && !ddl.contains("LowCardinality")
        );
        let modern = statements("ridepulse", Features::MODERN).join("\n");
        assert!(
            modern.contains("DateTime64(3, 'UTC')")
                && modern.contains("TTL")
                && modern.contains("LowCardinality")
        );
    }

    #[test]
    fn late_events_are_rolled_up_as_sets_of_positions_on_every_server() {
        for features in [Features::of_version("18.16.1").unwrap(), Features::MODERN] {
            let ddl = statements("rp", features).join("\n");
            assert!(ddl.contains("CREATE TABLE IF NOT EXISTS rp.city_minutes"));
            assert!(ddl.contains("riders Array(String)"));
            assert!(ddl.contains("AggregateFunction(uniqExact, UInt32, UInt64)"));
            assert!(ddl.contains(
                "CREATE MATERIALIZED VIEW IF NOT EXISTS rp.city_minute_late_mv TO rp.city_minute_late"
            ));
            assert!(ddl.contains("uniqExactState(kafka_partition, kafka_offset)"));
            // The view comes after the table it reads and the table it fills.
            let view = ddl.find("MATERIALIZED VIEW").unwrap();
            assert!(ddl.find("rp.ride_events\n(").unwrap() < view);
            assert!(ddl.find("rp.city_minute_late\n(").unwrap() < view);
        }
    }

    #[test]
    fn type_comparison_ignores_encoding_neutral_details() {
        assert!(same_type("LowCardinality(String)", "String"));
        assert!(same_type("DateTime('UTC')", "DateTime"));
        assert!(same_type("DateTime", "DateTime('UTC')"));
        assert!(!same_type("Float64", "Nullable(Float64)"));
        assert!(!same_type("DateTime64(3, 'UTC')", "DateTime('UTC')"));
    }
}
