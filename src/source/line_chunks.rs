//! The lines of a file run, each read and parsed by one worker only.
//!
//! A file run (`run --from-file`, one process) places every line where its Kafka replay
//! would: in the partition its key hashes to, at that partition's next offset. Before, every
//! worker read every line and found its key, to keep the lines of its own partitions: with
//! two workers half of that reading was done twice. Here the workers share one reading
//! position ([`LineChunks`]): whichever worker needs lines reads the next chunk of whole
//! lines (about [`CHUNK_BYTES`]), parses each line and finds its partition, and leaves each
//! worker its share, records parsed; every worker then takes its shares in file order
//! ([`WorkerLines`]), so per partition the lines still come in file order and offsets are
//! counted as before. A line's key is its parsed record's ([`SourceRecord::key`]), so the
//! line is read once; only a line that is not a valid record is scanned for a key
//! ([`SourceRecord::key_of`]), which gives the same key for any line that parses. A keyless
//! line's partition depends on its line number in the whole run, which the reader of one
//! chunk does not know: such lines (only malformed ones) go to every worker, and the one
//! owning the partition keeps it.
//!
//! How far apart the workers may run is bounded: at most [`CHUNKS_AHEAD_PER_WORKER`] chunks
//! per worker are read but not yet taken by all, so a worker that stops taking (watermark
//! alignment, the writer's backpressure) soon stops the others' reading of this file too,
//! and memory stays bounded. A worker that holds the others back this way is told so
//! ([`LineChunks::holds_back_others`]), and then reads on rather than waiting for
//! alignment: otherwise a worker waiting for the watermark could wait on a worker that
//! waits on it.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::fs::File;
use std::io::Read;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use timely::scheduling::activate::SyncActivator;

use dataflows::event::EventError;

use super::SourceRecord;
use crate::kafka::partitioner::partition_for;

/// Bytes read from the files at a time: about one chunk of lines (~500 ride events). Small
/// enough to fit a core's L2 cache (512 KiB here) between the read and the parse; 1 MiB
/// chunks did not, and the read-ahead cost ~30 MB more peak RSS.
pub const CHUNK_BYTES: usize = 1 << 17;
/// Chunks per worker that may be read but not yet taken by every worker (4 MiB of text
/// each, and ~85 KB of parsed records per chunk).
pub const CHUNKS_AHEAD_PER_WORKER: usize = 32;

/// The reading position across the files, handing out chunks of whole lines, each line
/// ended by a newline (one is added to a file's last line if it lacks one).
pub(super) struct Reader {
    files: std::vec::IntoIter<PathBuf>,
    /// The file being read and its path; `None` before the first and after the last.
    current: Option<(File, PathBuf)>,
    /// The start of a line whose end has not been read yet.
    carry: Vec<u8>,
    /// Bytes to read at a time.
    chunk_bytes: usize,
}

impl Reader {
    pub(super) fn new(files: Vec<PathBuf>, chunk_bytes: usize) -> Reader {
        Reader {
            files: files.into_iter(),
            current: None,
            carry: Vec::new(),
            chunk_bytes,
        }
    }

    /// The next chunk of whole lines, or `None` after the last file.
    pub(super) fn next_chunk(&mut self) -> std::io::Result<Option<Vec<u8>>> {
        let mut chunk = std::mem::take(&mut self.carry);
        loop {
            let Some((file, path)) = self.current.as_mut() else {
                let Some(path) = self.files.next() else {
                    return Ok(None);
                };
                let file = File::open(&path).map_err(|e| {
                    std::io::Error::new(e.kind(), format!("cannot open {}: {e}", path.display()))
                })?;
                self.current = Some((file, path));
                continue;
            };
            let filled = chunk.len();
            // Read into the spare capacity (std's `read_to_end` does not zero it first: a
            // `resize` with zeroes before each read was ~1.7 % of a file run).
            chunk.reserve(self.chunk_bytes);
            let read = (&mut *file)
                .take(self.chunk_bytes as u64)
                .read_to_end(&mut chunk)
                .map_err(|e| {
                    std::io::Error::new(e.kind(), format!("cannot read {}: {e}", path.display()))
                })?;
            if read == 0 {
                // The end of this file: what is left is its last line, without a newline.
                self.current = None;
                if chunk.is_empty() {
                    continue;
                }
                chunk.push(b'\n');
                return Ok(Some(chunk));
            }
            if let Some(last) = memchr::memrchr(b'\n', &chunk[filled..]) {
                let cut = filled + last + 1;
                self.carry = chunk[cut..].to_vec();
                chunk.truncate(cut);
                return Ok(Some(chunk));
            }
            // No line ends in what was read yet (a line longer than a read): read on.
        }
    }
}

/// One line of a chunk, as a worker's share lists it (its record beside it).
#[derive(Clone, Copy, Debug)]
struct LineRef {
    /// Its bytes in the chunk, without the newline.
    start: usize,
    end: usize,
    /// Its place among the chunk's lines.
    index: u64,
    /// The partition of its key; `None` for a keyless line (every worker gets those).
    partition: Option<i32>,
}

/// A worker's share of a chunk.
struct Share<R> {
    chunk: Arc<Vec<u8>>,
    lines: Vec<LineRef>,
    /// Each line's record as parsed (or why it is not one), taken when the line is.
    records: Vec<Option<Result<R, EventError>>>,
    /// Lines in the whole chunk (every worker's), to number the next chunk's.
    chunk_lines: u64,
}

/// What [`LineChunks::take`] gives a worker.
enum Next<R> {
    Share(Share<R>),
    /// Its next share is not ready and it may not read another chunk now: ask again later
    /// (the worker is activated when that may have changed).
    Wait,
    /// Every line has been handed out.
    End,
}

/// The shared state, behind one lock (held for a chunk's read, not for its key scan).
struct State<R> {
    reader: Reader,
    /// The chunk number of `slots[0]`.
    first: u64,
    /// Chunks read and not yet taken by every worker: `None` while its reader splits it,
    /// then one share per worker until taken.
    slots: VecDeque<Option<Vec<Option<Share<R>>>>>,
    /// Whether the reader has handed out its last chunk.
    ended: bool,
    /// A read error, for every worker to fail with.
    failed: Option<String>,
    /// Per worker: the chunk number of its next share.
    next: Vec<u64>,
    /// Per worker: whether it was told to wait, and how to wake it.
    waiting: Vec<bool>,
    activators: Vec<Option<SyncActivator>>,
}

impl<R> State<R> {
    /// Chunks read so far.
    fn read(&self) -> u64 {
        self.first + self.slots.len() as u64
    }

    /// Chunks read but not yet taken by every worker.
    fn unfinished(&self) -> u64 {
        self.slots.len() as u64
    }

    fn wake_waiting(&mut self) {
        for (waiting, activator) in self.waiting.iter_mut().zip(&self.activators) {
            if std::mem::take(waiting) {
                if let Some(activator) = activator {
                    // A worker that has hung up has nothing left to read.
                    let _ = activator.activate();
                }
            }
        }
    }
}

/// The reading position of a file run's files (of records `R`), shared by the process's
/// workers.
pub struct LineChunks<R> {
    peers: usize,
    partitions: i32,
    /// Chunks that may be read but not yet taken by every worker.
    window: u64,
    state: Mutex<State<R>>,
}

impl<R: SourceRecord> LineChunks<R> {
    /// The files' lines for `peers` workers, placed among `partitions` partitions.
    pub fn new(files: Vec<PathBuf>, partitions: i32, peers: usize) -> LineChunks<R> {
        LineChunks::with_chunk_bytes(files, partitions, peers, CHUNK_BYTES)
    }

    fn with_chunk_bytes(
        files: Vec<PathBuf>,
        partitions: i32,
        peers: usize,
        chunk_bytes: usize,
    ) -> LineChunks<R> {
        assert!(partitions > 0 && peers > 0);
        LineChunks {
            peers,
            partitions,
            window: (CHUNKS_AHEAD_PER_WORKER * peers) as u64,
            state: Mutex::new(State {
                reader: Reader::new(files, chunk_bytes),
                first: 0,
                slots: VecDeque::new(),
                ended: false,
                failed: None,
                next: vec![0; peers],
                waiting: vec![false; peers],
                activators: vec![None; peers],
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<R>> {
        // A worker that panicked fails the job anyway; the others may still read the state.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// How to wake `worker` when its next share may be ready.
    pub fn register(&self, worker: usize, activator: SyncActivator) {
        self.lock().activators[worker] = Some(activator);
    }

    /// Whether the other workers cannot read on until `worker` takes its next share.
    pub fn holds_back_others(&self, worker: usize) -> bool {
        let state = self.lock();
        self.peers > 1 && state.next[worker] == state.first && state.unfinished() >= self.window
    }

    /// `worker`'s next share: a ready one, or one it reads and splits itself (the chunk it
    /// reads may be some other worker's next), or word to wait or that all is read.
    fn take(&self, worker: usize) -> Result<Next<R>, String> {
        loop {
            let mut state = self.lock();
            if let Some(error) = &state.failed {
                return Err(error.clone());
            }
            let at = (state.next[worker] - state.first) as usize;
            if let Some(Some(shares)) = state.slots.get_mut(at) {
                let share = shares[worker].take().expect("each share is taken once");
                state.next[worker] += 1;
                let mut freed = false;
                while let Some(Some(shares)) = state.slots.front() {
                    if shares.iter().any(Option::is_some) {
                        break;
                    }
                    state.slots.pop_front();
                    state.first += 1;
                    freed = true;
                }
                if freed {
                    state.wake_waiting();
                }
                return Ok(Next::Share(share));
            }
            if state.ended && state.next[worker] == state.read() {
                return Ok(Next::End);
            }
            if state.ended || state.unfinished() >= self.window {
                state.waiting[worker] = true;
                return Ok(Next::Wait);
            }
            let number = state.read();
            match state.reader.next_chunk() {
                Ok(Some(chunk)) => {
                    state.slots.push_back(None);
                    drop(state);
                    let shares = split(chunk, self.partitions, self.peers);
                    let mut state = self.lock();
                    let at = (number - state.first) as usize;
                    state.slots[at] = Some(shares);
                    state.wake_waiting();
                }
                Ok(None) => {
                    state.ended = true;
                    state.wake_waiting();
                }
                Err(error) => {
                    state.failed = Some(error.to_string());
                    state.wake_waiting();
                }
            }
        }
    }
}

/// A chunk's lines, parsed and shared out by the owner of their partition
/// (`partition % peers`).
fn split<R: SourceRecord>(chunk: Vec<u8>, partitions: i32, peers: usize) -> Vec<Option<Share<R>>> {
    let chunk = Arc::new(chunk);
    let expected = chunk.len() / 200 / peers;
    let mut shares: Vec<Share<R>> = (0..peers)
        .map(|_| Share {
            chunk: chunk.clone(),
            lines: Vec::with_capacity(expected),
            records: Vec::with_capacity(expected),
            chunk_lines: 0,
        })
        .collect();
    let (mut start, mut index) = (0, 0);
    for end in memchr::memchr_iter(b'\n', &chunk) {
        let bytes = &chunk[start..end];
        let record = R::parse(bytes);
        let key = match &record {
            Ok(record) => Some(Cow::Borrowed(record.key())),
            Err(_) => R::key_of(bytes),
        };
        let partition = key.map(|key| partition_for(Some(key.as_bytes()), partitions, 0));
        let line = LineRef {
            start,
            end,
            index,
            partition,
        };
        match partition {
            Some(partition) => {
                let share = &mut shares[partition as usize % peers];
                share.lines.push(line);
                share.records.push(Some(record));
            }
            None => {
                for share in &mut shares {
                    share.lines.push(line);
                    share.records.push(Some(record.clone()));
                }
            }
        }
        (start, index) = (end + 1, index + 1);
    }
    shares
        .into_iter()
        .map(|share| {
            Some(Share {
                chunk_lines: index,
                ..share
            })
        })
        .collect()
}

/// A line placed where its Kafka replay would put it.
#[derive(Debug, PartialEq)]
pub struct PlacedLine<'a, R> {
    /// The line, without its newline.
    pub bytes: &'a [u8],
    /// Its record, or why it is not one.
    pub record: Result<R, EventError>,
    /// The partition of its key (or, keyless, of its line number).
    pub partition: i32,
    /// Its offset in that partition.
    pub offset: i64,
    /// Its line number in the whole run (1-based).
    pub number: u64,
}

/// What [`WorkerLines::next_line`] gives.
#[derive(Debug, PartialEq)]
pub enum Step<'a, R> {
    /// A line of this worker's.
    Line(PlacedLine<'a, R>),
    /// Nothing to read now: the worker is activated when there may be.
    Wait,
    /// The worker has had all its lines.
    End,
}

/// One worker's lines of a file run: those of the partitions it owns, in file order.
pub struct WorkerLines<R> {
    worker: usize,
    shared: Arc<LineChunks<R>>,
    share: Option<Share<R>>,
    /// The next line of `share`.
    at: usize,
    /// Lines of the chunks before `share`.
    lines_before: u64,
    /// Per partition, the next offset (kept for the owned partitions only).
    next_offset: Vec<i64>,
}

impl<R: SourceRecord> WorkerLines<R> {
    /// `worker`'s lines of `shared`.
    pub fn new(shared: Arc<LineChunks<R>>, worker: usize) -> WorkerLines<R> {
        let partitions = shared.partitions as usize;
        WorkerLines {
            worker,
            shared,
            share: None,
            at: 0,
            lines_before: 0,
            next_offset: vec![0; partitions],
        }
    }

    /// Whether the file's other workers cannot read on until this one takes its next share.
    pub fn holds_back_others(&self) -> bool {
        self.shared.holds_back_others(self.worker)
    }

    /// Lines of the run handed out so far (every worker's).
    pub fn lines_read(&self) -> u64 {
        self.lines_before + self.share.as_ref().map_or(0, |s| s.chunk_lines)
    }

    /// This worker's next line; `Err` names a file that cannot be read.
    pub fn next_line(&mut self) -> Result<Step<'_, R>, String> {
        let (line, partition) = loop {
            let Some(share) = &self.share else {
                match self.shared.take(self.worker)? {
                    Next::Share(share) => {
                        self.share = Some(share);
                        self.at = 0;
                        continue;
                    }
                    Next::Wait => return Ok(Step::Wait),
                    Next::End => return Ok(Step::End),
                }
            };
            let Some(line) = share.lines.get(self.at).copied() else {
                self.lines_before += share.chunk_lines;
                self.share = None;
                continue;
            };
            self.at += 1;
            let partition = match line.partition {
                Some(partition) => partition,
                None => {
                    // A keyless line goes where its producer's fallback would put it.
                    let number = self.lines_before + line.index;
                    let partition = partition_for(None, self.shared.partitions, number);
                    if partition as usize % self.shared.peers != self.worker {
                        continue;
                    }
                    partition
                }
            };
            break (line, partition);
        };
        let offset = self.next_offset[partition as usize];
        self.next_offset[partition as usize] += 1;
        let share = self.share.as_mut().expect("the line's share");
        let record = share.records[self.at - 1]
            .take()
            .expect("each line's record is taken once");
        Ok(Step::Line(PlacedLine {
            bytes: &share.chunk[line.start..line.end],
            record,
            partition,
            offset,
            number: self.lines_before + line.index + 1,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dataflows::event::RideEvent;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ridepulse-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// Every line of every file, in order, whatever the read boundaries.
    fn read_all(files: Vec<PathBuf>, chunk_bytes: usize) -> Vec<Vec<u8>> {
        let mut reader = Reader::new(files, chunk_bytes);
        let mut lines = Vec::new();
        while let Some(chunk) = reader.next_chunk().unwrap() {
            assert_eq!(chunk.last(), Some(&b'\n'), "a chunk ends a line");
            lines.extend(chunk.split(|b| *b == b'\n').map(<[u8]>::to_vec));
            // `split` gives an empty piece after the final newline.
            assert_eq!(lines.pop(), Some(Vec::new()));
        }
        lines
    }

    #[test]
    fn lines_come_whole_across_reads_files_and_a_missing_last_newline() {
        let dir = temp_dir("reader");
        // Lines of many lengths, so some straddle each read; one longer than a read.
        let mut expected: Vec<Vec<u8>> = (0..40_000)
            .map(|i| format!("{{\"n\":{i},\"pad\":\"{}\"}}", "x".repeat(i % 97)).into_bytes())
            .collect();
        expected.insert(20_000, vec![b'y'; 3 * CHUNK_BYTES + 17]);
        expected.insert(30_000, Vec::new());
        let mut first = expected[..25_000].join(&b'\n');
        first.push(b'\n');
        let second = expected[25_000..].join(&b'\n'); // no newline at its end
        let (a, b, empty) = (dir.join("a"), dir.join("b"), dir.join("empty"));
        std::fs::write(&a, first).unwrap();
        std::fs::write(&b, second).unwrap();
        std::fs::write(&empty, b"").unwrap();
        for chunk_bytes in [CHUNK_BYTES, 4096, 7] {
            let lines = read_all(vec![a.clone(), empty.clone(), b.clone()], chunk_bytes);
            assert_eq!(lines.len(), expected.len());
            assert!(lines == expected, "lines differ ({chunk_bytes}-byte reads)");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_missing_file_is_named() {
        let mut reader = Reader::new(vec![PathBuf::from("/nonexistent/rides.jsonl")], 64);
        let error = reader.next_chunk().unwrap_err();
        assert!(
            error.to_string().contains("/nonexistent/rides.jsonl"),
            "{error}"
        );
        let chunks = Arc::new(LineChunks::<RideEvent>::new(
            vec![PathBuf::from("/nonexistent/rides.jsonl")],
            12,
            2,
        ));
        for worker in 0..2 {
            let error = WorkerLines::new(chunks.clone(), worker)
                .next_line()
                .unwrap_err();
            assert!(error.contains("/nonexistent/rides.jsonl"), "{error}");
        }
    }

    /// (line number, partition, offset, bytes), placed by one reading of every line in order.
    type Placed = (u64, i32, i64, Vec<u8>);

    fn placed_in_order(lines: &[Vec<u8>], partitions: i32) -> Vec<Placed> {
        let mut next = vec![0i64; partitions as usize];
        lines
            .iter()
            .enumerate()
            .map(|(i, line)| {
                #[derive(serde::Deserialize)]
                struct Key {
                    ride_id: Option<String>,
                }
                let key = serde_json::from_slice::<Key>(line)
                    .ok()
                    .and_then(|k| k.ride_id);
                let partition =
                    partition_for(key.as_deref().map(str::as_bytes), partitions, i as u64);
                let offset = next[partition as usize];
                next[partition as usize] += 1;
                (i as u64 + 1, partition, offset, line.clone())
            })
            .collect()
    }

    /// A valid ride event of ride `ride`, its `ride_id` written as `ride_id` (plain or
    /// escaped JSON text).
    fn event_line(ride_id: &str, i: usize) -> Vec<u8> {
        format!(
            r#"{{"event_type":"requested","ride_id":"{ride_id}","timestamp":"2026-11-23T10:00:{:02}.000Z","city":"paris","estimated_fare":4.5,"user_id":"user-{i}","pickup":{{"lat":48.8,"lng":2.3}},"dropoff":{{"lat":48.9,"lng":2.4}}}}"#,
            i % 60
        )
        .into_bytes()
    }

    /// Workers taking turns (one stalled for a while): every line reaches exactly the owner
    /// of its partition, with the offset and line number of a single reading in order, and
    /// with its record as parsed (valid events placed by their parsed key, anything else
    /// by a scan of its key).
    #[test]
    fn each_line_reaches_its_owner_once_with_its_offset() {
        let dir = temp_dir("chunks");
        let mut lines: Vec<Vec<u8>> = (0..3_000)
            .map(|i| match i % 50 {
                7 => b"not json".to_vec(),
                8 => Vec::new(),
                9 => format!(r#"{{"city":"paris","n":{i}}}"#).into_bytes(),
                10 => format!(
                    r#"{{"event_type":"requested","ride_id":"ride-{}","n":{i}}}"#,
                    i % 400
                )
                .into_bytes(),
                11..=30 => event_line(&format!("ride-{}", i % 400), i),
                31 => event_line(&format!("ride\\u002d{}", i % 400), i),
                32 => event_line(&format!("ride-\\\"{}", i % 400), i),
                33 => {
                    let mut line = event_line(&format!("ride-{}", i % 400), i);
                    line.pop();
                    line.extend_from_slice(br#","nested":{"ride_id":"elsewhere"}}"#);
                    line
                }
                _ => format!(r#"{{"ride_id":"ride-{}","n":{i}}}"#, i % 400).into_bytes(),
            })
            .collect();
        lines.push(br#"{"ride_id":"esc\"aped","n":1}"#.to_vec());
        let (a, b) = (dir.join("a"), dir.join("b"));
        std::fs::write(&a, [lines[..1_234].join(&b'\n'), vec![b'\n']].concat()).unwrap();
        std::fs::write(&b, lines[1_234..].join(&b'\n')).unwrap();
        let partitions = 12;
        let expected = placed_in_order(&lines, partitions);
        for peers in [1, 2, 3] {
            let shared = Arc::new(LineChunks::<RideEvent>::with_chunk_bytes(
                vec![a.clone(), b.clone()],
                partitions,
                peers,
                300,
            ));
            let mut workers: Vec<WorkerLines<RideEvent>> = (0..peers)
                .map(|worker| WorkerLines::new(shared.clone(), worker))
                .collect();
            let mut got: Vec<(usize, Placed)> = Vec::new();
            let mut ended = vec![false; peers];
            let mut held_back = false;
            for round in 0.. {
                assert!(round < 1_000_000, "the workers never finish");
                if ended.iter().all(|e| *e) {
                    break;
                }
                for worker in 0..peers {
                    // Worker 0 stalls until the others cannot read on without it.
                    if worker == 0 && peers > 1 && !held_back {
                        held_back = shared.holds_back_others(0);
                        if !held_back {
                            continue;
                        }
                    }
                    match workers[worker].next_line().unwrap() {
                        Step::Line(line) => {
                            assert_eq!(line.record, RideEvent::parse(line.bytes));
                            got.push((
                                worker,
                                (
                                    line.number,
                                    line.partition,
                                    line.offset,
                                    line.bytes.to_vec(),
                                ),
                            ))
                        }
                        Step::Wait => {}
                        Step::End => ended[worker] = true,
                    }
                }
            }
            assert!(peers == 1 || held_back, "the window never filled");
            for (worker, (_, partition, ..)) in &got {
                assert_eq!(
                    *partition as usize % peers,
                    *worker,
                    "a line at the wrong worker"
                );
            }
            let mut got: Vec<Placed> = got.into_iter().map(|(_, placed)| placed).collect();
            got.sort();
            assert_eq!(got.len(), expected.len(), "{peers} workers");
            assert!(got == expected, "{peers} workers: lines placed differently");
            let valid = lines.iter().filter(|l| RideEvent::parse(l).is_ok()).count();
            assert_eq!(valid, 3_000 / 50 * 23, "the valid events are valid");
            assert_eq!(workers[0].lines_read(), lines.len() as u64);
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
