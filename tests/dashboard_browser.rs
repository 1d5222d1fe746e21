//! The built-in dashboard in a real browser (Debian's headless Chromium, driven through
//! chromedriver by `tests/browser/check_dashboard.py`) against the running pipeline: the
//! numbers on the page equal ClickHouse's for the same cities and window, the page updates
//! itself when new events go through the pipeline, an unreachable ClickHouse shows a
//! notice, and a screenshot of a second dashboard over a realistic simulator run
//! ([`realistic`]) is saved as a test artifact (`$CARGO_TARGET_TMPDIR/dashboard.png`;
//! `docs/dashboard.png` is a copy of one).
//!
//! The charts (uPlot): every chart draws the five cities with the most events in the last
//! hour and lists the others hidden; clicking a city's legend entry hides it on every chart
//! and clicking again shows it (kept across redraws); hovering a point of a known supply row
//! shows exactly its value and its minute's end time in the legend. Some rides carry a hostile city name
//! ([`HOSTILE_CITY`], markup with an `onerror` handler): the page must show it as text in the
//! city table and the chart legends, and no script or element may come out of it.
//!
//! The supply-and-demand section (SPEC §5) reads `city_supply`, which the test fills with
//! known rows ([`supply_rows`]; the hostile city among them): its table equals
//! `sql/where_riders_wait_now.sql` on ClickHouse, in that order (cities under pressure
//! first), the cities above the pressure threshold are highlighted, the pressure chart draws
//! the threshold, and a newer row inserted later shows without a reload.
//!
//! Needs chromium and chromium-driver (`scripts/test` installs them with apt).

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{field, summary_of, Namespace};

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A city name an attacker can put on the `ride-events` topic: as HTML it would create an
/// `img` whose error handler sets `window.__pwned`, and its quotes would end an attribute.
const HOSTILE_CITY: &str = r#"<img src=x onerror="window.__pwned=1">"&'"#;

/// Moves one ride in twelve (all its events) to [`HOSTILE_CITY`]; malformed lines stay.
fn with_hostile_city(path: &Path) {
    let mut rides = std::collections::BTreeMap::new();
    let lines: Vec<String> = std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(
            |line| match dataflows::event::RideEvent::parse(line.as_bytes()) {
                Ok(mut event) => {
                    let next = rides.len();
                    if *rides.entry(event.ride_id.clone()).or_insert(next) % 12 == 0 {
                        event.city = HOSTILE_CITY.into();
                    }
                    event.to_json()
                }
                Err(_) => line.to_string(),
            },
        )
        .collect();
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

/// One `city_supply` row as JSON (18.16's DateTime text).
fn supply_row(minute: i64, city: &str, available: u64, waiting: u64, version: u64) -> String {
    let text = |unix: i64| {
        chrono::DateTime::from_timestamp(unix, 0)
            .unwrap()
            .format("%Y-%m-%d %H:%M:%S")
            .to_string()
    };
    let pressure = (available > 0).then(|| waiting as f64 / available as f64);
    serde_json::json!({
        "minute": text(minute), "city": city, "available_drivers": available,
        "on_trip_drivers": 7, "waiting_riders": waiting, "rides_in_progress": 9,
        "requests": waiting + 2, "pressure": pressure, "is_final": 1, "version": version,
        "updated_at": text(minute + 60),
    })
    .to_string()
}

/// Six minutes of supply and demand up to the last whole minute: bratislava losing drivers
/// (pressure 6 at the end), the hostile city at 3, brno calm at 0.4 (a superseded row of
/// version 1 said 9), kosice calm at 0.5.
fn supply_rows(now_s: i64) -> Vec<String> {
    let last = now_s / 60 * 60 - 60;
    let mut rows = Vec::new();
    for k in (0..6).rev() {
        let minute = last - k * 60;
        let step = 5 - k as u64;
        rows.push(supply_row(
            minute,
            "bratislava",
            20 - 3 * step,
            10 + 4 * step,
            1,
        ));
        rows.push(supply_row(minute, HOSTILE_CITY, 5, 10 + step, 1));
        rows.push(supply_row(minute, "brno", 30, 12, 2));
        rows.push(supply_row(minute, "kosice", 10, 5, 1));
    }
    rows.push(supply_row(last, "brno", 3, 27, 1));
    rows
}

/// Bratislava's known rows of [`supply_rows`] (minute as Unix seconds, earliest first), for
/// the browser's hover check: a hovered point must show exactly these numbers.
fn bratislava_rows(now_s: i64) -> String {
    let rows: Vec<serde_json::Value> = supply_rows(now_s)
        .iter()
        .map(|row| serde_json::from_str::<serde_json::Value>(row).unwrap())
        .filter(|row| row["city"] == "bratislava")
        .map(|mut row| {
            let minute = chrono::NaiveDateTime::parse_from_str(
                row["minute"].as_str().unwrap(),
                "%Y-%m-%d %H:%M:%S",
            )
            .unwrap()
            .and_utc()
            .timestamp();
            row["minute"] = minute.into();
            row
        })
        .collect();
    serde_json::Value::from(rows).to_string()
}

/// A second pipeline for the screenshot kept in `docs/dashboard.png`: fifteen minutes of
/// simulated rides and driver locations ending about when the browser looks (a demand surge
/// and a driver drop in bratislava), run from files through the job into a namespace of its
/// own. The test's own rows (the hostile city, the hand-written supply rows) would not show
/// what the page is for.
///
/// A file run ends the input, so the job also writes the supply of the minutes after the
/// last event (riders still waiting, no driver reporting any more); those rows are left out,
/// so that the page looks as it did while the run was live.
fn realistic(dir: &Path) -> Namespace {
    let ns = Namespace::new("dashboard-docs");
    ns.create_topics();
    ns.migrate();
    let (rides, locations) = (
        dir.join("docs-rides.jsonl"),
        dir.join("docs-locations.jsonl"),
    );
    // The screenshot is taken some 40 s from here: the newest event is then ~10 s old.
    let end_ms = chrono::Utc::now().timestamp_millis() / 1000 * 1000 + 30_000;
    let start = dataflows::event::Timestamp(end_ms - 15 * 60_000).to_string();
    ns.run(&[
        "simulate",
        "--out",
        rides.to_str().unwrap(),
        "--locations-out",
        locations.to_str().unwrap(),
        "--count",
        "15000",
        "--rate",
        "1000",
        "--drivers",
        "400",
        "--seed",
        "15",
        "--start",
        &start,
        "--surge",
        "bratislava:3:4m:11m",
        "--supply-drop",
        "bratislava:0.7:6m:13m",
    ]);
    let summary = summary_of(&ns.try_run(&[
        "run",
        "--from-file",
        rides.to_str().unwrap(),
        "--locations-file",
        locations.to_str().unwrap(),
        "-w",
        "2",
    ]));
    assert_eq!(
        field::<u64>(&summary, "written_events"),
        15_000,
        "{summary}"
    );
    let live = format!("toUInt32(minute) + 60 <= {}", end_ms / 1000);
    for sql in [
        "CREATE TABLE city_supply_live AS city_supply".to_string(),
        format!("INSERT INTO city_supply_live SELECT * FROM city_supply WHERE {live}"),
        "TRUNCATE TABLE city_supply".into(),
        "INSERT INTO city_supply SELECT * FROM city_supply_live".into(),
        "DROP TABLE city_supply_live".into(),
    ] {
        ns.run(&["query", &sql]);
    }
    ns
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn dashboard(ns: &Namespace, port: u16) -> KillOnDrop {
    let child = ns
        .command(&["dashboard", "--listen", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "the dashboard did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    KillOnDrop(child)
}

#[test]
fn the_dashboard_shows_clickhouses_numbers_and_updates_itself() {
    let ns = Namespace::new("dashboard");
    ns.create_topics();
    ns.migrate();
    let now = chrono::Utc::now().timestamp_millis();
    let dir = common::temp_dir("dashboard");
    let start = dataflows::event::Timestamp(now - 15 * 60_000);
    let path = common::dataset(&ns, &dir, 9_000, 1_000, &start.to_string());
    with_hostile_city(&path);
    ns.run(&["simulate", "--replay", path.to_str().unwrap()]);
    let summary = summary_of(&ns.try_run(&["run", "--until-end", "-w", "2", "--group", "g"]));
    assert!(
        field::<u64>(&summary, "written_events") > 8_000,
        "{summary}"
    );
    let insert = |rows: &[String]| {
        format!(
            "INSERT INTO city_supply FORMAT JSONEachRow {}",
            rows.join("\n")
        )
    };
    // The job wrote supply rows of its own (no driver locations here, so no drivers and null
    // pressure): the section is checked against the test's known rows instead.
    const CLEAR_SUPPLY: &str = "TRUNCATE TABLE city_supply";
    ns.run(&["query", CLEAR_SUPPLY]);
    ns.run(&["query", &insert(&supply_rows(now / 1000))]);

    let docs = realistic(&dir);
    let (port, down_port, docs_port) = (free_port(), free_port(), free_port());
    let _dashboard = dashboard(&ns, port);
    let _docs = dashboard(&docs, docs_port);
    let unreachable = ns.with("clickhouse.url", "http://127.0.0.1:1");
    let _down = dashboard(&unreachable, down_port);

    // More events, a few minutes of event time up to now, through the same job.
    let more = dataflows::event::Timestamp(now - 3 * 60_000);
    let mut more_events: Vec<String> = vec!["bash".into(), "-c".into()];
    let bin = env!("CARGO_BIN_EXE_ridepulse");
    let args = ns.args().join(" ");
    // ... and kosice runs out of drivers in the newest minute: it must move to the top.
    // (The job's own supply rows are cleared again, and the known ones put back.)
    let kosice = supply_row(now / 1000 / 60 * 60, "kosice", 0, 9, 1);
    let mut known = supply_rows(now / 1000);
    known.push(kosice);
    // In a file: the hostile city's quote would end a shell-quoted argument.
    let known_sql = dir.join("known_supply.sql");
    std::fs::write(&known_sql, insert(&known)).unwrap();
    more_events.push(format!(
        "{bin} {args} simulate --out {file} --count 3000 --rate 1500 --seed 5 --start {more} \
         && {bin} {args} simulate --replay {file} && {bin} {args} run --until-end -w 2 --group g \
         && {bin} {args} query '{CLEAR_SUPPLY}' && {bin} {args} query --file {sql}",
        file = dir.join("more.jsonl").display(),
        sql = known_sql.display(),
    ));

    let known_rows = dir.join("bratislava_supply.json");
    std::fs::write(&known_rows, bratislava_rows(now / 1000)).unwrap();

    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let screenshot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    let python = common::python();
    let output = Command::new(&python)
        .arg(root.join("tests/browser/check_dashboard.py"))
        .arg(format!("http://127.0.0.1:{port}/"))
        .arg(&ns.config.clickhouse.url)
        .arg(&ns.config.clickhouse.database)
        .arg(&screenshot)
        .arg(root.join("sql/city_performance_last_hour.sql"))
        .arg(format!("http://127.0.0.1:{down_port}/"))
        .arg(HOSTILE_CITY)
        .arg(root.join("sql/where_riders_wait_now.sql"))
        .arg(&known_rows)
        .arg(format!("http://127.0.0.1:{docs_port}/"))
        .arg(&docs.config.clickhouse.database)
        .arg("--")
        .args(&more_events)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    eprintln!("{stdout}");
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let png = std::fs::read(&screenshot).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "a PNG screenshot");
    assert!(png.len() > 20_000, "a real screenshot, {} bytes", png.len());
    std::fs::remove_dir_all(&dir).ok();
}
