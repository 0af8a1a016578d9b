//! minisign files: the first byte chooses the parser for the rest (`0 mod 3`: a signature,
//! verified against a fixed key when it parses; `1`: a public key; `2`: a secret key, with no
//! passphrase to give).
#![no_main]

use std::sync::OnceLock;

use edgeimage::sign::{PublicKey, SecretKey, Signature};
use libfuzzer_sys::fuzz_target;

fn key() -> Option<&'static PublicKey> {
    static KEY: OnceLock<Option<PublicKey>> = OnceLock::new();
    KEY.get_or_init(|| SecretKey::generate().ok().map(|k| k.public()))
        .as_ref()
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    match which % 3 {
        0 => {
            if let Ok(sig) = Signature::parse(&text) {
                let _ = (sig.to_file_text(), sig.key_id_hex());
                if let Some(k) = key() {
                    let _ = sig.verify(k, b"data");
                }
            }
        }
        1 => {
            if let Ok(k) = PublicKey::parse(&text) {
                let _ = (k.to_file_text(), k.key_id_hex(), k.to_base64());
            }
        }
        _ => {
            let no_passphrase = &mut || Err(anyhow::anyhow!("no passphrase is given"));
            if let Ok(k) = SecretKey::parse(&text, no_passphrase) {
                let _ = (k.key_id_hex(), k.public());
            }
        }
    }
});
