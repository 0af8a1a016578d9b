//! Machine configuration, its delivery, META network configuration and Image Factory
//! schematics.
//!
//! Machine configurations hold private keys and tokens: nothing here prints their content.
//! Errors name paths inside the YAML (`machine.token`) and the rule that failed, never a
//! value; [`machine::MachineConfig`]'s `Debug` shows its digest and machine type only.

pub mod delivery;
pub mod fixtures;
pub mod machine;
pub mod network;
pub mod schematic;

use serde_json::Value;

/// Parse multi-document YAML into JSON values (empty documents are skipped). The error says
/// where the YAML is broken, with anything quoted in the parser's message left out (it could
/// be a secret value).
pub(crate) fn parse_yaml_documents(data: &[u8]) -> Result<Vec<Value>, String> {
    use serde::Deserialize;
    crate::format::yaml::check_depth(data, crate::format::yaml::MAX_DEPTH)?;
    let mut docs = Vec::new();
    for (i, de) in serde_norway::Deserializer::from_slice(data).enumerate() {
        let v = serde_norway::Value::deserialize(de).map_err(|e| yaml_error(i + 1, &e))?;
        if v.is_null() {
            continue;
        }
        docs.push(yaml_to_json(v, &format!("document {}", i + 1))?);
    }
    Ok(docs)
}

/// A YAML error without quoted material.
pub(crate) fn yaml_error(doc: usize, e: &serde_norway::Error) -> String {
    let msg = crate::input::redact(&e.to_string());
    match e.location() {
        Some(l) => format!(
            "document {doc} is not valid YAML at line {}, column {}: {msg}",
            l.line(),
            l.column()
        ),
        None => format!("document {doc} is not valid YAML: {msg}"),
    }
}

fn yaml_to_json(v: serde_norway::Value, path: &str) -> Result<Value, String> {
    use serde_norway::Value as Y;
    Ok(match v {
        Y::Null => Value::Null,
        Y::Bool(b) => Value::Bool(b),
        Y::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::from(i)
            } else if let Some(u) = n.as_u64() {
                Value::from(u)
            } else {
                let f = n.as_f64().unwrap_or(f64::NAN);
                serde_json::Number::from_f64(f)
                    .map(Value::Number)
                    .ok_or_else(|| format!("{path}: a number that is not finite"))?
            }
        }
        Y::String(s) => Value::String(s),
        Y::Sequence(seq) => Value::Array(
            seq.into_iter()
                .enumerate()
                .map(|(i, x)| yaml_to_json(x, &format!("{path}[{i}]")))
                .collect::<Result<_, _>>()?,
        ),
        Y::Mapping(m) => {
            let mut out = serde_json::Map::new();
            for (k, x) in m {
                let key = match k {
                    Y::String(s) => s,
                    Y::Number(n) => n.to_string(),
                    Y::Bool(b) => b.to_string(),
                    _ => return Err(format!("{path}: a mapping key that is not a scalar")),
                };
                let sub = format!("{path}.{key}");
                out.insert(key, yaml_to_json(x, &sub)?);
            }
            Value::Object(out)
        }
        Y::Tagged(t) => return Err(format!("{path}: YAML tag {} is not supported", t.tag)),
    })
}

/// The JSON type of a value, for messages ("a string", "a mapping", …).
pub(crate) fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_and_documents() {
        let docs = parse_yaml_documents(b"a: 1\n---\n---\nb: [x, 2]\n").unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[1]["b"][1], 2);
        let e = parse_yaml_documents(b"a: 1\n---\nb: [\n").unwrap_err();
        assert!(e.starts_with("document 2 is not valid YAML at line"), "{e}");
        let e = parse_yaml_documents(b"a: !custom 3\n").unwrap_err();
        assert!(e.contains("document 1.a: YAML tag"), "{e}");
    }
}
