//! Configuration in layers: built-in defaults → TOML file → environment → command-line flags.
//!
//! Tests and benchmarks rely on this to run on their own topics and database without
//! touching anyone else's, and operators rely on it to say exactly which key is wrong. Every
//! key can be overridden from the environment as `RIDEPULSE_<SECTION>_<KEY>` (for example
//! `RIDEPULSE_KAFKA_BROKERS`) and from the command line with `--set section.key=value`.
//! Secrets (the ClickHouse password) are never printed: [`Secret`] redacts itself.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Everything the binary can be configured with.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where the Kafka-protocol broker is and how topics are created.
    pub kafka: KafkaConfig,
    /// Topic names (SPEC §1).
    pub topics: TopicsConfig,
    /// The ClickHouse server metrics are written to.
    pub clickhouse: ClickHouseConfig,
    /// Window, lateness and emission settings (SPEC §3).
    pub window: WindowConfig,
    /// Live supply and demand (SPEC §5).
    pub supply: SupplyConfig,
    /// How the job checkpoints.
    pub job: JobConfig,
    /// The cluster layout file and where submitted jobs keep their state.
    pub cluster: ClusterConfig,
    /// Where each job process serves its Prometheus metrics.
    pub metrics: MetricsConfig,
    /// What the job writes besides the views.
    pub sinks: SinksConfig,
}

/// `[sinks]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SinksConfig {
    /// Write every valid ride event to `ride_events` (default). `false` for a ClickHouse that
    /// ingests the `ride-events` topic itself (its Kafka table engine): the job then computes
    /// the views only. `city_minute_late` (late events per minute, from `ride_events`) stays
    /// empty unless that ingest fills `ride_events`.
    pub raw_events: bool,
}

impl Default for SinksConfig {
    fn default() -> Self {
        SinksConfig { raw_events: true }
    }
}

/// `[metrics]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// `host:port` a job process serves `/metrics` on (empty: no endpoint). Process I of a
    /// layout uses its own `metrics` address if the layout names one, otherwise this port
    /// plus I (see `cluster::Layout::metrics_address`).
    pub listen: String,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            listen: "127.0.0.1:9464".into(),
        }
    }
}

/// `[supply]`: SPEC §5's freshness knobs, in whole minutes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SupplyConfig {
    /// A driver counts at a minute's end when its latest location is at most this many
    /// minutes old (1: only drivers that reported during the minute).
    pub stale_after_minutes: u64,
    /// A ride counts at a minute's end when its latest event is at most this many minutes
    /// old, so abandoned requests stop counting as waiting riders.
    pub request_timeout_minutes: u64,
    /// Whether the job computes supply and demand: `auto` (default: yes, except in a file
    /// run without `--locations-file`, which has no driver to count), `true` or `false`
    /// (the city metrics alone; `driver-locations` is not read).
    pub enabled: String,
}

impl Default for SupplyConfig {
    fn default() -> Self {
        SupplyConfig {
            stale_after_minutes: 1,
            request_timeout_minutes: 10,
            enabled: "auto".into(),
        }
    }
}

impl SupplyConfig {
    /// Whether a job computes supply and demand; `rides_only_file_run`: a file run given
    /// ride-event files and no location file. `validate` has checked the value.
    pub fn runs(&self, rides_only_file_run: bool) -> bool {
        match self.enabled.as_str() {
            "true" => true,
            "false" => false,
            _ => !rides_only_file_run,
        }
    }

    /// How many minutes back a supply row depends on: `max(stale, timeout)`.
    pub fn horizon_minutes(&self) -> u64 {
        self.stale_after_minutes.max(self.request_timeout_minutes)
    }
}

/// `[job]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JobConfig {
    /// How often each worker writes its partitions' resume checkpoints (and commits the
    /// offsets): shorter means less to re-read after a crash, more small ClickHouse inserts.
    pub checkpoint_interval_ms: u64,
    /// Watermark alignment: a partition whose event time runs this far ahead of the job's
    /// watermark is not read on until the others catch up (0 turns it off), so windows close
    /// progressively during a catch-up and the checkpoints' resume point advances.
    pub max_drift_secs: u64,
}

impl Default for JobConfig {
    fn default() -> Self {
        JobConfig {
            checkpoint_interval_ms: 1000,
            max_drift_secs: 300,
        }
    }
}

/// `[cluster]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// The layout file (`workers.toml`) jobs take their processes from.
    pub layout: PathBuf,
    /// Where `ridepulse job` keeps each job's state and logs; empty means
    /// `$XDG_STATE_HOME/ridepulse/jobs` (or `~/.local/state/ridepulse/jobs`).
    pub state_dir: PathBuf,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            layout: PathBuf::from("workers.toml"),
            state_dir: PathBuf::new(),
        }
    }
}

impl ClusterConfig {
    /// The state directory, with the default resolved.
    pub fn state_dir(&self) -> PathBuf {
        if !self.state_dir.as_os_str().is_empty() {
            return self.state_dir.clone();
        }
        let base = std::env::var_os("XDG_STATE_HOME")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into()))
                    .join(".local/state")
            });
        base.join("ridepulse/jobs")
    }
}

/// `[kafka]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// `bootstrap.servers`: comma-separated `host:port` list.
    pub brokers: String,
    /// Replication factor for the topics we create: 3 in production, 1 on a local broker.
    pub replication_factor: i32,
    /// Idempotent producers (`enable.idempotence`): a retry neither duplicates nor reorders
    /// a partition's messages. Off only for brokers whose idempotent path is broken (Tansu
    /// 0.6.0's sqlite engine panics in it under load, docs/local-broker.md); producers then
    /// keep one request in flight per connection, so retries still cannot reorder.
    pub idempotence: bool,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: "127.0.0.1:9092".into(),
            replication_factor: 1,
            idempotence: true,
        }
    }
}

/// `[topics]`: the names of SPEC §1's topics.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TopicsConfig {
    /// Ride events (12 partitions, key `ride_id`).
    pub ride_events: String,
    /// Driver locations (24 partitions, key `driver_id`).
    pub driver_locations: String,
    /// Metric rows (6 partitions, key `city`).
    pub aggregated: String,
    /// Dead letters: malformed ride events and locations, with headers naming where they
    /// came from.
    pub dead_letters: String,
    /// Supply and demand rows (6 partitions, key `city`; SPEC §5).
    pub city_supply: String,
}

impl Default for TopicsConfig {
    fn default() -> Self {
        TopicsConfig {
            ride_events: "ride-events".into(),
            driver_locations: "driver-locations".into(),
            aggregated: "analytics-aggregated".into(),
            dead_letters: "ride-events-dlq".into(),
            city_supply: "city-supply".into(),
        }
    }
}

/// `[clickhouse]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClickHouseConfig {
    /// The HTTP interface, e.g. `http://127.0.0.1:8123`.
    pub url: String,
    /// The database the tables live in.
    pub database: String,
    /// The user to log in as.
    pub user: String,
    /// The user's password (never printed).
    pub password: Secret,
    /// How inserts and query results travel: `auto` (default: uncompressed to and from a
    /// server on this machine, a loopback address, where LZ4 would only cost CPU on both
    /// ends; LZ4 with any other), `lz4` or `none`.
    pub compression: String,
}

impl ClickHouseConfig {
    /// Whether inserts and query results are LZ4-compressed. `validate` has checked the
    /// value.
    pub fn compresses(&self) -> bool {
        match self.compression.as_str() {
            "lz4" => true,
            "none" => false,
            _ => !is_loopback(&self.url),
        }
    }
}

/// Whether an `http(s)://` URL's host is this machine: `localhost` or a loopback address
/// (`127.0.0.0/8`, `[::1]`).
fn is_loopback(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = match host_port.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => host_port.split(':').next().unwrap_or_default(),
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

impl Default for ClickHouseConfig {
    fn default() -> Self {
        ClickHouseConfig {
            url: "http://127.0.0.1:8123".into(),
            database: "ridepulse".into(),
            user: "default".into(),
            password: Secret::default(),
            compression: "auto".into(),
        }
    }
}

/// `[window]`: SPEC §3's defaults.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WindowConfig {
    /// Window length in minutes.
    pub length_minutes: u64,
    /// Slide in minutes; windows start at multiples of it since the Unix epoch.
    pub slide_minutes: u64,
    /// How far behind its partition's largest event time an event may be and still count.
    pub allowed_lateness_secs: u64,
    /// How long a partition at its end offset may be quiet before it stops holding the
    /// watermark back.
    pub idle_timeout_secs: u64,
    /// How often an open window's changed row is emitted.
    pub emit_interval_ms: u64,
    /// SPEC §2's `max_future`: an event time further than this ahead of its Kafka message's
    /// timestamp is a dead letter, so one bad clock never moves a watermark.
    pub max_future_secs: u64,
}

impl Default for WindowConfig {
    fn default() -> Self {
        WindowConfig {
            length_minutes: 5,
            slide_minutes: 1,
            allowed_lateness_secs: 30,
            idle_timeout_secs: 5,
            emit_interval_ms: 1000,
            max_future_secs: 3600,
        }
    }
}

/// A string that is never printed or logged.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The value, for handing to a client library. Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() { "\"\"" } else { "\"***\"" })
    }
}

/// Why a configuration was refused. Each variant names the key or the file.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The file is not valid TOML or has an unknown key or a value of the wrong type.
    #[error("config file {path}: {message}")]
    File {
        /// The file.
        path: PathBuf,
        /// toml's description, which names the key and shows the line.
        message: String,
    },
    /// An override (environment variable or `--set`) names no known key.
    #[error("{origin}: unknown config key `{key}` (known keys: {known})")]
    UnknownKey {
        /// Where the override came from, e.g. `environment variable RIDEPULSE_KAFKA_BROKERZ`.
        origin: String,
        /// The key as given.
        key: String,
        /// Every valid key.
        known: String,
    },
    /// A value cannot be used for its key.
    #[error("config key `{key}`{origin}: {reason}")]
    Invalid {
        /// The key, as `section.name`.
        key: String,
        /// Where the value came from, if not the file.
        origin: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// The environment variable prefix for overrides.
pub const ENV_PREFIX: &str = "RIDEPULSE_";

impl Config {
    /// Loads defaults, then `file` if given, then `RIDEPULSE_*` variables from `env`, then
    /// the `--set key=value` overrides, and validates the result.
    pub fn load<I>(file: Option<&Path>, env: I, overrides: &[String]) -> Result<Config, ConfigError>
    where
        I: IntoIterator<Item = (String, String)>,
    {
        let mut table = toml::Table::try_from(Config::default()).expect("defaults serialize");
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.to_path_buf(),
                source,
            })?;
            // Parse into the typed struct first so toml reports unknown keys and wrong types
            // with the line they are on.
            let from_file: Config = toml::from_str(&text).map_err(|e| ConfigError::File {
                path: path.to_path_buf(),
                message: e.to_string().trim_end().to_string(),
            })?;
            table = toml::Table::try_from(from_file).expect("config serializes");
        }
        let known = known_keys(&table);
        // Only variables under a config section are config keys (RIDEPULSE_KAFKA_…,
        // RIDEPULSE_TOPICS_…, RIDEPULSE_CLICKHOUSE_…, RIDEPULSE_WINDOW_…, RIDEPULSE_JOB_…, RIDEPULSE_CLUSTER_…);
        // others such as RIDEPULSE_CONFIG or the stack script's RIDEPULSE_STACK_… belong to
        // someone else.
        let sections: Vec<String> = table
            .keys()
            .map(|s| format!("{ENV_PREFIX}{}_", s.to_uppercase()))
            .collect();
        let mut env: Vec<(String, String)> = env
            .into_iter()
            .filter(|(name, _)| sections.iter().any(|prefix| name.starts_with(prefix)))
            .collect();
        env.sort();
        for (name, value) in env {
            let key = known
                .iter()
                .find(|key| env_name(key) == name)
                .ok_or_else(|| ConfigError::UnknownKey {
                    origin: format!("environment variable {name}"),
                    key: name.clone(),
                    known: known
                        .iter()
                        .map(|k| env_name(k))
                        .collect::<Vec<_>>()
                        .join(", "),
                })?;
            set(&mut table, key, &value, &format!(" (from {name})"))?;
        }
        for assignment in overrides {
            let (key, value) = assignment
                .split_once('=')
                .ok_or_else(|| ConfigError::Invalid {
                    key: assignment.clone(),
                    origin: " (from --set)".into(),
                    reason: "expected `section.key=value`".into(),
                })?;
            let key = key.trim();
            if !known.iter().any(|k| k == key) {
                return Err(ConfigError::UnknownKey {
                    origin: "--set".into(),
                    key: key.into(),
                    known: known.join(", "),
                });
            }
            set(&mut table, key, value, " (from --set)")?;
        }
        let config: Config =
            toml::Value::Table(table)
                .try_into()
                .map_err(|e: toml::de::Error| ConfigError::Invalid {
                    key: "?".into(),
                    origin: String::new(),
                    reason: e.to_string(),
                })?;
        config.validate()?;
        Ok(config)
    }

    /// Writes this configuration as TOML to `path`, readable by its owner only (it may hold
    /// the ClickHouse password), under a one-line `header` comment. Child processes (job
    /// processes, benchmark jobs) run with `--config` on such a file.
    pub fn write_private(&self, path: &Path, header: &str) -> std::io::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let text = toml::to_string(self).map_err(std::io::Error::other)?;
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)?
            .write_all(format!("# {header}\n{text}").as_bytes())
    }

    /// Checks values that parse but cannot work, naming the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, reason: &str| {
            Err(ConfigError::Invalid {
                key: key.into(),
                origin: String::new(),
                reason: reason.into(),
            })
        };
        if self.kafka.brokers.trim().is_empty() {
            return invalid("kafka.brokers", "must name at least one host:port");
        }
        for broker in self.kafka.brokers.split(',') {
            let broker = broker.trim();
            let port = broker.rsplit_once(':').map(|(_, port)| port);
            if port.and_then(|p| p.parse::<u16>().ok()).is_none() {
                return invalid(
                    "kafka.brokers",
                    &format!("`{broker}` is not host:port (e.g. 127.0.0.1:9092)"),
                );
            }
        }
        if self.kafka.replication_factor < 1 {
            return invalid("kafka.replication_factor", "must be at least 1");
        }
        for (key, name) in [
            ("topics.ride_events", &self.topics.ride_events),
            ("topics.driver_locations", &self.topics.driver_locations),
            ("topics.aggregated", &self.topics.aggregated),
            ("topics.dead_letters", &self.topics.dead_letters),
            ("topics.city_supply", &self.topics.city_supply),
        ] {
            let valid = |c: char| c.is_ascii_alphanumeric() || "._-".contains(c);
            if name.is_empty() || name.len() > 249 || !name.chars().all(valid) {
                return invalid(
                    key,
                    &format!("`{name}` is not a valid Kafka topic name (letters, digits, . _ -)"),
                );
            }
        }
        if !(self.clickhouse.url.starts_with("http://")
            || self.clickhouse.url.starts_with("https://"))
        {
            return invalid("clickhouse.url", "must start with http:// or https://");
        }
        if !["auto", "lz4", "none"].contains(&self.clickhouse.compression.as_str()) {
            return invalid(
                "clickhouse.compression",
                &format!("`{}` is not auto, lz4 or none", self.clickhouse.compression),
            );
        }
        let ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
        if self.clickhouse.database.is_empty() || !self.clickhouse.database.chars().all(ident) {
            return invalid(
                "clickhouse.database",
                "must be a plain identifier ([A-Za-z0-9_]+)",
            );
        }
        let w = &self.window;
        if w.slide_minutes == 0 {
            return invalid("window.slide_minutes", "must be at least 1");
        }
        if w.length_minutes == 0 || !w.length_minutes.is_multiple_of(w.slide_minutes) {
            return invalid(
                "window.length_minutes",
                "must be a positive multiple of window.slide_minutes",
            );
        }
        if w.emit_interval_ms == 0 {
            return invalid("window.emit_interval_ms", "must be at least 1");
        }
        // A day at most: each record stays in the supply state this long, and a restart
        // re-reads this far back.
        for (key, minutes) in [
            (
                "supply.stale_after_minutes",
                self.supply.stale_after_minutes,
            ),
            (
                "supply.request_timeout_minutes",
                self.supply.request_timeout_minutes,
            ),
        ] {
            if !(1..=1440).contains(&minutes) {
                return invalid(key, "must be a whole number of minutes from 1 to 1440");
            }
        }
        if !["auto", "true", "false"].contains(&self.supply.enabled.as_str()) {
            return invalid(
                "supply.enabled",
                &format!("`{}` is not auto, true or false", self.supply.enabled),
            );
        }
        if self.job.checkpoint_interval_ms == 0 {
            return invalid("job.checkpoint_interval_ms", "must be at least 1");
        }
        let listen = &self.metrics.listen;
        if !listen.is_empty() && listen.parse::<std::net::SocketAddr>().is_err() {
            return invalid(
                "metrics.listen",
                &format!(
                    "`{listen}` is not ip:port (e.g. 127.0.0.1:9464; empty turns /metrics off)"
                ),
            );
        }
        Ok(())
    }
}

/// `section.key` → `RIDEPULSE_SECTION_KEY`.
fn env_name(key: &str) -> String {
    format!("{ENV_PREFIX}{}", key.replace('.', "_").to_uppercase())
}

fn known_keys(table: &toml::Table) -> Vec<String> {
    let mut keys = Vec::new();
    for (section, value) in table {
        if let toml::Value::Table(inner) = value {
            keys.extend(inner.keys().map(|key| format!("{section}.{key}")));
        }
    }
    keys
}

/// Sets `section.key` from text, parsed as the type the key already has.
fn set(table: &mut toml::Table, key: &str, text: &str, origin: &str) -> Result<(), ConfigError> {
    let (section, name) = key.split_once('.').expect("known keys have a section");
    let slot = table
        .get_mut(section)
        .and_then(|s| s.as_table_mut())
        .and_then(|s| s.get_mut(name))
        .expect("known key");
    let invalid = |reason: String| ConfigError::Invalid {
        key: key.into(),
        origin: origin.into(),
        reason,
    };
    *slot = match slot {
        toml::Value::Integer(_) => toml::Value::Integer(
            text.trim()
                .parse()
                .map_err(|_| invalid(format!("`{text}` is not a whole number")))?,
        ),
        toml::Value::Boolean(_) => toml::Value::Boolean(
            text.trim()
                .parse()
                .map_err(|_| invalid(format!("`{text}` is not true or false")))?,
        ),
        _ => toml::Value::String(text.to_string()),
    };
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(
        file: Option<&str>,
        env: &[(&str, &str)],
        sets: &[&str],
    ) -> Result<Config, ConfigError> {
        let dir = std::env::temp_dir().join(format!("ridepulse-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{}.toml", rand::random::<u64>()));
        if let Some(text) = file {
            std::fs::write(&path, text).unwrap();
        }
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        Config::load(file.map(|_| path.as_path()), env, &sets)
    }

    #[test]
    fn defaults_are_the_spec_names() {
        let config = load(None, &[], &[]).unwrap();
        assert_eq!(config.topics.ride_events, "ride-events");
        assert_eq!(config.topics.driver_locations, "driver-locations");
        assert_eq!(config.topics.aggregated, "analytics-aggregated");
        assert_eq!(config.topics.dead_letters, "ride-events-dlq");
        assert_eq!(config.clickhouse.database, "ridepulse");
        assert_eq!(config.kafka.replication_factor, 1);
        assert_eq!(config.window.allowed_lateness_secs, 30);
        assert_eq!(config.window.length_minutes, 5);
    }

    #[test]
    fn layers_override_in_order() {
        let file = "[kafka]\nbrokers = \"file:1\"\nreplication_factor = 3\n[topics]\nride_events = \"from-file\"\n";
        let config = load(Some(file), &[], &[]).unwrap();
        assert_eq!(config.kafka.brokers, "file:1");
        assert_eq!(config.kafka.replication_factor, 3);
        assert_eq!(config.topics.ride_events, "from-file");
        assert_eq!(config.topics.aggregated, "analytics-aggregated");

        let env = [
            ("RIDEPULSE_KAFKA_BROKERS", "env:2"),
            ("RIDEPULSE_WINDOW_EMIT_INTERVAL_MS", "250"),
            ("PATH", "/bin"),
            // not config keys: other tools' variables under the same prefix
            ("RIDEPULSE_CONFIG", "x.toml"),
            ("RIDEPULSE_STACK_KAFKA_PORT", "9092"),
            ("RIDEPULSE_LIBRDKAFKA", "debug=fetch"),
        ];
        let config = load(Some(file), &env, &[]).unwrap();
        assert_eq!(config.kafka.brokers, "env:2");
        assert_eq!(config.window.emit_interval_ms, 250);
        assert_eq!(config.topics.ride_events, "from-file");

        let config = load(
            Some(file),
            &env,
            &["kafka.brokers=flag:3", "topics.ride_events=t1"],
        )
        .unwrap();
        assert_eq!(config.kafka.brokers, "flag:3");
        assert_eq!(config.topics.ride_events, "t1");
        assert_eq!(config.kafka.replication_factor, 3);
    }

    #[test]
    fn unknown_keys_are_named() {
        let error = load(Some("[kafka]\nbrokerz = \"x:1\"\n"), &[], &[]).unwrap_err();
        assert!(error.to_string().contains("brokerz"), "{error}");
        let error = load(Some("[kafkaa]\nbrokers = \"x:1\"\n"), &[], &[]).unwrap_err();
        assert!(error.to_string().contains("kafkaa"), "{error}");
        let error = load(None, &[("RIDEPULSE_KAFKA_BROKERZ", "x:1")], &[]).unwrap_err();
        assert!(
            error.to_string().contains("RIDEPULSE_KAFKA_BROKERZ"),
            "{error}"
        );
        let error = load(None, &[], &["window.lateness=3"]).unwrap_err();
        assert!(error.to_string().contains("`window.lateness`"), "{error}");
    }

    #[test]
    fn bad_values_are_named() {
        let error = load(Some("[kafka]\nreplication_factor = \"three\"\n"), &[], &[]).unwrap_err();
        assert!(error.to_string().contains("replication_factor"), "{error}");
        let error = load(
            None,
            &[("RIDEPULSE_WINDOW_ALLOWED_LATENESS_SECS", "soon")],
            &[],
        )
        .unwrap_err();
        let text = error.to_string();
        assert!(
            text.contains("window.allowed_lateness_secs")
                && text.contains("RIDEPULSE_WINDOW_ALLOWED_LATENESS_SECS"),
            "{text}"
        );
        for (set, key) in [
            ("kafka.brokers=nohostport", "kafka.brokers"),
            ("kafka.replication_factor=0", "kafka.replication_factor"),
            ("topics.dead_letters=bad topic!", "topics.dead_letters"),
            ("clickhouse.url=localhost:8123", "clickhouse.url"),
            ("clickhouse.database=a;drop", "clickhouse.database"),
            ("window.length_minutes=7", "window.length_minutes"),
            ("window.slide_minutes=0", "window.slide_minutes"),
            ("supply.stale_after_minutes=0", "supply.stale_after_minutes"),
            (
                "supply.request_timeout_minutes=2000",
                "supply.request_timeout_minutes",
            ),
            ("topics.city_supply=a b", "topics.city_supply"),
            ("metrics.listen=localhost", "metrics.listen"),
            ("supply.enabled=yes", "supply.enabled"),
            ("clickhouse.compression=gzip", "clickhouse.compression"),
        ] {
            let overrides = if key == "window.length_minutes" {
                vec![set, "window.slide_minutes=2"]
            } else {
                vec![set]
            };
            let error = load(None, &[], &overrides).unwrap_err();
            assert!(
                error.to_string().contains(&format!("`{key}`")),
                "{set}: {error}"
            );
        }
        let error = load(None, &[], &["no-equals-sign"]).unwrap_err();
        assert!(error.to_string().contains("section.key=value"), "{error}");
    }

    /// `auto` sends inserts uncompressed only to this machine, whatever the URL's spelling.
    #[test]
    fn inserts_are_compressed_except_to_this_machine() {
        let with = |url: &str, compression: &str| ClickHouseConfig {
            url: url.into(),
            compression: compression.into(),
            ..ClickHouseConfig::default()
        };
        for local in [
            "http://127.0.0.1:8123",
            "http://localhost:8123/",
            "https://LOCALHOST",
            "http://127.0.1.1:8123",
            "http://[::1]:8123",
            "http://user:pw@127.0.0.1:8123",
        ] {
            assert!(!with(local, "auto").compresses(), "{local}");
            assert!(with(local, "lz4").compresses(), "{local}");
        }
        for remote in [
            "http://10.0.0.5:8123",
            "https://ch.example.com:8443",
            "http://localhost.example.com:8123",
            "http://[2001:db8::1]:8123",
            "http://127.0.0.1.example.com",
            "http://user:pw@10.0.0.5",
        ] {
            assert!(with(remote, "auto").compresses(), "{remote}");
            assert!(!with(remote, "none").compresses(), "{remote}");
        }
    }

    #[test]
    fn secrets_are_never_printed() {
        let config = load(None, &[("RIDEPULSE_CLICKHOUSE_PASSWORD", "hunter2")], &[]).unwrap();
        assert_eq!(config.clickhouse.password.expose(), "hunter2");
        assert!(!format!("{config:?}").contains("hunter2"));
        assert!(format!("{config:?}").contains("***"));
    }

    #[test]
    fn the_committed_example_is_valid_and_complete() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/ridepulse.example.toml");
        let config = Config::load(Some(&path), std::iter::empty(), &[]).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let table = toml::Table::try_from(&config).unwrap();
        for key in known_keys(&table) {
            let (section, name) = key.split_once('.').unwrap();
            assert!(
                text.contains(&format!("[{section}]")) && text.contains(&format!("{name} =")),
                "example lacks {key}"
            );
        }
    }
}
