//! The Grafana provisioning under `grafana/` is what Grafana's file provisioning and the
//! official ClickHouse plugin read (`tests/grafana/check_grafana.py` checks the structure),
//! and every panel's and the alert rule's SQL, with the plugin's macros expanded, runs on
//! the local ClickHouse filled by a real job and in chDB (a modern ClickHouse) with the same
//! rows, returning the columns each panel expects.
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
    // Every panel (9) and the alert query ran on both servers.
    assert_eq!(stdout.matches("ok   local ClickHouse: ").count(), 10);
    assert_eq!(stdout.matches("ok   chDB: ").count(), 10 + 3);
    std::fs::remove_dir_all(&dir).ok();
}
