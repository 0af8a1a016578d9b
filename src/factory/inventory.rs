//! The factory inventory: one row per device, with the values rendered into its
//! personalization slots.
//!
//! Two file forms, told apart by content (after an optional UTF-8 byte order mark, the first
//! non-space byte `[` means JSON, anything else CSV):
//! - CSV (RFC 4180, see [`super::csv`]): a header row naming the columns, then one record per
//!   device. Line numbers in messages are the line a record starts on (1-based).
//! - JSON: an array of objects whose values are all strings. The columns are the keys, in
//!   order of first appearance; an object may leave a key out (the field is then missing,
//!   which only matters when a template uses it). Positions in messages are array indexes
//!   (0-based, written `file[3]`).
//!
//! Column (and key) names are letters, digits, `_`, `-`, `.` — the names templates use.
//! Every row has an `id` (column `id`, unique). A row is bound to a device by exactly one of
//! the columns `disk_serial` or `host_serial`; with neither, rows are used in file order.
//!
//! Cell values never appear in load errors. In [`Problem`] messages, values of [`Kind::Secret`]
//! fields and of columns whose name contains `token`, `secret`, `password` or `key` are
//! written `<secret>`; [`Row`]'s `Debug` shows no values at all.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Serialize};

use super::csv;
use super::log::Written;
use crate::template::{self, is_field_name, Piece};

/// The column every row needs: the row's identity in the record log.
pub const ID: &str = "id";
/// The column binding a row to the serial number of the disk written.
pub const DISK_SERIAL: &str = "disk_serial";
/// The column binding a row to the serial number of the host (DMI system serial).
pub const HOST_SERIAL: &str = "host_serial";

/// Written instead of a secret value.
pub const REDACTED: &str = "<secret>";

/// What kind of value a field holds, and so how it is checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Single-line text: anything but line breaks and other control characters. The kind of
    /// every column the [`FieldSpec`] does not name.
    Text,
    /// A host name: one RFC 1123 label or a DNS name of such labels (letters, digits, `-`;
    /// labels of 1–63 characters not starting or ending with `-`; at most 253 in all; no
    /// trailing dot; not an IPv4 address).
    Hostname,
    /// An IPv4 or IPv6 address with a prefix length: `10.0.0.5/24`, `fd00::5/64`.
    Cidr,
    /// An IPv4 or IPv6 address without prefix.
    Ip,
    /// Any non-empty text (line breaks allowed); never printed.
    Secret,
}

/// The kind of each field, by column name (from the profile). Columns not named are
/// [`Kind::Text`].
pub type FieldSpec = BTreeMap<String, Kind>;

/// Which file form an inventory was read from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// RFC 4180 comma-separated values with a header row.
    Csv,
    /// An array of objects with string values.
    Json,
}

/// How a row is bound to a device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Key {
    /// By the serial number of the disk written (column `disk_serial`).
    DiskSerial,
    /// By the serial number of the host (column `host_serial`).
    HostSerial,
    /// By position: the first row not yet written.
    Sequence,
}

impl Key {
    /// The column holding the key, if any.
    pub fn column(self) -> Option<&'static str> {
        match self {
            Key::DiskSerial => Some(DISK_SERIAL),
            Key::HostSerial => Some(HOST_SERIAL),
            Key::Sequence => None,
        }
    }
}

/// Where in a file something is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Line {
    /// A CSV line (1-based): the line a record starts on.
    Csv(usize),
    /// An index in a JSON array (0-based).
    Json(usize),
    /// A position in a template (1-based line and column, in characters).
    Template {
        /// The line.
        line: usize,
        /// The column.
        column: usize,
    },
}

/// How serious a [`Problem`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Nothing may be written until it is fixed.
    Error,
    /// Worth a look; does not stop writing.
    Warning,
}

/// One thing wrong with an inventory or a template, found by [`Inventory::validate`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// Whether it stops writing.
    pub severity: Severity,
    /// The inventory file, or ``slot `name` `` for a template.
    pub file: String,
    /// Where in `file` (absent when the problem is about a whole column).
    pub line: Option<Line>,
    /// The inventory column (field) concerned, if one is.
    pub column: Option<String>,
    /// What is wrong and what to do. Never holds a secret value.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.severity {
            Severity::Error => f.write_str("error: ")?,
            Severity::Warning => f.write_str("warning: ")?,
        }
        f.write_str(&self.file)?;
        match self.line {
            Some(Line::Csv(n)) => write!(f, ":{n}")?,
            Some(Line::Json(i)) => write!(f, "[{i}]")?,
            Some(Line::Template { line, column }) => write!(f, ":{line}:{column}")?,
            None => {}
        }
        if let Some(c) = &self.column {
            write!(f, ": column `{c}`")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Whether the values of `column` are secret: its kind is [`Kind::Secret`], or its name
/// contains `token`, `secret`, `password` or `key` (in any case).
pub fn is_secret(column: &str, spec: &FieldSpec) -> bool {
    if spec.get(column) == Some(&Kind::Secret) {
        return true;
    }
    let lower = column.to_ascii_lowercase();
    ["token", "secret", "password", "key"]
        .iter()
        .any(|w| lower.contains(w))
}

/// `value` as it may appear in a message: quoted and escaped, or `<secret>`.
fn shown(column: &str, value: &str, spec: &FieldSpec) -> String {
    if is_secret(column, spec) {
        REDACTED.to_string()
    } else {
        format!("`{}`", value.escape_debug())
    }
}

/// Why `value` is not of `kind`; `None` when it is. Never mentions the value.
pub fn check(kind: Kind, value: &str) -> Option<String> {
    match kind {
        Kind::Text => value.chars().any(char::is_control).then(|| {
            "holds a line break or another control character: a text field is one line \
             (only a secret field may hold several)"
                .to_string()
        }),
        Kind::Secret => value
            .is_empty()
            .then(|| "is empty: a secret field needs a value".to_string()),
        Kind::Ip => value.parse::<IpAddr>().err().map(|_| {
            "is not an IP address: write an IPv4 (10.0.0.5) or IPv6 (fd00::5) address, \
             without prefix"
                .to_string()
        }),
        Kind::Cidr => check_cidr(value),
        Kind::Hostname => check_hostname(value),
    }
}

fn check_cidr(value: &str) -> Option<String> {
    let Some((addr, prefix)) = value.split_once('/') else {
        return Some(
            "has no prefix length: write the address with one, like 10.0.0.5/24 or \
             fd00::5/64"
                .into(),
        );
    };
    let Ok(addr) = addr.parse::<IpAddr>() else {
        return Some(
            "is not an IP address with prefix: write it like 10.0.0.5/24 or fd00::5/64".into(),
        );
    };
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let digits = !prefix.is_empty()
        && prefix.len() <= 3
        && prefix.bytes().all(|b| b.is_ascii_digit())
        && (prefix == "0" || !prefix.starts_with('0'));
    match prefix.parse::<u32>() {
        Ok(n) if digits && n <= max => None,
        _ => Some(format!(
            "has a prefix length that is not a number from 0 to {max}: write it like \
             10.0.0.5/24 or fd00::5/64"
        )),
    }
}

fn check_hostname(value: &str) -> Option<String> {
    const WHAT: &str = "is not a host name";
    if value.is_empty() {
        return Some(format!("{WHAT}: it is empty"));
    }
    if value.len() > 253 {
        return Some(format!(
            "{WHAT}: it is longer than 253 characters: shorten it"
        ));
    }
    if value.ends_with('.') {
        return Some(format!("{WHAT}: it ends with a dot: remove the dot"));
    }
    if value.parse::<Ipv4Addr>().is_ok() {
        return Some(format!(
            "{WHAT}: it is an IPv4 address: give the name (put the address in its own field)"
        ));
    }
    for label in value.split('.') {
        if label.is_empty() {
            return Some(format!(
                "{WHAT}: it has an empty label (`..` or a leading dot)"
            ));
        }
        if label.len() > 63 {
            return Some(format!(
                "{WHAT}: a label is longer than 63 characters: shorten it"
            ));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Some(format!(
                "{WHAT}: use only letters, digits and `-` (and `.` between labels)"
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Some(format!(
                "{WHAT}: a label starts or ends with `-`: move or remove the dash"
            ));
        }
    }
    None
}

/// One inventory row: the values for one device.
#[derive(Clone, PartialEq, Eq)]
pub struct Row {
    file: String,
    line: Line,
    values: BTreeMap<String, String>,
}

impl fmt::Debug for Row {
    /// Shows where the row is and which fields it has, never the values (they may be secret).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Row")
            .field("location", &self.location())
            .field("fields", &self.values.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Row {
    /// The row's `id` (empty when the row has none: [`Inventory::validate`] reports that).
    pub fn id(&self) -> &str {
        self.get(ID).unwrap_or("")
    }

    /// The value of `field`, if the row has it.
    pub fn get(&self, field: &str) -> Option<&str> {
        self.values.get(field).map(String::as_str)
    }

    /// Where the row is in its file.
    pub fn line(&self) -> Line {
        self.line
    }

    /// `file:line` (CSV) or `file[index]` (JSON), for messages.
    pub fn location(&self) -> String {
        match self.line {
            Line::Csv(n) => format!("{}:{n}", self.file),
            Line::Json(i) => format!("{}[{i}]", self.file),
            Line::Template { line, column } => format!("{}:{line}:{column}", self.file),
        }
    }

    /// Every field with its value, secrets (see [`is_secret`]) replaced by `<secret>`: what
    /// may go into logs and records.
    pub fn redacted(&self, spec: &FieldSpec) -> BTreeMap<String, String> {
        self.values
            .iter()
            .map(|(k, v)| {
                let v = if is_secret(k, spec) {
                    REDACTED.to_string()
                } else {
                    v.clone()
                };
                (k.clone(), v)
            })
            .collect()
    }

    /// `row `id`` for messages, or `the row at file:line` when it has no id.
    fn name(&self) -> String {
        match self.id() {
            "" => format!("the row at {}", self.location()),
            id => format!("row `{id}`"),
        }
    }
}

/// A loaded inventory.
#[derive(Clone, Debug)]
pub struct Inventory {
    path: PathBuf,
    format: Format,
    key: Key,
    columns: Vec<String>,
    rows: Vec<Row>,
}

impl Inventory {
    /// Read the inventory at `path` (CSV or JSON, told by content).
    ///
    /// Fails on anything that is not a well-formed inventory: unreadable file, not UTF-8,
    /// malformed CSV or JSON, rows with more or fewer fields than the header, non-string
    /// JSON values, unusable or duplicate column names, no `id` column, both `disk_serial`
    /// and `host_serial` columns, no rows. Row contents are checked by [`Self::validate`].
    pub fn load(path: &Path) -> Result<Inventory> {
        let bytes = crate::input::read(path, crate::input::Kind::Inventory)?;
        Self::parse(path, &bytes)
    }

    /// Parse `bytes` as the inventory file `path` (used in messages only).
    pub fn parse(path: &Path, bytes: &[u8]) -> Result<Inventory> {
        let file = path.display().to_string();
        let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
        let text = match std::str::from_utf8(bytes) {
            Ok(t) => t,
            Err(e) => {
                let good = bytes.get(..e.valid_up_to()).unwrap_or_default();
                let line = good.iter().filter(|&&b| b == b'\n').count() + 1;
                bail!("{file}:{line}: not UTF-8 text: save the inventory as UTF-8");
            }
        };
        let (format, columns, rows) = match text.trim_start().as_bytes().first() {
            None => bail!("{file}: the inventory is empty: write a CSV header row and one row per device, or a JSON array of objects"),
            Some(b'[') => {
                let (c, r) = parse_json(&file, text)?;
                (Format::Json, c, r)
            }
            Some(_) => {
                let (c, r) = parse_csv(&file, text)?;
                (Format::Csv, c, r)
            }
        };
        if rows.is_empty() {
            bail!("{file}: the inventory has no rows: add one row per device");
        }
        if !columns.iter().any(|c| c == ID) {
            bail!("{file}: there is no `{ID}` column: add one with a unique name per row");
        }
        let has = |c: &str| columns.iter().any(|x| x == c);
        let key = match (has(DISK_SERIAL), has(HOST_SERIAL)) {
            (true, true) => bail!(
                "{file}: there are both `{DISK_SERIAL}` and `{HOST_SERIAL}` columns: keep only \
                 the one that binds rows to devices (or neither, to use rows in file order)"
            ),
            (true, false) => Key::DiskSerial,
            (false, true) => Key::HostSerial,
            (false, false) => Key::Sequence,
        };
        Ok(Inventory {
            path: path.to_path_buf(),
            format,
            key,
            columns,
            rows,
        })
    }

    /// The file the inventory was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file form.
    pub fn format(&self) -> Format {
        self.format
    }

    /// How rows are bound to devices.
    pub fn key(&self) -> Key {
        self.key
    }

    /// The column names, in file order.
    pub fn columns(&self) -> &[String] {
        &self.columns
    }

    /// The rows, in file order.
    pub fn rows(&self) -> &[Row] {
        &self.rows
    }

    /// Check every row against `spec` and `templates` (slot name, template text), and
    /// collect every problem: malformed templates, placeholders naming no column, rows
    /// without `id`, duplicate ids, duplicate or missing serials (when rows are bound by
    /// one), missing or empty fields a template uses, values not of their kind; and, as
    /// warnings, columns no template uses.
    ///
    /// `Ok` holds the warnings; `Err` every problem, errors first.
    pub fn validate(
        &self,
        spec: &FieldSpec,
        templates: &[(&str, &str)],
    ) -> Result<Vec<Problem>, Vec<Problem>> {
        let file = self.path.display().to_string();
        let mut errors = Vec::new();
        let mut warnings = Vec::new();

        // Fields the templates use: name → slots using it.
        let mut used: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for &(slot, text) in templates {
            let (pieces, problems) = template::scan(text);
            // Problems and placeholders in template order.
            let mut found: Vec<(usize, usize, Problem)> = problems
                .into_iter()
                .map(|e| {
                    let p = Problem {
                        severity: Severity::Error,
                        file: format!("slot `{slot}`"),
                        line: Some(Line::Template {
                            line: e.line,
                            column: e.column,
                        }),
                        column: None,
                        message: e.message,
                    };
                    (e.line, e.column, p)
                })
                .collect();
            let mut reported = BTreeSet::new();
            for piece in pieces {
                let Piece::Field { name, line, column } = piece else {
                    continue;
                };
                let slots = used.entry(name).or_default();
                if !slots.contains(&slot) {
                    slots.push(slot);
                }
                if !self.columns.iter().any(|c| c == name) && reported.insert(name) {
                    found.push((
                        line,
                        column,
                        Problem {
                            severity: Severity::Error,
                            file: format!("slot `{slot}`"),
                            line: Some(Line::Template { line, column }),
                            column: Some(name.to_string()),
                            message: format!(
                                "the template uses `{{{{ {name} }}}}`, but {file} has no column \
                             `{name}`: add the column or correct the name"
                            ),
                        },
                    ));
                }
            }
            found.sort_by_key(|&(line, column, _)| (line, column));
            errors.extend(found.into_iter().map(|(_, _, p)| p));
        }

        let key_column = self.key.column();
        let mut ids: BTreeMap<&str, &Row> = BTreeMap::new();
        let mut serials: BTreeMap<&str, &Row> = BTreeMap::new();
        for row in &self.rows {
            let problem = |column: &str, message: String| Problem {
                severity: Severity::Error,
                file: file.clone(),
                line: Some(row.line),
                column: Some(column.to_string()),
                message,
            };
            match row.get(ID) {
                None | Some("") => errors.push(problem(
                    ID,
                    "the row has no id: give every row a unique id".into(),
                )),
                Some(id) => {
                    if let Some(first) = ids.get(id) {
                        errors.push(problem(
                            ID,
                            format!(
                                "id {} is also the id of the row at {}: ids must be unique",
                                shown(ID, id, spec),
                                first.location()
                            ),
                        ));
                    } else {
                        ids.insert(id, row);
                    }
                }
            }
            if let Some(kc) = key_column {
                match row.get(kc) {
                    None | Some("") => errors.push(problem(
                        kc,
                        format!(
                            "{} has no `{kc}`: the inventory binds rows to devices by it, so \
                             every row needs one",
                            row.name()
                        ),
                    )),
                    Some(serial) => {
                        if let Some(first) = serials.get(serial) {
                            errors.push(problem(
                                kc,
                                format!(
                                    "{} has {kc} {}, as does {} ({}): a serial binds one row \
                                     only; correct one of them",
                                    row.name(),
                                    shown(kc, serial, spec),
                                    first.name(),
                                    first.location()
                                ),
                            ));
                        } else {
                            serials.insert(serial, row);
                        }
                    }
                }
            }
            for column in &self.columns {
                let slots = used.get(column.as_str());
                let users = || {
                    let s: Vec<String> = slots
                        .into_iter()
                        .flatten()
                        .map(|s| format!("`{s}`"))
                        .collect();
                    format!(
                        "slot{} {}",
                        if s.len() == 1 { "" } else { "s" },
                        s.join(", ")
                    )
                };
                // A missing or empty id or serial is reported above.
                let binding = column == ID || Some(column.as_str()) == key_column;
                match row.get(column) {
                    None | Some("") if binding => {}
                    None if slots.is_some() => errors.push(problem(
                        column,
                        format!(
                            "{} has no `{column}`, and {} use{} it: add the field",
                            row.name(),
                            users(),
                            if slots.is_some_and(|s| s.len() == 1) {
                                "s"
                            } else {
                                ""
                            }
                        ),
                    )),
                    Some("") if slots.is_some() => errors.push(problem(
                        column,
                        format!(
                            "{} has `{column}` empty, and {} use{} it: fill it in",
                            row.name(),
                            users(),
                            if slots.is_some_and(|s| s.len() == 1) {
                                "s"
                            } else {
                                ""
                            }
                        ),
                    )),
                    None | Some("") => {}
                    Some(value) => {
                        let kind = spec.get(column).copied().unwrap_or(Kind::Text);
                        if let Some(why) = check(kind, value) {
                            errors.push(problem(
                                column,
                                format!(
                                    "{}: {column} {} {why}",
                                    row.name(),
                                    shown(column, value, spec)
                                ),
                            ));
                        }
                    }
                }
            }
        }

        for column in &self.columns {
            if column == ID || Some(column.as_str()) == key_column {
                continue;
            }
            if !used.contains_key(column.as_str()) {
                warnings.push(Problem {
                    severity: Severity::Warning,
                    file: file.clone(),
                    line: None,
                    column: Some(column.clone()),
                    message: format!(
                        "no template uses the column `{column}`: its values are not written \
                         (remove it, or use `{{{{ {column} }}}}` in a template)"
                    ),
                });
            }
        }

        if errors.is_empty() {
            Ok(warnings)
        } else {
            errors.append(&mut warnings);
            Err(errors)
        }
    }

    /// The row for a device.
    ///
    /// - Inventories keyed by `disk_serial` (`host_serial`): the row with that serial;
    ///   `disk_serial` (`host_serial`) must be given. A row already written (in `used`, see
    ///   [`super::log::used_rows`]) is refused unless `reuse`.
    /// - Sequence inventories: the first row whose id is not in `used`; the serials and
    ///   `reuse` are not consulted.
    ///
    /// The error says what to do.
    pub fn row_for(
        &self,
        disk_serial: Option<&str>,
        host_serial: Option<&str>,
        used: &BTreeMap<String, Written>,
        reuse: bool,
    ) -> Result<&Row, String> {
        let file = self.path.display();
        let (column, serial, what) = match self.key {
            Key::Sequence => {
                return self
                    .rows
                    .iter()
                    .find(|r| !used.contains_key(r.id()))
                    .ok_or_else(|| {
                        format!(
                            "all {} rows of {file} were written: add rows for more devices",
                            self.rows.len()
                        )
                    });
            }
            Key::DiskSerial => (DISK_SERIAL, disk_serial, "the disk"),
            Key::HostSerial => (HOST_SERIAL, host_serial, "the host"),
        };
        let serial = match serial {
            Some(s) if !s.is_empty() => s,
            _ => {
                return Err(format!(
                    "{file} binds rows to devices by `{column}`, but {what} has no known \
                     serial number: write to a device that reports one, or use an inventory \
                     without `{column}`"
                ))
            }
        };
        let mut matching = self.rows.iter().filter(|r| r.get(column) == Some(serial));
        let Some(row) = matching.next() else {
            return Err(format!(
                "{file} has no row with {column} `{}`: add a row for this device",
                serial.escape_debug()
            ));
        };
        if let Some(other) = matching.next() {
            return Err(format!(
                "{} and {} of {file} both have {column} `{}`: a serial binds one row only; \
                 correct the inventory",
                row.name(),
                other.name(),
                serial.escape_debug()
            ));
        }
        if let (Some(w), false) = (used.get(row.id()), reuse) {
            let disk = match &w.disk_serial {
                Some(s) => format!("disk {}", s.escape_debug()),
                None => "a disk without serial".to_string(),
            };
            return Err(format!(
                "row {} was already written to {disk} at {}; pass --reuse to write it again",
                row.id(),
                w.time
            ));
        }
        Ok(row)
    }
}

/// Read CSV text: the header, then rows with as many fields.
fn parse_csv(file: &str, text: &str) -> Result<(Vec<String>, Vec<Row>)> {
    let records = match csv::parse(text) {
        Ok(r) => r,
        Err(e) => bail!(
            "{file}:{}:{}: not valid CSV: {}",
            e.line,
            e.column,
            e.message
        ),
    };
    let mut records = records.into_iter();
    let Some(header) = records.next() else {
        bail!("{file}: the inventory is empty: write a header row and one row per device");
    };
    let mut seen = BTreeSet::new();
    for (i, name) in header.fields.iter().enumerate() {
        check_column_name(name).map_err(|why| {
            anyhow::anyhow!("{file}:{}: header field {} {why}", header.line, i + 1)
        })?;
        if !seen.insert(name.as_str()) {
            bail!(
                "{file}:{}: the header names the column `{name}` twice: give each column \
                 its own name",
                header.line
            );
        }
    }
    let width = header.fields.len();
    let mut rows = Vec::new();
    for record in records {
        let n = record.fields.len();
        if n != width {
            let fix = if n < width {
                "add the missing fields (an empty field still needs its comma)"
            } else {
                "remove the extra fields (quote a value that holds a comma)"
            };
            bail!(
                "{file}:{}: the row has {n} field{}, the header (line {}) has {width}: {fix}",
                record.line,
                if n == 1 { "" } else { "s" },
                header.line
            );
        }
        rows.push(Row {
            file: file.to_string(),
            line: Line::Csv(record.line),
            values: header.fields.iter().cloned().zip(record.fields).collect(),
        });
    }
    Ok((header.fields, rows))
}

/// Why `name` cannot be a column name.
fn check_column_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("is empty: name every column".into());
    }
    if is_field_name(name) {
        return Ok(());
    }
    if is_field_name(name.trim()) {
        return Err(format!(
            "`{}` has spaces around the name: remove them",
            name.escape_debug()
        ));
    }
    Err(format!(
        "`{}` is not a usable column name: use letters, digits, `_`, `-` and `.`",
        name.escape_debug()
    ))
}

/// The keys of one JSON object in document order, and the keys given twice.
struct KeyOrder {
    keys: Vec<String>,
    duplicates: Vec<String>,
}

impl<'de> Deserialize<'de> for KeyOrder {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = KeyOrder;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<KeyOrder, A::Error> {
                let mut seen = BTreeSet::new();
                let mut out = KeyOrder {
                    keys: Vec::new(),
                    duplicates: Vec::new(),
                };
                while let Some(k) = map.next_key::<String>()? {
                    map.next_value::<IgnoredAny>()?;
                    if seen.insert(k.clone()) {
                        out.keys.push(k);
                    } else if !out.duplicates.contains(&k) {
                        out.duplicates.push(k);
                    }
                }
                Ok(out)
            }
        }
        d.deserialize_map(V)
    }
}

/// Read JSON text: an array of objects with string values.
fn parse_json(file: &str, text: &str) -> Result<(Vec<String>, Vec<Row>)> {
    use serde_json::Value;
    let value: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => bail!(
            "{file}:{}:{}: not valid JSON ({e}): correct the syntax",
            e.line(),
            e.column()
        ),
    };
    let Value::Array(items) = value else {
        bail!("{file}: the JSON is not an array: write an array of objects, one per device");
    };
    for (i, item) in items.iter().enumerate() {
        let Value::Object(map) = item else {
            bail!("{file}[{i}]: the item is {}, not an object: write one object per device, with string values", json_kind(item));
        };
        for (k, v) in map {
            check_column_name(k).map_err(|why| anyhow::anyhow!("{file}[{i}]: the key {why}"))?;
            if !v.is_string() {
                let fix = match v {
                    Value::Null => "write \"\" for an empty value, or leave the key out",
                    Value::Number(_) => "quote it (\"12\", not 12)",
                    _ => "inventory values are strings",
                };
                bail!(
                    "{file}[{i}]: `{k}` is {}, not a string: {fix}",
                    json_kind(v)
                );
            }
        }
    }
    // Second pass for what serde_json's map loses: key order and repeated keys.
    let orders: Vec<KeyOrder> = serde_json::from_str(text)
        .with_context(|| format!("{file}: reading the key order of the objects"))?;
    let mut columns: Vec<String> = Vec::new();
    for (i, order) in orders.iter().enumerate() {
        if let Some(d) = order.duplicates.first() {
            bail!("{file}[{i}]: the key `{d}` is given twice in one object: keep one");
        }
        for k in &order.keys {
            if !columns.contains(k) {
                columns.push(k.clone());
            }
        }
    }
    let rows = items
        .into_iter()
        .enumerate()
        .map(|(i, item)| Row {
            file: file.to_string(),
            line: Line::Json(i),
            values: match item {
                Value::Object(map) => map
                    .into_iter()
                    .filter_map(|(k, v)| match v {
                        Value::String(s) => Some((k, s)),
                        _ => None,
                    })
                    .collect(),
                _ => BTreeMap::new(),
            },
        })
        .collect();
    Ok((columns, rows))
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    use serde_json::Value;
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Render `template` with the values of `row`: every `{{ field }}` is replaced by the row's
/// value of that field.
///
/// Fails, without writing any value into the message, when the template is malformed or
/// the row lacks a field it uses or has it empty.
pub fn render(template: &str, row: &Row) -> Result<String> {
    let pieces = match template::parse(template) {
        Ok(p) => p,
        Err(e) => bail!(
            "template line {}, column {}: {}",
            e.line,
            e.column,
            e.message
        ),
    };
    let mut out = String::with_capacity(template.len());
    for piece in pieces {
        match piece {
            Piece::Text(t) => out.push_str(t),
            Piece::Field { name, line, column } => match row.get(name) {
                Some(v) if !v.is_empty() => out.push_str(v),
                Some(_) => bail!(
                    "{}: row `{}` has field `{name}` empty, and the template uses it at line \
                     {line}, column {column}: fill it in the inventory",
                    row.location(),
                    row.id()
                ),
                None => bail!(
                    "{}: row `{}` has no field `{name}`, and the template uses it at line \
                     {line}, column {column}: add it to the inventory",
                    row.location(),
                    row.id()
                ),
            },
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::factory::render;

    fn csv(text: &str) -> Inventory {
        Inventory::parse(Path::new("inv.csv"), text.as_bytes()).unwrap()
    }

    fn csv_err(text: &[u8]) -> String {
        format!(
            "{:#}",
            Inventory::parse(Path::new("inv.csv"), text).unwrap_err()
        )
    }

    fn json(text: &str) -> Inventory {
        Inventory::parse(Path::new("inv.json"), text.as_bytes()).unwrap()
    }

    fn json_err(text: &str) -> String {
        format!(
            "{:#}",
            Inventory::parse(Path::new("inv.json"), text.as_bytes()).unwrap_err()
        )
    }

    fn values(row: &Row) -> Vec<(&str, &str)> {
        row.values
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect()
    }

    #[test]
    fn csv_with_bom_crlf_quotes_and_line_breaks() {
        let inv = csv("\u{feff}id,disk_serial,hostname,note\r\n\
             r1,S1,edge-1,\"a, b\"\r\n\
             r2,S2,edge-2,\"two\r\nlines, \"\"quoted\"\"\"\r\n\
             r3,S3,edge-3,\r\n\r\n");
        assert_eq!(inv.format(), Format::Csv);
        assert_eq!(inv.key(), Key::DiskSerial);
        assert_eq!(inv.columns(), ["id", "disk_serial", "hostname", "note"]);
        let rows = inv.rows();
        assert_eq!(rows.len(), 3);
        assert_eq!(
            rows.iter().map(|r| r.line()).collect::<Vec<_>>(),
            [Line::Csv(2), Line::Csv(3), Line::Csv(5)]
        );
        assert_eq!(
            values(&rows[1]),
            [
                ("disk_serial", "S2"),
                ("hostname", "edge-2"),
                ("id", "r2"),
                ("note", "two\r\nlines, \"quoted\"")
            ]
        );
        assert_eq!(rows[0].get("note"), Some("a, b"));
        assert_eq!(rows[2].get("note"), Some(""));
        assert_eq!(rows[2].location(), "inv.csv:5");
    }

    #[test]
    fn csv_without_final_line_break_and_sequence_key() {
        let inv = csv("id,hostname\nr1,a\nr2,b");
        assert_eq!(inv.key(), Key::Sequence);
        assert_eq!(inv.rows()[1].get("hostname"), Some("b"));
        assert_eq!(csv("id,host_serial\nr1,H1\n").key(), Key::HostSerial);
    }

    #[test]
    fn csv_ragged_rows_name_their_line() {
        let e = csv_err(b"id,a,b\nr1,1,2\nr2,1\nr3,1,2\n");
        assert!(
            e.starts_with("inv.csv:3: the row has 2 fields, the header (line 1) has 3"),
            "{e}"
        );
        assert!(e.contains("add the missing fields"), "{e}");
        let e = csv_err(b"id,a\nr1,\"x\ny\"\nr2,1,2\n");
        assert!(e.starts_with("inv.csv:4: the row has 3 fields"), "{e}");
        assert!(e.contains("remove the extra fields"), "{e}");
    }

    #[test]
    fn csv_syntax_errors_name_line_and_column() {
        let e = csv_err(b"id,a\nr1,\"x\"y\n");
        assert!(
            e.starts_with("inv.csv:2:7: not valid CSV: text after the closing quote"),
            "{e}"
        );
        let e = csv_err(b"id,a\nr1,\"open\n");
        assert!(e.starts_with("inv.csv:2:4: not valid CSV:"), "{e}");
        assert!(e.contains("never closes"), "{e}");
        let e = csv_err(b"id,a\n\nr1,2\n");
        assert!(
            e.starts_with("inv.csv:2:1: not valid CSV: an empty line"),
            "{e}"
        );
    }

    #[test]
    fn load_refusals() {
        let cases: &[(&[u8], &str)] = &[
            (b"", "inv.csv: the inventory is empty"),
            (b" \n\t", "inv.csv: the inventory is empty"),
            (b"\xEF\xBB\xBF", "inv.csv: the inventory is empty"),
            (b"\n\n", "inv.csv: the inventory is empty"),
            (b"id,a\n", "inv.csv: the inventory has no rows"),
            (b"name,a\nx,y\n", "inv.csv: there is no `id` column"),
            (
                b"id,a,a\nx,y,z\n",
                "inv.csv:1: the header names the column `a` twice",
            ),
            (b"id,,b\nx,y,z\n", "inv.csv:1: header field 2 is empty"),
            (
                b"id, b\nx,y\n",
                "inv.csv:1: header field 2 ` b` has spaces around",
            ),
            (
                b"id,host name\nx,y\n",
                "inv.csv:1: header field 2 `host name` is not a usable",
            ),
            (
                b"id,disk_serial,host_serial\nx,y,z\n",
                "inv.csv: there are both `disk_serial` and `host_serial` columns",
            ),
            (b"id,a\nr1,ok\nr2,\xFF\n", "inv.csv:3: not UTF-8 text"),
        ];
        for (text, want) in cases {
            let e = csv_err(text);
            assert!(
                e.starts_with(want),
                "{:?}: {e}",
                String::from_utf8_lossy(text)
            );
        }
        let e = format!(
            "{:#}",
            Inventory::load(Path::new("/nonexistent/inv.csv")).unwrap_err()
        );
        assert!(
            e.starts_with("cannot read the inventory /nonexistent/inv.csv"),
            "{e}"
        );
    }

    #[test]
    fn load_reads_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("inv.csv");
        std::fs::write(&path, "id,hostname\nr1,a\n").unwrap();
        let inv = Inventory::load(&path).unwrap();
        assert_eq!(inv.path(), path);
        assert_eq!(inv.rows()[0].get("hostname"), Some("a"));
    }

    #[test]
    fn json_form() {
        let inv = json(
            "\u{feff} \n [ {\"id\": \"r1\", \"host_serial\": \"H1\", \"hostname\": \"a\"},\n\
             {\"hostname\": \"b\", \"id\": \"r2\", \"address\": \"10.0.0.2/24\", \"host_serial\": \"H2\"},\n\
             {\"id\": \"r3\"} ]",
        );
        assert_eq!(inv.format(), Format::Json);
        assert_eq!(inv.key(), Key::HostSerial);
        assert_eq!(inv.columns(), ["id", "host_serial", "hostname", "address"]);
        assert_eq!(inv.rows().len(), 3);
        assert_eq!(inv.rows()[1].line(), Line::Json(1));
        assert_eq!(inv.rows()[1].location(), "inv.json[1]");
        assert_eq!(inv.rows()[1].get("address"), Some("10.0.0.2/24"));
        assert_eq!(inv.rows()[0].get("address"), None);
        assert_eq!(inv.rows()[2].get("host_serial"), None);
    }

    #[test]
    fn json_refusals() {
        let cases = [
            ("[]", "inv.json: the inventory has no rows"),
            ("[{\"a\": \"1\"}]", "inv.json: there is no `id` column"),
            (
                "[{\"id\": \"1\"}, 3]",
                "inv.json[1]: the item is a number, not an object",
            ),
            (
                "[{\"id\": \"1\", \"vlan\": 12}]",
                "inv.json[0]: `vlan` is a number, not a string: quote it",
            ),
            (
                "[{\"id\": null}]",
                "inv.json[0]: `id` is null, not a string: write \"\"",
            ),
            (
                "[{\"id\": \"1\", \"x\": [\"a\"]}]",
                "inv.json[0]: `x` is an array, not a string",
            ),
            (
                "[{\"id\": \"1\"}, {\"id\": \"2\", \"id\": \"3\"}]",
                "inv.json[1]: the key `id` is given twice",
            ),
            (
                "[{\"id\": \"1\", \"a b\": \"3\"}]",
                "inv.json[0]: the key `a b` is not a usable column name",
            ),
            (
                "[{\"id\": \"1\"},\n {\"id\": \"2\",}]",
                "inv.json:2:13: not valid JSON (trailing comma",
            ),
            (
                "[{\"id\": \"1\"}] x",
                "inv.json:1:15: not valid JSON (trailing characters",
            ),
        ];
        for (text, want) in cases {
            let e = json_err(text);
            assert!(e.starts_with(want), "{text}: {e}");
        }
        // Not an array: text starting with `[` is JSON, so an object is CSV; a CSV whose
        // first field starts with `[` is read as JSON and refused as such.
        let e = json_err("[id],a\n");
        assert!(e.starts_with("inv.json:1:2: not valid JSON"), "{e}");
    }

    fn spec() -> FieldSpec {
        [
            ("hostname", Kind::Hostname),
            ("address", Kind::Cidr),
            ("gateway", Kind::Ip),
            ("wifi", Kind::Secret),
            ("api_key", Kind::Ip),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    const NET: &str = "hostname: {{hostname}}\naddress: {{ address }}\ngateway: {{gateway}}\n";
    const SECRETS: &str = "token: {{ reg_token }}\nwifi: {{wifi}}\nkey: {{api_key}}\n";

    #[test]
    fn a_clean_inventory_has_only_warnings() {
        let inv = csv(
            "id,disk_serial,hostname,address,gateway,wifi,reg_token,api_key,rack\n\
             r1,S1,edge-1,10.0.0.1/24,10.0.0.254,w1,t1,10.9.9.1,A\n\
             r2,S2,edge-2.site.example,fd00::2/64,fd00::1,\"w 2\nx\",t2,fd00::9,B\n",
        );
        let warnings = inv
            .validate(&spec(), &[("net", NET), ("secrets", SECRETS)])
            .unwrap();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        let w = &warnings[0];
        assert_eq!(w.severity, Severity::Warning);
        assert_eq!(w.column.as_deref(), Some("rack"));
        assert_eq!(
            w.to_string(),
            "warning: inv.csv: column `rack`: no template uses the column `rack`: its values \
             are not written (remove it, or use `{{ rack }}` in a template)"
        );
    }

    /// Every problem's text, and a check that none of them holds a secret value.
    fn problems_without(problems: &[Problem], secrets: &[&str]) -> Vec<String> {
        let texts: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
        for t in &texts {
            for s in secrets {
                assert!(!t.contains(s), "a secret is in a message: {t}");
            }
        }
        texts
    }

    #[test]
    fn every_problem_is_collected_and_secrets_stay_out() {
        let inv = csv(
            "id,disk_serial,hostname,address,gateway,wifi,reg_token,api_key,rack\n\
             r1,S1,edge-1,10.0.0.1/24,10.0.0.254,wifi-SECRET-1,tok-SECRET-1,10.9.9.1,A\n\
             r1,S2,edge_2,10.0.0.2,10.0.0.300,wifi-SECRET-2,tok-SECRET-2,key-SECRET-2,B\n\
             r3,S1,-edge,10.0.0.3/33,,,,10.9.9.3,C\n\
             ,,edge-4,10.0.0.4/24,10.0.0.254,wifi-SECRET-4,tok-SECRET-4,10.9.9.4,\"x\ny\"\n",
        );
        let broken =
            "a: {{ hostname }}\nb: {{ nope }}\nc: {{ bad name }} {{nope}}\nd: {{ hostname\n";
        let problems = inv
            .validate(
                &spec(),
                &[
                    ("net", NET),
                    ("secrets", SECRETS),
                    ("broken", broken),
                    ("extra", "x: {{ vlan }} {{vlan}}"),
                ],
            )
            .unwrap_err();
        let texts = problems_without(&problems, &["SECRET"]);
        let want = [
            // Templates first, in template order; a missing column once per slot.
            "error: slot `broken`:2:4: column `nope`: the template uses `{{ nope }}`, but inv.csv has no column `nope`: add the column or correct the name",
            "error: slot `broken`:3:4: placeholder `{{ bad name }}` is not a field name: use letters, digits, `_`, `-` and `.` (spaces only around the name)",
            "error: slot `broken`:4:4: `{{` is never closed: add `}}` after the field name",
            "error: slot `extra`:1:4: column `vlan`: the template uses `{{ vlan }}`, but inv.csv has no column `vlan`: add the column or correct the name",
            // Line 3: duplicate id, values not of their kind (a secret column's value hidden).
            "error: inv.csv:3: column `id`: id `r1` is also the id of the row at inv.csv:2: ids must be unique",
            "error: inv.csv:3: column `hostname`: row `r1`: hostname `edge_2` is not a host name: use only letters, digits and `-` (and `.` between labels)",
            "error: inv.csv:3: column `address`: row `r1`: address `10.0.0.2` has no prefix length: write the address with one, like 10.0.0.5/24 or fd00::5/64",
            "error: inv.csv:3: column `gateway`: row `r1`: gateway `10.0.0.300` is not an IP address: write an IPv4 (10.0.0.5) or IPv6 (fd00::5) address, without prefix",
            "error: inv.csv:3: column `api_key`: row `r1`: api_key <secret> is not an IP address: write an IPv4 (10.0.0.5) or IPv6 (fd00::5) address, without prefix",
            // Line 4: duplicate serial, bad values, empty fields templates use.
            "error: inv.csv:4: column `disk_serial`: row `r3` has disk_serial `S1`, as does row `r1` (inv.csv:2): a serial binds one row only; correct one of them",
            "error: inv.csv:4: column `hostname`: row `r3`: hostname `-edge` is not a host name: a label starts or ends with `-`: move or remove the dash",
            "error: inv.csv:4: column `address`: row `r3`: address `10.0.0.3/33` has a prefix length that is not a number from 0 to 32: write it like 10.0.0.5/24 or fd00::5/64",
            "error: inv.csv:4: column `gateway`: row `r3` has `gateway` empty, and slot `net` uses it: fill it in",
            "error: inv.csv:4: column `wifi`: row `r3` has `wifi` empty, and slot `secrets` uses it: fill it in",
            "error: inv.csv:4: column `reg_token`: row `r3` has `reg_token` empty, and slot `secrets` uses it: fill it in",
            // Line 5: no id, no serial, a line break in a text field.
            "error: inv.csv:5: column `id`: the row has no id: give every row a unique id",
            "error: inv.csv:5: column `disk_serial`: the row at inv.csv:5 has no `disk_serial`: the inventory binds rows to devices by it, so every row needs one",
            "error: inv.csv:5: column `rack`: the row at inv.csv:5: rack `x\\ny` holds a line break or another control character: a text field is one line (only a secret field may hold several)",
            // Warnings last.
            "warning: inv.csv: column `rack`: no template uses the column `rack`: its values are not written (remove it, or use `{{ rack }}` in a template)",
        ];
        assert_eq!(texts, want);
        assert_eq!(problems[0].column.as_deref(), Some("nope"));
        assert_eq!(
            problems[0].line,
            Some(Line::Template { line: 2, column: 4 })
        );
        assert_eq!(problems[4].line, Some(Line::Csv(3)));
        assert!(problems[..want.len() - 1]
            .iter()
            .all(|p| p.severity == Severity::Error));
        assert_eq!(problems[want.len() - 1].severity, Severity::Warning);
    }

    #[test]
    fn secret_values_appear_in_no_message() {
        // Every kind of problem on secret columns (by name and by kind), with the secret
        // values spelled so that any leak is found.
        let inv = csv("id,host_serial,reg_token,wifi,password\n\
             r1,H1,AAAA_1,BBBB-1,\n\
             r1,H1,\"AAAA\n2\",BBBB-2,CCCC-2\n\
             r3,H3,,,\n");
        let spec: FieldSpec = [
            ("wifi".to_string(), Kind::Secret),
            ("reg_token".to_string(), Kind::Hostname),
            ("password".to_string(), Kind::Cidr),
        ]
        .into_iter()
        .collect();
        let problems = inv
            .validate(&spec, &[("s", "{{reg_token}} {{wifi}} {{ password }}")])
            .unwrap_err();
        let texts = problems_without(&problems, &["AAAA", "BBBB", "CCCC"]);
        assert!(
            texts.iter().filter(|t| t.contains("<secret>")).count() >= 3,
            "{texts:?}"
        );
        assert!(
            texts
                .iter()
                .any(|t| t.contains("row `r1`: reg_token <secret> is not a host name")),
            "{texts:?}"
        );
        assert!(
            texts
                .iter()
                .any(|t| t.contains("row `r1`: password <secret> has no prefix length")),
            "{texts:?}"
        );
        assert!(
            texts
                .iter()
                .any(|t| t.contains("row `r3` has `wifi` empty")),
            "{texts:?}"
        );
        for row in inv.rows() {
            let e = render("{{ password }} {{ nope }}", row)
                .map(|_| ())
                .unwrap_err();
            assert!(!format!("{e:#}").contains("CCCC"), "{e:#}");
        }
    }

    #[test]
    fn missing_fields_in_json_rows() {
        let inv = json(
            "[{\"id\": \"r1\", \"hostname\": \"a\", \"token\": \"T0P\"},\n\
             {\"id\": \"r2\", \"token\": \"\"}]",
        );
        let both = "{{hostname}} {{token}}";
        let problems = inv
            .validate(&FieldSpec::new(), &[("a", both), ("b", both)])
            .unwrap_err();
        let texts = problems_without(&problems, &["T0P"]);
        assert_eq!(
            texts,
            [
                "error: inv.json[1]: column `hostname`: row `r2` has no `hostname`, and slots `a`, `b` use it: add the field",
                "error: inv.json[1]: column `token`: row `r2` has `token` empty, and slots `a`, `b` use it: fill it in",
            ]
        );
        assert_eq!(problems[0].line, Some(Line::Json(1)));
    }

    #[test]
    fn secret_columns_by_name_and_kind() {
        let spec = spec();
        for name in [
            "token",
            "reg_TOKEN",
            "client_secret",
            "Password",
            "ssh_key",
            "wifi",
        ] {
            assert!(is_secret(name, &spec), "{name}");
        }
        for name in ["hostname", "disk_serial", "id", "gateway"] {
            assert!(!is_secret(name, &spec), "{name}");
        }
    }

    #[test]
    fn duplicate_host_serials() {
        let inv = csv("id,host_serial\nr1,H1\nr2,H2\nr3,H1\nr4,H2\n");
        let problems = inv.validate(&FieldSpec::new(), &[]).unwrap_err();
        let texts = problems_without(&problems, &[]);
        assert_eq!(
            texts,
            [
                "error: inv.csv:4: column `host_serial`: row `r3` has host_serial `H1`, as does row `r1` (inv.csv:2): a serial binds one row only; correct one of them",
                "error: inv.csv:5: column `host_serial`: row `r4` has host_serial `H2`, as does row `r2` (inv.csv:3): a serial binds one row only; correct one of them",
            ]
        );
    }

    #[test]
    fn kinds() {
        let ok = [
            (Kind::Hostname, "edge"),
            (Kind::Hostname, "Edge-01.site.example"),
            (Kind::Hostname, "1host"),
            (Kind::Cidr, "10.0.0.5/24"),
            (Kind::Cidr, "10.0.0.5/0"),
            (Kind::Cidr, "fd00::5/128"),
            (Kind::Ip, "10.0.0.5"),
            (Kind::Ip, "::1"),
            (Kind::Text, "any text, with spaces"),
            (Kind::Secret, "multi\nline"),
        ];
        for (kind, v) in ok {
            assert_eq!(check(kind, v), None, "{kind:?} {v:?}");
        }
        let long_label = "a".repeat(64);
        let long_name = vec!["a".repeat(60); 5].join(".");
        let bad = [
            (Kind::Hostname, ""),
            (Kind::Hostname, "edge."),
            (Kind::Hostname, "a..b"),
            (Kind::Hostname, ".a"),
            (Kind::Hostname, "edge-"),
            (Kind::Hostname, "ed ge"),
            (Kind::Hostname, "10.0.0.5"),
            (Kind::Hostname, long_label.as_str()),
            (Kind::Hostname, long_name.as_str()),
            (Kind::Cidr, "10.0.0.5"),
            (Kind::Cidr, "10.0.0.5/"),
            (Kind::Cidr, "10.0.0.5/024"),
            (Kind::Cidr, "10.0.0.5/+4"),
            (Kind::Cidr, "fd00::5/129"),
            (Kind::Cidr, "10.0.0/24"),
            (Kind::Cidr, "10.0.0.5/24/1"),
            (Kind::Ip, "10.0.0.5/24"),
            (Kind::Ip, "010.0.0.5"),
            (Kind::Ip, "host"),
            (Kind::Text, "tab\there"),
            (Kind::Secret, ""),
        ];
        for (kind, v) in bad {
            assert!(check(kind, v).is_some(), "{kind:?} {v:?}");
        }
    }

    #[test]
    fn render_fills_placeholders() {
        let inv = csv("id,hostname,token,empty\nr1,edge-1,T0P-S3CRET,\n");
        let row = &inv.rows()[0];
        assert_eq!(
            render("host: {{hostname}}\nid: {{ id }} {{  token}}\n", row).unwrap(),
            "host: edge-1\nid: r1 T0P-S3CRET\n"
        );
        assert_eq!(render("no placeholders", row).unwrap(), "no placeholders");
        let errors = [
            (
                render("a\n{{ empty }}", row),
                "inv.csv:2: row `r1` has field `empty` empty, and the template uses it at line 2, column 1: fill it in the inventory",
            ),
            (
                render("{{ missing }}", row),
                "inv.csv:2: row `r1` has no field `missing`, and the template uses it at line 1, column 1: add it to the inventory",
            ),
            (
                render("{{ token }} {{ hostname", row),
                "template line 1, column 13: `{{` is never closed: add `}}` after the field name",
            ),
        ];
        for (got, want) in errors {
            let e = format!("{:#}", got.unwrap_err());
            assert_eq!(e, want);
        }
    }

    #[test]
    fn redacted_and_debug_hide_secrets() {
        let inv = csv("id,hostname,reg_token,wifi\nr1,edge-1,T0P,W1F1\n");
        let row = &inv.rows()[0];
        let r = row.redacted(&spec());
        assert_eq!(
            r.into_iter().collect::<Vec<_>>(),
            [
                ("hostname".to_string(), "edge-1".to_string()),
                ("id".to_string(), "r1".to_string()),
                ("reg_token".to_string(), REDACTED.to_string()),
                ("wifi".to_string(), REDACTED.to_string()),
            ]
        );
        let debug = format!("{row:?} {inv:?}");
        assert!(!debug.contains("T0P") && !debug.contains("W1F1"), "{debug}");
        assert!(debug.contains("inv.csv:2"), "{debug}");
    }

    fn used(rows: &[(&str, Option<&str>, &str)]) -> BTreeMap<String, Written> {
        rows.iter()
            .map(|(id, serial, time)| {
                (
                    id.to_string(),
                    Written {
                        disk_serial: serial.map(str::to_string),
                        time: time.to_string(),
                    },
                )
            })
            .collect()
    }

    #[test]
    fn row_by_disk_serial() {
        let inv = csv("id,disk_serial\nr1,S1\nr2,S2\n");
        let none = BTreeMap::new();
        assert_eq!(
            inv.row_for(Some("S2"), Some("H9"), &none, false)
                .unwrap()
                .id(),
            "r2"
        );
        let e = inv.row_for(Some("S3"), None, &none, false).unwrap_err();
        assert_eq!(
            e,
            "inv.csv has no row with disk_serial `S3`: add a row for this device"
        );
        let e = inv.row_for(None, Some("S1"), &none, false).unwrap_err();
        assert!(
            e.starts_with(
                "inv.csv binds rows to devices by `disk_serial`, but the disk has no known serial"
            ),
            "{e}"
        );
        assert!(inv.row_for(Some(""), None, &none, false).is_err());

        let u = used(&[("r1", Some("S1"), "2026-01-02T03:04:05Z")]);
        let e = inv.row_for(Some("S1"), None, &u, false).unwrap_err();
        assert_eq!(
            e,
            "row r1 was already written to disk S1 at 2026-01-02T03:04:05Z; pass --reuse to write it again"
        );
        assert_eq!(inv.row_for(Some("S1"), None, &u, true).unwrap().id(), "r1");
        assert_eq!(inv.row_for(Some("S2"), None, &u, false).unwrap().id(), "r2");
    }

    #[test]
    fn row_by_host_serial() {
        let inv = json("[{\"id\": \"r1\", \"host_serial\": \"H1\"}, {\"id\": \"r2\", \"host_serial\": \"H2\"}, {\"id\": \"r3\", \"host_serial\": \"H2\"}]");
        let none = BTreeMap::new();
        assert_eq!(
            inv.row_for(Some("H2x"), Some("H1"), &none, false)
                .unwrap()
                .id(),
            "r1"
        );
        let e = inv.row_for(Some("H1"), None, &none, false).unwrap_err();
        assert!(
            e.contains("by `host_serial`, but the host has no known serial"),
            "{e}"
        );
        let e = inv.row_for(None, Some("H2"), &none, false).unwrap_err();
        assert!(
            e.starts_with("row `r2` and row `r3` of inv.json both have host_serial `H2`"),
            "{e}"
        );
        let u = used(&[("r1", None, "T")]);
        let e = inv.row_for(None, Some("H1"), &u, false).unwrap_err();
        assert_eq!(e, "row r1 was already written to a disk without serial at T; pass --reuse to write it again");
    }

    #[test]
    fn row_by_sequence() {
        let inv = csv("id,hostname\nr1,a\nr2,b\nr3,c\n");
        let none = BTreeMap::new();
        assert_eq!(
            inv.row_for(Some("S1"), None, &none, false).unwrap().id(),
            "r1"
        );
        let u = used(&[("r1", Some("S1"), "T"), ("r3", Some("S3"), "T")]);
        assert_eq!(inv.row_for(None, None, &u, false).unwrap().id(), "r2");
        assert_eq!(inv.row_for(None, None, &u, true).unwrap().id(), "r2");
        let all = used(&[("r1", None, "T"), ("r2", None, "T"), ("r3", None, "T")]);
        let e = inv.row_for(None, None, &all, true).unwrap_err();
        assert_eq!(
            e,
            "all 3 rows of inv.csv were written: add rows for more devices"
        );
    }
}
