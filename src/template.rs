//! Personalization templates (read by the build and the flasher via [`crate::personalize`],
//! checked against inventories by [`crate::factory`]): text with `{{field}}` placeholders (spaces inside the braces
//! optional: `{{ field }}`). A field name is letters, digits, `_`, `-` and `.`. Every `{{`
//! opens a placeholder; there is no escape. A `}}` outside a placeholder is plain text.

/// One piece of a parsed template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Piece<'a> {
    /// Text copied as is.
    Text(&'a str),
    /// A placeholder: the field name and where `{{` is (1-based line and column).
    Field {
        name: &'a str,
        line: usize,
        column: usize,
    },
}

/// Why a template cannot be parsed: where (1-based line and column of the `{{`) and what.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct TemplateError {
    pub(crate) line: usize,
    pub(crate) column: usize,
    pub(crate) message: String,
}

/// Whether `name` may be a field name (and so a placeholder or a column).
pub(crate) fn is_field_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// Tracks the 1-based line and column (in characters) of byte offsets, moving forward only.
struct Cursor<'a> {
    text: &'a str,
    at: usize,
    line: usize,
    column: usize,
}

impl Cursor<'_> {
    /// Line and column of byte offset `to` (not before the previous one asked).
    fn seek(&mut self, to: usize) -> (usize, usize) {
        for c in self.text.get(self.at..to).unwrap_or_default().chars() {
            if c == '\n' {
                self.line += 1;
                self.column = 1;
            } else {
                self.column += 1;
            }
        }
        self.at = self.at.max(to);
        (self.line, self.column)
    }
}

/// Split `text` into text and placeholders; the first problem is the error.
pub(crate) fn parse(text: &str) -> Result<Vec<Piece<'_>>, TemplateError> {
    let (pieces, mut errors) = scan(text);
    if errors.is_empty() {
        Ok(pieces)
    } else {
        Err(errors.swap_remove(0))
    }
}

/// Split `text` into text and placeholders, and every problem found on the way: after a
/// placeholder that is not closed on its line, scanning goes on at the next line; after one
/// that is not a field name, after its `}}`.
pub(crate) fn scan(text: &str) -> (Vec<Piece<'_>>, Vec<TemplateError>) {
    let mut pieces = Vec::new();
    let mut errors = Vec::new();
    let mut rest = text;
    let mut offset = 0;
    let mut cursor = Cursor {
        text,
        at: 0,
        line: 1,
        column: 1,
    };
    // Where the last `}}` starts: a `{{` after it is never closed.
    let last_close = text.rfind("}}");
    while let Some(open) = rest.find("{{") {
        if open > 0 {
            pieces.push(Piece::Text(&rest[..open]));
        }
        let (line, column) = cursor.seek(offset + open);
        let error = |message: String| TemplateError {
            line,
            column,
            message,
        };
        let after = &rest[open + 2..];
        if last_close.is_none_or(|c| c < offset + open + 2) {
            errors.push(error(
                "`{{` is never closed: add `}}` after the field name".into(),
            ));
            return (pieces, errors);
        }
        // The first line break, `{{` or `}}` after the `{{`: scanning stops there, so each
        // byte is looked at once however many placeholders are left open.
        let b = after.as_bytes();
        let (stop, close) = (0..b.len())
            .find_map(|i| match (b[i], b.get(i + 1)) {
                (b'\n', _) => Some((i, false)),
                (b'{', Some(b'{')) => Some((i, false)),
                (b'}', Some(b'}')) => Some((i, true)),
                _ => None,
            })
            .unwrap_or((b.len(), false));
        let inner = &after[..stop];
        if !close {
            let cut = stop;
            errors.push(error(
                "`{{` is not closed on its line: write placeholders as `{{ field }}` on one \
                 line"
                    .into(),
            ));
            // Go on after the line break (or the next `{{`).
            let skip = open + 2 + cut;
            offset += skip;
            rest = &rest[skip..];
            continue;
        }
        let name = inner.trim_matches(' ');
        if !is_field_name(name) {
            errors.push(error(if name.is_empty() {
                "an empty placeholder `{{}}`: put a field name inside".into()
            } else {
                format!(
                    "placeholder `{{{{{inner}}}}}` is not a field name: use letters, \
                     digits, `_`, `-` and `.` (spaces only around the name)"
                )
            }));
        } else {
            pieces.push(Piece::Field { name, line, column });
        }
        let consumed = open + 2 + stop + 2;
        offset += consumed;
        rest = &rest[consumed..];
    }
    if !rest.is_empty() {
        pieces.push(Piece::Text(rest));
    }
    (pieces, errors)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(text: &str) -> Vec<(String, usize, usize)> {
        parse(text)
            .unwrap()
            .into_iter()
            .filter_map(|p| match p {
                Piece::Field { name, line, column } => Some((name.to_string(), line, column)),
                Piece::Text(_) => None,
            })
            .collect()
    }

    #[test]
    fn placeholders_with_and_without_spaces() {
        assert_eq!(
            names("a {{x}} b\n  {{ y.z }}{{  w-1_2  }} }} c"),
            vec![
                ("x".into(), 1, 3),
                ("y.z".into(), 2, 3),
                ("w-1_2".into(), 2, 12)
            ]
        );
        assert_eq!(names("no placeholders } }} {"), vec![]);
    }

    #[test]
    fn malformed_placeholders() {
        let e = parse("ok\nhost: {{ hostname\nx: {{ y }}").unwrap_err();
        assert_eq!((e.line, e.column), (2, 7));
        assert!(
            e.message.contains("not closed on its line"),
            "{}",
            e.message
        );

        let e = parse("a {{ b").unwrap_err();
        assert_eq!((e.line, e.column), (1, 3));
        assert!(e.message.contains("never closed"), "{}", e.message);

        let e = parse("x: {{ a {{ b }}").unwrap_err();
        assert_eq!((e.line, e.column), (1, 4));

        let e = parse("é{{ }}").unwrap_err();
        assert_eq!((e.line, e.column), (1, 2));
        assert!(e.message.contains("empty placeholder"), "{}", e.message);

        let e = parse("{{ host name }}").unwrap_err();
        assert!(e.message.contains("`{{ host name }}`"), "{}", e.message);
        assert!(e.message.contains("not a field name"), "{}", e.message);
    }

    #[test]
    fn scanning_goes_on_after_a_problem() {
        let text = "a {{ x\nb {{ y }} {{ no good }} {{ z }}\nc {{ w }} {{ v";
        let (pieces, errors) = scan(text);
        let found: Vec<_> = pieces
            .iter()
            .filter_map(|p| match p {
                Piece::Field { name, line, column } => Some((*name, *line, *column)),
                Piece::Text(_) => None,
            })
            .collect();
        assert_eq!(found, [("y", 2, 3), ("z", 2, 25), ("w", 3, 3)]);
        let at: Vec<_> = errors.iter().map(|e| (e.line, e.column)).collect();
        assert_eq!(at, [(1, 3), (2, 11), (3, 11)]);
        assert!(errors[0].message.contains("not closed on its line"));
        assert!(errors[1]
            .message
            .contains("`{{ no good }}` is not a field name"));
        assert!(errors[2].message.contains("never closed"));
    }

    /// Many `{{` left open before one far `}}` are scanned in linear time (each used to search
    /// the rest of the text for `}}` again); the fuzz target's input that timed out under load
    /// scans at once too.
    #[test]
    fn open_placeholders_are_scanned_in_linear_time() {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let text = format!("{}}}}}", "{{\n".repeat(1_000_000));
            let _ = tx.send(scan(&text).1.len());
        });
        let errors = rx
            .recv_timeout(std::time::Duration::from_secs(30))
            .expect("scanning did not end");
        assert_eq!(errors, 1_000_000);
        let fuzzed = "{{dad}}{m:}}-{{md}}}{{dosd}}-}{{ dipasswod}}-{{ did}}{{dostnrdd}}-{{d}}-{{ \
                      jid}}{{dostnatnrddod}}-{{ ddreid}}{{dostnrdd}}-}}-{{ did}}{{hodostnrdd}}";
        let (pieces, _) = scan(fuzzed);
        assert!(pieces.contains(&Piece::Field {
            name: "dad",
            line: 1,
            column: 1
        }));
    }

    #[test]
    fn field_names() {
        assert!(is_field_name("disk_serial"));
        assert!(is_field_name("a.b-c"));
        assert!(!is_field_name(""));
        assert!(!is_field_name("a b"));
        assert!(!is_field_name("ä"));
    }
}
