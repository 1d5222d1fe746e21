//! Everything that talks to ClickHouse.
//!
//! - [`schema`]: SPEC §4's tables, with DDL chosen from the server's `version()` (modern
//!   servers get LowCardinality, DateTime64(3) and TTL; Debian's 18.16 gets documented
//!   equivalents), `ridepulse migrate` (its output in [`migration`]), and the column check
//!   every job runs at start.
//! - [`rows`]: the RowBinary row types the sinks insert; [`row_size`] their encoded size,
//!   for `/metrics`.
//! - [`writer`]: the per-process writer thread that performs every durable write of a job
//!   (ClickHouse inserts and confirmed Kafka deliveries) with retries and backoff.
//!
//! All calls go through the official `clickhouse` crate over HTTP; [`connect`] builds the
//! client from `[clickhouse]` and [`block_on`] runs one call to completion for the
//! synchronous callers (the CLI and tests).

pub mod migration;
pub mod row_size;
pub mod rows;
pub mod schema;
pub mod writer;

use std::time::Duration;

use thiserror::Error;

use crate::config::ClickHouseConfig;

/// A failure talking to ClickHouse. [`ClickHouseError::severity`] says whether waiting and
/// trying again can help (the server is restarting, overloaded, or unreachable), whether the
/// rows of the insert are at fault (split the batch to find them), or a person must change
/// something (schema, credentials, disk space, SQL).
#[derive(Debug, Error)]
pub enum ClickHouseError {
    /// No answer: connection refused, reset, or timed out.
    #[error(
        "cannot reach ClickHouse at {url}: {detail} (is it running? `scripts/stack status` tells)"
    )]
    Unreachable {
        /// The server URL from `[clickhouse] url`.
        url: String,
        /// What the client saw.
        detail: String,
    },
    /// The server answered with an error.
    #[error("ClickHouse refused {what}: {detail}")]
    Server {
        /// What we asked for (`insert into ridepulse.city_metrics`, `migrate`, ...).
        what: String,
        /// The server's message (it names the table and column of schema errors).
        detail: String,
        /// What the error code calls for.
        severity: Severity,
    },
    /// A table's columns differ from what this version of ridepulse writes.
    #[error("table `{table}`: {problem} (run `ridepulse migrate`, or drop the table if it was made by another program)")]
    Schema {
        /// `database.table`.
        table: String,
        /// Which column and what is wrong with it.
        problem: String,
    },
    /// The server's `version()` could not be understood.
    #[error("cannot understand ClickHouse version `{0}`")]
    Version(String),
}

/// What a failed ClickHouse call calls for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    /// Transient (unreachable, overloaded, too many parts, timeouts): the same call may
    /// succeed later without anybody changing anything.
    Retry,
    /// Tied to the rows of an insert (a value the server cannot take, a block spanning too
    /// many partitions): split the batch until the offending rows are isolated.
    Rows,
    /// A person must change something (schema, credentials, disk space): stop the job.
    Fatal,
}

impl ClickHouseError {
    /// Whether the same call may succeed later without anybody changing anything.
    pub fn is_retryable(&self) -> bool {
        self.severity() == Severity::Retry
    }

    /// What the failure calls for.
    pub fn severity(&self) -> Severity {
        match self {
            ClickHouseError::Unreachable { .. } => Severity::Retry,
            ClickHouseError::Server { severity, .. } => *severity,
            ClickHouseError::Schema { .. } | ClickHouseError::Version(_) => Severity::Fatal,
        }
    }

    /// Classifies an error of the `clickhouse` crate for a call described by `what`.
    pub fn from_client(url: &str, what: &str, error: clickhouse::error::Error) -> ClickHouseError {
        use clickhouse::error::Error as E;
        match error {
            E::Network(_) | E::TimedOut => ClickHouseError::Unreachable {
                url: url.to_string(),
                detail: error_chain(&error),
            },
            E::BadResponse(detail) => {
                let severity = classify_response(&detail);
                ClickHouseError::Server {
                    what: what.to_string(),
                    detail,
                    severity,
                }
            }
            other => ClickHouseError::Server {
                what: what.to_string(),
                detail: error_chain(&other),
                severity: Severity::Fatal,
            },
        }
    }
}

/// The error and its sources on one line ("network error: ...: Connection refused").
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        let more = inner.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = inner.source();
    }
    text
}

/// Classifies a server error by its exception code (HTTP 5xx without a code: transient;
/// other statuses without a code: fatal). Codes not listed are fatal: a person should look
/// at an error ridepulse does not know rather than have it retried forever or rows dropped.
fn classify_response(detail: &str) -> Severity {
    // Transient: 159 TIMEOUT_EXCEEDED, 164 READONLY (replica restarting),
    // 202 TOO_MANY_SIMULTANEOUS_QUERIES, 209 SOCKET_TIMEOUT, 210 NETWORK_ERROR,
    // 241 MEMORY_LIMIT_EXCEEDED, 242 TABLE_IS_READ_ONLY, 252 TOO_MANY_PARTS,
    // 319 UNKNOWN_STATUS_OF_INSERT, 425 SYSTEM_ERROR, 999 KEEPER_EXCEPTION.
    const TRANSIENT: [u32; 11] = [159, 164, 202, 209, 210, 241, 242, 252, 319, 425, 999];
    // Tied to the inserted rows: 6 CANNOT_PARSE_TEXT, 27 CANNOT_PARSE_INPUT_ASSERTION_FAILED,
    // 32 ATTEMPT_TO_READ_AFTER_EOF, 33 CANNOT_READ_ALL_DATA, 38 CANNOT_PARSE_DATE,
    // 41 CANNOT_PARSE_DATETIME, 53 TYPE_MISMATCH, 69 ARGUMENT_OUT_OF_BOUND,
    // 70 CANNOT_CONVERT_TYPE, 72 CANNOT_PARSE_NUMBER, 117 INCORRECT_DATA,
    // 131 TOO_LARGE_STRING_SIZE, 321 VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE,
    // 395 FUNCTION_THROW_IF_VALUE_IS_NON_ZERO, 469 VIOLATED_CONSTRAINT.
    const ROWS: [u32; 15] = [
        6, 27, 32, 33, 38, 41, 53, 69, 70, 72, 117, 131, 321, 395, 469,
    ];
    match exception_code(detail) {
        // 252 is also TOO_MANY_PARTITIONS ("Too many partitions for single INSERT block"):
        // a batch spanning more partitions than the server allows is split, not retried.
        Some(252) if detail.contains("partitions for single INSERT") => Severity::Rows,
        Some(code) if TRANSIENT.contains(&code) => Severity::Retry,
        Some(code) if ROWS.contains(&code) => Severity::Rows,
        Some(_) => Severity::Fatal,
        None => {
            let status = detail.split_whitespace().next().unwrap_or("");
            if status.len() == 3 && status.starts_with('5') {
                Severity::Retry
            } else {
                Severity::Fatal
            }
        }
    }
}

/// The `Code: N` of a ClickHouse exception text.
fn exception_code(detail: &str) -> Option<u32> {
    let at = detail.find("Code: ")? + "Code: ".len();
    let digits: String = detail[at..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits.parse().ok()
}

/// A client for `[clickhouse]`: default database set, RowBinary without the crate's schema
/// fetch (old servers cannot take `RowBinaryWithNamesAndTypes`; [`schema::verify`] checks
/// the columns once per job instead).
pub fn connect(config: &ClickHouseConfig) -> clickhouse::Client {
    let mut client = clickhouse::Client::default()
        .with_url(config.url.trim_end_matches('/'))
        .with_database(&config.database)
        .with_validation(false)
        // LZ4 saves bytes on a network, and costs CPU on both ends: over loopback, ~2 % of a
        // file run's CPU for nothing (`clickhouse.compression`).
        .with_compression(if config.compresses() {
            clickhouse::Compression::Lz4
        } else {
            clickhouse::Compression::None
        });
    if !config.user.is_empty() {
        client = client.with_user(&config.user);
    }
    if !config.password.expose().is_empty() {
        client = client.with_password(config.password.expose());
    }
    client
}

/// A client without a default database (for `CREATE DATABASE` and version checks, which
/// must work before the database exists).
pub fn connect_server(config: &ClickHouseConfig) -> clickhouse::Client {
    let mut server = config.clone();
    server.database = "default".into();
    connect(&server)
}

/// Runs one future to completion on a small current-thread runtime: for the synchronous
/// callers (CLI commands and tests); the job's writer thread keeps its own runtime.
pub fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime can always be built")
        .block_on(future)
}

/// Runs a query and returns the server's text output in `format` (e.g. `TabSeparated`,
/// `PrettyCompactMonoBlock`). The SQL is sent as is (no `?` binding).
pub async fn query_text(
    client: &clickhouse::Client,
    url: &str,
    sql: &str,
    format: &str,
) -> Result<String, ClickHouseError> {
    let what = "a query";
    let mut cursor = client
        .query_raw(sql)
        .fetch_bytes(format)
        .map_err(|e| ClickHouseError::from_client(url, what, e))?;
    let bytes = cursor
        .collect()
        .await
        .map_err(|e| ClickHouseError::from_client(url, what, e))?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// Runs a statement that returns nothing (DDL).
pub async fn execute(
    client: &clickhouse::Client,
    url: &str,
    sql: &str,
) -> Result<(), ClickHouseError> {
    client
        .query_raw(sql)
        .execute()
        .await
        .map_err(|e| ClickHouseError::from_client(url, &first_line(sql), e))
}

fn first_line(sql: &str) -> String {
    let line = sql.trim().lines().next().unwrap_or("").trim();
    format!("`{}`", line.trim_end_matches('('))
}

/// How long one insert may take before it counts as failed and is retried.
pub const INSERT_TIMEOUT: Duration = Duration::from_secs(60);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_server_errors() {
        for (detail, severity) in [
            ("Code: 16, e.displayText() = DB::Exception: No such column foo in table ridepulse.city_metrics", Severity::Fatal),
            ("Code: 252, e.displayText() = DB::Exception: Too many parts (300)", Severity::Retry),
            ("Code: 252, e.displayText() = DB::Exception: Too many partitions for single INSERT block (more than 100).", Severity::Rows),
            ("Code: 243, e.displayText() = DB::Exception: Cannot reserve 1.00 MiB, not enough space", Severity::Fatal),
            ("Code: 516. DB::Exception: default: Authentication failed", Severity::Fatal),
            ("Code: 395, e.displayText() = DB::Exception: Value passed to 'throwIf' function is non zero", Severity::Rows),
            ("Code: 241. DB::Exception: Memory limit (total) exceeded", Severity::Retry),
            ("503 Service Unavailable", Severity::Retry),
            ("404 Not Found", Severity::Fatal),
        ] {
            assert_eq!(classify_response(detail), severity, "{detail}");
        }
        assert_eq!(
            exception_code("Code: 60. DB::Exception: Table x doesn't exist"),
            Some(60)
        );
    }
}
