//! Unit tests of the minisign formats. The fixtures below were made by Debian's `minisign` 0.11
//! (`minisign -G -W`, then `minisign -S` and `minisign -S -l` of the 6 bytes "hello\n"); the key
//! is a throwaway test key.

use std::fs;
use std::os::unix::fs::PermissionsExt;

use anyhow::Result;
use zeroize::Zeroizing;

use super::*;

const MS_PUB: &str = "untrusted comment: minisign public key FD8E16A242F6A102
RWQCofZCohaO/dWo1w+rHv5yYiMszGkuq3mw8UrRC7KNK8Sqpxa99SzB
";
const MS_KEY: &str = "untrusted comment: minisign encrypted secret key
RWQAAEIyAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAqH2QqIWjv0tIzhHcl8uS72lFA3xUzomPl6FoqPLnpvTvXiNLm222dWo1w+rHv5yYiMszGkuq3mw8UrRC7KNK8Sqpxa99SzBAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=
";
const MS_SIG: &str = "untrusted comment: uc
RUQCofZCohaO/Xf+m3YkOj6IX7upaU4Am+embagH+voH38AEDGfL6lJNcjIdocbnB//1L9jRD7nY2JwXEM7Y7yog5VTR6jovWQA=
trusted comment: tc here
U4spkHzWiGdL5+zaWvzRdfI5wbaHenl27EtEIpiW6w0IM+YnjcH1wkBU77NXBlCkbVCtLc5r5HwrpcHOR5SVDg==
";
const MS_LEGACY_SIG: &str = "untrusted comment: legacy uc
RWQCofZCohaO/U4P5JlEnmFevGytNB48HXYYSPIH395pp8fGJDLM/jZN/iseWO/LhHud8x7krSMYk79Xm2mC1Q59flq7UXfrpAY=
trusted comment: legacy tc
74PkCGR9qLcWnQRMBBmL5OaJnA/V1STZ5J1XVsEdUY/b2pi3IHyyB6gOJ1A0t2cFvYs2AkiARDwrEBcA6hpoBg==
";
const MS_DATA: &[u8] = b"hello\n";

/// A passphrase callback that must not be called.
fn no_passphrase() -> impl FnMut() -> Result<Zeroizing<Vec<u8>>> {
    || panic!("the passphrase must not be asked for an unencrypted key")
}

/// A passphrase callback answering `pw`, counting calls.
fn answer<'a>(pw: &'a [u8], calls: &'a mut u32) -> impl FnMut() -> Result<Zeroizing<Vec<u8>>> + 'a {
    move || {
        *calls += 1;
        Ok(Zeroizing::new(pw.to_vec()))
    }
}

fn err_text<T: std::fmt::Debug>(r: Result<T>) -> String {
    format!("{:#}", r.expect_err("an error was expected"))
}

fn test_key(n: u8) -> SecretKey {
    SecretKey::from_seed([n, 1, 2, 3, 4, 5, 6, 7], &[n; 32])
}

// ---- fixtures made by minisign ----

#[test]
fn reads_minisign_public_key() {
    let pk = PublicKey::parse(MS_PUB).unwrap();
    assert_eq!(pk.key_id_hex(), "FD8E16A242F6A102");
    assert_eq!(pk.to_file_text(), MS_PUB);
    // The bare base64 line, as `minisign -P` takes it.
    let bare =
        PublicKey::parse("RWQCofZCohaO/dWo1w+rHv5yYiMszGkuq3mw8UrRC7KNK8Sqpxa99SzB").unwrap();
    assert_eq!(bare, pk);
    assert_eq!(
        pk.to_base64(),
        "RWQCofZCohaO/dWo1w+rHv5yYiMszGkuq3mw8UrRC7KNK8Sqpxa99SzB"
    );
}

#[test]
fn reads_unencrypted_minisign_secret_key_with_zero_checksum() {
    let sk = SecretKey::parse(MS_KEY, &mut no_passphrase()).unwrap();
    assert_eq!(sk.key_id_hex(), "FD8E16A242F6A102");
    assert_eq!(sk.public(), PublicKey::parse(MS_PUB).unwrap());
}

#[test]
fn verifies_minisign_signatures() {
    let pk = PublicKey::parse(MS_PUB).unwrap();
    let sig = Signature::parse(MS_SIG).unwrap();
    assert_eq!(sig.algorithm, SigAlg::Prehashed);
    assert_eq!(sig.trusted_comment, "tc here");
    assert_eq!(sig.untrusted_comment, "uc");
    assert_eq!(sig.key_id_hex(), "FD8E16A242F6A102");
    sig.verify(&pk, MS_DATA).unwrap();
    assert_eq!(sig.to_file_text(), MS_SIG);

    let legacy = Signature::parse(MS_LEGACY_SIG).unwrap();
    assert_eq!(legacy.algorithm, SigAlg::Legacy);
    legacy.verify(&pk, MS_DATA).unwrap();
    legacy.verify_reader(&pk, &mut &MS_DATA[..]).unwrap();
    assert_eq!(
        legacy.verify(&pk, b"hello\r\n"),
        Err(VerifyError::BadSignature)
    );
}

#[test]
fn our_signature_is_byte_identical_to_minisigns() {
    // Ed25519 is deterministic: same key, data and comments give the same file.
    let sk = SecretKey::parse(MS_KEY, &mut no_passphrase()).unwrap();
    let sig = sk.sign(MS_DATA, "tc here", "uc").unwrap();
    assert_eq!(sig.to_file_text(), MS_SIG);
    let streamed = sk.sign_reader(&mut &MS_DATA[..], "tc here", "uc").unwrap();
    assert_eq!(streamed, sig);
}

// ---- round trips ----

#[test]
fn public_key_round_trip() {
    let sk = SecretKey::generate().unwrap();
    let pk = sk.public();
    let text = pk.to_file_text();
    assert!(text.starts_with(&format!(
        "untrusted comment: minisign public key {}\n",
        pk.key_id_hex()
    )));
    assert_eq!(text.lines().count(), 2);
    assert!(text.ends_with('\n'));
    let id = pk.key_id_hex();
    assert_eq!(id.len(), 16);
    assert!(id
        .chars()
        .all(|c| c.is_ascii_digit() || ('A'..='F').contains(&c)));
    assert_eq!(id, format!("{:016X}", u64::from_le_bytes(pk.key_id)));
    assert_eq!(PublicKey::parse(&text).unwrap(), pk);
    // CRLF line ends are read too.
    assert_eq!(PublicKey::parse(&text.replace('\n', "\r\n")).unwrap(), pk);
}

#[test]
fn unencrypted_secret_key_round_trip() {
    let sk = SecretKey::generate().unwrap();
    let text = sk.to_file_text(None, Kdf::Sensitive).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(
        lines[0],
        "untrusted comment: minisign unencrypted secret key"
    );
    let raw = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, lines[1]).unwrap();
    assert_eq!(raw.len(), 158);
    assert_eq!(&raw[..6], b"Ed\0\0B2");
    assert!(raw[6..54].iter().all(|&b| b == 0), "salt and limits zero");
    let back = SecretKey::parse(&text, &mut no_passphrase()).unwrap();
    assert_eq!(back.public(), sk.public());
    assert_eq!(back.key_id_hex(), sk.key_id_hex());
}

#[test]
fn encrypted_secret_key_round_trip_and_wrong_passphrase() {
    let sk = SecretKey::generate().unwrap();
    let text = sk
        .to_file_text(Some(b"correct horse"), Kdf::Interactive)
        .unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "untrusted comment: minisign encrypted secret key");
    let raw = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, lines[1]).unwrap();
    assert_eq!(&raw[..6], b"EdScB2");
    assert_eq!(raw[38..46], 524288u64.to_le_bytes());
    assert_eq!(raw[46..54], 16777216u64.to_le_bytes());
    // The key id is encrypted too.
    assert_ne!(raw[54..62], sk.public().key_id);

    let mut calls = 0;
    let back = SecretKey::parse(&text, &mut answer(b"correct horse", &mut calls)).unwrap();
    assert_eq!(calls, 1);
    assert_eq!(back.public(), sk.public());

    let mut calls = 0;
    let msg = err_text(SecretKey::parse(
        &text,
        &mut answer(b"correct horsf", &mut calls),
    ));
    assert!(
        msg.starts_with("wrong passphrase for this secret key"),
        "{msg}"
    );
    assert!(
        !msg.contains("correct"),
        "the passphrase must not appear: {msg}"
    );

    // The passphrase callback's own error comes through.
    let msg = err_text(SecretKey::parse(&text, &mut || {
        anyhow::bail!("no passphrase today")
    }));
    assert_eq!(msg, "no passphrase today");

    // Passphrases minisign could not read back are refused for new keys.
    let msg = err_text(sk.to_file_text(Some(b""), Kdf::Interactive));
    assert!(msg.contains("the passphrase is empty"), "{msg}");
    let msg = err_text(sk.to_file_text(Some(b"two\nlines"), Kdf::Interactive));
    assert!(msg.contains("line break"), "{msg}");
}

#[test]
fn sign_parse_verify_round_trip() {
    let sk = test_key(9);
    let pk = sk.public();
    let data = b"a boot image".repeat(1000);
    let sig = sk
        .sign(
            &data,
            "timestamp:1700000000\tfile:edge.raw",
            "signature from edgeimage",
        )
        .unwrap();
    let text = sig.to_file_text();
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    assert_eq!(lines.len(), 4);
    assert_eq!(lines[0], "untrusted comment: signature from edgeimage\n");
    assert_eq!(
        lines[2],
        "trusted comment: timestamp:1700000000\tfile:edge.raw\n"
    );
    let back = Signature::parse(&text).unwrap();
    assert_eq!(back, sig);
    assert_eq!(back.algorithm, SigAlg::Prehashed);
    back.verify(&pk, &data).unwrap();
    back.verify_reader(&pk, &mut &data[..]).unwrap();
    // An empty trusted comment is fine.
    let empty = sk.sign(b"", "", "").unwrap();
    Signature::parse(&empty.to_file_text())
        .unwrap()
        .verify(&pk, b"")
        .unwrap();
}

#[test]
fn secret_key_debug_shows_only_the_key_id() {
    let sk = test_key(7);
    let dbg = format!("{sk:?}");
    assert!(dbg.contains(&sk.key_id_hex()), "{dbg}");
    assert!(!dbg.contains("07, 07") && !dbg.contains("0707"), "{dbg}");
    assert!(
        !dbg.to_lowercase().contains("seed") && !dbg.contains("signing"),
        "{dbg}"
    );
}

// ---- tampering ----

fn flip_b64_line(text: &str, line: usize, byte: usize) -> String {
    use base64::Engine;
    let std = base64::engine::general_purpose::STANDARD;
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let mut raw = std.decode(&lines[line]).unwrap();
    raw[byte] ^= 0x01;
    lines[line] = std.encode(raw);
    lines.join("\n") + "\n"
}

#[test]
fn tampering_is_detected() {
    let sk = test_key(1);
    let pk = sk.public();
    let data = b"image bytes".to_vec();
    let text = sk
        .sign(&data, "trusted", "untrusted")
        .unwrap()
        .to_file_text();
    let sig = Signature::parse(&text).unwrap();
    sig.verify(&pk, &data).unwrap();

    // Data.
    let mut bad = data.clone();
    bad[3] ^= 0x80;
    let e = sig.verify(&pk, &bad).unwrap_err();
    assert_eq!(e, VerifyError::BadSignature);
    assert!(
        e.to_string().starts_with("signature verification failed"),
        "{e}"
    );

    // The signature (byte 20 of the 74: inside the Ed25519 signature).
    let s = Signature::parse(&flip_b64_line(&text, 1, 20)).unwrap();
    assert_eq!(s.verify(&pk, &data), Err(VerifyError::BadSignature));

    // The trusted comment.
    let s = Signature::parse(&text.replace("trusted comment: trusted", "trusted comment: trusteD"))
        .unwrap();
    let e = s.verify(&pk, &data).unwrap_err();
    assert_eq!(e, VerifyError::BadGlobalSignature);
    assert!(e.to_string().contains("trusted comment"), "{e}");

    // The global signature.
    let s = Signature::parse(&flip_b64_line(&text, 3, 5)).unwrap();
    assert_eq!(s.verify(&pk, &data), Err(VerifyError::BadGlobalSignature));

    // The untrusted comment is not signed.
    let s = Signature::parse(&text.replace("untrusted comment: untrusted", "untrusted comment: x"))
        .unwrap();
    s.verify(&pk, &data).unwrap();

    // Another key.
    let other = test_key(2).public();
    let e = sig.verify(&other, &data).unwrap_err();
    assert_eq!(
        e,
        VerifyError::KeyIdMismatch {
            signature: pk.key_id_hex(),
            key: other.key_id_hex()
        }
    );
    let msg = e.to_string();
    assert!(
        msg.contains(&pk.key_id_hex()) && msg.contains(&other.key_id_hex()),
        "{msg}"
    );

    // Same key id, other key bytes.
    let impostor = PublicKey {
        key_id: pk.key_id,
        key: test_key(3).public().key,
    };
    assert_eq!(sig.verify(&impostor, &data), Err(VerifyError::BadSignature));

    // A key id flipped in the signature file.
    let s = Signature::parse(&flip_b64_line(&text, 1, 4)).unwrap();
    assert!(matches!(
        s.verify(&pk, &data),
        Err(VerifyError::KeyIdMismatch { .. })
    ));

    // verify_reader carries the VerifyError.
    let e = sig.verify_reader(&pk, &mut &bad[..]).unwrap_err();
    assert_eq!(
        e.downcast_ref::<VerifyError>(),
        Some(&VerifyError::BadSignature)
    );
}

// ---- refused input ----

fn pub_text_with(raw: &[u8]) -> String {
    use base64::Engine;
    format!(
        "untrusted comment: test\n{}\n",
        base64::engine::general_purpose::STANDARD.encode(raw)
    )
}

#[test]
fn weak_and_invalid_public_keys_are_refused() {
    // The identity point (y = 1): small order.
    let mut raw = b"Ed".to_vec();
    raw.extend_from_slice(&[1, 0, 0, 0, 0, 0, 0, 0]);
    let mut identity = [0u8; 32];
    identity[0] = 1;
    raw.extend_from_slice(&identity);
    let msg = err_text(PublicKey::parse(&pub_text_with(&raw)));
    assert!(msg.contains("weak (small-order)"), "{msg}");
    assert!(msg.contains("0000000000000001"), "{msg}");

    // Bytes that are no curve point.
    let not_point = (2u8..=255)
        .map(|y| {
            let mut k = [0u8; 32];
            k[0] = y;
            k
        })
        .find(|k| ed25519_dalek::VerifyingKey::from_bytes(k).is_err())
        .unwrap();
    let msg = err_text(PublicKey::from_parts([0; 8], &not_point));
    assert!(msg.contains("not a valid Ed25519 point"), "{msg}");

    // A non-canonical encoding: y = p + 1 encodes the identity again.
    let mut non_canonical = [0xffu8; 32];
    non_canonical[0] = 0xee;
    non_canonical[31] = 0x7f;
    let msg = err_text(PublicKey::from_parts([0; 8], &non_canonical));
    assert!(msg.contains("canonical") || msg.contains("weak"), "{msg}");
}

#[test]
fn public_key_format_errors_name_the_problem() {
    let good = PublicKey::parse(MS_PUB).unwrap();
    let mut raw = b"Ed".to_vec();
    raw.extend_from_slice(&good.key_id);
    raw.extend_from_slice(good.key.as_bytes());

    let mut wrong_alg = raw.clone();
    wrong_alg[..2].copy_from_slice(b"Xy");
    let msg = err_text(PublicKey::parse(&pub_text_with(&wrong_alg)));
    assert!(
        msg.contains("unsupported signature algorithm") && !msg.contains("Xy"),
        "{msg}"
    );

    let msg = err_text(PublicKey::parse(&pub_text_with(&raw[..41])));
    assert!(
        msg.contains("line 2 decodes to 41 bytes, but a minisign public key is 42 bytes"),
        "{msg}"
    );

    let msg = err_text(PublicKey::parse("untrusted comment: x\nnot*base64!\n"));
    assert!(
        msg.contains("public key: line 2 is not valid base64"),
        "{msg}"
    );

    let msg = err_text(PublicKey::parse(""));
    assert!(msg.contains("the text is empty"), "{msg}");

    let msg = err_text(PublicKey::parse(
        "untrusted comment: minisign public key 00\n",
    ));
    assert!(msg.contains("line 2 (the base64 key) is missing"), "{msg}");

    let msg = err_text(PublicKey::parse(&format!(
        "comment\n{}\n",
        good.to_base64()
    )));
    assert!(
        msg.contains("line 1 should start with \"untrusted comment: \""),
        "{msg}"
    );

    let msg = err_text(PublicKey::parse(&format!("{MS_PUB}more\n")));
    assert!(msg.contains("unexpected text on line 3"), "{msg}");
}

#[test]
fn signature_format_errors_name_the_problem() {
    let msg = err_text(Signature::parse(""));
    assert!(msg.contains("the text is empty"), "{msg}");

    let two: String = MS_SIG.lines().take(2).map(|l| format!("{l}\n")).collect();
    let msg = err_text(Signature::parse(&two));
    assert!(
        msg.contains("line 3 (the trusted comment) is missing"),
        "{msg}"
    );

    let msg = err_text(Signature::parse(
        &MS_SIG.replace("trusted comment: tc", "comment: tc"),
    ));
    assert!(
        msg.contains("line 3 should start with \"trusted comment: \""),
        "{msg}"
    );

    let msg = err_text(Signature::parse(&flip_alg(MS_SIG, b"EX")));
    assert!(
        msg.contains("unsupported signature algorithm") && !msg.contains("EX"),
        "{msg}"
    );

    let lines: Vec<&str> = MS_SIG.lines().collect();
    let short_global = format!(
        "{}\n{}\n{}\n{}\n",
        lines[0],
        lines[1],
        lines[2],
        &lines[3][..84]
    );
    let msg = err_text(Signature::parse(&short_global));
    assert!(
        msg.contains("line 4 decodes to 63 bytes, but the global signature is 64 bytes"),
        "{msg}"
    );

    let msg = err_text(Signature::parse(&MS_SIG.replace("RUQC", "R!QC")));
    assert!(
        msg.contains("signature: line 2 is not valid base64"),
        "{msg}"
    );
}

fn flip_alg(text: &str, alg: &[u8; 2]) -> String {
    use base64::Engine;
    let std = base64::engine::general_purpose::STANDARD;
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let mut raw = std.decode(&lines[1]).unwrap();
    raw[..2].copy_from_slice(alg);
    lines[1] = std.encode(raw);
    lines.join("\n") + "\n"
}

#[test]
fn comment_limits() {
    let sk = test_key(4);
    let pk = sk.public();

    let max_t = "t".repeat(MAX_TRUSTED_COMMENT);
    assert_eq!(MAX_TRUSTED_COMMENT, 8173);
    let sig = sk.sign(b"x", &max_t, "u").unwrap();
    Signature::parse(&sig.to_file_text())
        .unwrap()
        .verify(&pk, b"x")
        .unwrap();
    let msg = err_text(sk.sign(b"x", &format!("{max_t}t"), "u"));
    assert!(
        msg.contains("trusted comment is 8174 bytes long; minisign reads at most 8173 bytes"),
        "{msg}"
    );

    let max_u = "u".repeat(MAX_UNTRUSTED_COMMENT);
    assert_eq!(MAX_UNTRUSTED_COMMENT, 1003);
    sk.sign(b"x", "t", &max_u).unwrap();
    let msg = err_text(sk.sign(b"x", "t", &format!("{max_u}u")));
    assert!(
        msg.contains("untrusted comment is 1004 bytes long; minisign reads at most 1003 bytes"),
        "{msg}"
    );

    // The same limits when reading.
    let mut long = sig.clone();
    long.trusted_comment.push('t');
    let msg = err_text(Signature::parse(&long.to_file_text()));
    assert!(
        msg.contains("signature: the trusted comment is 8174 bytes long"),
        "{msg}"
    );
    let mut long = sig.clone();
    long.untrusted_comment = format!("{max_u}u");
    let msg = err_text(Signature::parse(&long.to_file_text()));
    assert!(
        msg.contains("signature: the untrusted comment is 1004 bytes long"),
        "{msg}"
    );

    // One line each.
    let msg = err_text(sk.sign(b"x", "two\nlines", "u"));
    assert!(
        msg.contains("trusted comment contains the character '\\n'"),
        "{msg}"
    );
    let msg = err_text(sk.sign(b"x", "t", "carriage\rreturn"));
    assert!(
        msg.contains("untrusted comment contains the character '\\r'"),
        "{msg}"
    );
}

#[test]
fn secret_key_format_errors_name_the_problem() {
    let msg = err_text(SecretKey::parse("", &mut no_passphrase()));
    assert!(msg.contains("secret key: the text is empty"), "{msg}");
    let msg = err_text(SecretKey::parse(
        "untrusted comment: x\nAAAA\n",
        &mut no_passphrase(),
    ));
    assert!(
        msg.contains("line 2 decodes to 3 bytes, but a minisign secret key is 158 bytes"),
        "{msg}"
    );
    let msg = err_text(SecretKey::parse(
        "untrusted comment: x\n*garbage*\n",
        &mut no_passphrase(),
    ));
    assert_eq!(
        msg,
        "secret key: line 2 is not valid base64 (standard alphabet with = padding)"
    );

    let unknown_kdf = flip_alg_at(MS_KEY, 2, b"Ar");
    let msg = err_text(SecretKey::parse(&unknown_kdf, &mut no_passphrase()));
    assert!(
        msg.contains("unsupported key derivation") && !msg.contains("Ar\""),
        "{msg}"
    );
    let unknown_chk = flip_alg_at(MS_KEY, 4, b"S2");
    let msg = err_text(SecretKey::parse(&unknown_chk, &mut no_passphrase()));
    assert!(
        msg.contains("unsupported checksum algorithm") && !msg.contains("S2"),
        "{msg}"
    );

    // A damaged unencrypted key: public half changed.
    let damaged = flip_b64_line(MS_KEY, 1, 100);
    let msg = err_text(SecretKey::parse(&damaged, &mut no_passphrase()));
    assert!(msg.contains("does not belong to its seed"), "{msg}");

    // A damaged unencrypted key with a checksum filled in.
    let ours = test_key(5).to_file_text(None, Kdf::Interactive).unwrap();
    let damaged = flip_b64_line(&ours, 1, 70);
    let msg = err_text(SecretKey::parse(&damaged, &mut no_passphrase()));
    assert!(msg.contains("checksum does not match the key"), "{msg}");
}

fn flip_alg_at(text: &str, at: usize, tag: &[u8; 2]) -> String {
    use base64::Engine;
    let std = base64::engine::general_purpose::STANDARD;
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let mut raw = std.decode(&lines[1]).unwrap();
    raw[at..at + 2].copy_from_slice(tag);
    lines[1] = std.encode(raw);
    lines.join("\n") + "\n"
}

// ---- files ----

#[test]
fn secret_key_file_mode_is_checked() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("edge.key");
    fs::write(
        &path,
        test_key(6).to_file_text(None, Kdf::Interactive).unwrap(),
    )
    .unwrap();
    for (mode, how) in [
        (0o644, "readable by others"),
        (0o640, "readable by others"),
        (0o604, "readable by others"),
        (0o620, "accessible to others"),
    ] {
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
        let msg = err_text(SecretKey::load(&path, &mut no_passphrase()));
        let p = path.display();
        assert_eq!(
            msg,
            format!("{p} is {how} (mode {mode:04o}): run chmod 600 {p}"),
        );
    }
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
    let sk = SecretKey::load(&path, &mut no_passphrase()).unwrap();
    assert_eq!(sk.public(), test_key(6).public());

    // A link to a well-protected key is followed; a link to an exposed one is refused.
    let link = d.path().join("link.key");
    std::os::unix::fs::symlink(&path, &link).unwrap();
    SecretKey::load(&link, &mut no_passphrase()).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
    let msg = err_text(SecretKey::load(&link, &mut no_passphrase()));
    assert!(msg.contains("mode 0644"), "{msg}");

    // Errors name the file.
    let missing = d.path().join("missing.key");
    let msg = err_text(SecretKey::load(&missing, &mut no_passphrase()));
    assert!(
        msg.starts_with(&format!("cannot read the secret key {}", missing.display())),
        "{msg}"
    );
    let msg = err_text(SecretKey::load(d.path(), &mut no_passphrase()));
    assert!(msg.contains("not a regular file"), "{msg}");
    let garbage = d.path().join("garbage.key");
    fs::write(&garbage, "untrusted comment: x\nnope\n").unwrap();
    fs::set_permissions(&garbage, fs::Permissions::from_mode(0o600)).unwrap();
    let msg = err_text(SecretKey::load(&garbage, &mut no_passphrase()));
    assert!(
        msg.starts_with(&format!(
            "reading {}: secret key: line 2",
            garbage.display()
        )),
        "{msg}"
    );
}

#[test]
fn public_key_load_names_the_file() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("edge.pub");
    let msg = err_text(PublicKey::load(&path));
    assert!(
        msg.starts_with(&format!("cannot read the public key {}", path.display())),
        "{msg}"
    );
    fs::write(&path, "untrusted comment: x\nAAAA\n").unwrap();
    let msg = err_text(PublicKey::load(&path));
    assert!(
        msg.starts_with(&format!("reading {}: public key: line 2", path.display())),
        "{msg}"
    );
    fs::write(&path, MS_PUB).unwrap();
    assert_eq!(
        PublicKey::load(&path).unwrap().key_id_hex(),
        "FD8E16A242F6A102"
    );

    let sig_path = d.path().join("image.raw.minisig");
    let msg = err_text(Signature::load(&sig_path));
    assert!(
        msg.starts_with(&format!("cannot read the signature {}", sig_path.display())),
        "{msg}"
    );
    fs::write(&sig_path, MS_PUB).unwrap();
    let msg = err_text(Signature::load(&sig_path));
    assert!(
        msg.starts_with(&format!(
            "reading {}: signature: line 3",
            sig_path.display()
        )),
        "{msg}"
    );
    fs::write(&sig_path, MS_SIG).unwrap();
    Signature::load(&sig_path).unwrap();
    fs::write(&sig_path, [0xffu8, 0xfe, b'\n']).unwrap();
    let msg = err_text(Signature::load(&sig_path));
    assert!(msg.contains("not UTF-8 text"), "{msg}");
}

#[test]
fn key_pair_files() {
    let d = tempfile::tempdir().unwrap();
    let (pub_path, key_path, pk) =
        generate_key_pair(d.path(), "edge-2024.v1", None, Kdf::Interactive, false).unwrap();
    assert_eq!(pub_path, d.path().join("edge-2024.v1.pub"));
    assert_eq!(key_path, d.path().join("edge-2024.v1.key"));
    let key_mode = fs::metadata(&key_path).unwrap().permissions().mode() & 0o777;
    assert_eq!(key_mode & 0o077, 0, "secret key mode {key_mode:o}");
    assert_eq!(
        fs::metadata(&pub_path).unwrap().permissions().mode() & 0o777,
        0o644
    );
    assert_eq!(PublicKey::load(&pub_path).unwrap(), pk);
    let sk = SecretKey::load(&key_path, &mut no_passphrase()).unwrap();
    assert_eq!(sk.public(), pk);

    // No overwriting without force.
    let msg = err_text(generate_key_pair(
        d.path(),
        "edge-2024.v1",
        None,
        Kdf::Interactive,
        false,
    ));
    assert!(
        msg.contains(&format!("{} already exists", key_path.display())) && msg.contains("--force"),
        "{msg}"
    );
    assert_eq!(PublicKey::load(&pub_path).unwrap(), pk, "untouched");

    // With force: a new pair.
    let (_, _, pk2) = generate_key_pair(
        d.path(),
        "edge-2024.v1",
        Some(b"pw"),
        Kdf::Interactive,
        true,
    )
    .unwrap();
    assert_ne!(pk2, pk);
    assert_eq!(PublicKey::load(&pub_path).unwrap(), pk2);
    let mut calls = 0;
    let sk2 = SecretKey::load(&key_path, &mut answer(b"pw", &mut calls)).unwrap();
    assert_eq!((sk2.public(), calls), (pk2, 1));

    // Names.
    let long = "n".repeat(65);
    for bad in ["", "../x", "a/b", ".hidden", "-x", "x y", long.as_str()] {
        let msg = err_text(generate_key_pair(
            d.path(),
            bad,
            None,
            Kdf::Interactive,
            false,
        ));
        assert!(msg.starts_with("invalid key name"), "{bad:?}: {msg}");
    }
    validate_key_name(&"n".repeat(64)).unwrap();
    validate_key_name("A").unwrap();

    // A missing directory is created, private.
    let fresh = d.path().join("new/keys");
    generate_key_pair(&fresh, "k", None, Kdf::Interactive, false).unwrap();
    use std::os::unix::fs::PermissionsExt;
    let mode = fs::metadata(&fresh).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700);
    // A file where the directory should be.
    let file = d.path().join("plain");
    fs::write(&file, "x").unwrap();
    let msg = err_text(generate_key_pair(&file, "k", None, Kdf::Interactive, false));
    assert!(msg.contains("is not a directory"), "{msg}");
}
