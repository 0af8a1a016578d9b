//! Public and secret keys in minisign's file formats.

use std::fmt;
use std::io::Read;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use blake2::digest::consts::U32;
use blake2::{Blake2b, Digest};
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use zeroize::Zeroizing;

use super::files::{read_public_file, read_secret_file};
use super::kdf::{self, Kdf, SALT_BYTES, STREAM_BYTES};
use super::passphrase::check_new_passphrase;
use super::signature::{prehash, prehash_reader, SigAlg, Signature};
use super::{
    b64, check_comment, key_id_hex, no_extra_lines, strip_prefix, text_lines, B64Line, CHKALG,
    KDFALG, KDFNONE, MAX_TRUSTED_COMMENT, MAX_UNTRUSTED_COMMENT, SIGALG, UNTRUSTED_COMMENT_PREFIX,
};

/// `PubkeyStruct` (`jedisct1/minisign` `src/minisign.h`): sig_alg 2 | keynum 8 | pk 32.
const PUBLIC_KEY_BYTES: usize = 2 + 8 + 32;
/// `SeckeyStruct` (`src/minisign.h`): sig_alg 2 | kdf_alg 2 | chk_alg 2 | kdf_salt 32 |
/// kdf_opslimit_le 8 | kdf_memlimit_le 8 | keynum_sk 104 (keynum 8 | sk 64 | chk 32).
const SECRET_KEY_BYTES: usize = 2 + 2 + 2 + SALT_BYTES + 8 + 8 + STREAM_BYTES;
const OFF_KDF: usize = 2;
const OFF_CHK_ALG: usize = 4;
const OFF_SALT: usize = 6;
const OFF_OPS: usize = OFF_SALT + SALT_BYTES;
const OFF_MEM: usize = OFF_OPS + 8;
/// Start of `keynum_sk`, the part the keystream is XORed over.
const OFF_KEYNUM_SK: usize = OFF_MEM + 8;
const OFF_SK: usize = OFF_KEYNUM_SK + 8;
const OFF_CHK: usize = OFF_SK + 64;

/// The comment minisign writes above a secret key (`SECRETKEY_DEFAULT_COMMENT`,
/// `src/minisign.h`; `generate` in `src/minisign.c` writes it for unencrypted keys too).
const SECRET_KEY_COMMENT: &str = "minisign encrypted secret key";
/// Our comment above an unencrypted secret key, so that nobody mistakes it for an encrypted
/// one. minisign ignores the comment line of key files.
const SECRET_KEY_COMMENT_UNENCRYPTED: &str = "minisign unencrypted secret key";

/// A minisign public key: an Ed25519 key and the 8-byte key id that signatures name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublicKey {
    pub key_id: [u8; 8],
    pub key: VerifyingKey,
}

impl PublicKey {
    /// A public key from its parts. Refuses encodings that are not a point, non-canonical
    /// encodings (libsodium refuses them: `ge25519_is_canonical` in
    /// `crypto_sign/ed25519/ref10/open.c`) and weak (small-order) keys.
    pub fn from_parts(key_id: [u8; 8], key: &[u8; 32]) -> Result<PublicKey> {
        let id = key_id_hex(&key_id);
        let vk = VerifyingKey::from_bytes(key).map_err(|_| {
            anyhow!("public key {id}: the 32 key bytes are not a valid Ed25519 point")
        })?;
        if vk.to_edwards().compress().to_bytes() != *key {
            bail!("public key {id}: the Ed25519 point is not in canonical encoding; refusing it");
        }
        if vk.is_weak() {
            bail!(
                "public key {id} is a weak (small-order) Ed25519 key, for which forged \
                 signatures would verify: refusing it"
            );
        }
        Ok(PublicKey { key_id, key: vk })
    }

    /// Parse a `.pub` file (`untrusted comment: …` then the base64 line) or the bare base64 line
    /// (what `minisign -P` takes). Layout: `PubkeyStruct`, `jedisct1/minisign` `src/minisign.h`;
    /// reading: `pubkey_load_file`/`pubkey_load_string`, `src/minisign.c`.
    pub fn parse(text: &str) -> Result<PublicKey> {
        const FILE: &str = "public key";
        let lines = text_lines(text);
        let (line, line_no) = match lines.as_slice() {
            [] => bail!(
                "public key: the text is empty; expected a minisign public key (a .pub file or \
                 its base64 line)"
            ),
            [only] if only.starts_with(UNTRUSTED_COMMENT_PREFIX.trim_end()) => {
                bail!("public key: line 2 (the base64 key) is missing")
            }
            [only] => (*only, 1),
            [comment, key, ..] => {
                strip_prefix(comment, UNTRUSTED_COMMENT_PREFIX, 1, FILE)?;
                no_extra_lines(&lines, 2, FILE)?;
                (*key, 2)
            }
        };
        let raw = B64Line {
            text: line,
            line_no,
            file: FILE,
            item: "a minisign public key",
            len: PUBLIC_KEY_BYTES,
        }
        .decode()?;
        if raw[..2] != SIGALG {
            bail!("public key: unsupported signature algorithm (minisign public keys are \"Ed\")");
        }
        let mut key_id = [0u8; 8];
        key_id.copy_from_slice(&raw[2..10]);
        let mut key = [0u8; 32];
        key.copy_from_slice(&raw[10..42]);
        PublicKey::from_parts(key_id, &key)
    }

    /// Read and parse a public key file; errors name the file.
    pub fn load(path: &Path) -> Result<PublicKey> {
        let text = read_public_file(path, crate::input::Kind::PublicKey)?;
        PublicKey::parse(&text).with_context(|| format!("reading {}", path.display()))
    }

    /// The base64 line alone (what `minisign -P` takes).
    pub fn to_base64(&self) -> String {
        let mut raw = [0u8; PUBLIC_KEY_BYTES];
        raw[..2].copy_from_slice(&SIGALG);
        raw[2..10].copy_from_slice(&self.key_id);
        raw[10..].copy_from_slice(self.key.as_bytes());
        b64(&raw)
    }

    /// The `.pub` file, exactly as minisign writes it (`write_pk_file`, `src/minisign.c`).
    pub fn to_file_text(&self) -> String {
        format!(
            "{UNTRUSTED_COMMENT_PREFIX}minisign public key {}\n{}\n",
            self.key_id_hex(),
            self.to_base64()
        )
    }

    /// The key id as minisign prints it: 16 uppercase hex digits.
    pub fn key_id_hex(&self) -> String {
        key_id_hex(&self.key_id)
    }
}

/// A minisign secret key. The Ed25519 key is zeroized on drop (`ed25519_dalek::SigningKey`
/// implements `ZeroizeOnDrop`); `Debug` shows only the key id.
pub struct SecretKey {
    key_id: [u8; 8],
    signing: SigningKey,
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretKey")
            .field("key_id", &self.key_id_hex())
            .finish_non_exhaustive()
    }
}

/// BLAKE2b-256 of `Ed` ‖ key id ‖ secret key (`seckey_compute_chk`, `src/minisign.c`:
/// `crypto_generichash` with `crypto_generichash_BYTES` = 32 and no key).
fn checksum(key_id: &[u8], sk: &[u8]) -> [u8; 32] {
    let mut h = Blake2b::<U32>::new();
    h.update(SIGALG);
    h.update(key_id);
    h.update(sk);
    h.finalize().into()
}

/// Compare without an early exit.
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl SecretKey {
    /// A new key: random key id and seed from the operating system (`getrandom`), as minisign's
    /// `generate` (`randombytes_buf` for the key id, `crypto_sign_keypair`).
    pub fn generate() -> Result<SecretKey> {
        let mut key_id = [0u8; 8];
        let mut seed = Zeroizing::new([0u8; 32]);
        getrandom::getrandom(&mut key_id)
            .and_then(|()| getrandom::getrandom(&mut seed[..]))
            .map_err(|e| anyhow!("the operating system gave no random bytes: {e}"))?;
        Ok(SecretKey {
            key_id,
            signing: SigningKey::from_bytes(&seed),
        })
    }

    /// The matching public key.
    pub fn public(&self) -> PublicKey {
        PublicKey {
            key_id: self.key_id,
            key: self.signing.verifying_key(),
        }
    }

    /// The key id as minisign prints it: 16 uppercase hex digits.
    pub fn key_id_hex(&self) -> String {
        key_id_hex(&self.key_id)
    }

    /// The key file. With a passphrase the key is encrypted as minisign's `encrypt_key` does
    /// (`src/minisign.c`): random salt, the KDF limits stored little-endian, checksum computed
    /// over the clear key, then `keynum_sk` XORed with the scrypt keystream. Without one the
    /// KDF tag is `\0\0` and salt and limits are zero, as minisign's `generate` with `-W`
    /// leaves them; unlike minisign (which leaves the checksum zero then) the checksum is
    /// filled in, which minisign does not check for unencrypted keys and other readers may.
    ///
    /// The text of an unencrypted key is the secret itself: wipe it after writing it out (e.g.
    /// hold it in `zeroize::Zeroizing`), as [`crate::sign::generate_key_pair`] does.
    pub fn to_file_text(&self, passphrase: Option<&[u8]>, kdf: Kdf) -> Result<String> {
        let mut raw = Zeroizing::new([0u8; SECRET_KEY_BYTES]);
        raw[..2].copy_from_slice(&SIGALG);
        raw[OFF_CHK_ALG..OFF_CHK_ALG + 2].copy_from_slice(&CHKALG);
        raw[OFF_KEYNUM_SK..OFF_SK].copy_from_slice(&self.key_id);
        let pair = Zeroizing::new(self.signing.to_keypair_bytes());
        raw[OFF_SK..OFF_CHK].copy_from_slice(&pair[..]);
        let chk = checksum(&self.key_id, &pair[..]);
        raw[OFF_CHK..].copy_from_slice(&chk);
        let comment = match passphrase {
            None => {
                raw[OFF_KDF..OFF_KDF + 2].copy_from_slice(&KDFNONE);
                SECRET_KEY_COMMENT_UNENCRYPTED
            }
            Some(pw) => {
                check_new_passphrase(pw)?;
                raw[OFF_KDF..OFF_KDF + 2].copy_from_slice(&KDFALG);
                let mut salt = [0u8; SALT_BYTES];
                getrandom::getrandom(&mut salt)
                    .map_err(|e| anyhow!("the operating system gave no random bytes: {e}"))?;
                let (ops, mem) = kdf.limits();
                raw[OFF_SALT..OFF_OPS].copy_from_slice(&salt);
                raw[OFF_OPS..OFF_MEM].copy_from_slice(&ops.to_le_bytes());
                raw[OFF_MEM..OFF_KEYNUM_SK].copy_from_slice(&mem.to_le_bytes());
                let stream = kdf::keystream(pw, &salt, ops, mem)
                    .context("encrypting the secret key with the passphrase")?;
                for (b, s) in raw[OFF_KEYNUM_SK..].iter_mut().zip(stream.iter()) {
                    *b ^= s;
                }
                SECRET_KEY_COMMENT
            }
        };
        let encoded = Zeroizing::new(b64(&raw[..]));
        let mut text = String::with_capacity(UNTRUSTED_COMMENT_PREFIX.len() + 40 + encoded.len());
        text.push_str(UNTRUSTED_COMMENT_PREFIX);
        text.push_str(comment);
        text.push('\n');
        text.push_str(&encoded);
        text.push('\n');
        Ok(text)
    }

    /// Parse a secret key file (`seckey_load` and `decrypt_key`, `src/minisign.c`).
    /// `passphrase` is called only when the key is encrypted. A wrong passphrase shows as a
    /// checksum mismatch after decryption.
    pub fn parse(
        text: &str,
        passphrase: &mut dyn FnMut() -> Result<Zeroizing<Vec<u8>>>,
    ) -> Result<SecretKey> {
        const FILE: &str = "secret key";
        let lines = text_lines(text);
        let line = match lines.as_slice() {
            [] => bail!("secret key: the text is empty; expected a minisign secret key file"),
            [comment] => {
                strip_prefix(comment, UNTRUSTED_COMMENT_PREFIX, 1, FILE)?;
                bail!("secret key: line 2 (the base64 key) is missing")
            }
            [comment, key, ..] => {
                strip_prefix(comment, UNTRUSTED_COMMENT_PREFIX, 1, FILE)?;
                no_extra_lines(&lines, 2, FILE)?;
                *key
            }
        };
        let mut raw = B64Line {
            text: line,
            line_no: 2,
            file: FILE,
            item: "a minisign secret key",
            len: SECRET_KEY_BYTES,
        }
        .decode()?;
        if raw[..2] != SIGALG {
            bail!("secret key: unsupported signature algorithm (minisign keys are \"Ed\")");
        }
        if raw[OFF_CHK_ALG..OFF_CHK_ALG + 2] != CHKALG {
            bail!("secret key: unsupported checksum algorithm (minisign uses \"B2\")");
        }
        let kdf_tag = [raw[OFF_KDF], raw[OFF_KDF + 1]];
        let encrypted = if kdf_tag == KDFALG {
            true
        } else if kdf_tag == KDFNONE {
            false
        } else {
            bail!(
                "secret key: unsupported key derivation (minisign uses \"Sc\", or two zero bytes \
                 for an unencrypted key)"
            );
        };
        if encrypted {
            let mut salt = [0u8; SALT_BYTES];
            salt.copy_from_slice(&raw[OFF_SALT..OFF_OPS]);
            let mut le = [0u8; 8];
            le.copy_from_slice(&raw[OFF_OPS..OFF_MEM]);
            let ops = u64::from_le_bytes(le);
            le.copy_from_slice(&raw[OFF_MEM..OFF_KEYNUM_SK]);
            let mem = u64::from_le_bytes(le);
            let pw = passphrase()?;
            let stream = kdf::keystream(&pw, &salt, ops, mem)
                .context("decrypting the secret key with the passphrase")?;
            drop(pw);
            for (b, s) in raw[OFF_KEYNUM_SK..].iter_mut().zip(stream.iter()) {
                *b ^= s;
            }
        }
        let computed = checksum(&raw[OFF_KEYNUM_SK..OFF_SK], &raw[OFF_SK..OFF_CHK]);
        let stored = &raw[OFF_CHK..];
        if encrypted {
            if !ct_eq(&computed, stored) {
                bail!(
                    "wrong passphrase for this secret key (after decryption its checksum does \
                     not match): try again with the right passphrase"
                );
            }
        } else if stored.iter().any(|&b| b != 0) && !ct_eq(&computed, stored) {
            // minisign leaves the checksum of an unencrypted key zero; one that is filled in
            // must match.
            bail!("secret key: the checksum does not match the key: the file is damaged");
        }
        let mut key_id = [0u8; 8];
        key_id.copy_from_slice(&raw[OFF_KEYNUM_SK..OFF_SK]);
        let mut pair = Zeroizing::new([0u8; 64]);
        pair.copy_from_slice(&raw[OFF_SK..OFF_CHK]);
        // libsodium's secret key is seed ‖ public key; the public half must be the seed's.
        let signing = SigningKey::from_keypair_bytes(&pair).map_err(|_| {
            anyhow!(
                "secret key {}: its public half does not belong to its seed: the file is damaged",
                key_id_hex(&key_id)
            )
        })?;
        Ok(SecretKey { key_id, signing })
    }

    /// Read and parse a secret key file. Refuses a file that group or others may access (mode
    /// `& 0o077 != 0`) or that is not a regular file. Symbolic links are followed — the mode
    /// checked is that of the file finally opened (checked on the open descriptor, so it cannot
    /// be swapped in between), which is what protects the key; secret stores often place keys
    /// behind links. Errors name the file.
    pub fn load(
        path: &Path,
        passphrase: &mut dyn FnMut() -> Result<Zeroizing<Vec<u8>>>,
    ) -> Result<SecretKey> {
        let text = read_secret_file(path)?;
        SecretKey::parse(&text, passphrase).with_context(|| format!("reading {}", path.display()))
    }

    /// [`SecretKey::load`], asking `source` for the passphrase only if the key is encrypted.
    pub fn load_with(path: &Path, source: &super::PassphraseSource) -> Result<SecretKey> {
        SecretKey::load(path, &mut || {
            super::read_passphrase(source, &format!("passphrase for {}", path.display()), false)
        })
    }

    /// Sign `data`: a prehashed (`ED`) signature, minisign's default (`sign`, `src/minisign.c`:
    /// `hashed` unless `-l`).
    pub fn sign(
        &self,
        data: &[u8],
        trusted_comment: &str,
        untrusted_comment: &str,
    ) -> Result<Signature> {
        self.sign_prehashed(&prehash(data), trusted_comment, untrusted_comment)
    }

    /// Sign everything `reader` yields, without holding it in memory.
    pub fn sign_reader(
        &self,
        reader: &mut dyn Read,
        trusted_comment: &str,
        untrusted_comment: &str,
    ) -> Result<Signature> {
        let digest = prehash_reader(reader).context("reading the data to sign")?;
        self.sign_prehashed(&digest, trusted_comment, untrusted_comment)
    }

    /// Sign a BLAKE2b-512 digest made with [`prehash`]: Ed25519 over the digest, then the global
    /// signature, Ed25519 over signature ‖ trusted comment (`sign`, `src/minisign.c`).
    pub fn sign_prehashed(
        &self,
        digest: &[u8; 64],
        trusted_comment: &str,
        untrusted_comment: &str,
    ) -> Result<Signature> {
        check_comment(trusted_comment, "trusted comment", MAX_TRUSTED_COMMENT)?;
        check_comment(
            untrusted_comment,
            "untrusted comment",
            MAX_UNTRUSTED_COMMENT,
        )?;
        let signature = self.signing.sign(digest).to_bytes();
        let mut global_msg = Vec::with_capacity(64 + trusted_comment.len());
        global_msg.extend_from_slice(&signature);
        global_msg.extend_from_slice(trusted_comment.as_bytes());
        let global_signature = self.signing.sign(&global_msg).to_bytes();
        Ok(Signature {
            algorithm: SigAlg::Prehashed,
            key_id: self.key_id,
            signature,
            trusted_comment: trusted_comment.to_string(),
            global_signature,
            untrusted_comment: untrusted_comment.to_string(),
        })
    }

    /// A key from a seed, for tests that need fixed keys.
    #[cfg(test)]
    pub(crate) fn from_seed(key_id: [u8; 8], seed: &[u8; 32]) -> SecretKey {
        SecretKey {
            key_id,
            signing: SigningKey::from_bytes(seed),
        }
    }
}
