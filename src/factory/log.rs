//! The factory record log: an append-only file of JSON lines, one per device attempt.
//!
//! Each entry is one JSON object on one line with at least:
//! - `row`: the inventory id written (non-empty string);
//! - `result`: `verified` for a device written and read back, anything else (`failed`,
//!   `interrupted`, …) for an attempt that did not finish so (non-empty string);
//! - `disk_serial`: the serial number of the disk (string, or `null` when it has none);
//! - `time`: when (string, RFC 3339).
//!
//! An optional `error_kind` (string) classifies failures; without it the `result` does.
//! Other fields are kept as they are.
//!
//! [`append`] writes a whole line with one `write` on a file opened `O_APPEND`, then
//! `fdatasync`s: a crash leaves at most the last line torn, and several processes may append
//! to one log. [`read`] skips torn lines (a JSON object cut short) and reports them; any other
//! unreadable line is an error.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::fs::{OpenOptions, Permissions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use serde::Serialize;
use serde_json::Value;

use super::inventory::Inventory;

/// The `result` of a device written and verified.
pub const VERIFIED: &str = "verified";

/// One line of the log.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    /// The line of the log file (1-based).
    pub line: usize,
    /// The inventory id written.
    pub row: String,
    /// `verified`, or how the attempt ended otherwise.
    pub result: String,
    /// The serial number of the disk written, if it has one.
    pub disk_serial: Option<String>,
    /// When (RFC 3339).
    pub time: String,
    /// What kind of failure, if the entry says.
    pub error_kind: Option<String>,
    /// The whole entry as written.
    pub record: Value,
}

impl Entry {
    /// Whether the device was written and verified.
    pub fn verified(&self) -> bool {
        self.result == VERIFIED
    }

    /// The failure kind counted in [`Summary::failures_by_kind`]: `error_kind`, or else
    /// `result`. `None` for a verified entry.
    pub fn failure_kind(&self) -> Option<&str> {
        if self.verified() {
            None
        } else {
            Some(self.error_kind.as_deref().unwrap_or(&self.result))
        }
    }
}

/// A line cut short by an interrupted write, skipped by [`read`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Torn {
    /// The line of the log file (1-based).
    pub line: usize,
    /// Its length in bytes.
    pub bytes: usize,
    /// What to tell the operator: where, and that it was skipped.
    pub message: String,
}

/// What [`read`] found.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Log {
    /// The entries, in file order.
    pub entries: Vec<Entry>,
    /// Lines skipped because a write was interrupted (normally none, or the last one).
    pub torn: Vec<Torn>,
}

/// The last verified write of a row: see [`used_rows`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Written {
    /// The serial number of the disk written, if it has one.
    pub disk_serial: Option<String>,
    /// When (the entry's `time`).
    pub time: String,
}

/// Check that `value` is a log entry and take out its fields. The error names the field.
fn entry(value: &Value, line: usize) -> Result<Entry, String> {
    const NEED: &str = "every entry needs `row`, `result`, `disk_serial` and `time`";
    let Value::Object(map) = value else {
        return Err(format!("the entry is not a JSON object: {NEED}"));
    };
    let text = |field: &str| -> Result<String, String> {
        match map.get(field) {
            Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
            Some(Value::String(_)) => Err(format!("`{field}` is empty: {NEED}, non-empty")),
            Some(_) => Err(format!("`{field}` is not a string: {NEED}, as strings")),
            None => Err(format!("`{field}` is missing: {NEED}")),
        }
    };
    let optional = |field: &str, required: bool| -> Result<Option<String>, String> {
        match map.get(field) {
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(Value::Null) => Ok(None),
            None if !required => Ok(None),
            None => Err(format!(
                "`{field}` is missing: {NEED} (`disk_serial` null for a disk without one)"
            )),
            Some(_) => Err(format!("`{field}` is not a string or null")),
        }
    };
    Ok(Entry {
        line,
        row: text("row")?,
        result: text("result")?,
        disk_serial: optional("disk_serial", true)?,
        time: text("time")?,
        error_kind: optional("error_kind", false)?,
        record: value.clone(),
    })
}

/// Append `record` to the log at `path` as one line, creating the log (mode 0644) if needed.
///
/// `record` must be a log entry (see the module documentation); nothing is written
/// otherwise. When the log ends in a torn line, a line feed is written first so that the new
/// entry stands on its own line.
pub fn append(path: &Path, record: &Value) -> Result<()> {
    let shown = path.display();
    entry(record, 0).map_err(|why| {
        anyhow!("the record is not a log entry ({why}); nothing was written to {shown}")
    })?;
    let mut line = serde_json::to_vec(record).context("serialising the log entry")?;
    line.push(b'\n');

    let open = |create: bool| {
        let mut o = OpenOptions::new();
        o.read(true).append(true);
        if create {
            o.create_new(true).mode(0o644);
        }
        o.open(path)
    };
    let cannot =
        || format!("cannot open the record log {shown}: choose a writable path for the record log");
    let f = match open(true) {
        Ok(f) => {
            // The umask may have taken bits away.
            f.set_permissions(Permissions::from_mode(0o644))
                .with_context(|| format!("setting mode 0644 on the new record log {shown}"))?;
            f
        }
        Err(e) if e.kind() == ErrorKind::AlreadyExists => open(false).with_context(cannot)?,
        Err(e) => return Err(anyhow!(e).context(cannot())),
    };

    let len = f
        .metadata()
        .with_context(|| format!("reading the size of the record log {shown}"))?
        .len();
    if len > 0 {
        let mut last = [0u8];
        f.read_exact_at(&mut last, len - 1)
            .with_context(|| format!("reading the end of the record log {shown}"))?;
        if last[0] != b'\n' {
            line.insert(0, b'\n');
        }
    }

    let written = loop {
        match (&f).write(&line) {
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            r => break r,
        }
    }
    .with_context(|| format!("appending to the record log {shown}"))?;
    if written != line.len() {
        bail!(
            "only {written} of {} bytes were appended to the record log {shown} (disk full?): \
             its last line is torn and will be skipped when read; make room and write the \
             device again",
            line.len()
        );
    }
    f.sync_data()
        .with_context(|| format!("syncing the record log {shown}"))?;
    Ok(())
}

/// The longest line read: a record is a few hundred bytes.
pub const MAX_LINE: usize = 1 << 20;
/// Torn lines listed one by one; more are counted.
const MAX_TORN: usize = 100;

/// Read the log at `path`. A log that does not exist yet has no entries.
///
/// Torn lines (a JSON object cut short, or a last line without line feed that is not JSON)
/// are skipped and listed in [`Log::torn`]. Any other line that is not an entry is an error
/// naming the line.
pub fn read(path: &Path) -> Result<Log> {
    let mut log = Log::default();
    log.torn = scan(path, &mut |e| {
        log.entries.push(e);
        Ok(())
    })?;
    Ok(log)
}

/// Stream the log at `path` line by line, handing each entry to `visit` (memory stays at one
/// line, whatever the log's size); returns the torn lines (see [`read`]). A log that does not
/// exist yet has no entries.
pub fn scan(path: &Path, visit: &mut dyn FnMut(Entry) -> Result<()>) -> Result<Vec<Torn>> {
    use std::io::BufRead;
    let shown = path.display();
    let input = match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        _ => crate::input::open(path, crate::input::Kind::RecordLog)?,
    };
    let mut r = std::io::BufReader::with_capacity(1 << 16, input.reader());
    let mut torn = Vec::new();
    let mut torn_count = 0usize;
    let mut buf = Vec::new();
    let mut line = 0usize;
    loop {
        buf.clear();
        let n = std::io::Read::take(&mut r, MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut buf)
            .with_context(|| format!("reading the record log {shown}"))?;
        if n == 0 {
            break;
        }
        line += 1;
        let ends_with_newline = buf.last() == Some(&b'\n');
        if !ends_with_newline && buf.len() > MAX_LINE {
            bail!(
                "{shown}:{line}: a line longer than {} MiB: this is not a record log (records \
                 are a few hundred bytes); move the file aside",
                MAX_LINE >> 20
            );
        }
        let piece = buf.strip_suffix(b"\n").unwrap_or(&buf);
        let piece = piece.strip_suffix(b"\r").unwrap_or(piece);
        if piece.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match serde_json::from_slice::<Value>(piece) {
            Ok(v) => visit(entry(&v, line).map_err(|why| {
                anyhow!(
                    "{shown}:{line}: {why}: the log is damaged; correct the line or move it \
                     to another file"
                )
            })?)?,
            Err(e) => {
                let is_torn = !ends_with_newline
                    || e.classify() == serde_json::error::Category::Eof
                    || piece.contains(&0);
                if !is_torn {
                    bail!(
                        "{shown}:{line}: not a JSON entry (column {}: {}): the log is damaged; \
                         correct the line or move it to another file",
                        e.column(),
                        crate::input::redact(&e.to_string())
                    );
                }
                torn_count += 1;
                if torn.len() < MAX_TORN {
                    torn.push(Torn {
                        line,
                        bytes: piece.len(),
                        message: format!(
                            "{shown}:{line}: a torn entry ({} bytes, cut short by an \
                             interrupted write) was skipped: the device it was for counts as \
                             not written",
                            piece.len()
                        ),
                    });
                }
            }
        }
    }
    if torn_count > torn.len() {
        torn.push(Torn {
            line,
            bytes: 0,
            message: format!(
                "{shown}: {} more torn entries were skipped (the log is badly damaged)",
                torn_count - torn.len()
            ),
        });
    }
    Ok(torn)
}

/// The rows of the log at `path` with a verified entry, with their last verified write
/// (streamed, see [`scan`]).
pub fn used_rows(path: &Path) -> Result<BTreeMap<String, Written>> {
    let mut used = BTreeMap::new();
    scan(path, &mut |e| {
        if e.verified() {
            used.insert(
                e.row,
                Written {
                    disk_serial: e.disk_serial,
                    time: e.time,
                },
            );
        }
        Ok(())
    })?;
    Ok(used)
}

/// Totals over a log, for the operator (see [`Summary::render`]) or as JSON.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// Entries in the log.
    pub entries: usize,
    /// Verified entries: devices written and verified.
    pub devices_verified: usize,
    /// Distinct rows with a verified entry.
    pub rows_verified: usize,
    /// Entries that are not verified.
    pub failed_attempts: usize,
    /// Rows with more than one verified entry: two devices carry the same values. Must be
    /// empty.
    pub rows_verified_twice: Vec<String>,
    /// Rows with failed attempts and no verified entry.
    pub rows_failed_never_verified: Vec<String>,
    /// Failed attempts by [`Entry::failure_kind`].
    pub failures_by_kind: BTreeMap<String, usize>,
    /// Rows in the inventory, when one was given.
    pub inventory_rows: Option<usize>,
    /// Inventory rows without a verified entry, in inventory order (when an inventory was
    /// given).
    pub rows_not_written: Option<Vec<String>>,
    /// Rows of the log that the inventory does not have (when an inventory was given).
    pub rows_not_in_inventory: Option<Vec<String>>,
}

/// Count `entries`; with `inventory`, also which of its rows are not written yet.
pub fn summarize(entries: &[Entry], inventory: Option<&Inventory>) -> Summary {
    let mut t = Tally::default();
    for e in entries {
        t.add(e);
    }
    t.summary(inventory)
}

/// [`summarize`] entry by entry (with [`scan`], a log of any size is summarized in memory
/// that grows with its distinct rows only).
#[derive(Default)]
pub struct Tally {
    entries: usize,
    verified: BTreeMap<String, usize>,
    failed: BTreeSet<String>,
    failures_by_kind: BTreeMap<String, usize>,
}

impl Tally {
    pub fn add(&mut self, e: &Entry) {
        self.entries += 1;
        match e.failure_kind() {
            None => *self.verified.entry(e.row.clone()).or_default() += 1,
            Some(kind) => {
                if !self.failed.contains(&e.row) {
                    self.failed.insert(e.row.clone());
                }
                *self.failures_by_kind.entry(kind.to_string()).or_default() += 1;
            }
        }
    }

    pub fn summary(self, inventory: Option<&Inventory>) -> Summary {
        let Tally {
            entries,
            verified,
            failed,
            failures_by_kind,
        } = self;
        let (inventory_rows, rows_not_written, rows_not_in_inventory) = match inventory {
            Some(inv) => {
                let known: BTreeSet<&str> = inv.rows().iter().map(|r| r.id()).collect();
                let not_written = inv
                    .rows()
                    .iter()
                    .map(|r| r.id())
                    .filter(|id| !verified.contains_key(*id))
                    .map(str::to_string)
                    .collect();
                let unknown = verified
                    .keys()
                    .chain(failed.iter())
                    .filter(|r| !known.contains(r.as_str()))
                    .cloned()
                    .collect::<BTreeSet<String>>()
                    .into_iter()
                    .collect();
                (Some(inv.rows().len()), Some(not_written), Some(unknown))
            }
            None => (None, None, None),
        };
        Summary {
            entries,
            devices_verified: verified.values().sum(),
            rows_verified: verified.len(),
            failed_attempts: failures_by_kind.values().sum(),
            rows_verified_twice: verified
                .iter()
                .filter(|(_, &n)| n > 1)
                .map(|(r, _)| r.clone())
                .collect(),
            rows_failed_never_verified: failed
                .iter()
                .filter(|r| !verified.contains_key(*r))
                .cloned()
                .collect(),
            failures_by_kind,
            inventory_rows,
            rows_not_written,
            rows_not_in_inventory,
        }
    }
}

/// At most this many row ids are listed in one line of [`Summary::render`].
const LISTED: usize = 8;

fn list(ids: &[String]) -> String {
    let mut s = ids
        .iter()
        .take(LISTED)
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(", ");
    if ids.len() > LISTED {
        let _ = write!(s, ", … ({} more)", ids.len() - LISTED);
    }
    s
}

impl Summary {
    /// Whether nothing needs attention: no row was verified twice.
    pub fn ok(&self) -> bool {
        self.rows_verified_twice.is_empty()
    }

    /// A table for the operator, one count per line, with the row ids where they matter.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut line = |label: &str, n: usize, ids: Option<&[String]>| {
            let _ = write!(out, "{label:<30}{n:>7}");
            if let Some(ids) = ids.filter(|i| !i.is_empty()) {
                let _ = write!(out, "   {}", list(ids));
            }
            out.push('\n');
        };
        line("entries in the log", self.entries, None);
        line("devices verified", self.devices_verified, None);
        line("rows verified", self.rows_verified, None);
        line("failed attempts", self.failed_attempts, None);
        line(
            "rows verified twice",
            self.rows_verified_twice.len(),
            Some(&self.rows_verified_twice),
        );
        line(
            "rows failed, never verified",
            self.rows_failed_never_verified.len(),
            Some(&self.rows_failed_never_verified),
        );
        if let Some(n) = self.inventory_rows {
            line("inventory rows", n, None);
        }
        if let Some(ids) = &self.rows_not_written {
            line("rows not yet written", ids.len(), Some(ids));
        }
        if let Some(ids) = self
            .rows_not_in_inventory
            .as_ref()
            .filter(|i| !i.is_empty())
        {
            line("rows not in the inventory", ids.len(), Some(ids));
        }
        if !self.failures_by_kind.is_empty() {
            out.push_str("failures by kind\n");
            for (kind, n) in &self.failures_by_kind {
                let _ = writeln!(out, "  {:<28}{n:>7}", kind.escape_debug().to_string());
            }
        }
        if !self.ok() {
            let _ = writeln!(
                out,
                "ATTENTION: rows verified twice must be 0: {} ({}) went to more than one \
                 device, which now carry the same values; find those devices by the log and \
                 rewrite all but one with their own rows",
                self.rows_verified_twice.len(),
                list(&self.rows_verified_twice)
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::os::unix::fs::MetadataExt;

    fn rec(row: &str, result: &str, serial: Option<&str>, time: &str) -> Value {
        json!({"row": row, "result": result, "disk_serial": serial, "time": time})
    }

    #[test]
    fn append_then_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.jsonl");
        assert_eq!(read(&path).unwrap(), Log::default());

        append(
            &path,
            &rec("r1", "verified", Some("S1"), "2026-01-01T00:00:00Z"),
        )
        .unwrap();
        let mut failed = rec("r2", "failed", None, "2026-01-01T00:01:00Z");
        failed["error_kind"] = json!("read-back-mismatch");
        failed["bytes_written"] = json!(4096);
        append(&path, &failed).unwrap();

        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o7777, 0o644);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 2);
        assert!(text.ends_with('\n'));

        let log = read(&path).unwrap();
        assert!(log.torn.is_empty());
        assert_eq!(log.entries.len(), 2);
        let (a, b) = (&log.entries[0], &log.entries[1]);
        assert_eq!(
            (
                a.line,
                a.row.as_str(),
                a.result.as_str(),
                a.disk_serial.as_deref()
            ),
            (1, "r1", "verified", Some("S1"))
        );
        assert!(a.verified() && a.failure_kind().is_none());
        assert_eq!((b.line, b.disk_serial.as_deref()), (2, None));
        assert_eq!(b.failure_kind(), Some("read-back-mismatch"));
        assert_eq!(b.record["bytes_written"], json!(4096));
    }

    #[test]
    fn append_refuses_what_is_not_an_entry() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.jsonl");
        let mut no_serial = rec("r1", "verified", None, "T");
        no_serial.as_object_mut().unwrap().remove("disk_serial");
        let cases = [
            (json!(["r1"]), "the entry is not a JSON object"),
            (
                json!({"result": "verified", "disk_serial": null, "time": "T"}),
                "`row` is missing",
            ),
            (rec("", "verified", None, "T"), "`row` is empty"),
            (
                json!({"row": 7, "result": "verified", "disk_serial": null, "time": "T"}),
                "`row` is not a string",
            ),
            (
                json!({"row": "r1", "result": "verified", "disk_serial": 5, "time": "T"}),
                "`disk_serial` is not a string or null",
            ),
            (no_serial, "`disk_serial` is missing"),
            (
                json!({"row": "r1", "result": "verified", "disk_serial": null}),
                "`time` is missing",
            ),
        ];
        for (value, want) in cases {
            let e = format!("{:#}", append(&path, &value).unwrap_err());
            assert!(e.starts_with("the record is not a log entry ("), "{e}");
            assert!(e.contains(want), "{value}: {e}");
            assert!(
                e.ends_with(&format!("nothing was written to {}", path.display())),
                "{e}"
            );
        }
        assert!(!path.exists());
    }

    #[test]
    fn torn_last_line_is_reported_and_the_next_entry_stands_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.jsonl");
        append(&path, &rec("r1", "verified", Some("S1"), "T1")).unwrap();
        append(&path, &rec("r2", "verified", Some("S2"), "T2")).unwrap();
        // An interrupted third write: half a line, no line feed.
        let third = serde_json::to_string(&rec("r3", "verified", Some("S3"), "T3")).unwrap();
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&third.as_bytes()[..20]).unwrap();
        drop(f);

        let log = read(&path).unwrap();
        assert_eq!(
            log.entries
                .iter()
                .map(|e| e.row.as_str())
                .collect::<Vec<_>>(),
            ["r1", "r2"]
        );
        assert_eq!(log.torn.len(), 1);
        assert_eq!((log.torn[0].line, log.torn[0].bytes), (3, 20));
        assert!(log.torn[0]
            .message
            .starts_with(&format!("{}:3: a torn entry (20 bytes", path.display())));

        // The next entry gets its own line; the torn one stays skipped, in the middle now.
        append(&path, &rec("r3", "verified", Some("S3"), "T3")).unwrap();
        let log = read(&path).unwrap();
        assert_eq!(
            log.entries
                .iter()
                .map(|e| (e.line, e.row.as_str()))
                .collect::<Vec<_>>(),
            [(1, "r1"), (2, "r2"), (4, "r3")]
        );
        assert_eq!(log.torn.iter().map(|t| t.line).collect::<Vec<_>>(), [3]);

        // A torn last line that happens to end in a line feed, and zeros from a crash.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"row\":\"r4\",\"res\n\0\0\0\0").unwrap();
        drop(f);
        let log = read(&path).unwrap();
        assert_eq!(log.entries.len(), 3);
        assert_eq!(
            log.torn.iter().map(|t| t.line).collect::<Vec<_>>(),
            [3, 5, 6]
        );
    }

    #[test]
    fn damaged_lines_are_errors_with_their_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.jsonl");
        let good = serde_json::to_string(&rec("r1", "verified", None, "T")).unwrap();
        let cases = [
            (
                format!("{good}\nnot json\n{good}\n"),
                ":2: not a JSON entry (",
            ),
            (
                format!("{good}\n\n{good}\n[1]\n"),
                ":4: the entry is not a JSON object",
            ),
            (
                format!("{good}\n{{\"row\":\"r2\",\"result\":\"verified\",\"time\":\"T\"}}\n"),
                ":2: `disk_serial` is missing",
            ),
            (format!("{good}}}\n"), ":1: not a JSON entry ("),
        ];
        for (text, want) in cases {
            std::fs::write(&path, &text).unwrap();
            let e = format!("{:#}", read(&path).unwrap_err());
            assert!(
                e.starts_with(&format!("{}{want}", path.display())),
                "{text:?}: {e}"
            );
            assert!(e.contains("the log is damaged; correct the line"), "{e}");
        }
        // Empty lines and CRLF are fine.
        std::fs::write(&path, format!("\n{good}\r\n\n{good}")).unwrap();
        let log = read(&path).unwrap();
        assert_eq!(
            log.entries.iter().map(|e| e.line).collect::<Vec<_>>(),
            [2, 4]
        );
        assert!(log.torn.is_empty());
    }

    #[test]
    fn used_rows_are_the_verified_ones_with_their_last_write() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("log.jsonl");
        for v in [
            rec("r1", "failed", Some("S0"), "T0"),
            rec("r1", "verified", Some("S1"), "T1"),
            rec("r2", "failed", Some("S2"), "T2"),
            rec("r3", "verified", None, "T3"),
            rec("r1", "verified", Some("S9"), "T9"),
        ] {
            append(&path, &v).unwrap();
        }
        let used = used_rows(&path).unwrap();
        assert_eq!(used.keys().collect::<Vec<_>>(), ["r1", "r3"]);
        assert_eq!(
            used["r1"],
            Written {
                disk_serial: Some("S9".into()),
                time: "T9".into()
            }
        );
        assert_eq!(used["r3"].disk_serial, None);
    }

    fn inventory(n: usize) -> Inventory {
        let mut text = String::from("id,hostname\n");
        for i in 1..=n {
            text.push_str(&format!("r{i:02},edge-{i}\n"));
        }
        Inventory::parse(Path::new("inv.csv"), text.as_bytes()).unwrap()
    }

    /// 20 rows: 17 verified at once, 2 verified after a failure, 1 failed only.
    fn factory_day(path: &Path) -> Vec<Entry> {
        for i in 1..=17 {
            append(
                path,
                &rec(&format!("r{i:02}"), "verified", Some(&format!("S{i}")), "T"),
            )
            .unwrap();
        }
        let mut mismatch = rec("r18", "failed", Some("S18"), "T");
        mismatch["error_kind"] = json!("read-back-mismatch");
        append(path, &mismatch).unwrap();
        append(path, &rec("r18", "verified", Some("S18b"), "T")).unwrap();
        append(path, &rec("r19", "interrupted", Some("S19"), "T")).unwrap();
        append(path, &rec("r19", "verified", Some("S19"), "T")).unwrap();
        mismatch["row"] = json!("r20");
        append(path, &mismatch).unwrap();
        read(path).unwrap().entries
    }

    #[test]
    fn summary_of_a_factory_day() {
        let dir = tempfile::tempdir().unwrap();
        let entries = factory_day(&dir.path().join("log.jsonl"));
        assert_eq!(entries.len(), 22);
        let inv = inventory(20);
        let s = summarize(&entries, Some(&inv));
        assert_eq!(
            s,
            Summary {
                entries: 22,
                devices_verified: 19,
                rows_verified: 19,
                failed_attempts: 3,
                rows_verified_twice: vec![],
                rows_failed_never_verified: vec!["r20".into()],
                failures_by_kind: [
                    ("interrupted".to_string(), 1),
                    ("read-back-mismatch".to_string(), 2)
                ]
                .into_iter()
                .collect(),
                inventory_rows: Some(20),
                rows_not_written: Some(vec!["r20".into()]),
                rows_not_in_inventory: Some(vec![]),
            }
        );
        assert!(s.ok());
        let table = s.render();
        for line in [
            "entries in the log                 22",
            "devices verified                   19",
            "failed attempts                     3",
            "rows verified twice                 0",
            "rows failed, never verified         1   r20",
            "inventory rows                     20",
            "rows not yet written                1   r20",
            "failures by kind",
            "  interrupted                       1",
            "  read-back-mismatch                2",
        ] {
            assert!(
                table.lines().any(|l| l == line),
                "missing {line:?} in\n{table}"
            );
        }
        assert!(!table.contains("ATTENTION"), "{table}");
        let j = serde_json::to_value(&s).unwrap();
        assert_eq!(j["devices_verified"], json!(19));
        assert_eq!(j["failed_attempts"], json!(3));
        assert_eq!(j["rows_verified_twice"], json!([]));
        assert_eq!(j["rows_not_written"], json!(["r20"]));
        assert_eq!(j["failures_by_kind"]["read-back-mismatch"], json!(2));

        // Without an inventory: no inventory lines.
        let s = summarize(&entries, None);
        assert_eq!(
            (s.inventory_rows, s.rows_not_written.as_ref()),
            (None, None)
        );
        assert!(!s.render().contains("inventory"));
        assert_eq!(
            serde_json::to_value(&s).unwrap()["rows_not_written"],
            json!(null)
        );
    }

    #[test]
    fn a_row_verified_twice_is_flagged() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.jsonl");
        let mut entries = factory_day(&path);
        append(&path, &rec("r05", "verified", Some("S99"), "T")).unwrap();
        append(&path, &rec("r77", "verified", Some("S77"), "T")).unwrap();
        entries = {
            let all = read(&path).unwrap().entries;
            assert_eq!(all.len(), entries.len() + 2);
            all
        };
        let s = summarize(&entries, Some(&inventory(20)));
        assert_eq!(s.rows_verified_twice, ["r05"]);
        assert_eq!(s.devices_verified, 21);
        assert_eq!(s.rows_verified, 20);
        assert_eq!(s.rows_not_in_inventory, Some(vec!["r77".to_string()]));
        assert!(!s.ok());
        let table = s.render();
        assert!(
            table
                .lines()
                .any(|l| l == "rows verified twice                 1   r05"),
            "{table}"
        );
        assert!(
            table
                .lines()
                .any(|l| l == "rows not in the inventory           1   r77"),
            "{table}"
        );
        assert!(
            table.contains("ATTENTION: rows verified twice must be 0: 1 (r05)"),
            "{table}"
        );
    }

    #[test]
    fn long_id_lists_are_cut() {
        let ids: Vec<String> = (1..=10).map(|i| format!("r{i}")).collect();
        assert_eq!(list(&ids), "r1, r2, r3, r4, r5, r6, r7, r8, … (2 more)");
        assert_eq!(list(&ids[..2]), "r1, r2");
    }
}
