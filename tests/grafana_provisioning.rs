//! The Grafana provisioning under `grafana/` is what Grafana's file provisioning and the
//! official ClickHouse plugin read (`tests/grafana/check_grafana.py` checks the structure),
//! and every panel's and the alert rule's SQL, with the plugin's macros expanded, runs on
//! the local ClickHouse filled by a real job and in chDB (a modern ClickHouse) with the same
//! rows, returning the columns each panel expects. The supply panels and the pressure alert
//! read `city_supply`, which the test fills with known rows (a city above the pressure
//! threshold, one with riders waiting and no driver available, a calm one).
//!
//! Needs Python with chdb and PyYAML: `scripts/test` installs them into
//! `~/.cache/ridepulse/venv`; `RIDEPULSE_PYTHON` points elsewhere.

mod common;

use std::path::Path;
use std::process::Command;

use common::{field, summary_of, Namespace};

#[test]
fn every_panel_query_runs_on_both_servers_with_the_expected_columns() {
    let ns = Namespace::new("grafana");
    ns.create_topics();
    ns.migrate();
    // Event time ending a few minutes ago: the "last hour" and "last 5 minutes" panels
    // see it, and malformed lines fill dead_letters.
    let start = dataflows::event::Timestamp(chrono::Utc::now().timestamp_millis() - 14 * 60_000);
    let dir = common::temp_dir("grafana");
    let path = common::dataset(&ns, &dir, 12_000, 1_000, &start.to_string());
    ns.run(&["simulate", "--replay", path.to_str().unwrap()]);
    let summary = summary_of(&ns.try_run(&["run", "--until-end", "-w", "2", "--group", "g"]));
    assert!(field::<u64>(&summary, "dead_letters") > 0, "{summary}");
    // Supply and demand, minute by minute up to the last whole minute (SPEC §5).
    let now = chrono::Utc::now().timestamp() / 60 * 60;
    let mut rows = Vec::new();
    for k in 1..=8i64 {
        for (city, available, waiting) in [("bratislava", 4, 15), ("brno", 0, 6), ("kosice", 20, 3)]
        {
            let pressure = (available > 0).then(|| waiting as f64 / available as f64);
            rows.push(format!(
                "({minute}, '{city}', {available}, 5, {waiting}, 5, 9, {pressure}, 1, 1, now())",
                minute = now - k * 60,
                pressure = pressure.map_or("NULL".to_string(), |p| p.to_string()),
            ));
        }
    }
    // The job wrote supply rows of its own (no driver locations here: no drivers, null
    // pressure); the panels are checked against the known rows instead.
    ns.run(&["query", "TRUNCATE TABLE city_supply"]);
    ns.run(&[
        "query",
        &format!(
            "INSERT INTO city_supply (minute, city, available_drivers, on_trip_drivers, \
             waiting_riders, rides_in_progress, requests, pressure, is_final, version, \
             updated_at) VALUES {}",
            rows.join(", ")
        ),
    ]);

    let ddl = ns.run(&["migrate", "--print", "--server-version", "24.8.4.13"]);
    let ddl = ddl.replace(&ns.config.clickhouse.database, "ridepulse");
    let ddl_file = dir.join("modern.sql");
    std::fs::write(&ddl_file, ddl).unwrap();

    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let python = common::python();
    let output = Command::new(&python)
        .arg(root.join("tests/grafana/check_grafana.py"))
        .arg(root.join("grafana"))
        .arg(&ns.config.clickhouse.url)
        .arg(&ns.config.clickhouse.database)
        .arg(&ddl_file)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {python} (scripts/test installs it): {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    eprintln!("{stdout}");
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // Every panel (13) and the two alert queries ran on both servers (5 tables copied).
    assert_eq!(stdout.matches("ok   local ClickHouse: ").count(), 15);
    assert_eq!(stdout.matches("ok   chDB: ").count(), 15 + 5);
    assert!(stdout.contains("alert rule: Pressure above 2"), "{stdout}");
    // The pressure alert's values, the same on both servers: a city with riders waiting and
    // no driver available counts as if one were (6 / 1), calm kosice is under 2.
    let alert = stdout
        .lines()
        .find(|l| l.starts_with("same alert: Pressure above 2: "))
        .unwrap_or_else(|| panic!("{stdout}"));
    let mut values: Vec<(String, String)> = serde_json::from_str::<Vec<serde_json::Value>>(
        alert.trim_start_matches("same alert: Pressure above 2: "),
    )
    .unwrap()
    .iter()
    .map(|r| {
        (
            r["city"].as_str().unwrap().into(),
            r["pressure"].as_str().unwrap().into(),
        )
    })
    .collect();
    values.sort();
    let expected = [("bratislava", "3.75"), ("brno", "6"), ("kosice", "0.15")];
    assert_eq!(
        values,
        expected.map(|(c, p)| (c.to_string(), p.to_string())),
        "{alert}"
    );
    // Where riders wait now: the city with no driver available first, then by pressure.
    let wait = stdout
        .lines()
        .find(|l| l.starts_with("same Where riders wait now: "))
        .unwrap_or_else(|| panic!("{stdout}"));
    let order: Vec<String> = serde_json::from_str::<Vec<serde_json::Value>>(
        wait.trim_start_matches("same Where riders wait now: "),
    )
    .unwrap()
    .iter()
    .map(|r| r["city"].as_str().unwrap().to_string())
    .collect();
    assert_eq!(order, ["brno", "bratislava", "kosice"], "{wait}");
    std::fs::remove_dir_all(&dir).ok();
}
