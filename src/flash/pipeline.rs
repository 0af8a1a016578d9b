//! The write engine: decompress once, fan out to every target, verify by reading back, write
//! the partition table last.
//!
//! ```text
//!            ┌──────────► hasher (the stream against the manifest's / .bmap's digests)
//! source ────┼──────────► writer 1 ──► target 1      (bounded queues: a slow target slows
//! (frames on │                                         the source, a stalled one is dropped)
//!  workers)  └──────────► writer N ──► target N
//! ```
//!
//! Each writer, per target: wipes the old partition tables (both ends), then writes its
//! chunks; every `sync_every` bytes it calls `fdatasync`, reads the batch back from the device
//! (bypassing the page cache) and compares it with what it wrote, rewriting a bad chunk up to
//! `retries` times. The chunks of the first and last MiB of the image (MBR, primary and backup
//! GPT) are held back. When the stream has ended and the hasher has proven every byte against
//! the signed digests, the writers write and verify the held chunks; if anything failed
//! instead, they wipe the partition tables again, so a half-written target never boots.
//! A target that fails (I/O error, unplugged, stalled) is dropped; the others go on.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::medium::{self, Medium, Unmapped};
use super::source::{held, Chunk, Image};
use crate::artifact::windows::WindowHasher;
use crate::verify::target::AlignedBuf;

/// How the engine works.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Rewrites of a chunk that reads back wrong before the target fails.
    pub retries: u32,
    /// Bytes between `fdatasync` + read-back.
    pub sync_every: u64,
    pub unmapped: Unmapped,
    /// A target that makes no progress for this long is failed.
    pub stall: Duration,
    /// Decompression threads.
    pub workers: usize,
    /// Chunks queued per target.
    pub queue: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            retries: 2,
            sync_every: 32 << 20,
            unmapped: Unmapped::Keep,
            stall: Duration::from_secs(120),
            workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
            queue: 8,
        }
    }
}

/// What the engine reports while it works (also the `--json` event stream).
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum Event {
    Start {
        target: usize,
        path: String,
        /// Bytes to write.
        total: u64,
    },
    Progress {
        target: usize,
        phase: Phase,
        /// Bytes written and made durable (`fdatasync`).
        durable: u64,
        /// Bytes read back and found equal.
        verified: u64,
        total: u64,
    },
    Verified {
        target: usize,
        bytes: u64,
        seconds: f64,
    },
    Failed {
        target: usize,
        error: String,
        /// The target holds no valid partition table (wiped, or never written).
        partition_table_wiped: bool,
    },
}

/// Where a target is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    Preparing,
    Writing,
    /// All data written and verified; waiting for the source to be proven.
    Waiting,
    PartitionTable,
    Done,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Preparing => "preparing",
            Phase::Writing => "writing",
            Phase::Waiting => "waiting",
            Phase::PartitionTable => "partition table",
            Phase::Done => "done",
        }
    }
}

/// Called once before the first write to a target (re-checks the disk's identity).
pub type BeforeWrite = Box<dyn FnOnce(&dyn Medium) -> anyhow::Result<()> + Send>;

/// One target for the engine.
pub struct Job {
    pub medium: Box<dyn Medium>,
    /// This target's own content (personalization), written and verified after the image's
    /// data and before the partition table; empty for plain copies.
    pub extra: Vec<Chunk>,
    /// Called once before the first write (re-checks the disk's identity).
    pub before_write: Option<BeforeWrite>,
}

/// How a target ended.
#[derive(Clone, Debug, Default, Serialize)]
pub struct TargetResult {
    pub ok: bool,
    pub interrupted: bool,
    pub error: Option<String>,
    /// Anything (even the wipe of the old partition tables) was written to the target.
    pub touched: bool,
    /// After a failure: the target holds no valid partition table (wiped, or the held-back
    /// table was never written over the wiped one).
    pub wiped: bool,
    pub bytes_written: u64,
    pub bytes_verified: u64,
    /// Chunks that read back wrong and were rewritten.
    pub rewrites: u64,
    pub seconds_writing: f64,
    pub seconds_partition_table: f64,
    pub seconds: f64,
}

enum Msg {
    Data(Arc<Chunk>),
    /// The stream is over: flush and verify, then wait.
    End,
    /// Write the held chunks.
    Commit(Arc<Vec<Arc<Chunk>>>),
    /// Fail (the source was wrong, or interrupted).
    Abort(String, bool),
}

/// A bounded queue with a push timeout and closing from either side.
struct Queue<T> {
    state: Mutex<(VecDeque<T>, bool)>,
    changed: Condvar,
    cap: usize,
}

enum PushError {
    Closed,
    Timeout,
}

impl<T> Queue<T> {
    fn new(cap: usize) -> Self {
        Queue {
            state: Mutex::new((VecDeque::new(), false)),
            changed: Condvar::new(),
            cap: cap.max(1),
        }
    }

    fn push(&self, t: T, timeout: Option<Duration>) -> Result<(), PushError> {
        let deadline = timeout.map(|d| Instant::now() + d);
        let mut g = self.state.lock().map_err(|_| PushError::Closed)?;
        loop {
            if g.1 {
                return Err(PushError::Closed);
            }
            if g.0.len() < self.cap {
                g.0.push_back(t);
                self.changed.notify_all();
                return Ok(());
            }
            g = match deadline {
                None => self.changed.wait(g).map_err(|_| PushError::Closed)?,
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return Err(PushError::Timeout);
                    }
                    self.changed
                        .wait_timeout(g, d - now)
                        .map_err(|_| PushError::Closed)?
                        .0
                }
            };
        }
    }

    /// The next item; `None` once closed and drained.
    fn pop(&self) -> Option<T> {
        let mut g = self.state.lock().ok()?;
        loop {
            if let Some(t) = g.0.pop_front() {
                self.changed.notify_all();
                return Some(t);
            }
            if g.1 {
                return None;
            }
            g = self.changed.wait(g).ok()?;
        }
    }

    fn close(&self) {
        if let Ok(mut g) = self.state.lock() {
            g.1 = true;
            self.changed.notify_all();
        }
    }
}

/// Milliseconds since `t0`.
fn ms(t0: Instant) -> u64 {
    t0.elapsed().as_millis() as u64
}

struct Writer {
    index: usize,
    medium: Arc<dyn Medium>,
    before_write: Option<BeforeWrite>,
    extra: Vec<Arc<Chunk>>,
    queue: Arc<Queue<Msg>>,
    events: Sender<Event>,
    settings: Settings,
    image_size: u64,
    total: u64,
    pieces: Arc<Vec<(u64, u64)>>,
    cancel: Arc<AtomicBool>,
    activity: Arc<AtomicU64>,
    t0: Instant,
    written: u64,
    durable: u64,
    /// Shared with the target's verifier thread.
    verified: Arc<AtomicU64>,
    rewrites: Arc<AtomicU64>,
    last_report: Instant,
    phase: Phase,
    /// Something was written (so a failure must wipe).
    touched: bool,
    /// The old partition tables were wiped before the first write.
    wiped_first: bool,
    /// Writing the held-back partition table has begun.
    table_started: bool,
}

/// Why a writer stopped early.
enum Stop {
    Failed(String),
    Interrupted(String),
}

impl From<String> for Stop {
    fn from(s: String) -> Stop {
        Stop::Failed(s)
    }
}

/// `<path>: bytes <first>-<last>`.
fn place(m: &dyn Medium, a: u64, b: u64) -> String {
    format!("{}: bytes {a}-{}", m.path().display(), b - 1)
}

/// Reads written chunks back from a target and compares them with what was written.
struct Verifier {
    medium: Arc<dyn Medium>,
    retries: u32,
    verified: Arc<AtomicU64>,
    rewrites: Arc<AtomicU64>,
    activity: Arc<AtomicU64>,
    cancel: Arc<AtomicBool>,
    t0: Instant,
    buf: AlignedBuf,
}

impl Verifier {
    /// Read back every chunk of `batch` (already synced) and compare; a chunk that differs
    /// is rewritten and read again up to `retries` times.
    fn check(&mut self, batch: &[Arc<Chunk>]) -> Result<(), Stop> {
        let m = self.medium.clone();
        for c in batch {
            if self.cancel.load(Ordering::Relaxed) {
                return Err(Stop::Interrupted("interrupted".into()));
            }
            let len = c.data.as_slice().len();
            let mut tries = 0;
            loop {
                m.read_back(c.offset, len, &mut self.buf).map_err(|e| {
                    format!("reading back {}: {e}", place(m.as_ref(), c.offset, c.end()))
                })?;
                self.activity.store(ms(self.t0), Ordering::Relaxed);
                if self.buf.as_slice() == c.data.as_slice() {
                    break;
                }
                if tries == self.retries {
                    return Err(Stop::Failed(format!(
                        "{} read back wrong after {} rewrite(s): expected sha256 {}, read {}",
                        place(m.as_ref(), c.offset, c.end()),
                        tries,
                        hex::encode(Sha256::digest(c.data.as_slice())),
                        hex::encode(Sha256::digest(self.buf.as_slice()))
                    )));
                }
                tries += 1;
                self.rewrites.fetch_add(1, Ordering::Relaxed);
                m.write_at(c.offset, &c.data)
                    .and_then(|()| m.sync())
                    .map_err(|e| {
                        format!("rewriting {}: {e}", place(m.as_ref(), c.offset, c.end()))
                    })?;
            }
            self.verified.fetch_add(len as u64, Ordering::Relaxed);
        }
        Ok(())
    }
}

impl Writer {
    fn touch(&self) {
        self.activity.store(ms(self.t0), Ordering::Relaxed);
    }

    fn report(&mut self, force: bool) {
        if force || self.last_report.elapsed() >= Duration::from_millis(250) {
            self.last_report = Instant::now();
            let _ = self.events.send(Event::Progress {
                target: self.index,
                phase: self.phase,
                durable: self.durable,
                verified: self.verified.load(Ordering::Relaxed),
                total: self.total,
            });
        }
    }

    fn where_(&self, a: u64, b: u64) -> String {
        place(self.medium.as_ref(), a, b)
    }

    fn write(&mut self, c: &Chunk) -> Result<(), Stop> {
        if self.cancel.load(Ordering::Relaxed) {
            return Err(Stop::Interrupted("interrupted".into()));
        }
        if !self.touched {
            if let Some(check) = self.before_write.take() {
                check(self.medium.as_ref()).map_err(|e| format!("{e:#}"))?;
            }
            self.touched = true;
            self.medium
                .begin()
                .map_err(|e| format!("preparing {}: {e}", self.medium.path().display()))?;
            medium::wipe(self.medium.as_ref(), self.image_size).map_err(|e| {
                format!(
                    "wiping the old partition tables of {}: {e}",
                    self.medium.path().display()
                )
            })?;
            self.wiped_first = true;
        }
        self.medium
            .write_at(c.offset, &c.data)
            .map_err(|e| format!("writing {}: {e}", self.where_(c.offset, c.end())))?;
        self.touch();
        Ok(())
    }

    /// `fdatasync`: everything written so far is durable.
    fn sync(&mut self) -> Result<(), Stop> {
        self.medium
            .sync()
            .map_err(|e| format!("flushing {}: {e}", self.medium.path().display()))?;
        self.touch();
        self.durable = self.written;
        self.report(false);
        Ok(())
    }

    fn verifier(&self) -> Verifier {
        Verifier {
            medium: self.medium.clone(),
            retries: self.settings.retries,
            verified: self.verified.clone(),
            rewrites: self.rewrites.clone(),
            activity: self.activity.clone(),
            cancel: self.cancel.clone(),
            t0: self.t0,
            buf: AlignedBuf::new(super::source::CHUNK as usize),
        }
    }

    /// Write the data chunks as they arrive; every `sync_every` bytes, sync and hand the
    /// batch to the verifier thread, which reads it back while the next batch is written.
    fn write_data(&mut self) -> Result<(), Stop> {
        let failed = Arc::new(AtomicBool::new(false));
        let (btx, brx) = std::sync::mpsc::sync_channel::<Vec<Arc<Chunk>>>(1);
        let mut v = self.verifier();
        let vfailed = failed.clone();
        let checker = std::thread::spawn(move || -> Result<(), Stop> {
            for batch in brx {
                if let Err(e) = v.check(&batch) {
                    vfailed.store(true, Ordering::Relaxed);
                    return Err(e);
                }
            }
            Ok(())
        });
        let mut batch: Vec<Arc<Chunk>> = Vec::new();
        let mut pending = 0u64;
        let written = (|| -> Result<(), Stop> {
            loop {
                let msg = self.queue.pop();
                self.touch();
                if failed.load(Ordering::Relaxed) {
                    // The verifier's error is the one to report.
                    return Ok(());
                }
                match msg {
                    Some(Msg::Data(c)) => {
                        self.write(&c)?;
                        let n = c.data.as_slice().len() as u64;
                        self.written += n;
                        pending += n;
                        batch.push(c);
                        if pending >= self.settings.sync_every {
                            pending = 0;
                            self.sync()?;
                            if btx.send(std::mem::take(&mut batch)).is_err() {
                                return Ok(());
                            }
                        }
                    }
                    Some(Msg::End) => {
                        self.sync()?;
                        let _ = btx.send(std::mem::take(&mut batch));
                        return Ok(());
                    }
                    Some(Msg::Abort(why, interrupted)) => {
                        return Err(if interrupted {
                            Stop::Interrupted(why)
                        } else {
                            Stop::Failed(why)
                        })
                    }
                    Some(Msg::Commit(_)) | None => {
                        return Err(Stop::Failed("the image stream stopped early".into()))
                    }
                }
            }
        })();
        drop(btx);
        let checked = checker
            .join()
            .unwrap_or_else(|_| Err(Stop::Failed("the verifying thread failed".into())));
        checked?;
        written
    }

    /// The complement of the pieces within the image.
    fn unmapped(&self) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        let mut pos = 0;
        for &(a, b) in self.pieces.iter() {
            if a > pos {
                out.push((pos, a));
            }
            pos = b;
        }
        if pos < self.image_size {
            out.push((pos, self.image_size));
        }
        out
    }

    fn run(&mut self) -> Result<(f64, f64), Stop> {
        self.phase = Phase::Writing;
        self.report(true);
        self.write_data()?;
        let writing = self.t0.elapsed().as_secs_f64();
        self.phase = Phase::Waiting;
        self.report(true);
        let msg = self.queue.pop();
        self.touch();
        let held = match msg {
            Some(Msg::Commit(h)) => h,
            Some(Msg::Abort(why, interrupted)) => {
                return Err(if interrupted {
                    Stop::Interrupted(why)
                } else {
                    Stop::Failed(why)
                })
            }
            _ => return Err(Stop::Failed("the image stream stopped early".into())),
        };
        let t_pt = Instant::now();
        if self.settings.unmapped != Unmapped::Keep {
            for (a, b) in self.unmapped() {
                self.medium
                    .fill(a, b - a, self.settings.unmapped)
                    .map_err(|e| {
                        format!(
                            "{} the unmapped space at {}: {e} (leave it with --unmapped keep)",
                            if self.settings.unmapped == Unmapped::Zero {
                                "zeroing"
                            } else {
                                "discarding"
                            },
                            self.where_(a, b)
                        )
                    })?;
                self.touch();
            }
        }
        if !self.extra.is_empty() {
            let extra = std::mem::take(&mut self.extra);
            for c in &extra {
                self.write(c)?;
                self.written += c.data.as_slice().len() as u64;
            }
            self.sync()?;
            self.verifier().check(&extra)?;
        }
        self.phase = Phase::PartitionTable;
        self.table_started = true;
        self.report(true);
        for c in held.iter() {
            self.write(c)?;
            self.written += c.data.as_slice().len() as u64;
        }
        self.sync()?;
        self.verifier().check(&held)?;
        self.medium.reread_partitions();
        self.phase = Phase::Done;
        self.report(true);
        Ok((writing, t_pt.elapsed().as_secs_f64()))
    }

    fn finish(mut self) -> TargetResult {
        let _ = self.events.send(Event::Start {
            target: self.index,
            path: self.medium.path().display().to_string(),
            total: self.total,
        });
        let outcome = self.run();
        let mut r = TargetResult {
            bytes_written: self.written,
            bytes_verified: self.verified.load(Ordering::Relaxed),
            rewrites: self.rewrites.load(Ordering::Relaxed),
            seconds: self.t0.elapsed().as_secs_f64(),
            touched: self.touched,
            ..Default::default()
        };
        match outcome {
            Ok((w, p)) => {
                r.ok = true;
                r.seconds_writing = w;
                r.seconds_partition_table = p;
                let _ = self.events.send(Event::Verified {
                    target: self.index,
                    bytes: r.bytes_verified,
                    seconds: r.seconds,
                });
            }
            Err(stop) => {
                self.queue.close();
                let (msg, interrupted) = match stop {
                    Stop::Failed(m) => (m, false),
                    Stop::Interrupted(m) => (m, true),
                };
                // Nothing written yet: the old content (and its partition table) is intact.
                // Otherwise wipe again; a target that cannot even be wiped still has no valid
                // table if it failed before the held-back table was written.
                let wiped = self.touched
                    && (medium::wipe(self.medium.as_ref(), self.image_size).is_ok()
                        || (self.wiped_first && !self.table_started));
                r.error = Some(msg.clone());
                r.interrupted = interrupted;
                r.wiped = wiped;
                let _ = self.events.send(Event::Failed {
                    target: self.index,
                    error: msg,
                    partition_table_wiped: wiped,
                });
            }
        }
        r
    }
}

/// Write `image` to every job's medium. Returns one result per job (same order) and the
/// source's error, if the image itself turned out wrong.
pub fn run(
    image: &Image,
    jobs: Vec<Job>,
    settings: &Settings,
    events: Sender<Event>,
    cancel: Arc<AtomicBool>,
) -> (Vec<TargetResult>, Option<String>) {
    let t0 = Instant::now();
    let pieces = Arc::new(image.pieces.clone());
    let total = image.mapped_bytes();
    let n = jobs.len();
    let mut queues = Vec::new();
    let mut activity = Vec::new();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<(usize, TargetResult)>();
    for (index, job) in jobs.into_iter().enumerate() {
        let queue = Arc::new(Queue::new(settings.queue));
        let act = Arc::new(AtomicU64::new(0));
        let w = Writer {
            index,
            medium: Arc::from(job.medium),
            before_write: job.before_write,
            extra: job.extra.into_iter().map(Arc::new).collect(),
            queue: queue.clone(),
            events: events.clone(),
            settings: settings.clone(),
            image_size: image.size,
            total,
            pieces: pieces.clone(),
            cancel: cancel.clone(),
            activity: act.clone(),
            t0,
            written: 0,
            durable: 0,
            verified: Arc::new(AtomicU64::new(0)),
            rewrites: Arc::new(AtomicU64::new(0)),
            last_report: Instant::now(),
            phase: Phase::Preparing,
            touched: false,
            wiped_first: false,
            table_started: false,
        };
        let done_tx = done_tx.clone();
        // Not scoped: a writer stuck in the kernel on a dead device is left behind.
        std::thread::spawn(move || {
            let r = w.finish();
            let _ = done_tx.send((index, r));
        });
        queues.push(queue);
        activity.push(act);
    }
    drop(done_tx);

    // The hasher proves the stream against the digests as it passes.
    let hq: Arc<Queue<Arc<Chunk>>> = Arc::new(Queue::new(settings.queue * 2));
    let expected = image.expected.clone();
    let hasher = {
        let hq = hq.clone();
        std::thread::spawn(move || -> Option<String> {
            let wins: Vec<(u64, u64)> = expected.iter().map(|e| (e.start, e.end)).collect();
            let mut h = WindowHasher::new(wins);
            while let Some(c) = hq.pop() {
                h.update(c.offset, c.data.as_slice());
            }
            let sums = h.finish();
            let bad: Vec<String> = expected
                .iter()
                .zip(sums)
                .filter(|(e, s)| &e.sha256 != s)
                .map(|(e, s)| {
                    format!(
                        "{} (bytes {}-{}): expected sha256 {}, the image has {s}",
                        e.place,
                        e.start,
                        e.end - 1,
                        e.sha256
                    )
                })
                .collect();
            (!bad.is_empty()).then(|| {
                format!(
                    "the image does not match its {}: {} of {} ranges differ, first {}",
                    "digests",
                    bad.len(),
                    expected.len(),
                    bad[0]
                )
            })
        })
    };

    let mut live = vec![true; n];
    let mut stalled: Vec<Option<String>> = vec![None; n];
    let mut held_back: Vec<Arc<Chunk>> = Vec::new();
    let streamed = image.stream(settings.workers, &mut |chunk| {
        if cancel.load(Ordering::Relaxed) {
            return Ok(false);
        }
        let c = Arc::new(chunk);
        let _ = hq.push(c.clone(), None);
        if held(c.offset, image.size) {
            held_back.push(c);
            return Ok(true);
        }
        for i in 0..n {
            if !live[i] {
                continue;
            }
            match queues[i].push(Msg::Data(c.clone()), Some(settings.stall)) {
                Ok(()) => {}
                Err(PushError::Closed) => live[i] = false,
                Err(PushError::Timeout) => {
                    live[i] = false;
                    stalled[i] = Some(format!(
                        "the target made no progress for {} s (stalled or unplugged); dropped",
                        settings.stall.as_secs()
                    ));
                    queues[i].close();
                }
            }
        }
        Ok(live.iter().any(|&l| l))
    });
    hq.close();
    for (i, q) in queues.iter().enumerate() {
        if live[i] {
            let _ = q.push(Msg::End, None);
        }
    }
    let mismatch = hasher
        .join()
        .unwrap_or_else(|_| Some("the hashing thread failed".into()));
    let source_error = match streamed {
        Err(e) => Some(format!("{e:#}")),
        Ok(()) if cancel.load(Ordering::Relaxed) => None,
        Ok(()) if !live.iter().any(|&l| l) => None,
        Ok(()) => mismatch,
    };
    let interrupted = cancel.load(Ordering::Relaxed);
    let held_back = Arc::new(held_back);
    for (i, q) in queues.iter().enumerate() {
        if !live[i] {
            continue;
        }
        let msg = if interrupted {
            Msg::Abort("interrupted".into(), true)
        } else if let Some(e) = &source_error {
            Msg::Abort(format!("not finished: {e}"), false)
        } else {
            Msg::Commit(held_back.clone())
        };
        activity[i].store(ms(t0), Ordering::Relaxed);
        let _ = q.push(msg, None);
        q.close();
    }

    // Collect; a writer that stops making progress is given up on.
    let mut results: Vec<Option<TargetResult>> = vec![None; n];
    for (i, s) in stalled.iter().enumerate() {
        if let Some(why) = s {
            let _ = events.send(Event::Failed {
                target: i,
                error: why.clone(),
                partition_table_wiped: false,
            });
            results[i] = Some(TargetResult {
                error: Some(why.clone()),
                ..Default::default()
            });
        }
    }
    while results.iter().any(Option::is_none) {
        match done_rx.recv_timeout(Duration::from_millis(500)) {
            Ok((i, r)) => {
                if results[i].is_none() {
                    results[i] = Some(r);
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                let now = ms(t0);
                for i in 0..n {
                    let quiet = now.saturating_sub(activity[i].load(Ordering::Relaxed));
                    let limit = if cancel.load(Ordering::Relaxed) {
                        5000
                    } else {
                        settings.stall.as_millis() as u64
                    };
                    if results[i].is_none() && quiet > limit {
                        let why = format!(
                            "the target stopped responding ({} s without progress); given up",
                            quiet / 1000
                        );
                        let _ = events.send(Event::Failed {
                            target: i,
                            error: why.clone(),
                            partition_table_wiped: false,
                        });
                        queues[i].close();
                        results[i] = Some(TargetResult {
                            error: Some(why),
                            interrupted: cancel.load(Ordering::Relaxed),
                            ..Default::default()
                        });
                    }
                }
            }
        }
    }
    let results = results
        .into_iter()
        .map(|r| {
            r.unwrap_or_else(|| TargetResult {
                error: Some("the writer ended without a result".into()),
                ..Default::default()
            })
        })
        .collect();
    (results, source_error)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flash::source::SourceOptions;
    use std::path::{Path, PathBuf};

    /// A simulated disk in memory: fails writes after `fail_after` bytes, flips a bit in the
    /// first `corrupt_reads` reads.
    struct Mem {
        path: PathBuf,
        data: Arc<Mutex<Vec<u8>>>,
        fail_after: Option<u64>,
        written: AtomicU64,
        corrupt_reads: Mutex<u32>,
    }

    impl Mem {
        fn new(size: usize) -> (Mem, Arc<Mutex<Vec<u8>>>) {
            let data = Arc::new(Mutex::new(vec![0xAAu8; size]));
            (
                Mem {
                    path: PathBuf::from("/sim/disk"),
                    data: data.clone(),
                    fail_after: None,
                    written: AtomicU64::new(0),
                    corrupt_reads: Mutex::new(0),
                },
                data,
            )
        }
    }

    impl Medium for Mem {
        fn path(&self) -> &Path {
            &self.path
        }
        fn size(&self) -> u64 {
            self.data.lock().unwrap().len() as u64
        }
        fn write_at(&self, offset: u64, data: &AlignedBuf) -> std::io::Result<()> {
            let b = data.as_slice();
            let before = self.written.fetch_add(b.len() as u64, Ordering::Relaxed);
            if let Some(n) = self.fail_after {
                if before + b.len() as u64 > n {
                    return Err(std::io::Error::from_raw_os_error(libc::EIO));
                }
            }
            let mut d = self.data.lock().unwrap();
            d[offset as usize..offset as usize + b.len()].copy_from_slice(b);
            Ok(())
        }
        fn sync(&self) -> std::io::Result<()> {
            Ok(())
        }
        fn read_back(&self, offset: u64, len: usize, buf: &mut AlignedBuf) -> std::io::Result<()> {
            buf.set_len(len);
            let d = self.data.lock().unwrap();
            buf.as_mut_slice()
                .copy_from_slice(&d[offset as usize..offset as usize + len]);
            let mut c = self.corrupt_reads.lock().unwrap();
            if *c > 0 {
                *c -= 1;
                buf.as_mut_slice()[len / 2] ^= 1;
            }
            Ok(())
        }
        fn fill(&self, offset: u64, len: u64, _: Unmapped) -> std::io::Result<()> {
            let mut d = self.data.lock().unwrap();
            d[offset as usize..(offset + len) as usize].fill(0);
            Ok(())
        }
    }

    /// A 24 MiB plain raw image: noise with a zero gap, "EFI PART" at 512.
    fn image(dir: &Path) -> (Image, Vec<u8>) {
        let mut v: Vec<u8> = (0..24u32 << 20)
            .map(|i| (i.wrapping_mul(2654435761) >> 11) as u8)
            .collect();
        v[512..520].copy_from_slice(b"EFI PART");
        v[5 << 20..9 << 20].fill(0);
        let p = dir.join("img.raw");
        std::fs::write(&p, &v).unwrap();
        let opts = SourceOptions {
            allow_unsigned: true,
            ..Default::default()
        };
        (Image::open(&p, &opts).unwrap(), v)
    }

    fn settings() -> Settings {
        Settings {
            sync_every: 4 << 20,
            stall: Duration::from_secs(20),
            workers: 2,
            ..Default::default()
        }
    }

    fn go(img: &Image, media: Vec<Mem>) -> (Vec<TargetResult>, Option<String>, Vec<Event>) {
        let jobs = media
            .into_iter()
            .map(|m| Job {
                medium: Box::new(m) as Box<dyn Medium>,
                extra: Vec::new(),
                before_write: None,
            })
            .collect();
        let (tx, rx) = std::sync::mpsc::channel();
        let (r, e) = run(img, jobs, &settings(), tx, Arc::new(AtomicBool::new(false)));
        (r, e, rx.try_iter().collect())
    }

    #[test]
    fn a_failing_disk_does_not_stop_the_others_and_is_left_without_gpt() {
        let d = tempfile::tempdir().unwrap();
        let (img, want) = image(d.path());
        let (good, good_data) = Mem::new(32 << 20);
        let (mut bad, bad_data) = Mem::new(32 << 20);
        bad.fail_after = Some(10 << 20);
        let (r, src, events) = go(&img, vec![good, bad]);
        assert!(src.is_none());
        assert!(r[0].ok, "{:?}", r[0]);
        assert_eq!(&good_data.lock().unwrap()[..24 << 20], &want[..]);
        assert!(!r[1].ok);
        let err = r[1].error.clone().unwrap();
        assert!(err.contains("/sim/disk: bytes"), "{err}");
        assert!(r[1].wiped);
        let bad = bad_data.lock().unwrap();
        assert!(bad[..1 << 20].iter().all(|&b| b == 0), "no MBR/GPT left");
        assert!(events
            .iter()
            .any(|e| matches!(e, Event::Failed { target: 1, .. })));
        assert!(events
            .iter()
            .any(|e| matches!(e, Event::Verified { target: 0, .. })));
    }

    #[test]
    fn a_chunk_that_reads_back_wrong_is_rewritten_or_fails_with_digests() {
        let d = tempfile::tempdir().unwrap();
        let (img, want) = image(d.path());
        let (mut flaky, data) = Mem::new(24 << 20);
        flaky.corrupt_reads = Mutex::new(1);
        let (mut broken, _) = Mem::new(24 << 20);
        broken.corrupt_reads = Mutex::new(1000);
        let (r, _, _) = go(&img, vec![flaky, broken]);
        assert!(r[0].ok, "{:?}", r[0]);
        assert_eq!(r[0].rewrites, 1);
        assert_eq!(&data.lock().unwrap()[..], &want[..]);
        let e = r[1].error.clone().unwrap();
        assert!(
            e.contains("read back wrong after 2 rewrite(s): expected sha256"),
            "{e}"
        );
    }

    #[test]
    fn each_target_gets_its_own_extra_content_verified() {
        let d = tempfile::tempdir().unwrap();
        let (img, want) = image(d.path());
        let (a, a_data) = Mem::new(24 << 20);
        let (b, b_data) = Mem::new(24 << 20);
        let extra = |tag: u8| {
            let mut buf = AlignedBuf::new(4096);
            buf.as_mut_slice().fill(tag);
            vec![Chunk {
                offset: 6 << 20,
                data: buf,
            }]
        };
        let jobs = vec![
            Job {
                medium: Box::new(a),
                extra: extra(1),
                before_write: None,
            },
            Job {
                medium: Box::new(b),
                extra: extra(2),
                before_write: None,
            },
        ];
        let (tx, _rx) = std::sync::mpsc::channel();
        let (r, e) = run(
            &img,
            jobs,
            &settings(),
            tx,
            Arc::new(AtomicBool::new(false)),
        );
        assert!(e.is_none() && r.iter().all(|x| x.ok), "{r:?}");
        for (data, tag) in [(a_data, 1u8), (b_data, 2u8)] {
            let got = data.lock().unwrap();
            let at = 6usize << 20;
            assert!(got[at..at + 4096].iter().all(|&x| x == tag));
            assert_eq!(&got[..at], &want[..at]);
            assert_eq!(&got[at + 4096..24 << 20], &want[at + 4096..]);
        }
    }

    #[test]
    fn the_partition_table_is_written_last() {
        let d = tempfile::tempdir().unwrap();
        let (img, _) = image(d.path());
        let (m, _) = Mem::new(24 << 20);
        let (tx, rx) = std::sync::mpsc::channel();
        // Record the order of writes through a wrapper.
        struct Order(Mem, Arc<Mutex<Vec<u64>>>);
        impl Medium for Order {
            fn path(&self) -> &Path {
                self.0.path()
            }
            fn size(&self) -> u64 {
                self.0.size()
            }
            fn write_at(&self, o: u64, d: &AlignedBuf) -> std::io::Result<()> {
                if d.as_slice().iter().any(|&b| b != 0) {
                    self.1.lock().unwrap().push(o);
                }
                self.0.write_at(o, d)
            }
            fn sync(&self) -> std::io::Result<()> {
                Ok(())
            }
            fn read_back(&self, o: u64, l: usize, b: &mut AlignedBuf) -> std::io::Result<()> {
                self.0.read_back(o, l, b)
            }
            fn fill(&self, o: u64, l: u64, h: Unmapped) -> std::io::Result<()> {
                self.0.fill(o, l, h)
            }
        }
        let order = Arc::new(Mutex::new(Vec::new()));
        let jobs = vec![Job {
            medium: Box::new(Order(m, order.clone())),
            extra: Vec::new(),
            before_write: None,
        }];
        let (r, _) = run(
            &img,
            jobs,
            &settings(),
            tx,
            Arc::new(AtomicBool::new(false)),
        );
        drop(rx);
        assert!(r[0].ok);
        let o = order.lock().unwrap();
        let n = o.len();
        // The last two writes are the first and the last MiB.
        assert_eq!(o[n - 2], 0, "{o:?}");
        assert_eq!(o[n - 1], 23 << 20, "{o:?}");
        assert!(o[..n - 2].iter().all(|x| (1 << 20..23 << 20).contains(x)));
    }

    #[test]
    fn interrupting_leaves_targets_without_partition_table() {
        let d = tempfile::tempdir().unwrap();
        let (img, _) = image(d.path());
        let (m, data) = Mem::new(24 << 20);
        let (tx, _rx) = std::sync::mpsc::channel();
        let cancel = Arc::new(AtomicBool::new(true));
        let jobs = vec![Job {
            medium: Box::new(m),
            extra: Vec::new(),
            before_write: None,
        }];
        let (r, _) = run(&img, jobs, &settings(), tx, cancel);
        assert!(!r[0].ok);
        assert!(r[0].interrupted, "{:?}", r[0]);
        // Nothing was written at all: the old content is untouched.
        assert!(data.lock().unwrap().iter().all(|&b| b == 0xAA));
    }
}
