//! The `{{ field }}` template parser (`crate::template`, reached through
//! `personalize::fields` / `personalize::render`, `factory::render` and
//! `Inventory::validate`, which scans for every problem).
#![no_main]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use edgeimage::factory::{line, Inventory};
use edgeimage::personalize;
use libfuzzer_sys::fuzz_target;

const INVENTORY: &[u8] = b"id,disk_serial,hostname,address\nnode-1,S123,edge-01,10.0.0.5/24\n";

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = personalize::render(text, &BTreeMap::new());
    if let Ok(names) = personalize::fields(text) {
        let values: BTreeMap<String, String> = names
            .into_iter()
            .map(|n| (n, "value".to_string()))
            .collect();
        let _ = personalize::render(text, &values);
    }
    let Ok(inv) = Inventory::parse(Path::new("inventory.csv"), INVENTORY) else {
        return;
    };
    let spec = line::field_spec(inv.columns(), &BTreeSet::new());
    let _ = inv.validate(&spec, &[("slot", text)]);
    if let Some(row) = inv.rows().first() {
        let _ = edgeimage::factory::render(text, row);
    }
});
