//! minisign-compatible keys and signatures, implemented with `ed25519-dalek`.
//!
//! Files written here are read by the `minisign` command and the other way round. Every binary
//! detail follows minisign's own source; each item names where its facts come from:
//!
//! - `jedisct1/minisign` `src/minisign.h`: the structures (`PubkeyStruct`, `SigStruct`,
//!   `SeckeyStruct`, `KeynumSK`), the algorithm tags (`Ed`, `ED`, `Sc`, `\0\0`, `B2`), the
//!   comment prefixes and the line-length limits (`COMMENTMAXBYTES` 1024,
//!   `TRUSTEDCOMMENTMAXBYTES` 8192).
//! - `jedisct1/minisign` `src/minisign.c`: how files are written (`write_pk_file`, `sign`,
//!   `generate`, `encrypt_key`) and read (`pubkey_load_string`, `sig_load`, `seckey_load`,
//!   `decrypt_key`, `verify`).
//! - `jedisct1/minisign` `src/helpers.c`: `le64_load` (key ids and KDF limits are
//!   little-endian), `trim` (a line ends at its first `\r` or `\n`), `xfput_b64` (one base64
//!   blob per line, then `\n`); `src/base64.c`: standard alphabet, `=` padding required.
//! - libsodium `src/libsodium/crypto_pwhash/scryptsalsa208sha256/pwhash_scryptsalsa208sha256.c`
//!   (`pickparams`) and `src/libsodium/include/sodium/crypto_pwhash_scryptsalsa208sha256.h`
//!   (the `SENSITIVE`/`INTERACTIVE` limits): see [`kdf`].
//!
//! Verification uses `ed25519-dalek`'s `verify_strict` and public keys are refused when
//! `VerifyingKey::is_weak` says they have small order. That is what libsodium's
//! `crypto_sign_verify_detached` (used by minisign; libsodium
//! `src/libsodium/crypto_sign/ed25519/ref10/open.c`) does too: it rejects small-order public
//! keys and small-order `R`, so a signature we accept is one minisign accepts. Without these
//! checks a small-order key would make a forged signature valid for almost any file.

mod files;
pub mod kdf;
mod keys;
mod passphrase;
mod signature;
#[cfg(test)]
mod tests;

pub use files::{generate_key_pair, validate_key_name};
pub use kdf::Kdf;
pub use keys::{PublicKey, SecretKey};
pub use passphrase::{check_new_passphrase, read_passphrase, PassphraseSource, MAX_PASSPHRASE};
pub use signature::{prehash, SigAlg, Signature, VerifyError};

use anyhow::{bail, Result};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use zeroize::Zeroizing;

/// First line of every minisign file (`COMMENT_PREFIX`, `src/minisign.h`).
pub const UNTRUSTED_COMMENT_PREFIX: &str = "untrusted comment: ";
/// Third line of a signature file (`TRUSTED_COMMENT_PREFIX`, `src/minisign.h`).
pub const TRUSTED_COMMENT_PREFIX: &str = "trusted comment: ";

/// Longest untrusted comment text minisign reads back: `sig_load` reads the line with
/// `fgets(comment, COMMENTMAXBYTES)` (at most 1023 bytes including the `\n`) and fails with
/// "Untrusted signature comment too long" when no `\n` was read. 1023 − 19 (prefix) − 1 (`\n`).
pub const MAX_UNTRUSTED_COMMENT: usize = 1024 - 1 - UNTRUSTED_COMMENT_PREFIX.len() - 1;
/// Longest trusted comment text: `sign` refuses `len >= TRUSTEDCOMMENTMAXBYTES - sizeof
/// TRUSTED_COMMENT_PREFIX` (8192 − 18), and `sig_load` reads the line with `fgets(.., 8192)`;
/// both give 8173.
pub const MAX_TRUSTED_COMMENT: usize = 8192 - 1 - TRUSTED_COMMENT_PREFIX.len() - 1;

/// Signature algorithm tag of keys and legacy signatures (`SIGALG`, `src/minisign.h`).
pub(crate) const SIGALG: [u8; 2] = *b"Ed";
/// Signature algorithm tag of prehashed signatures (`SIGALG_HASHED`, `src/minisign.h`).
pub(crate) const SIGALG_HASHED: [u8; 2] = *b"ED";
/// scrypt key derivation (`KDFALG`, `src/minisign.h`).
pub(crate) const KDFALG: [u8; 2] = *b"Sc";
/// No key derivation: the secret key is stored in clear (`KDFNONE`, `src/minisign.h`).
pub(crate) const KDFNONE: [u8; 2] = [0, 0];
/// BLAKE2b-256 checksum (`CHKALG`, `src/minisign.h`).
pub(crate) const CHKALG: [u8; 2] = *b"B2";

/// A key id as text: the 8 bytes read little-endian (`le64_load`, `src/minisign.c`) in
/// uppercase hex, always 16 digits. minisign 0.11 prints `%" PRIX64` (no leading zeros), so
/// its comment lines can be shorter; readers of key IDs (the trust store's `revoked` list)
/// accept both.
pub(crate) fn key_id_hex(key_id: &[u8; 8]) -> String {
    format!("{:016X}", u64::from_le_bytes(*key_id))
}

/// Base64 of one blob, standard alphabet with padding (`bin_to_b64`, `src/base64.c`).
pub(crate) fn b64(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

/// One base64 line of a minisign file.
pub(crate) struct B64Line<'a> {
    /// The line's text (surrounding blanks are ignored).
    pub text: &'a str,
    /// 1-based line number, for messages.
    pub line_no: usize,
    /// The file kind, for messages: "public key", "signature", "secret key".
    pub file: &'a str,
    /// What the line holds, for messages: "a minisign public key", "the global signature".
    pub item: &'a str,
    /// Exact decoded length.
    pub len: usize,
}

impl B64Line<'_> {
    /// Decode the line, which must hold exactly `len` bytes. The buffer is zeroized when dropped;
    /// its capacity is reserved up front so no copy of the decoded bytes is left behind by a
    /// reallocation.
    pub fn decode(&self) -> Result<Zeroizing<Vec<u8>>> {
        let (file, n, item, len) = (self.file, self.line_no, self.item, self.len);
        let text = self.text.trim();
        let expected_chars = len.div_ceil(3) * 4;
        if text.is_empty() {
            bail!(
                "{file}: line {n} is empty; it should hold {item} ({expected_chars} base64 characters)"
            );
        }
        if text.len() > 4 * expected_chars {
            bail!(
                "{file}: line {n} is {} characters long; {item} is {expected_chars} base64 characters",
                text.len()
            );
        }
        let mut out = Zeroizing::new(Vec::with_capacity(text.len() / 4 * 3 + 3));
        // The decoder's detail quotes a byte of the input: left out.
        if STANDARD.decode_vec(text, &mut out).is_err() {
            bail!("{file}: line {n} is not valid base64 (standard alphabet with = padding)");
        }
        if out.len() != len {
            bail!(
                "{file}: line {n} decodes to {} bytes, but {item} is {len} bytes",
                out.len()
            );
        }
        Ok(out)
    }
}

/// The lines of a minisign file: split at `\n`, one trailing `\r` removed from each (minisign's
/// `trim`), trailing empty lines dropped.
pub(crate) fn text_lines(text: &str) -> Vec<&str> {
    let mut lines: Vec<&str> = text
        .split('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .collect();
    while lines.last().is_some_and(|l| l.trim().is_empty()) {
        lines.pop();
    }
    lines
}

/// Refuse more than `max` lines, naming the first extra one.
pub(crate) fn no_extra_lines(lines: &[&str], max: usize, what: &str) -> Result<()> {
    if lines.len() > max {
        bail!(
            "{what}: unexpected text on line {} (a {what} file has {max} lines)",
            max + 1
        );
    }
    Ok(())
}

/// A comment must be one line minisign can read back whole: no `\r`, `\n` or NUL (minisign
/// asserts the first two in `sign` and its `trim` would cut the line there; it handles comments
/// as C strings), at most `max` bytes.
pub(crate) fn check_comment(text: &str, what: &str, max: usize) -> Result<()> {
    if let Some(c) = text.chars().find(|c| matches!(c, '\r' | '\n' | '\0')) {
        bail!(
            "{what} contains the character {:?}; a comment is a single line without CR, LF or NUL",
            c
        );
    }
    if text.len() > max {
        bail!(
            "{what} is {} bytes long; minisign reads at most {max} bytes: shorten it",
            text.len()
        );
    }
    Ok(())
}

/// Strip `prefix` from line `line_no` of `what`, or say what was expected.
pub(crate) fn strip_prefix<'a>(
    line: &'a str,
    prefix: &str,
    line_no: usize,
    what: &str,
) -> Result<&'a str> {
    match line.strip_prefix(prefix) {
        Some(rest) => Ok(rest),
        None => bail!(
            "{what}: line {line_no} should start with {:?}; this is not a minisign {what} file",
            prefix
        ),
    }
}
