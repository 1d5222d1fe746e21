//! Reading job processes' `/metrics` back, for `job list` and the built-in dashboard, so
//! they show the same lag and watermark delay as Prometheus without needing one.
//!
//! A plain HTTP/1.0 GET over a `TcpStream` with a short timeout (a process that is down or
//! slow must not hold up a listing) and a parser for the few lines we read: sample name,
//! labels skipped, value.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// The numbers `job list` and the dashboard show, summed over a job's processes.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Health {
    /// Consumer lag in messages (all topics and partitions).
    pub lag: Option<i64>,
    /// The largest watermark delay of any topic, in seconds.
    pub watermark_delay_seconds: Option<f64>,
    /// How many of the addresses answered.
    pub answered: usize,
}

/// Scrapes every address (each at most `timeout`) and combines what answered.
pub fn health(addresses: &[String], timeout: Duration) -> Health {
    let mut health = Health::default();
    for address in addresses {
        let Ok(text) = get(address, timeout) else {
            continue;
        };
        health.answered += 1;
        for (name, value) in samples(&text) {
            match name {
                "ridepulse_consumer_lag_messages" => {
                    *health.lag.get_or_insert(0) += value as i64;
                }
                "ridepulse_watermark_delay_seconds" => {
                    let delay = health.watermark_delay_seconds.get_or_insert(value);
                    *delay = delay.max(value);
                }
                _ => {}
            }
        }
    }
    health
}

/// The job processes on this machine: the targets `job submit` wrote for Prometheus (see
/// `jobs::scrape_targets_dir`) and `metrics.listen` itself (a `ridepulse run` by hand).
pub fn local_targets(config: &crate::config::Config) -> Vec<String> {
    let mut targets: Vec<String> = Vec::new();
    let dir = crate::jobs::scrape_targets_dir(&config.cluster.state_dir());
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.path().extension().is_none_or(|e| e != "json") {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(entry.path()) else {
            continue;
        };
        let groups: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap_or_default();
        for group in groups {
            for target in group["targets"].as_array().into_iter().flatten() {
                targets.extend(target.as_str().map(String::from));
            }
        }
    }
    if !config.metrics.listen.is_empty() && !targets.contains(&config.metrics.listen) {
        targets.push(config.metrics.listen.clone());
    }
    targets
}

/// `GET /metrics` from `address` (`host:port`).
pub fn get(address: &str, timeout: Duration) -> std::io::Result<String> {
    let addr = address
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| std::io::Error::other(format!("{address} resolves to nothing")))?;
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(stream, "GET /metrics HTTP/1.0\r\nHost: {address}\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("not an HTTP response"))?;
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        return Err(std::io::Error::other(format!(
            "{address}: {}",
            head.lines().next().unwrap_or("")
        )));
    }
    Ok(body.to_string())
}

/// Every sample of an exposition as (name, value); labels are skipped (quoted values may
/// hold `}` or spaces), comments and unparsable lines ignored.
pub fn samples(text: &str) -> impl Iterator<Item = (&str, f64)> {
    text.lines().filter_map(|line| {
        if line.starts_with('#') || line.is_empty() {
            return None;
        }
        let name_end = line.find(['{', ' '])?;
        let name = &line[..name_end];
        let mut rest = &line[name_end..];
        if rest.starts_with('{') {
            let (mut quoted, mut escaped, mut end) = (false, false, None);
            for (i, c) in rest.char_indices() {
                match c {
                    _ if escaped => escaped = false,
                    '\\' if quoted => escaped = true,
                    '"' => quoted = !quoted,
                    '}' if !quoted => {
                        end = Some(i);
                        break;
                    }
                    _ => {}
                }
            }
            rest = &rest[end? + 1..];
        }
        let value = rest.split_whitespace().next()?.parse().ok()?;
        Some((name, value))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_skip_labels_even_with_braces_and_spaces_in_values() {
        let text = "# HELP x y\n# TYPE x gauge\n\
            ridepulse_consumer_lag_messages{topic=\"a } b\",partition=\"1\"} 7\n\
            ridepulse_consumer_lag_messages{topic=\"q\\\"}\",partition=\"2\"} 5\n\
            ridepulse_watermark_delay_seconds 12.5\n# EOF\n";
        let got: Vec<_> = samples(text).collect();
        assert_eq!(
            got,
            [
                ("ridepulse_consumer_lag_messages", 7.0),
                ("ridepulse_consumer_lag_messages", 5.0),
                ("ridepulse_watermark_delay_seconds", 12.5)
            ]
        );
    }
}
