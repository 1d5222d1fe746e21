//! The benchmark harness works end to end on a tiny input (benchmarks themselves never run
//! in the tests): `ridepulse bench engine kafka` with a few thousand events and two rounds
//! of the engine's worker counts writes its JSON results and PNG plots, the figures are
//! there (each run's, and the medians and speed-ups over the rounds), and the engine and
//! Kafka paths wrote the same final rows.

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
        "--rounds",
        "2",
        "--out",
        out.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
    ]);
    eprintln!("{stdout}");
    for figure in [
        "1 worker(s): events/s, median of 2 rounds",
        "2 worker(s): events/s, median of 2 rounds",
        "2 / 1 worker(s), within a round",
    ] {
        assert!(stdout.contains(figure), "no `{figure}` in {stdout}");
    }
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
    let runs = result["figures"].as_array().unwrap();
    let rounds: Vec<(u64, u64)> = runs
        .iter()
        .map(|r| (r["round"].as_u64().unwrap(), r["workers"].as_u64().unwrap()))
        .collect();
    assert_eq!(rounds, [(1, 1), (1, 2), (2, 1), (2, 2)], "interleaved");
    for run in runs {
        assert!(run["events_per_sec"].as_f64().unwrap() > 0.0, "{run}");
        assert!(run["peak_rss_kb"].as_u64().unwrap() > 0, "{run}");
    }
    // The summary is the median of the runs it stands for, here the mean of two.
    let summary = result["summary"].as_array().unwrap();
    for (entry, workers) in summary.iter().zip([1, 2]) {
        let rates: Vec<f64> = runs
            .iter()
            .filter(|r| r["workers"] == workers)
            .map(|r| r["events_per_sec"].as_f64().unwrap())
            .collect();
        let median = entry["events_per_sec"]["median"].as_f64().unwrap();
        assert!(
            (median - (rates[0] + rates[1]) / 2.0).abs() < 1e-6,
            "{entry}"
        );
    }
    assert!(summary[1]["speedup"]["median"].as_f64().unwrap() > 0.0);
    std::fs::remove_dir_all(&dir).ok();
}
