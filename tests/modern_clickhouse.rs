//! The modern-server side of the schema, checked in chDB (PyPI `chdb`, an embedded modern
//! ClickHouse): `ridepulse migrate --print --server-version 24.8` must create tables there
//! with LowCardinality, DateTime64(3) and TTL, and the shipped SQL files must run on them
//! and give the exact answers for a known set of rows (a re-delivered message collapsed by
//! FINAL, an event outside the last hour ignored, a late event counted only apart: the
//! queries read the per-minute rollups `city_minutes`; for `where_riders_wait_now.sql` a supply
//! row replaced by a newer version, a city without drivers first, an old city left out).
//!
//! Needs Python with chdb: `scripts/test` installs it into `~/.cache/ridepulse/venv`;
//! `RIDEPULSE_PYTHON` points elsewhere.

mod common;

use std::path::Path;
use std::process::Command;

#[test]
fn modern_ddl_and_shipped_queries_run_in_chdb() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let ddl = Command::new(env!("CARGO_BIN_EXE_ridepulse"))
        .args(["migrate", "--print", "--server-version", "24.8.4.13"])
        .env_remove("RIDEPULSE_CONFIG")
        .output()
        .unwrap();
    assert!(ddl.status.success());
    let ddl_text = String::from_utf8(ddl.stdout).unwrap();
    for modern in [
        "LowCardinality(String)",
        "DateTime64(3, 'UTC')",
        "TTL toDateTime(timestamp) + INTERVAL 90 DAY",
        "AggregateFunction(uniqExact, UInt32, UInt64)",
        "CREATE MATERIALIZED VIEW IF NOT EXISTS ridepulse.city_minute_late_mv",
    ] {
        assert!(ddl_text.contains(modern), "{modern} in\n{ddl_text}");
    }
    let ddl_file =
        std::env::temp_dir().join(format!("ridepulse-modern-{}.sql", std::process::id()));
    std::fs::write(&ddl_file, &ddl_text).unwrap();

    let python = common::python();
    let output = Command::new(&python)
        .arg(root.join("tests/chdb/check_modern.py"))
        .arg(&ddl_file)
        .arg(root.join("sql/city_performance_last_hour.sql"))
        .arg(root.join("sql/rides_per_minute.sql"))
        .arg(root.join("sql/where_riders_wait_now.sql"))
        .output()
        .unwrap_or_else(|e| panic!("cannot run {python} (scripts/test installs it): {e}"));
    std::fs::remove_file(&ddl_file).ok();
    assert!(
        output.status.success(),
        "chDB check failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let results: Vec<serde_json::Value> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let rows = |file: &str| -> Vec<Vec<String>> {
        let result = results.iter().find(|r| r["file"] == file).unwrap();
        result["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|row| {
                row.as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string))
                    .collect()
            })
            .collect()
    };
    // city, requests, completions, cancellations, completion %, avg fare, riders, events
    // (on-time events: brno's late request is not among them)
    assert_eq!(
        rows("city_performance_last_hour.sql"),
        vec![
            vec!["bratislava", "2", "1", "0", "50", "10", "2", "3"],
            vec!["brno", "1", "0", "1", "0", "7", "1", "2"],
        ]
    );
    // The late event, inserted twice, counts once.
    assert_eq!(rows("city_minute_late"), vec![vec!["brno", "1"]]);
    let per_minute = rows("rides_per_minute.sql");
    assert_eq!(per_minute.len(), 5, "{per_minute:?}");
    let total = |column: usize| -> u64 {
        per_minute
            .iter()
            .map(|r| r[column].parse::<u64>().unwrap())
            .sum()
    };
    // On-time events only (the late request is counted in city_minute_late).
    assert_eq!((total(1), total(2), total(3)), (3, 1, 1));
    // city, minute, waiting, available, on trip, in progress, requests, pressure, is_final
    let waiting: Vec<Vec<String>> = rows("where_riders_wait_now.sql")
        .into_iter()
        .map(|r| [&r[..1], &r[2..]].concat())
        .collect();
    assert_eq!(
        waiting,
        vec![
            vec!["brno", "3", "0", "4", "4", "7", "null", "1"],
            vec!["bratislava", "24", "6", "4", "4", "7", "4", "1"],
            vec!["kosice", "10", "20", "4", "4", "7", "0.5", "1"],
        ]
    );
}
