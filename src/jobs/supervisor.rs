//! The supervisor of one job (`ridepulse job supervise NAME`, started by `job submit`).
//!
//! timely is fail-stop: when one process of a job dies the others cannot go on. So the
//! supervisor starts every process of the job's layout, watches them, and when any one
//! exits it kills the rest and starts all of them again after a backoff (1 s doubling to
//! 30 s, back to 1 s after a minute of healthy running). The processes resume from the job's
//! checkpoints, behind which everything is durable, so a restart loses and doubles nothing.
//! It records its phase, the pids and the restart count in `state.json` for `job list`, and
//! stops everything when `job stop` leaves a stop request.
//!
//! A process that exits with [`FATAL_EXIT_CODE`] stopped on a failure no restart can fix
//! (disk full, credentials, schema): the job goes to phase `failed` with the process's
//! `fatal:` line as the reason in `job list`, and the next attempt waits 1 minute, doubling
//! to 15, instead of looping every few seconds.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use tracing::{info, warn};

use super::{signal, unix_now, JobDir, JobSpec, JobState, Phase};
use crate::pipeline::FATAL_EXIT_CODE;

const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// The first wait after a fatal failure, and the longest.
const FATAL_BACKOFF: Duration = Duration::from_secs(60);
const MAX_FATAL_BACKOFF: Duration = Duration::from_secs(15 * 60);
/// Running this long without a failure resets the backoff.
const HEALTHY: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(200);
/// The line a process logs once timely has connected it to every other process.
const CONNECTED: &str = "cluster connected";

/// One running process of the job.
struct Member {
    child: Child,
    log: std::path::PathBuf,
    /// The log's length when it was started (its own lines come after).
    log_start: u64,
    connected: bool,
}

/// Runs until the job is stopped.
pub fn supervise(dir: &JobDir) -> anyhow::Result<()> {
    let spec: JobSpec = dir.spec()?;
    let exe = std::env::current_exe().context("cannot find the ridepulse binary")?;
    let mut state = dir.state().unwrap_or(JobState {
        phase: Phase::Starting,
        supervisor: std::process::id(),
        pids: Vec::new(),
        restarts: 0,
        last_failure: None,
        since: unix_now(),
    });
    state.supervisor = std::process::id();
    let mut backoff = FIRST_BACKOFF;
    loop {
        if dir.stop_request().exists() {
            break;
        }
        let mut members = start_all(dir, &spec, &exe)?;
        state.phase = Phase::Starting;
        state.pids = members.iter().map(|m| m.child.id()).collect();
        state.since = unix_now();
        dir.write_state(&state)?;
        info!(job = %spec.name, pids = ?state.pids, restarts = state.restarts, "processes started");
        let started = Instant::now();
        let failure = loop {
            if dir.stop_request().exists() {
                break None;
            }
            if let Some(failure) = exited(&mut members) {
                break Some(failure);
            }
            if state.phase == Phase::Starting && all_connected(&mut members) {
                state.phase = Phase::Running;
                state.since = unix_now();
                dir.write_state(&state)?;
                info!(job = %spec.name, "every process connected: running");
            }
            if started.elapsed() >= HEALTHY {
                backoff = FIRST_BACKOFF;
            }
            std::thread::sleep(POLL);
        };
        kill_all(&mut members);
        let Some(failure) = failure else { break };
        state.restarts += 1;
        if let Some(reason) = &failure.fatal {
            backoff = backoff.clamp(FATAL_BACKOFF, MAX_FATAL_BACKOFF);
            warn!(job = %spec.name, %reason, ?backoff, "a process stopped on a failure no restart can fix; trying again after the backoff");
            state.phase = Phase::Failed;
        } else {
            warn!(job = %spec.name, failure = %failure.text, ?backoff, "a process died; restarting all of them from the checkpoints");
            state.phase = Phase::Restarting;
        }
        let failure = failure.fatal.unwrap_or(failure.text);
        state.pids.clear();
        state.last_failure = Some(failure);
        state.since = unix_now();
        dir.write_state(&state)?;
        let until = Instant::now() + backoff;
        while Instant::now() < until && !dir.stop_request().exists() {
            std::thread::sleep(POLL);
        }
        let most = if state.phase == Phase::Failed {
            MAX_FATAL_BACKOFF
        } else {
            MAX_BACKOFF
        };
        backoff = (backoff * 2).min(most);
    }
    state.phase = Phase::Stopped;
    state.pids.clear();
    state.since = unix_now();
    dir.write_state(&state)?;
    let _ = std::fs::remove_file(dir.stop_request());
    info!(job = %spec.name, "stopped");
    Ok(())
}

fn start_all(dir: &JobDir, spec: &JobSpec, exe: &std::path::Path) -> anyhow::Result<Vec<Member>> {
    let mut members = Vec::new();
    for index in 0..spec.processes.len() {
        let path = dir.process_log(index);
        let mut log = File::options().create(true).append(true).open(&path)?;
        writeln!(
            log,
            "=== ridepulse job {} process {index} starting at {} ===",
            spec.name,
            chrono::Utc::now().to_rfc3339()
        )?;
        let log_start = log.metadata()?.len();
        let mut command = Command::new(exe);
        command
            .arg("--config")
            .arg(dir.config_path())
            .arg("run")
            .arg("--workers")
            .arg(dir.layout_path())
            .args(["--process", &index.to_string()])
            .args(["--group", &spec.group]);
        if spec.cities.is_some() {
            command.arg("--cities").arg(spec.cities_text());
        }
        if !spec.dead_letters {
            command.arg("--no-dead-letters");
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start process {index}"))?;
        members.push(Member {
            child,
            log: path,
            log_start,
            connected: false,
        });
    }
    Ok(members)
}

/// Why a member exited.
struct Exit {
    /// The exit described.
    text: String,
    /// For a fatal exit, the process's `fatal:` line.
    fatal: Option<String>,
}

/// The first member that has exited, described.
fn exited(members: &mut [Member]) -> Option<Exit> {
    for (index, member) in members.iter_mut().enumerate() {
        if let Ok(Some(status)) = member.child.try_wait() {
            let text = format!(
                "process {index} (pid {}) exited: {status}",
                member.child.id()
            );
            let fatal = (status.code() == Some(FATAL_EXIT_CODE)).then(|| {
                let line = own_log(member)
                    .lines()
                    .rev()
                    .find_map(|l| l.strip_prefix("fatal: ").map(str::to_string))
                    .unwrap_or_else(|| "a failure no restart can fix (see the log)".into());
                format!("process {index}: {line}")
            });
            return Some(Exit { text, fatal });
        }
    }
    None
}

/// What the member's process wrote to its log so far.
fn own_log(member: &Member) -> String {
    let mut text = String::new();
    let _ = File::open(&member.log).and_then(|mut f| {
        f.seek(SeekFrom::Start(member.log_start))?;
        f.read_to_string(&mut text)
    });
    text
}

fn all_connected(members: &mut [Member]) -> bool {
    for member in members.iter_mut().filter(|m| !m.connected) {
        member.connected = own_log(member).contains(CONNECTED);
    }
    members.iter().all(|m| m.connected)
}

fn kill_all(members: &mut [Member]) {
    for member in members.iter() {
        signal(member.child.id(), libc::SIGKILL);
    }
    for member in members.iter_mut() {
        let _ = member.child.wait();
    }
}
