//! The factory flow through the public API: load and validate an inventory, pick each
//! device's row, render its slots, record it, and refuse a second write of the same row.

use std::collections::BTreeMap;

use edgeimage::factory::{inventory, log, render, FieldSpec, Inventory, Kind};
use serde_json::json;

const NET: &str = "hostname: {{ hostname }}\naddresses: [{{address}}]\n";
const JOIN: &str = "token: {{ join_token }}\n";

#[test]
fn a_line_of_three_devices() {
    let dir = tempfile::tempdir().unwrap();
    let inv_path = dir.path().join("inventory.csv");
    std::fs::write(
        &inv_path,
        "id,disk_serial,hostname,address,join_token\r\n\
         store-1,WD-01,edge-1,10.1.0.5/24,JT-aaaa\r\n\
         store-2,WD-02,edge-2,10.2.0.5/24,JT-bbbb\r\n\
         store-3,WD-03,edge-3,10.3.0.5/24,JT-cccc\r\n",
    )
    .unwrap();
    let spec: FieldSpec = [
        ("hostname".to_string(), Kind::Hostname),
        ("address".to_string(), Kind::Cidr),
    ]
    .into_iter()
    .collect();
    let templates = [("network", NET), ("join", JOIN)];

    let inv = Inventory::load(&inv_path).unwrap();
    assert_eq!(inv.key(), inventory::Key::DiskSerial);
    assert_eq!(inv.validate(&spec, &templates).unwrap(), vec![]);

    let log_path = dir.path().join("factory.jsonl");
    for (serial, ok) in [("WD-02", true), ("WD-01", false), ("WD-01", true)] {
        let used = log::used_rows(&log_path).unwrap();
        let row = inv.row_for(Some(serial), None, &used, false).unwrap();
        let slots: BTreeMap<&str, String> = templates
            .iter()
            .map(|(slot, t)| (*slot, render(t, row).unwrap()))
            .collect();
        assert!(slots["join"].contains(row.get("join_token").unwrap()));
        log::append(
            &log_path,
            &json!({
                "row": row.id(),
                "result": if ok { "verified" } else { "failed" },
                "disk_serial": serial,
                "time": "2026-03-01T10:00:00Z",
                "error_kind": if ok { None } else { Some("read-back-mismatch") },
                "fields": row.redacted(&spec),
            }),
        )
        .unwrap();
    }

    let text = std::fs::read_to_string(&log_path).unwrap();
    assert!(!text.contains("JT-"), "a token reached the log: {text}");
    assert!(text.contains("\"join_token\":\"<secret>\""), "{text}");

    let entries = log::read(&log_path).unwrap().entries;
    let used = log::used_rows(&log_path).unwrap();
    let e = inv.row_for(Some("WD-02"), None, &used, false).unwrap_err();
    assert_eq!(
        e,
        "row store-2 was already written to disk WD-02 at 2026-03-01T10:00:00Z; pass --reuse \
         to write it again"
    );
    assert_eq!(
        inv.row_for(Some("WD-02"), None, &used, true).unwrap().id(),
        "store-2"
    );

    let summary = log::summarize(&entries, Some(&inv));
    assert_eq!(summary.devices_verified, 2);
    assert_eq!(summary.failed_attempts, 1);
    assert_eq!(summary.rows_not_written, Some(vec!["store-3".to_string()]));
    assert_eq!(summary.failures_by_kind["read-back-mismatch"], 1);
    assert!(summary.ok());
}
