//! The benchmark harness works end to end on a tiny input (benchmarks themselves never run
//! in the tests): `ridepulse bench engine kafka` with a few thousand events writes its JSON
//! results and PNG plots, the figures are there, and the engine and Kafka paths wrote the
//! same final rows.

mod common;

use common::Namespace;

#[test]
fn engine_and_kafka_scenarios_write_results_and_plots() {
    let ns = Namespace::new("bench");
    let dir = common::temp_dir("bench");
    let out = dir.join("results");
    let data = dir.join("data");
    let stdout = ns.run(&[
        "bench",
        "engine",
        "kafka",
        "--events",
        "3000",
        "--workers",
        "1,2",
        "--out",
        out.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
    ]);
    eprintln!("{stdout}");
    assert!(stdout.contains("1 worker(s): events/s"), "{stdout}");
    let equal = stdout
        .lines()
        .find(|l| l.contains("final city_metrics rows equal the engine run's"))
        .unwrap_or_else(|| panic!("no comparison in {stdout}"));
    assert!(equal.split_whitespace().any(|w| w == "true"), "{equal}");
    let files: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    for prefix in [
        "engine-throughput-",
        "engine-rss-",
        "kafka-throughput-",
        "kafka-rss-",
    ] {
        let png = files
            .iter()
            .find(|f| f.starts_with(prefix) && f.ends_with(".png"))
            .unwrap_or_else(|| panic!("no {prefix}*.png in {files:?}"));
        assert!(ridepulse::bench::is_png(&out.join(png)), "{png}");
    }
    let engine = files
        .iter()
        .find(|f| f.starts_with("engine-") && f.ends_with(".json"))
        .unwrap();
    let result: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join(engine)).unwrap()).unwrap();
    assert_eq!(result["parameters"]["events"], 3000);
    assert!(result["machine"]["cores"].as_u64().unwrap() >= 1);
    for run in result["figures"].as_array().unwrap() {
        assert!(run["events_per_sec"].as_f64().unwrap() > 0.0, "{run}");
        assert!(run["peak_rss_kb"].as_u64().unwrap() > 0, "{run}");
    }
    std::fs::remove_dir_all(&dir).ok();
}
