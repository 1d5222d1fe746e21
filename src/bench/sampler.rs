//! Samples a running job from the outside while a benchmark runs: its resident memory (from
//! `/proc/<pid>/status`), its heap as jemalloc counts it (`ridepulse_heap_allocated_bytes`
//! from its `/metrics`, which tells live data from memory the allocator keeps) and how many
//! events it has written (a `count()` on `ride_events`), so runs can be plotted over time
//! and peak RSS reported.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::config::Config;

/// One sample.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Sample {
    /// Seconds since sampling began.
    pub t: f64,
    /// Resident memory of the job (kB), if it still ran.
    pub rss_kb: Option<u64>,
    /// Events in `ride_events` so far.
    pub written: Option<u64>,
    /// Bytes the job has allocated and not freed (kB), if its `/metrics` answered.
    pub heap_kb: Option<u64>,
}

/// A sampling thread; [`Sampler::stop`] returns the samples and the peak RSS seen.
pub struct Sampler {
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<Sample>>>,
    peak_kb: Arc<Mutex<u64>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn status_kb(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

impl Sampler {
    /// Starts sampling `pid` (and `ride_events` in `config`'s database) every `every`.
    pub fn start(pid: u32, config: &Config, every: Duration) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let peak_kb = Arc::new(Mutex::new(0));
        let (s, out, peak) = (stop.clone(), samples.clone(), peak_kb.clone());
        let clickhouse = config.clickhouse.clone();
        let metrics = config.metrics.listen.clone();
        let thread = std::thread::spawn(move || {
            let client = crate::clickhouse::connect(&clickhouse);
            let began = Instant::now();
            while !s.load(Ordering::Relaxed) {
                let rss_kb = status_kb(pid, "VmRSS:");
                if let Some(hwm) = status_kb(pid, "VmHWM:") {
                    let mut p = peak.lock().expect("not poisoned");
                    *p = (*p).max(hwm);
                }
                let written = crate::clickhouse::block_on(
                    client
                        .query("SELECT count() FROM ride_events")
                        .fetch_one::<u64>(),
                )
                .ok();
                let heap_kb = crate::metrics::scrape::get(&metrics, Duration::from_millis(500))
                    .ok()
                    .and_then(|text| {
                        crate::metrics::scrape::samples(&text)
                            .find(|(name, _)| *name == "ridepulse_heap_allocated_bytes")
                            .map(|(_, bytes)| bytes as u64 / 1024)
                    });
                out.lock().expect("not poisoned").push(Sample {
                    t: began.elapsed().as_secs_f64(),
                    rss_kb,
                    written,
                    heap_kb,
                });
                std::thread::sleep(every);
            }
        });
        Sampler {
            stop,
            samples,
            peak_kb,
            thread: Some(thread),
        }
    }

    /// Stops and returns the samples and the peak RSS (kB, the kernel's high-water mark).
    pub fn stop(mut self) -> (Vec<Sample>, u64) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        let samples = std::mem::take(&mut *self.samples.lock().expect("not poisoned"));
        let peak = *self.peak_kb.lock().expect("not poisoned");
        (samples, peak)
    }
}
