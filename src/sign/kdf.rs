//! The passphrase key derivation of encrypted secret keys: libsodium's
//! `crypto_pwhash_scryptsalsa208sha256`, which is plain scrypt (RFC 7914) with parameters picked
//! from an "opslimit" and a "memlimit".
//!
//! minisign stores the two limits in the key file (`kdf_opslimit_le`, `kdf_memlimit_le` in
//! `SeckeyStruct`, `jedisct1/minisign` `src/minisign.h`) and asks libsodium for
//! `sizeof keynum_sk` = 104 bytes of output, which it XORs over `keynum_sk` (`decrypt_key` and
//! `encrypt_key`, `src/minisign.c`). libsodium turns the limits into scrypt's N, r and p with
//! `pickparams` (`src/libsodium/crypto_pwhash/scryptsalsa208sha256/pwhash_scryptsalsa208sha256.c`),
//! reproduced exactly by [`pick_params`].

use anyhow::{bail, Context, Result};
use zeroize::Zeroizing;

/// `crypto_pwhash_scryptsalsa208sha256_OPSLIMIT_SENSITIVE` (libsodium
/// `src/libsodium/include/sodium/crypto_pwhash_scryptsalsa208sha256.h`); minisign's
/// `encrypt_key` starts from it.
pub const OPSLIMIT_SENSITIVE: u64 = 33_554_432;
/// `crypto_pwhash_scryptsalsa208sha256_MEMLIMIT_SENSITIVE` (1 GiB), same header.
pub const MEMLIMIT_SENSITIVE: u64 = 1_073_741_824;
/// `crypto_pwhash_scryptsalsa208sha256_OPSLIMIT_INTERACTIVE`, same header.
pub const OPSLIMIT_INTERACTIVE: u64 = 524_288;
/// `crypto_pwhash_scryptsalsa208sha256_MEMLIMIT_INTERACTIVE` (16 MiB), same header.
pub const MEMLIMIT_INTERACTIVE: u64 = 16_777_216;

/// Salt length (`crypto_pwhash_scryptsalsa208sha256_SALTBYTES`, 32).
pub const SALT_BYTES: usize = 32;
/// Length of the keystream: `sizeof keynum_sk` = key id 8 + secret key 64 + checksum 32.
pub const STREAM_BYTES: usize = 8 + 64 + 32;

/// Largest scrypt N accepted from a key file: 2^20, i.e. 1 GiB with r = 8 — what minisign's
/// defaults give. A key file is input; without a limit it could ask for any amount of memory.
const MAX_LOG_N: u32 = 20;
/// Largest N·p accepted (4× minisign's default work), for the same reason.
const MAX_N_TIMES_P: u64 = 1 << 22;

/// How hard the passphrase of a new secret key is to guess.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kdf {
    /// minisign's own choice: opslimit 33554432, memlimit 1 GiB (scrypt N = 2^20, r = 8,
    /// p = 1). Needs 1 GiB of memory to encrypt and to decrypt.
    Sensitive,
    /// opslimit 524288, memlimit 16 MiB (N = 2^14, r = 8, p = 1): fast, for tests.
    Interactive,
}

impl Kdf {
    /// `(opslimit, memlimit)` as stored in the key file.
    pub fn limits(self) -> (u64, u64) {
        match self {
            Kdf::Sensitive => (OPSLIMIT_SENSITIVE, MEMLIMIT_SENSITIVE),
            Kdf::Interactive => (OPSLIMIT_INTERACTIVE, MEMLIMIT_INTERACTIVE),
        }
    }
}

/// scrypt parameters: log2 of N, r, p.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScryptParams {
    pub log_n: u32,
    pub r: u32,
    pub p: u32,
}

/// libsodium's `pickparams(opslimit, memlimit)`, line for line.
pub fn pick_params(opslimit: u64, memlimit: u64) -> ScryptParams {
    let opslimit = opslimit.max(32768);
    let r: u32 = 8;
    let mut log_n: u32 = 1;
    let p: u32;
    if opslimit < memlimit / 32 {
        p = 1;
        let max_n = opslimit / (u64::from(r) * 4);
        while log_n < 63 {
            if (1u64 << log_n) > max_n / 2 {
                break;
            }
            log_n += 1;
        }
    } else {
        let max_n = memlimit / (u64::from(r) * 128);
        while log_n < 63 {
            if (1u64 << log_n) > max_n / 2 {
                break;
            }
            log_n += 1;
        }
        let max_rp = ((opslimit / 4) / (1u64 << log_n)).min(0x3fff_ffff);
        // max_rp <= 0x3fffffff, so this fits.
        p = (max_rp as u32) / r;
    }
    ScryptParams { log_n, r, p }
}

/// The 104-byte keystream for `passphrase` with the key file's salt and limits. Refuses limits
/// beyond what minisign itself writes: N above 2^20 or N·p above 2^22.
pub fn keystream(
    passphrase: &[u8],
    salt: &[u8; SALT_BYTES],
    opslimit: u64,
    memlimit: u64,
) -> Result<Zeroizing<[u8; STREAM_BYTES]>> {
    let sp = pick_params(opslimit, memlimit);
    let describe = || {
        format!(
            "opslimit {opslimit}, memlimit {memlimit}: scrypt N = 2^{}, r = {}, p = {}",
            sp.log_n, sp.r, sp.p
        )
    };
    if sp.p == 0 {
        bail!(
            "the secret key's KDF parameters are invalid ({}): the file is damaged",
            describe()
        );
    }
    if sp.log_n > MAX_LOG_N || (1u64 << sp.log_n).saturating_mul(u64::from(sp.p)) > MAX_N_TIMES_P {
        bail!(
            "the secret key's KDF parameters ({}) ask for more than the limit of N = 2^{MAX_LOG_N} \
             and N·p = 2^22 (minisign's own keys use N = 2^20, p = 1): refusing to spend that much \
             memory and time on a key file",
            describe()
        );
    }
    // log_n <= 20 here, so the cast is exact. The `len` argument only matters to the
    // password-hash API, not to `scrypt::scrypt`, whose output length is the slice's.
    let params = scrypt::Params::new(sp.log_n as u8, sp.r, sp.p, 32)
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| format!("scrypt refuses the parameters ({})", describe()))?;
    let mut out = Zeroizing::new([0u8; STREAM_BYTES]);
    scrypt::scrypt(passphrase, salt, &params, &mut out[..])
        .map_err(|e| anyhow::anyhow!("{e}"))
        .context("scrypt key derivation failed")?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minisign_defaults_are_n20_r8_p1() {
        assert_eq!(
            pick_params(OPSLIMIT_SENSITIVE, MEMLIMIT_SENSITIVE),
            ScryptParams {
                log_n: 20,
                r: 8,
                p: 1
            }
        );
        assert_eq!(
            pick_params(OPSLIMIT_INTERACTIVE, MEMLIMIT_INTERACTIVE),
            ScryptParams {
                log_n: 14,
                r: 8,
                p: 1
            }
        );
        assert_eq!(Kdf::Sensitive.limits(), (33554432, 1073741824));
        assert_eq!(Kdf::Interactive.limits(), (524288, 16777216));
    }

    #[test]
    fn pickparams_branches() {
        // opslimit < memlimit / 32: N from opslimit, p = 1.
        assert_eq!(
            pick_params(OPSLIMIT_INTERACTIVE, MEMLIMIT_SENSITIVE),
            ScryptParams {
                log_n: 14,
                r: 8,
                p: 1
            }
        );
        // opslimit clamped to 32768.
        assert_eq!(pick_params(0, 1 << 30).log_n, 10);
        // More operations than memory allows: p grows.
        assert_eq!(
            pick_params(OPSLIMIT_SENSITIVE * 4, MEMLIMIT_SENSITIVE),
            ScryptParams {
                log_n: 20,
                r: 8,
                p: 4
            }
        );
        // minisign halves both limits when memory is short: still p = 1.
        assert_eq!(
            pick_params(OPSLIMIT_SENSITIVE / 2, MEMLIMIT_SENSITIVE / 2),
            ScryptParams {
                log_n: 19,
                r: 8,
                p: 1
            }
        );
    }

    #[test]
    fn scrypt_matches_rfc7914_vector() {
        // RFC 7914 §12, second vector: P="password", S="NaCl", N=1024, r=8, p=16, 64 bytes.
        let params = scrypt::Params::new(10, 8, 16, 64).unwrap();
        let mut out = [0u8; 64];
        scrypt::scrypt(b"password", b"NaCl", &params, &mut out).unwrap();
        assert_eq!(
            hex::encode(out),
            "fdbabe1c9d3472007856e7190d01e9fe7c6ad7cbc8237830e77376634b373162\
             2eaf30d92e22a3886ff109279d9830dac727afb94a83ee6d8360cbdfa2cc0640"
        );
    }

    #[test]
    fn oversized_parameters_are_refused() {
        let salt = [0u8; SALT_BYTES];
        let e = keystream(b"x", &salt, OPSLIMIT_SENSITIVE * 2, MEMLIMIT_SENSITIVE * 2)
            .err()
            .unwrap();
        let msg = format!("{e:#}");
        assert!(
            msg.contains("N = 2^21") && msg.contains("refusing"),
            "{msg}"
        );
        let e = keystream(b"x", &salt, OPSLIMIT_SENSITIVE * 64, MEMLIMIT_SENSITIVE)
            .err()
            .unwrap();
        assert!(format!("{e:#}").contains("p = 64"), "{e:#}");
    }
}
