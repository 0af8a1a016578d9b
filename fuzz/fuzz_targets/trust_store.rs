//! `TrustStore::load` on a store holding one valid key under `trusted/` and the input as
//! `revoked`.
#![no_main]

use std::sync::OnceLock;

use edgeimage::sign::SecretKey;
use edgeimage::trust::TrustStore;
use libfuzzer_sys::fuzz_target;

/// A public key file and its key ID, made once.
fn key() -> Option<&'static (String, String)> {
    static KEY: OnceLock<Option<(String, String)>> = OnceLock::new();
    KEY.get_or_init(|| {
        let k = SecretKey::generate().ok()?.public();
        Some((k.to_file_text(), k.key_id_hex()))
    })
    .as_ref()
}

fuzz_target!(|data: &[u8]| {
    let Some((pubkey, id)) = key() else {
        return;
    };
    let Some(dir) = edgeimage_fuzz::scratch() else {
        return;
    };
    let d = dir.path();
    if edgeimage_fuzz::put(d, "trusted/release.pub", pubkey.as_bytes()).is_none()
        || edgeimage_fuzz::put(d, "revoked", data).is_none()
    {
        return;
    }
    if let Ok(store) = TrustStore::load(d) {
        let _ = store.lookup(id);
        let _ = store.lookup("0123456789ABCDEF");
        let _ = (store.key_ids(), store.files().len());
    }
});
