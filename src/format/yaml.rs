//! A linear pre-check of YAML text before a YAML parser sees it: how deep its collections nest.
//!
//! The YAML parser edgeimage uses (libyaml, through `serde_norway`) takes time that grows with
//! the square of the nesting depth (40,000 nested `[` take seconds, 200,000 minutes), and its
//! deserializer only counts depth after the whole document is parsed. [`check_depth`] reads the
//! text once and refuses it when flow collections (`[`, `{`) and block collections (each
//! deeper indentation, each `- ` or `? ` that opens a collection on a line) nest deeper than a
//! limit. It is conservative where YAML is subtle: it follows quotes, comments and block
//! scalars (`|`, `>`) so their content is not counted, and what it cannot tell counts as
//! nesting, which only matters past a depth no real configuration reaches.

/// The deepest nesting edgeimage reads. Talos machine configurations nest about 10 levels.
pub const MAX_DEPTH: usize = 64;

/// Refuse `text` when its collections nest deeper than `max`; the message names the line
/// (never its content).
pub fn check_depth(text: &[u8], max: usize) -> Result<(), String> {
    let mut flow = 0usize;
    // Indentation columns of the open block collections.
    let mut indents: Vec<usize> = Vec::new();
    // A block scalar's content: lines indented more than this column.
    let mut scalar_above: Option<usize> = None;
    // Inside a quoted scalar that may span lines.
    let mut quote: Option<u8> = None;
    for (n, line) in text.split(|&b| b == b'\n').enumerate() {
        let line_no = n + 1;
        let indent = line.iter().take_while(|&&b| b == b' ').count();
        let rest = &line[indent..];
        let blank = rest.iter().all(|b| b.is_ascii_whitespace()) || rest.first() == Some(&b'#');
        if let Some(col) = scalar_above {
            if blank || indent > col {
                continue;
            }
            scalar_above = None;
        }
        if quote.is_none() && flow == 0 {
            if blank {
                continue;
            }
            if rest.starts_with(b"---") || rest.starts_with(b"...") {
                indents.clear();
                continue;
            }
            while indents.last().is_some_and(|&i| i >= indent) {
                indents.pop();
            }
            indents.push(indent);
            // "- - x" and "? - x" open one collection per indicator on the same line.
            let mut i = 0;
            while i + 1 < rest.len() && matches!(rest[i], b'-' | b'?') && rest[i + 1] == b' ' {
                i += 2;
                while i < rest.len() && rest[i] == b' ' {
                    i += 1;
                }
                indents.push(indent + i);
            }
            if indents.len() > max {
                return Err(too_deep(line_no, max));
            }
        }
        let mut i = 0;
        while i < line.len() {
            let b = line[i];
            match quote {
                Some(b'\'') => {
                    if b == b'\'' {
                        if line.get(i + 1) == Some(&b'\'') {
                            i += 1;
                        } else {
                            quote = None;
                        }
                    }
                }
                Some(_) => {
                    if b == b'\\' {
                        i += 1;
                    } else if b == b'"' {
                        quote = None;
                    }
                }
                None => match b {
                    b'#' if i == 0 || line[i - 1] == b' ' || line[i - 1] == b'\t' => break,
                    b'"' | b'\'' if starts_scalar(line, i) => quote = Some(b),
                    b'[' | b'{' => {
                        flow += 1;
                        if flow + indents.len() > max {
                            return Err(too_deep(line_no, max));
                        }
                    }
                    b']' | b'}' => flow = flow.saturating_sub(1),
                    _ => {}
                },
            }
            i += 1;
        }
        // A block scalar header ends its line ("key: |", "- >-", "|2"): its content follows.
        if quote.is_none() && flow == 0 && block_scalar_header(line) {
            scalar_above = Some(indent);
        }
    }
    Ok(())
}

fn too_deep(line: usize, max: usize) -> String {
    format!(
        "collections nest deeper than {max} levels (at line {line}); no configuration edgeimage \
         reads nests that deep"
    )
}

/// Whether a quote at `i` opens a quoted scalar (not an apostrophe inside a plain scalar).
fn starts_scalar(line: &[u8], i: usize) -> bool {
    let before = line[..i].iter().rev().find(|b| **b != b' ' && **b != b'\t');
    matches!(before, None | Some(b':' | b'-' | b',' | b'[' | b'{' | b'?'))
}

/// Whether `line` ends (before any comment) in a block scalar indicator.
fn block_scalar_header(line: &[u8]) -> bool {
    let end = line
        .windows(2)
        .position(|w| (w[0] == b' ' || w[0] == b'\t') && w[1] == b'#')
        .unwrap_or(line.len());
    let text = line[..end].trim_ascii_end();
    let Some(p) = text.iter().rposition(|&b| b == b'|' || b == b'>') else {
        return false;
    };
    // Only chomping and indentation indicators may follow, and it must follow ": ", "- " or
    // start the line.
    text[p + 1..]
        .iter()
        .all(|&b| b == b'+' || b == b'-' || b.is_ascii_digit())
        && (p == 0 || matches!(text[..p].trim_ascii_end().last(), Some(b':' | b'-')))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn real_documents_pass() {
        let doc = b"version: v1alpha1\nmachine:\n  type: worker\n  install:\n    disk: /dev/sda\n    extraKernelArgs: [console=ttyS0, {a: [1, 2]}]\n  files:\n    - content: |\n        [[[[[[[[[[[[[[[[[[[[[[[[[[[[\n            deeply: indented:\n                       text\n      path: /var/x  # a [ comment\n    - - - nested\n      - list\ncluster:\n  name: 'it''s [ fine'\n  x: \"a \\\" [ b\"\n---\nsecond: doc\n";
        check_depth(doc, MAX_DEPTH).unwrap();
    }

    #[test]
    fn deep_flow_and_block_nesting_is_refused_in_linear_time() {
        let flow = "[".repeat(200_000);
        let e = check_depth(flow.as_bytes(), MAX_DEPTH).unwrap_err();
        assert!(e.contains("deeper than 64 levels (at line 1)"), "{e}");
        let braces = format!("a: {}", "{b: ".repeat(100));
        assert!(check_depth(braces.as_bytes(), MAX_DEPTH).is_err());
        let dashes = format!("{}x\n", "- ".repeat(100));
        let e = check_depth(dashes.as_bytes(), MAX_DEPTH).unwrap_err();
        assert!(e.contains("line 1"), "{e}");
        let mut indented = String::new();
        for i in 0..100 {
            indented.push_str(&format!("{}k{i}:\n", " ".repeat(i)));
        }
        let e = check_depth(indented.as_bytes(), MAX_DEPTH).unwrap_err();
        assert!(e.contains("line 65"), "{e}");
        // Content of quotes and block scalars does not count; 63 levels pass.
        let quoted = format!("a: \"{}\"\n", "[".repeat(1000));
        check_depth(quoted.as_bytes(), MAX_DEPTH).unwrap();
        let just = format!("{}{}", "[".repeat(63), "]".repeat(63));
        check_depth(just.as_bytes(), MAX_DEPTH).unwrap();
    }
}
