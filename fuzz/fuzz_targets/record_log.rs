//! The factory record log reader on the input as a log file: `factory::log::read`, the
//! streaming `scan` and `used_rows`, then the summary `flash` prints.
#![no_main]

use edgeimage::factory::log;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some(dir) = edgeimage_fuzz::scratch() else {
        return;
    };
    let Some(path) = edgeimage_fuzz::put(dir.path(), "records.jsonl", data) else {
        return;
    };
    if let Ok(l) = log::read(&path) {
        let s = log::summarize(&l.entries, None);
        let _ = (s.ok(), s.render());
        for e in &l.entries {
            let _ = (e.verified(), e.failure_kind());
        }
    }
    let _ = log::scan(&path, &mut |e| {
        let _ = e.verified();
        Ok(())
    });
    let _ = log::used_rows(&path);
});
