//! `Inventory::parse` (CSV or JSON); a parsed inventory is validated against a template using
//! every column, and rows are picked for devices.
#![no_main]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use edgeimage::factory::{line, Inventory};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(inv) = Inventory::parse(Path::new("inventory.csv"), data) else {
        return;
    };
    let _ = (inv.path(), inv.format(), inv.key());
    let spec = line::field_spec(inv.columns(), &BTreeSet::new());
    let template: String = inv
        .columns()
        .iter()
        .map(|c| format!("{{{{ {c} }}}}\n"))
        .collect();
    let _ = inv.validate(&spec, &[("slot", template.as_str())]);
    for row in inv.rows() {
        let _ = (row.id(), row.line(), row.location(), row.redacted(&spec));
        let _ = edgeimage::factory::render(&template, row);
    }
    let used = BTreeMap::new();
    let _ = inv.row_for(None, None, &used, false);
    let _ = inv.row_for(Some("S123"), Some("H456"), &used, true);
});
