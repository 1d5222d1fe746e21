//! Shared helpers for the integration tests: a unique namespace per test (its own topics),
//! running the real `ridepulse` binary, and reading topics back with a plain consumer.
//!
//! The tests need the local stack (`scripts/stack up`); `scripts/test` starts it. The
//! broker address comes from `RIDEPULSE_KAFKA_BROKERS` (default 127.0.0.1:9092).
#![allow(dead_code)]

use std::process::{Command, Output};
use std::time::{SystemTime, UNIX_EPOCH};

use ridepulse::config::Config;

/// A test's own topic names and the flags that select them.
pub struct Namespace {
    /// The configuration the binary will see.
    pub config: Config,
    args: Vec<String>,
}

impl Namespace {
    /// Topics named `it-<test>-<unique>-<topic>` on the test broker.
    pub fn new(test: &str) -> Namespace {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let prefix = format!("it-{test}-{}-{}", std::process::id(), nanos % 1_000_000_000);
        let brokers =
            std::env::var("RIDEPULSE_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into());
        let args = vec![
            format!("kafka.brokers={brokers}"),
            format!("topics.ride_events={prefix}-ride-events"),
            format!("topics.driver_locations={prefix}-driver-locations"),
            format!("topics.aggregated={prefix}-analytics-aggregated"),
            format!("topics.dead_letters={prefix}-ride-events-dlq"),
        ];
        let config = Config::load(None, std::iter::empty(), &args).unwrap();
        Namespace {
            config,
            args: args
                .into_iter()
                .flat_map(|a| ["--set".to_string(), a])
                .collect(),
        }
    }

    /// The flags that select this namespace's configuration.
    pub fn args(&self) -> &[String] {
        &self.args
    }

    /// Runs `ridepulse <args>` with this namespace's topics; panics with its output on failure.
    pub fn run(&self, args: &[&str]) -> String {
        let output = self.try_run(args);
        assert!(
            output.status.success(),
            "ridepulse {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    }

    /// Runs `ridepulse <args>` and returns whatever happened.
    pub fn try_run(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_ridepulse"))
            .args(&self.args)
            .args(args)
            .env_remove("RIDEPULSE_CONFIG")
            .output()
            .unwrap()
    }

    /// Creates this namespace's topics.
    pub fn create_topics(&self) {
        let out = self.run(&["topics", "create"]);
        assert_eq!(
            out.lines().filter(|l| l.starts_with("created")).count(),
            4,
            "{out}"
        );
    }
}

/// A field `name=value` from a summary line printed by the binary.
pub fn field<T: std::str::FromStr>(text: &str, name: &str) -> T {
    let prefix = format!("{name}=");
    text.split([' ', ',', '\n'])
        .find_map(|word| word.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {name}= in {text}"))
        .parse()
        .unwrap_or_else(|_| panic!("{name} is not a number in {text}"))
}
