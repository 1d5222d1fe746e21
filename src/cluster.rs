//! The cluster layout (`workers.toml`): which processes run a job and how many worker threads
//! each, turned into timely's own cluster configuration.
//!
//! A job spans processes through timely's communication layer (every process listens on its
//! address; process `i` connects to the processes before it). This module only reads and
//! checks the layout — every mistake is refused with the field that is wrong — and builds
//! the `timely::Config` for one process of it. Partitions go to workers by index
//! (`partition % total workers`), so a layout decides which process reads which partition.
//!
//! ```toml
//! [[process]]
//! address = "127.0.0.1:2101"
//! workers = 2
//!
//! [jobs.west]          # optional: a job with its own processes
//! process = [{ address = "127.0.0.1:2201", workers = 1 }]
//! ```

use std::collections::BTreeMap;
use std::net::ToSocketAddrs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// One process of a layout.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessSpec {
    /// `host:port` this process listens on for the other processes.
    pub address: String,
    /// Worker threads in this process.
    pub workers: usize,
    /// `host:port` this process serves Prometheus's `/metrics` on; without it, the
    /// `metrics.listen` port plus the process's index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<String>,
}

/// A job's own processes, overriding the default ones.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
struct JobOverride {
    process: Vec<ProcessSpec>,
}

/// The file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LayoutFile {
    #[serde(default)]
    process: Vec<ProcessSpec>,
    #[serde(default)]
    jobs: BTreeMap<String, JobOverride>,
}

/// A checked layout: the processes one job runs on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    /// The processes, in index order.
    pub processes: Vec<ProcessSpec>,
}

/// Why a layout was refused; each names the file and the field.
#[derive(Debug, Error)]
pub enum LayoutError {
    /// The file could not be read.
    #[error("cannot read the cluster layout {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// Not TOML, or an unknown key or a wrong type (toml names the line).
    #[error("cluster layout {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// toml's message.
        message: String,
    },
    /// A field's value cannot work.
    #[error("cluster layout {path}: `{field}` {problem}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// e.g. `process[1].address` or `jobs.west.process[0].workers`.
        field: String,
        /// What is wrong.
        problem: String,
    },
}

/// A layout file: the default processes and per-job overrides, all checked.
#[derive(Clone, Debug)]
pub struct LayoutSet {
    path: PathBuf,
    default: Layout,
    jobs: BTreeMap<String, Layout>,
}

impl LayoutSet {
    /// Reads and checks `path`.
    pub fn load(path: &Path) -> Result<LayoutSet, LayoutError> {
        let text = std::fs::read_to_string(path).map_err(|source| LayoutError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        LayoutSet::parse(path, &text)
    }

    /// Checks the text of a layout file (`path` is only for messages).
    pub fn parse(path: &Path, text: &str) -> Result<LayoutSet, LayoutError> {
        let file: LayoutFile = toml::from_str(text).map_err(|e| LayoutError::Parse {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        })?;
        let default = check(path, "process", file.process)?;
        let mut jobs = BTreeMap::new();
        for (name, job) in file.jobs {
            let layout = check(path, &format!("jobs.{name}.process"), job.process)?;
            jobs.insert(name, layout);
        }
        Ok(LayoutSet {
            path: path.to_path_buf(),
            default,
            jobs,
        })
    }

    /// The layout for `job` (its override, or the default processes).
    pub fn for_job(&self, job: Option<&str>) -> &Layout {
        job.and_then(|name| self.jobs.get(name))
            .unwrap_or(&self.default)
    }

    /// The file it was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn check(path: &Path, field: &str, processes: Vec<ProcessSpec>) -> Result<Layout, LayoutError> {
    let invalid = |field: String, problem: String| LayoutError::Invalid {
        path: path.to_path_buf(),
        field,
        problem,
    };
    if processes.is_empty() {
        return Err(invalid(
            field.to_string(),
            "is empty: a layout needs at least one [[process]] with an address and workers".into(),
        ));
    }
    for (index, process) in processes.iter().enumerate() {
        let at = format!("{field}[{index}]");
        if process.workers == 0 {
            return Err(invalid(
                format!("{at}.workers"),
                "is 0: a process needs at least one worker thread".into(),
            ));
        }
        if let Some(metrics) = &process.metrics {
            if metrics.parse::<std::net::SocketAddr>().is_err() {
                return Err(invalid(
                    format!("{at}.metrics"),
                    format!("`{metrics}` is not ip:port (e.g. 127.0.0.1:9464)"),
                ));
            }
        }
        let port = process
            .address
            .rsplit_once(':')
            .and_then(|(host, port)| (!host.is_empty()).then_some(port));
        if port.and_then(|p| p.parse::<u16>().ok()).is_none() {
            return Err(invalid(
                format!("{at}.address"),
                format!(
                    "`{}` is not host:port (e.g. 127.0.0.1:2101)",
                    process.address
                ),
            ));
        }
        if let Some(first) = processes[..index]
            .iter()
            .position(|p| p.address == process.address)
        {
            return Err(invalid(
                format!("{at}.address"),
                format!(
                    "`{}` is also {field}[{first}]'s address: every process needs its own",
                    process.address
                ),
            ));
        }
        if process.workers != processes[0].workers {
            return Err(invalid(
                format!("{at}.workers"),
                format!(
                    "is {} but {field}[0].workers is {}: timely runs the same number of worker threads in every process",
                    process.workers, processes[0].workers
                ),
            ));
        }
    }
    Ok(Layout { processes })
}

impl Layout {
    /// A single process with `workers` threads (no network).
    pub fn local(workers: usize) -> Layout {
        Layout {
            processes: vec![ProcessSpec {
                address: "127.0.0.1:0".into(),
                workers,
                metrics: None,
            }],
        }
    }

    /// Where process `index` serves `/metrics`: its own `metrics` address if the layout
    /// names one, otherwise `listen` (the `metrics.listen` key) with the port plus `index`;
    /// `None` when `listen` is empty (no endpoint) and the process names none.
    pub fn metrics_address(&self, index: usize, listen: &str) -> Option<String> {
        if let Some(own) = self.processes.get(index).and_then(|p| p.metrics.clone()) {
            return Some(own);
        }
        let addr: std::net::SocketAddr = listen.parse().ok()?;
        let port = addr.port().checked_add(u16::try_from(index).ok()?)?;
        Some(std::net::SocketAddr::new(addr.ip(), port).to_string())
    }

    /// Worker threads per process.
    pub fn workers_per_process(&self) -> usize {
        self.processes[0].workers
    }

    /// Worker threads in the whole job.
    pub fn total_workers(&self) -> usize {
        self.processes.len() * self.workers_per_process()
    }

    /// Whether every address is on this machine (a loopback address or `localhost`).
    pub fn is_local(&self) -> bool {
        self.processes.iter().all(|p| {
            p.address
                .to_socket_addrs()
                .map(|mut addrs| addrs.all(|a| a.ip().is_loopback()))
                .unwrap_or(false)
        })
    }

    /// timely's configuration for process `index` of this layout (an error names the
    /// index and the range when it is out of it).
    pub fn timely_config(&self, index: usize) -> Result<timely::Config, String> {
        if index >= self.processes.len() {
            return Err(format!(
                "--process {index} is out of range: the layout has processes 0..={}",
                self.processes.len() - 1
            ));
        }
        let communication = if self.processes.len() == 1 {
            timely::CommunicationConfig::Process(self.workers_per_process())
        } else {
            timely::CommunicationConfig::Cluster {
                threads: self.workers_per_process(),
                process: index,
                addresses: self.processes.iter().map(|p| p.address.clone()).collect(),
                // timely prints connection progress on stdout, which carries rows with --print.
                report: false,
                zerocopy: false,
            }
        };
        Ok(timely::Config {
            communication,
            worker: timely::WorkerConfig::default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<LayoutSet, String> {
        LayoutSet::parse(Path::new("workers.toml"), text).map_err(|e| e.to_string())
    }

    #[test]
    fn a_layout_and_a_job_override_are_read() {
        let set = parse(
            r#"
            [[process]]
            address = "127.0.0.1:2101"
            workers = 2
            [[process]]
            address = "127.0.0.1:2102"
            workers = 2
            [jobs.west]
            process = [{ address = "127.0.0.1:2201", workers = 1 }]
            "#,
        )
        .unwrap();
        let default = set.for_job(None);
        assert_eq!(default.total_workers(), 4);
        assert!(default.is_local());
        assert_eq!(set.for_job(Some("east")), default);
        assert_eq!(set.for_job(Some("west")).total_workers(), 1);
        assert!(default.timely_config(1).is_ok());
        assert_eq!(
            default.timely_config(2).unwrap_err(),
            "--process 2 is out of range: the layout has processes 0..=1"
        );
    }

    #[test]
    fn a_process_serves_metrics_on_its_own_address_or_the_port_plus_its_index() {
        let set = parse(
            r#"
            [[process]]
            address = "127.0.0.1:2101"
            workers = 1
            [[process]]
            address = "127.0.0.1:2102"
            workers = 1
            metrics = "127.0.0.1:9600"
            "#,
        )
        .unwrap();
        let layout = set.for_job(None);
        assert_eq!(
            layout.metrics_address(0, "127.0.0.1:9464").as_deref(),
            Some("127.0.0.1:9464")
        );
        assert_eq!(
            layout.metrics_address(1, "127.0.0.1:9464").as_deref(),
            Some("127.0.0.1:9600")
        );
        assert_eq!(layout.metrics_address(0, ""), None, "empty: no endpoint");
        let three = Layout {
            processes: vec![layout.processes[0].clone(); 3],
        };
        assert_eq!(
            three.metrics_address(2, "0.0.0.0:9464").as_deref(),
            Some("0.0.0.0:9466")
        );
        let error =
            parse("[[process]]\naddress = \"127.0.0.1:1\"\nworkers = 1\nmetrics = \"nowhere\"\n")
                .unwrap_err();
        assert!(error.contains("process[0].metrics"), "{error}");
    }

    #[test]
    fn bad_layouts_name_the_field() {
        let cases = [
            ("", "`process` is empty"),
            (
                "[[process]]\naddress = \"127.0.0.1:2101\"\nworkers = 0",
                "`process[0].workers` is 0",
            ),
            (
                "[[process]]\naddress = \"127.0.0.1\"\nworkers = 1",
                "`process[0].address` `127.0.0.1` is not host:port",
            ),
            (
                "[[process]]\naddress = \"a:1\"\nworkers = 1\n[[process]]\naddress = \"a:1\"\nworkers = 1",
                "`process[1].address` `a:1` is also process[0]'s address",
            ),
            (
                "[[process]]\naddress = \"a:1\"\nworkers = 1\n[[process]]\naddress = \"a:2\"\nworkers = 2",
                "`process[1].workers` is 2 but process[0].workers is 1",
            ),
            (
                "[[process]]\naddress = \"a:1\"\nworkers = 1\n[jobs.x]\nprocess = [{ address = \"b:1\", workers = 0 }]",
                "`jobs.x.process[0].workers` is 0",
            ),
            (
                "[[process]]\naddress = \"a:1\"\nthreads = 1",
                "unknown field `threads`",
            ),
        ];
        for (text, expected) in cases {
            let error = parse(text).unwrap_err();
            assert!(error.contains(expected), "{text:?}: {error}");
            assert!(error.starts_with("cluster layout workers.toml"), "{error}");
        }
    }
}
