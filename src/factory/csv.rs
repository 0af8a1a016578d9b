//! A strict RFC 4180 reader: records separated by CRLF or LF, fields separated by commas,
//! fields that contain a comma, a quote or a line break enclosed in double quotes with inner
//! quotes doubled (`""`). Anything else is refused with its line and column: a quote inside an
//! unquoted field, text after a closing quote, a carriage return not followed by a line feed,
//! a quoted field that never closes, an empty line before the last record.
//!
//! Empty lines after the last record are ignored. A UTF-8 byte order mark is removed by the
//! caller. Error messages never quote cell contents (cells may hold secrets).

/// One record: the line it starts on (1-based) and its fields, unquoted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Record {
    pub(crate) line: usize,
    pub(crate) fields: Vec<String>,
}

/// Why the text is not CSV: where (1-based line and column, in characters) and what.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct CsvError {
    pub(crate) line: usize,
    pub(crate) column: usize,
    pub(crate) message: String,
}

/// Parse `text` into records. Empty lines after the last record are dropped.
pub(crate) fn parse(text: &str) -> Result<Vec<Record>, CsvError> {
    let mut p = Parser {
        chars: text.chars().peekable(),
        line: 1,
        column: 1,
    };
    let mut records = Vec::new();
    // Lines that were empty, not yet known to be trailing.
    let mut blank: Option<usize> = None;
    while p.chars.peek().is_some() {
        let line = p.line;
        let (fields, empty_line) = p.record()?;
        if empty_line {
            blank.get_or_insert(line);
            continue;
        }
        if let Some(b) = blank {
            return Err(CsvError {
                line: b,
                column: 1,
                message: "an empty line between records: remove it (or fill the row)".into(),
            });
        }
        records.push(Record { line, fields });
    }
    Ok(records)
}

struct Parser<'a> {
    chars: std::iter::Peekable<std::str::Chars<'a>>,
    line: usize,
    column: usize,
}

impl Parser<'_> {
    fn next(&mut self) -> Option<char> {
        let c = self.chars.next()?;
        if c == '\n' {
            self.line += 1;
            self.column = 1;
        } else {
            self.column += 1;
        }
        Some(c)
    }

    fn err<T>(&self, line: usize, column: usize, message: &str) -> Result<T, CsvError> {
        Err(CsvError {
            line,
            column,
            message: message.into(),
        })
    }

    /// Consume a line end at the current position (`\n` or `\r\n`). `Ok(false)` when the
    /// next character is not a line end.
    fn line_end(&mut self) -> Result<bool, CsvError> {
        match self.chars.peek() {
            Some('\n') => {
                self.next();
                Ok(true)
            }
            Some('\r') => {
                let (line, column) = (self.line, self.column);
                self.next();
                if self.chars.peek() == Some(&'\n') {
                    self.next();
                    Ok(true)
                } else {
                    self.err(
                        line,
                        column,
                        "a carriage return not followed by a line feed: end lines with CRLF \
                         or LF, or quote the field",
                    )
                }
            }
            _ => Ok(false),
        }
    }

    /// One record up to and including its line end (or the end of the text). Returns the
    /// fields and whether the line was empty (no characters at all).
    fn record(&mut self) -> Result<(Vec<String>, bool), CsvError> {
        if self.line_end()? {
            return Ok((Vec::new(), true));
        }
        let mut fields = Vec::new();
        loop {
            fields.push(self.field()?);
            match self.chars.peek() {
                Some(',') => {
                    self.next();
                }
                None => return Ok((fields, false)),
                Some(_) => {
                    if self.line_end()? {
                        return Ok((fields, false));
                    }
                    // field() stops only at a comma, a line end or the end of the text.
                    return self.err(self.line, self.column, "unexpected character");
                }
            }
        }
    }

    /// One field, stopping before the comma or line end that ends it.
    fn field(&mut self) -> Result<String, CsvError> {
        let mut value = String::new();
        if self.chars.peek() == Some(&'"') {
            let (line, column) = (self.line, self.column);
            self.next();
            loop {
                match self.next() {
                    None => {
                        return self.err(
                            line,
                            column,
                            "the quoted field opened here never closes: add the closing \
                             quote (write a quote inside a field as \"\")",
                        )
                    }
                    Some('"') if self.chars.peek() == Some(&'"') => {
                        self.next();
                        value.push('"');
                    }
                    Some('"') => break,
                    Some(c) => value.push(c),
                }
            }
            match self.chars.peek() {
                None | Some(',') | Some('\n') | Some('\r') => Ok(value),
                Some(_) => self.err(
                    self.line,
                    self.column,
                    "text after the closing quote: put the whole field inside the quotes \
                     (write a quote inside a field as \"\")",
                ),
            }
        } else {
            loop {
                match self.chars.peek() {
                    None | Some(',') | Some('\n') | Some('\r') => return Ok(value),
                    Some('"') => {
                        return self.err(
                            self.line,
                            self.column,
                            "a quote inside an unquoted field: quote the whole field and \
                             double the quote (\"a \"\"b\"\" c\")",
                        )
                    }
                    Some(_) => {
                        if let Some(c) = self.next() {
                            value.push(c);
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(text: &str) -> Vec<(usize, Vec<String>)> {
        parse(text)
            .unwrap()
            .into_iter()
            .map(|r| (r.line, r.fields))
            .collect()
    }

    fn v(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn plain_lf_and_crlf() {
        let want = vec![(1, v(&["id", "name"])), (2, v(&["a", "b"]))];
        assert_eq!(fields("id,name\na,b\n"), want);
        assert_eq!(fields("id,name\r\na,b\r\n"), want);
        assert_eq!(fields("id,name\r\na,b"), want);
        assert_eq!(fields("id,name\na,b\r\n"), want);
    }

    #[test]
    fn quotes_commas_and_line_breaks_inside_quotes() {
        let text = "id,note\n\"a,1\",\"say \"\"hi\"\"\"\n\"b\",\"two\r\nlines\nhere\"\nc,\"\"\n";
        assert_eq!(
            fields(text),
            vec![
                (1, v(&["id", "note"])),
                (2, v(&["a,1", "say \"hi\""])),
                (3, v(&["b", "two\r\nlines\nhere"])),
                (6, v(&["c", ""])),
            ]
        );
    }

    #[test]
    fn empty_fields_and_trailing_empty_lines() {
        assert_eq!(
            fields("id,a,b\nx,,\n\n\r\n\n"),
            vec![(1, v(&["id", "a", "b"])), (2, v(&["x", "", ""]))]
        );
        assert_eq!(fields(""), vec![]);
        assert_eq!(fields("\n\n"), vec![]);
    }

    #[test]
    fn empty_line_between_records_is_refused() {
        let e = parse("id\na\n\nb\n").unwrap_err();
        assert_eq!((e.line, e.column), (3, 1));
        assert!(e.message.contains("empty line"), "{}", e.message);
    }

    #[test]
    fn quote_inside_unquoted_field() {
        let e = parse("id,n\nab\"c,d\n").unwrap_err();
        assert_eq!((e.line, e.column), (2, 3));
        assert!(
            e.message.contains("inside an unquoted field"),
            "{}",
            e.message
        );
    }

    #[test]
    fn garbage_after_closing_quote() {
        let e = parse("id,n\n\"ab\"c,d\n").unwrap_err();
        assert_eq!((e.line, e.column), (2, 5));
        assert!(
            e.message.contains("after the closing quote"),
            "{}",
            e.message
        );
        let e = parse("id,n\n\"ab\" ,d\n").unwrap_err();
        assert_eq!((e.line, e.column), (2, 5));
    }

    #[test]
    fn unterminated_quote_points_at_its_opening() {
        let e = parse("id,n\nx,\"open\nmore\n").unwrap_err();
        assert_eq!((e.line, e.column), (2, 3));
        assert!(e.message.contains("never closes"), "{}", e.message);
    }

    #[test]
    fn stray_carriage_return() {
        let e = parse("id,n\nx,y\rz\n").unwrap_err();
        assert_eq!((e.line, e.column), (2, 4));
        assert!(e.message.contains("carriage return"), "{}", e.message);
        // Inside quotes it is data.
        assert_eq!(fields("id\n\"a\rb\"\n")[1].1, v(&["a\rb"]));
    }

    #[test]
    fn columns_count_characters_not_bytes() {
        let e = parse("id,n\nü\"\n").unwrap_err();
        assert_eq!((e.line, e.column), (2, 2));
    }
}
