//! Signatures in minisign's `.minisig` format.

use std::fmt;
use std::io::{self, Read};
use std::path::Path;

use anyhow::{bail, Context, Result};
use blake2::{Blake2b512, Digest};

use super::files::read_public_file;
use super::keys::PublicKey;
use super::{
    b64, check_comment, key_id_hex, no_extra_lines, strip_prefix, text_lines, B64Line,
    MAX_TRUSTED_COMMENT, MAX_UNTRUSTED_COMMENT, SIGALG, SIGALG_HASHED, TRUSTED_COMMENT_PREFIX,
    UNTRUSTED_COMMENT_PREFIX,
};

/// `SigStruct` (`jedisct1/minisign` `src/minisign.h`): sig_alg 2 | keynum 8 | sig 64.
const SIG_STRUCT_BYTES: usize = 2 + 8 + 64;

/// What the signature signs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SigAlg {
    /// `ED`: Ed25519 over the BLAKE2b-512 digest of the file (`SIGALG_HASHED`; the digest is
    /// `crypto_generichash` with no key and `crypto_generichash_BYTES_MAX` = 64 bytes,
    /// `message_load_hashed` in `src/minisign.c`). This is plain Ed25519 over the digest, not
    /// Ed25519ph.
    Prehashed,
    /// `Ed`: Ed25519 over the file itself (`SIGALG`). Verified, never written.
    Legacy,
}

impl SigAlg {
    /// The two bytes at the start of the signature line.
    pub fn tag(self) -> [u8; 2] {
        match self {
            SigAlg::Prehashed => SIGALG_HASHED,
            SigAlg::Legacy => SIGALG,
        }
    }
}

/// A minisign signature (`.minisig` file).
///
/// [`Signature::parse`] and [`crate::sign::SecretKey::sign`] make sure both comments are single
/// lines within minisign's limits; [`Signature::to_file_text`] writes the fields as they are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signature {
    pub algorithm: SigAlg,
    pub key_id: [u8; 8],
    pub signature: [u8; 64],
    /// Signed by the global signature; without the `trusted comment: ` prefix.
    pub trusted_comment: String,
    pub global_signature: [u8; 64],
    /// Not signed; without the `untrusted comment: ` prefix.
    pub untrusted_comment: String,
}

/// Why a signature does not verify.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VerifyError {
    /// The signature names another key id than the public key's (both as 16 hex digits).
    KeyIdMismatch { signature: String, key: String },
    /// The signature over the data is not valid for this key.
    BadSignature,
    /// The global signature over signature ‖ trusted comment is not valid for this key.
    BadGlobalSignature,
}

impl fmt::Display for VerifyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VerifyError::KeyIdMismatch { signature, key } => write!(
                f,
                "the signature was made with key {signature}, but the public key given is \
                 {key}: verify with the public key {signature}"
            ),
            VerifyError::BadSignature => f.write_str(
                "signature verification failed: the data is not what was signed (it was \
                 changed or damaged), or the signature was altered",
            ),
            VerifyError::BadGlobalSignature => f.write_str(
                "trusted comment verification failed: the trusted comment or the global \
                 signature was altered",
            ),
        }
    }
}

impl std::error::Error for VerifyError {}

/// BLAKE2b-512 of `data`, what a prehashed (`ED`) signature signs.
pub fn prehash(data: &[u8]) -> [u8; 64] {
    Blake2b512::digest(data).into()
}

/// BLAKE2b-512 of everything `reader` yields.
pub(crate) fn prehash_reader(reader: &mut dyn Read) -> io::Result<[u8; 64]> {
    let mut h = Blake2b512::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => h.update(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(h.finalize().into())
}

impl Signature {
    /// Parse a `.minisig` file: `untrusted comment: …`, base64 of `SigStruct`,
    /// `trusted comment: …`, base64 of the 64-byte global signature (`sig_load`,
    /// `src/minisign.c`). Both `ED` and legacy `Ed` signatures are accepted.
    pub fn parse(text: &str) -> Result<Signature> {
        const FILE: &str = "signature";
        let lines = text_lines(text);
        let missing = |n: usize, what: &str| -> Result<Signature> {
            if lines.is_empty() {
                bail!("signature: the text is empty; expected a minisign signature (.minisig)")
            }
            bail!("signature: line {n} ({what}) is missing; a minisign signature has 4 lines")
        };
        if lines.len() < 4 {
            return match lines.len() {
                0 | 1 => missing(2, "the base64 signature"),
                2 => missing(3, "the trusted comment"),
                _ => missing(4, "the base64 global signature"),
            };
        }
        no_extra_lines(&lines, 4, FILE)?;
        let untrusted = strip_prefix(lines[0], UNTRUSTED_COMMENT_PREFIX, 1, FILE)?;
        check_comment(
            untrusted,
            "signature: the untrusted comment",
            MAX_UNTRUSTED_COMMENT,
        )?;
        let raw = B64Line {
            text: lines[1],
            line_no: 2,
            file: FILE,
            item: "a minisign signature",
            len: SIG_STRUCT_BYTES,
        }
        .decode()?;
        let algorithm = match [raw[0], raw[1]] {
            SIGALG_HASHED => SigAlg::Prehashed,
            SIGALG => SigAlg::Legacy,
            _ => bail!(
                "signature: unsupported signature algorithm (minisign signatures are \"ED\", or \
                 \"Ed\" for legacy ones)"
            ),
        };
        let trusted = strip_prefix(lines[2], TRUSTED_COMMENT_PREFIX, 3, FILE)?;
        check_comment(
            trusted,
            "signature: the trusted comment",
            MAX_TRUSTED_COMMENT,
        )?;
        let global = B64Line {
            text: lines[3],
            line_no: 4,
            file: FILE,
            item: "the global signature",
            len: 64,
        }
        .decode()?;
        let mut key_id = [0u8; 8];
        key_id.copy_from_slice(&raw[2..10]);
        let mut signature = [0u8; 64];
        signature.copy_from_slice(&raw[10..74]);
        let mut global_signature = [0u8; 64];
        global_signature.copy_from_slice(&global);
        Ok(Signature {
            algorithm,
            key_id,
            signature,
            trusted_comment: trusted.to_string(),
            global_signature,
            untrusted_comment: untrusted.to_string(),
        })
    }

    /// Read and parse a `.minisig` file; errors name the file.
    pub fn load(path: &Path) -> Result<Signature> {
        let text = read_public_file(path, crate::input::Kind::Signature)?;
        Signature::parse(&text).with_context(|| format!("reading {}", path.display()))
    }

    /// The `.minisig` file, laid out as minisign's `sign` writes it (`src/minisign.c`).
    pub fn to_file_text(&self) -> String {
        let mut raw = [0u8; SIG_STRUCT_BYTES];
        raw[..2].copy_from_slice(&self.algorithm.tag());
        raw[2..10].copy_from_slice(&self.key_id);
        raw[10..].copy_from_slice(&self.signature);
        format!(
            "{UNTRUSTED_COMMENT_PREFIX}{}\n{}\n{TRUSTED_COMMENT_PREFIX}{}\n{}\n",
            self.untrusted_comment,
            b64(&raw),
            self.trusted_comment,
            b64(&self.global_signature)
        )
    }

    /// The id of the key that made the signature, as minisign prints it.
    pub fn key_id_hex(&self) -> String {
        key_id_hex(&self.key_id)
    }

    /// Verify the signature of `data` and of the trusted comment, in minisign's order (`verify`,
    /// `src/minisign.c`): key id, signature over the data, global signature.
    pub fn verify(&self, key: &PublicKey, data: &[u8]) -> Result<(), VerifyError> {
        match self.algorithm {
            SigAlg::Prehashed => self.verify_message(key, &prehash(data)),
            SigAlg::Legacy => self.verify_message(key, data),
        }
    }

    /// Verify the signature of everything `reader` yields. A prehashed signature is checked
    /// without holding the data in memory; a legacy one needs all of it. A failed verification
    /// is a [`VerifyError`] inside the `anyhow::Error` (`downcast_ref` finds it).
    pub fn verify_reader(&self, key: &PublicKey, reader: &mut dyn Read) -> Result<()> {
        match self.algorithm {
            SigAlg::Prehashed => {
                let digest = prehash_reader(reader).context("reading the signed data")?;
                self.verify_message(key, &digest)?;
            }
            SigAlg::Legacy => {
                let mut data = Vec::new();
                reader
                    .read_to_end(&mut data)
                    .context("reading the signed data")?;
                self.verify_message(key, &data)?;
            }
        }
        Ok(())
    }

    /// `message` is the digest for prehashed signatures, the data for legacy ones.
    fn verify_message(&self, key: &PublicKey, message: &[u8]) -> Result<(), VerifyError> {
        if self.key_id != key.key_id {
            return Err(VerifyError::KeyIdMismatch {
                signature: self.key_id_hex(),
                key: key.key_id_hex(),
            });
        }
        let sig = ed25519_dalek::Signature::from_bytes(&self.signature);
        key.key
            .verify_strict(message, &sig)
            .map_err(|_| VerifyError::BadSignature)?;
        let mut global_msg = Vec::with_capacity(64 + self.trusted_comment.len());
        global_msg.extend_from_slice(&self.signature);
        global_msg.extend_from_slice(self.trusted_comment.as_bytes());
        let global = ed25519_dalek::Signature::from_bytes(&self.global_signature);
        key.key
            .verify_strict(&global_msg, &global)
            .map_err(|_| VerifyError::BadGlobalSignature)
    }
}
