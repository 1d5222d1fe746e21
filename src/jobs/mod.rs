//! `ridepulse job`: city-metrics jobs per city set, each with its own processes (from
//! `workers.toml`), consumer group and supervisor, and state on disk that outlives the CLI.
//!
//! A job lives in `<state_dir>/<name>/`: `job.json` (what was submitted), `config.toml`
//! (the resolved configuration its processes run with), `workers.toml` (its processes),
//! `state.json` (what the supervisor last recorded) and `logs/`. `submit` checks that no
//! running job owns any of the cities (or the same addresses), writes those files, starts
//! the supervisor detached and waits until every process is connected. The supervisor
//! (`supervisor.rs`) restarts all processes when one dies; they resume from the job's
//! checkpoints, so ClickHouse ends as if nothing had happened.
//!
//! Several jobs read the same `ride-events` topic: each keeps only its cities' events (the
//! lateness clocks still see every event, so a job per city set computes exactly the rows
//! an all-cities job does). Malformed messages have no trustworthy city: the first running
//! job at submit time that writes dead letters keeps that role, the others only count them.

pub mod status;
pub mod supervisor;

use std::collections::BTreeSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

use crate::cluster::{Layout, LayoutSet, ProcessSpec};
use crate::config::Config;

/// What was submitted.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobSpec {
    /// The job's name (`[a-z0-9_-]`).
    pub name: String,
    /// Its cities; `None` for every city.
    pub cities: Option<BTreeSet<String>>,
    /// Whether it writes malformed messages to the dead-letter topic.
    pub dead_letters: bool,
    /// Its consumer group (checkpoints are kept per group).
    pub group: String,
    /// Its processes.
    pub processes: Vec<ProcessSpec>,
    /// When it was submitted (Unix seconds).
    pub submitted_at: u64,
}

impl JobSpec {
    /// The cities as a comma-separated list, or `*` for all.
    pub fn cities_text(&self) -> String {
        self.cities.as_ref().map_or_else(
            || "*".into(),
            |c| c.iter().cloned().collect::<Vec<_>>().join(","),
        )
    }

    /// What `ridepulse job submit` prints once the job runs: its shape, and how to follow
    /// and stop it.
    pub fn submitted_text(&self) -> String {
        format!(
            "job {} running: cities {}, {} processes x {} workers, group {}{}\n\
             logs: ridepulse job logs {0}    stop: ridepulse job stop {0}\n",
            self.name,
            self.cities_text(),
            self.processes.len(),
            self.processes[0].workers,
            self.group,
            if self.dead_letters {
                ", writes dead letters"
            } else {
                ""
            },
        )
    }
}

/// Where a job is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Processes started, not all connected yet.
    Starting,
    /// Every process is connected and running.
    Running,
    /// A process died; waiting out the backoff before starting all again.
    Restarting,
    /// A process stopped on a failure no restart can fix (see `last_failure`); the
    /// supervisor tries again only after minutes, in case a person fixed it.
    Failed,
    /// Stopped by `job stop`.
    Stopped,
}

/// What the supervisor last recorded.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobState {
    /// The phase.
    pub phase: Phase,
    /// The supervisor's pid.
    pub supervisor: u32,
    /// The processes' pids, by process index (empty while none runs).
    pub pids: Vec<u32>,
    /// How many times all processes were restarted.
    pub restarts: u64,
    /// Why the last restart happened.
    pub last_failure: Option<String>,
    /// When the phase last changed (Unix seconds).
    pub since: u64,
}

/// The state directory of one job.
#[derive(Clone, Debug)]
pub struct JobDir {
    root: PathBuf,
}

impl JobDir {
    /// `<state_dir>/<name>`.
    pub fn new(state_dir: &Path, name: &str) -> JobDir {
        JobDir {
            root: state_dir.join(name),
        }
    }

    /// The directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn file(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// `job.json`.
    pub fn spec(&self) -> anyhow::Result<JobSpec> {
        read_json(&self.file("job.json"))
    }

    /// `state.json`, if the supervisor has written one.
    pub fn state(&self) -> Option<JobState> {
        read_json(&self.file("state.json")).ok()
    }

    /// Replaces `state.json` (atomically: readers never see half a file).
    pub fn write_state(&self, state: &JobState) -> anyhow::Result<()> {
        write_json(&self.file("state.json"), state)
    }

    /// The configuration file the job's processes run with.
    pub fn config_path(&self) -> PathBuf {
        self.file("config.toml")
    }

    /// The job's layout file.
    pub fn layout_path(&self) -> PathBuf {
        self.file("workers.toml")
    }

    /// Process `index`'s log.
    pub fn process_log(&self, index: usize) -> PathBuf {
        self.file(&format!("logs/process-{index}.log"))
    }

    /// The supervisor's log.
    pub fn supervisor_log(&self) -> PathBuf {
        self.file("logs/supervisor.log")
    }

    /// What `ridepulse job logs` prints: the last `lines` lines of the supervisor's log and
    /// of each of `spec`'s processes' logs, each under a `==> what: path <==` header (a
    /// missing log shows as empty).
    pub fn logs_tail(&self, spec: &JobSpec, lines: usize) -> String {
        let mut logs = vec![("supervisor".to_string(), self.supervisor_log())];
        for index in 0..spec.processes.len() {
            logs.push((format!("process {index}"), self.process_log(index)));
        }
        let mut out = String::new();
        for (what, path) in logs {
            out.push_str(&format!("==> {what}: {} <==\n", path.display()));
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let all: Vec<&str> = text.lines().collect();
            for line in &all[all.len().saturating_sub(lines)..] {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }

    /// The file whose existence asks the supervisor to stop.
    pub fn stop_request(&self) -> PathBuf {
        self.file("stop")
    }

    /// Whether the job is alive: not stopped and its supervisor runs.
    pub fn is_active(&self) -> bool {
        self.state()
            .is_some_and(|s| s.phase != Phase::Stopped && pid_alive(s.supervisor))
    }
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> anyhow::Result<T> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not valid", path.display()))
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> anyhow::Result<()> {
    let temp = path.with_extension("tmp");
    std::fs::write(&temp, serde_json::to_vec_pretty(value)?)
        .with_context(|| format!("cannot write {}", temp.display()))?;
    std::fs::rename(&temp, path).with_context(|| format!("cannot write {}", path.display()))
}

/// Whether a process with this pid exists (and is not a zombie we could reap).
pub fn pid_alive(pid: u32) -> bool {
    if pid == 0 {
        return false;
    }
    // SAFETY: kill with signal 0 only checks that the process exists.
    let exists = unsafe { libc::kill(pid as libc::pid_t, 0) } == 0;
    let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            stat.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false);
    exists && !zombie
}

/// Sends `signal` to `pid` (ignoring a process that is already gone).
pub fn signal(pid: u32, signal: libc::c_int) {
    if pid != 0 {
        // SAFETY: kill has no memory effects; a stale pid only yields ESRCH.
        unsafe {
            libc::kill(pid as libc::pid_t, signal);
        }
    }
}

/// Now, in Unix seconds.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Parses `--cities a,b,c`: each name trimmed of surrounding blanks and otherwise kept
/// exactly as written (SPEC §2: case and accents count, as they do in events); non-empty;
/// empty list = every city.
pub fn parse_cities(values: &[String]) -> anyhow::Result<Option<BTreeSet<String>>> {
    let mut cities = BTreeSet::new();
    for value in values {
        let city = value.trim().to_string();
        if city.is_empty() {
            bail!("--cities: empty city name in `{}`", values.join(","));
        }
        cities.insert(city);
    }
    Ok((!cities.is_empty()).then_some(cities))
}

/// Every job directory under the state directory, by name.
pub fn all_jobs(state_dir: &Path) -> Vec<(String, JobDir)> {
    let mut jobs: Vec<(String, JobDir)> = std::fs::read_dir(state_dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|entry| entry.path().join("job.json").exists())
        .map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            let dir = JobDir::new(state_dir, &name);
            (name, dir)
        })
        .collect();
    jobs.sort_by(|a, b| a.0.cmp(&b.0));
    jobs
}

/// What `job submit` was asked for.
#[derive(Clone, Debug)]
pub struct SubmitRequest {
    /// The job's name.
    pub name: String,
    /// Its cities (`None`: all).
    pub cities: Option<BTreeSet<String>>,
    /// The layout file to take its processes from (default: `cluster.layout`).
    pub layout: Option<PathBuf>,
    /// How long to wait for every process to connect.
    pub wait: Duration,
}

/// Submits a job: checks ownership, writes its state directory, starts its supervisor and
/// waits until its processes are connected. Returns the spec.
pub fn submit(config: &Config, request: &SubmitRequest) -> anyhow::Result<JobSpec> {
    let name = &request.name;
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
    {
        bail!("--name `{name}`: use lowercase letters, digits, - and _");
    }
    let layout_path = request
        .layout
        .clone()
        .unwrap_or_else(|| config.cluster.layout.clone());
    let layout: Layout = LayoutSet::load(&layout_path)?.for_job(Some(name)).clone();
    if !layout.is_local() {
        bail!(
            "job {name}: its layout ({}) names processes on other hosts; `job submit` starts processes on this machine only — use scripts/cluster, which prints the command for each host",
            layout_path.display()
        );
    }
    let state_dir = config.cluster.state_dir();
    std::fs::create_dir_all(&state_dir)
        .with_context(|| format!("cannot create {}", state_dir.display()))?;
    // One submit at a time decides who owns what.
    let lock = File::create(state_dir.join(".lock"))?;
    lock.lock()
        .with_context(|| format!("cannot lock {}", state_dir.display()))?;

    let mut dead_letters = true;
    for (other, dir) in all_jobs(&state_dir) {
        if !dir.is_active() {
            continue;
        }
        if &other == name {
            bail!("job {name} is already running (stop it first: ridepulse job stop {name})");
        }
        let spec = dir.spec()?;
        let overlap = match (&request.cities, &spec.cities) {
            (None, None) => Some("every city".to_string()),
            (Some(mine), None) => mine.iter().next().map(|c| format!("city `{c}`")),
            (None, Some(theirs)) => theirs.iter().next().map(|c| format!("city `{c}`")),
            (Some(mine), Some(theirs)) => mine
                .intersection(theirs)
                .next()
                .map(|c| format!("city `{c}`")),
        };
        if let Some(what) = overlap {
            bail!(
                "job {name} refused: {what} is already owned by running job `{other}` (cities {}); stop it or choose other cities",
                spec.cities_text()
            );
        }
        for process in &layout.processes {
            if spec.processes.iter().any(|p| p.address == process.address) {
                bail!(
                    "job {name} refused: address {} is used by running job `{other}`; give this job its own processes under [jobs.{name}] in {}",
                    process.address,
                    layout_path.display()
                );
            }
        }
        if spec.dead_letters {
            dead_letters = false;
        }
    }

    let dir = JobDir::new(&state_dir, name);
    std::fs::create_dir_all(dir.root().join("logs"))?;
    let _ = std::fs::remove_file(dir.stop_request());
    let spec = JobSpec {
        name: name.clone(),
        cities: request.cities.clone(),
        dead_letters,
        group: format!("ridepulse-job-{name}"),
        processes: layout.processes.clone(),
        submitted_at: unix_now(),
    };
    write_json(&dir.file("job.json"), &spec)?;
    write_layout(&dir.layout_path(), &layout)?;
    write_scrape_targets(config, &state_dir, name, &layout)?;
    config
        .write_private(
            &dir.config_path(),
            "Written by `ridepulse job submit`: the configuration this job's processes run with.",
        )
        .with_context(|| format!("cannot write {}", dir.config_path().display()))?;
    let previous_restarts = dir.state().map_or(0, |s| s.restarts);

    let log = File::options()
        .create(true)
        .append(true)
        .open(dir.supervisor_log())?;
    let exe = std::env::current_exe().context("cannot find the ridepulse binary")?;
    let child = {
        use std::os::unix::process::CommandExt;
        std::process::Command::new(exe)
            .arg("--config")
            .arg(dir.config_path())
            .args(["job", "supervise", name])
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            // Its own process group: a Ctrl-C in the submitting terminal does not reach it.
            .process_group(0)
            .spawn()
            .context("cannot start the job's supervisor")?
    };
    dir.write_state(&JobState {
        phase: Phase::Starting,
        supervisor: child.id(),
        pids: Vec::new(),
        restarts: previous_restarts,
        last_failure: None,
        since: unix_now(),
    })?;
    drop(lock);

    let deadline = Instant::now() + request.wait;
    loop {
        let state = dir.state();
        if state.as_ref().is_some_and(|s| s.phase == Phase::Running) {
            return Ok(spec);
        }
        if let Some(failure) = state
            .as_ref()
            .filter(|s| s.phase == Phase::Failed)
            .and_then(|s| s.last_failure.as_ref())
        {
            bail!(
                "job {name} failed: {failure} (the supervisor tries again after a backoff; fix the cause, or `ridepulse job stop {name}`)"
            );
        }
        if !pid_alive(child.id()) {
            bail!(
                "job {name}: the supervisor exited; see {}",
                dir.supervisor_log().display()
            );
        }
        if Instant::now() >= deadline {
            bail!(
                "job {name}: not all processes connected within {:?} (it keeps trying; see ridepulse job logs {name})",
                request.wait
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Where `job submit` writes each job's Prometheus targets (file-based service discovery,
/// which the stack's Prometheus reads: scripts/stack, docs/metrics.md).
pub fn scrape_targets_dir(state_dir: &Path) -> PathBuf {
    state_dir.join(".prometheus-targets")
}

/// Writes `<name>.json`, the job's processes' `/metrics` addresses labelled `job=<name>`,
/// for Prometheus's `file_sd_configs` (written atomically: Prometheus never reads half).
fn write_scrape_targets(
    config: &Config,
    state_dir: &Path,
    name: &str,
    layout: &Layout,
) -> anyhow::Result<()> {
    let targets: Vec<String> = (0..layout.processes.len())
        .filter_map(|index| layout.metrics_address(index, &config.metrics.listen))
        .collect();
    let dir = scrape_targets_dir(state_dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let group = serde_json::json!([{ "targets": targets, "labels": { "job": name } }]);
    write_json(&dir.join(format!("{name}.json")), &group)
}

/// Where a job's processes serve `/metrics`: the layout it was submitted with and the
/// `metrics.listen` of the configuration it runs with (`listen` if that cannot be read).
pub fn metrics_addresses(dir: &JobDir, spec: &JobSpec, listen: &str) -> Vec<String> {
    let listen = Config::load(
        Some(&dir.config_path()),
        std::iter::empty::<(String, String)>(),
        &[],
    )
    .map_or_else(|_| listen.to_string(), |c| c.metrics.listen);
    let layout = Layout {
        processes: spec.processes.clone(),
    };
    (0..layout.processes.len())
        .filter_map(|index| layout.metrics_address(index, &listen))
        .collect()
}

fn write_layout(path: &Path, layout: &Layout) -> anyhow::Result<()> {
    #[derive(Serialize)]
    struct File<'a> {
        process: &'a [ProcessSpec],
    }
    let text = format!(
        "# Written by `ridepulse job submit`: this job's processes.\n{}",
        toml::to_string(&File {
            process: &layout.processes
        })?
    );
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

/// Asks the job's supervisor to stop it and waits until it has (up to `wait`). A job
/// whose supervisor is gone has its processes killed directly.
pub fn stop(config: &Config, name: &str, wait: Duration) -> anyhow::Result<()> {
    let dir = JobDir::new(&config.cluster.state_dir(), name);
    if !dir.root().join("job.json").exists() {
        bail!(
            "no job named `{name}` (in {})",
            config.cluster.state_dir().display()
        );
    }
    let Some(state) = dir.state() else {
        bail!("job {name} has no state yet");
    };
    if state.phase == Phase::Stopped {
        return Ok(());
    }
    File::create(dir.stop_request())?;
    let deadline = Instant::now() + wait;
    while pid_alive(state.supervisor) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    // The supervisor is gone (or did not answer): make sure nothing of the job runs.
    let mut state_now = dir.state().unwrap_or(state.clone());
    for pid in state_now.pids.iter().chain([&state.supervisor]) {
        if pid_alive(*pid) {
            signal(*pid, libc::SIGKILL);
        }
    }
    state_now.phase = Phase::Stopped;
    state_now.pids.clear();
    // Nothing to scrape any more.
    let _ = std::fs::remove_file(
        scrape_targets_dir(&config.cluster.state_dir()).join(format!("{name}.json")),
    );
    state_now.since = unix_now();
    dir.write_state(&state_now)?;
    let _ = std::fs::remove_file(dir.stop_request());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cities_are_kept_exactly_as_written() {
        let given = ["São Paulo".to_string(), " London ".into(), "london".into()];
        let cities = parse_cities(&given).unwrap().unwrap();
        let expected: BTreeSet<String> = ["São Paulo", "London", "london"]
            .into_iter()
            .map(String::from)
            .collect();
        assert_eq!(cities, expected);
        assert!(crate::source::owns(&Some(cities.clone()), "São Paulo"));
        assert!(!crate::source::owns(&Some(cities), "são paulo"));
        assert!(parse_cities(&[" ".into()]).is_err());
        assert_eq!(parse_cities(&[]).unwrap(), None);
    }
}
