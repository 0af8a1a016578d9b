//! Keys and signatures made here work with the real `minisign` command and the other way round.
//! Needs `minisign` on PATH: under `CI=true` its absence is a failure, elsewhere the tests are
//! skipped with a note.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use edgeimage::sign::{
    generate_key_pair, Kdf, PublicKey, SecretKey, SigAlg, Signature, VerifyError,
};
use zeroize::Zeroizing;

fn minisign() -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("minisign"))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("minisign is not installed, and CI=true: install it (apt-get install minisign)");
        }
        eprintln!("note: minisign is not installed; minisign interoperability test skipped");
    }
    found
}

/// Run minisign with `args`, feeding `stdin` (nothing: closed input).
fn run(bin: &Path, args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(bin)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running minisign");
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.as_bytes()).unwrap();
    drop(input);
    child.wait_with_output().unwrap()
}

fn ok(o: &Output) -> String {
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "minisign failed ({}):\nstdout: {out}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    out
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn no_passphrase() -> impl FnMut() -> anyhow::Result<Zeroizing<Vec<u8>>> {
    || panic!("no passphrase expected")
}

fn data(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 + i / 251) as u8).collect()
}

/// (1) minisign verifies our signature and its trusted comment, and refuses it once a byte of
/// the file changed or the trusted comment was edited.
#[test]
fn minisign_verifies_our_signatures() {
    let Some(ms) = minisign() else { return };
    let d = tempfile::tempdir().unwrap();
    let (pub_path, key_path, pk) =
        generate_key_pair(d.path(), "ours", None, Kdf::Interactive, false).unwrap();
    let sk = SecretKey::load(&key_path, &mut no_passphrase()).unwrap();
    let file = d.path().join("image.raw");
    let bytes = data(300_000);
    fs::write(&file, &bytes).unwrap();
    let tc = "timestamp:1700000000\tfile:image.raw\tprofile:edge";
    let sig = sk.sign(&bytes, tc, "signature from edgeimage").unwrap();
    let sig_path = d.path().join("image.raw.minisig");
    fs::write(&sig_path, sig.to_file_text()).unwrap();
    sig.verify(&pk, &bytes).unwrap();

    // -H: minisign requires a prehashed signature.
    let out = ok(&run(
        &ms,
        &["-V", "-H", "-m", s(&file), "-p", s(&pub_path)],
        "",
    ));
    assert!(
        out.contains("Signature and comment signature verified"),
        "{out}"
    );
    assert!(out.contains(&format!("Trusted comment: {tc}")), "{out}");
    // The bare key with -P.
    ok(&run(
        &ms,
        &["-V", "-m", s(&file), "-P", &pk.to_base64()],
        "",
    ));

    // minisign -R rebuilds exactly our public key file from our secret key.
    let rebuilt = d.path().join("rebuilt.pub");
    ok(&run(
        &ms,
        &["-R", "-s", s(&key_path), "-p", s(&rebuilt)],
        "",
    ));
    // Same key line; the comment names the same key ID (minisign 0.11 prints it without
    // leading zeros, newer releases and edgeimage with all 16 digits).
    let (theirs, ours) = (
        fs::read_to_string(&rebuilt).unwrap(),
        fs::read_to_string(&pub_path).unwrap(),
    );
    let split = |t: &str| -> (u64, String) {
        let mut l = t.lines();
        let id = l
            .next()
            .and_then(|c| c.strip_prefix("untrusted comment: minisign public key "))
            .map(|h| u64::from_str_radix(h, 16).unwrap())
            .unwrap();
        (id, l.next().unwrap().to_string())
    };
    assert_eq!(split(&theirs), split(&ours), "{theirs}\n{ours}");

    // One flipped byte in the file.
    let mut changed = bytes.clone();
    changed[123_456] ^= 0x04;
    fs::write(&file, &changed).unwrap();
    let o = run(&ms, &["-V", "-m", s(&file), "-p", s(&pub_path)], "");
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("Signature verification failed"),
        "{o:?}"
    );
    assert_eq!(sig.verify(&pk, &changed), Err(VerifyError::BadSignature));

    // An edited trusted comment.
    fs::write(&file, &bytes).unwrap();
    let edited = sig.to_file_text().replace("profile:edge", "profile:evil");
    fs::write(&sig_path, &edited).unwrap();
    let o = run(&ms, &["-V", "-m", s(&file), "-p", s(&pub_path)], "");
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("Comment signature verification failed"),
        "{o:?}"
    );
    assert_eq!(
        Signature::parse(&edited).unwrap().verify(&pk, &bytes),
        Err(VerifyError::BadGlobalSignature)
    );
}

/// (2) We verify what minisign signs with an unencrypted key of its own (`-G -W`), with the
/// trusted comment given by `-t`, prehashed and legacy; and we sign with its key.
#[test]
fn we_verify_minisign_signatures() {
    let Some(ms) = minisign() else { return };
    let d = tempfile::tempdir().unwrap();
    let pub_path = d.path().join("ms.pub");
    let key_path = d.path().join("ms.key");
    ok(&run(
        &ms,
        &["-G", "-W", "-p", s(&pub_path), "-s", s(&key_path)],
        "",
    ));
    let pk = PublicKey::load(&pub_path).unwrap();
    let file = d.path().join("data.bin");
    let bytes = data(100_000);
    fs::write(&file, &bytes).unwrap();

    let tc = "signed by minisign: trusted";
    ok(&run(
        &ms,
        &[
            "-S",
            "-s",
            s(&key_path),
            "-m",
            s(&file),
            "-t",
            tc,
            "-c",
            "untrusted from minisign",
        ],
        "",
    ));
    let sig =
        Signature::parse(&fs::read_to_string(d.path().join("data.bin.minisig")).unwrap()).unwrap();
    assert_eq!(sig.algorithm, SigAlg::Prehashed);
    assert_eq!(sig.trusted_comment, tc);
    assert_eq!(sig.untrusted_comment, "untrusted from minisign");
    assert_eq!(sig.key_id_hex(), pk.key_id_hex());
    sig.verify(&pk, &bytes).unwrap();
    sig.verify_reader(&pk, &mut fs::File::open(&file).unwrap())
        .unwrap();
    let mut changed = bytes.clone();
    changed[0] ^= 1;
    assert_eq!(sig.verify(&pk, &changed), Err(VerifyError::BadSignature));

    // Legacy (-l).
    let legacy_path = d.path().join("legacy.minisig");
    ok(&run(
        &ms,
        &[
            "-S",
            "-l",
            "-s",
            s(&key_path),
            "-m",
            s(&file),
            "-x",
            s(&legacy_path),
            "-t",
            "legacy",
        ],
        "",
    ));
    let legacy = Signature::parse(&fs::read_to_string(&legacy_path).unwrap()).unwrap();
    assert_eq!(legacy.algorithm, SigAlg::Legacy);
    legacy.verify(&pk, &bytes).unwrap();
    assert_eq!(legacy.verify(&pk, &changed), Err(VerifyError::BadSignature));

    // Its secret key signs here; minisign verifies the result.
    let sk = SecretKey::load(&key_path, &mut no_passphrase()).unwrap();
    assert_eq!(sk.public(), pk);
    let ours = sk
        .sign(&bytes, "signed here with minisign's key", "")
        .unwrap();
    let ours_path = d.path().join("ours.minisig");
    fs::write(&ours_path, ours.to_file_text()).unwrap();
    ok(&run(
        &ms,
        &[
            "-V",
            "-m",
            s(&file),
            "-x",
            s(&ours_path),
            "-p",
            s(&pub_path),
        ],
        "",
    ));
}

/// (3) We decrypt a secret key that minisign encrypted with a passphrase: proves the scrypt
/// parameter mapping (libsodium `pickparams`) at minisign's defaults, N = 2^20 (1 GiB).
/// minisign reads the passphrase with `fgets` from standard input (`get_line`,
/// `src/get_line.c`), so it is fed there, twice for `-G`.
#[test]
fn we_decrypt_a_key_minisign_encrypted() {
    let Some(ms) = minisign() else { return };
    let d = tempfile::tempdir().unwrap();
    let pub_path = d.path().join("enc.pub");
    let key_path = d.path().join("enc.key");
    let pw = "a passphrase, with spaces";
    let o = run(
        &ms,
        &["-G", "-p", s(&pub_path), "-s", s(&key_path)],
        &format!("{pw}\n{pw}\n"),
    );
    ok(&o);
    let text = fs::read_to_string(&key_path).unwrap();
    let line = text.lines().nth(1).unwrap();
    let raw = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, line).unwrap();
    assert_eq!(&raw[..6], b"EdScB2");
    assert_eq!(
        (
            u64::from_le_bytes(raw[38..46].try_into().unwrap()),
            u64::from_le_bytes(raw[46..54].try_into().unwrap())
        ),
        (33_554_432, 1_073_741_824),
        "minisign's sensitive limits (a smaller pair means it ran short of memory)"
    );

    let mut calls = 0;
    let sk = SecretKey::load(&key_path, &mut || {
        calls += 1;
        Ok(Zeroizing::new(pw.as_bytes().to_vec()))
    })
    .unwrap();
    assert_eq!(calls, 1);
    let pk = PublicKey::load(&pub_path).unwrap();
    assert_eq!(sk.public(), pk);

    // And the decrypted key signs what minisign verifies.
    let file = d.path().join("f");
    fs::write(&file, b"decrypted key works").unwrap();
    let sig = sk.sign(b"decrypted key works", "t", "u").unwrap();
    fs::write(d.path().join("f.minisig"), sig.to_file_text()).unwrap();
    ok(&run(&ms, &["-V", "-m", s(&file), "-p", s(&pub_path)], ""));
}

/// (4) minisign signs with secret keys written here, unencrypted and encrypted, and refuses a
/// wrong passphrase for ours; the signatures verify with minisign and here.
#[test]
fn minisign_signs_with_our_secret_keys() {
    let Some(ms) = minisign() else { return };
    let d = tempfile::tempdir().unwrap();
    let file = d.path().join("payload");
    let bytes = data(50_000);
    fs::write(&file, &bytes).unwrap();

    for (name, pw) in [("plain", None), ("locked", Some("our secret words"))] {
        let (pub_path, key_path, pk) = generate_key_pair(
            d.path(),
            name,
            pw.map(str::as_bytes),
            Kdf::Interactive,
            false,
        )
        .unwrap();
        let sig_path = d.path().join(format!("{name}.minisig"));
        let input = pw.map(|p| format!("{p}\n")).unwrap_or_default();
        let tc = format!("signed by minisign with our {name} key");
        ok(&run(
            &ms,
            &[
                "-S",
                "-s",
                s(&key_path),
                "-m",
                s(&file),
                "-x",
                s(&sig_path),
                "-t",
                &tc,
            ],
            &input,
        ));
        ok(&run(
            &ms,
            &["-V", "-m", s(&file), "-x", s(&sig_path), "-p", s(&pub_path)],
            "",
        ));
        let sig = Signature::parse(&fs::read_to_string(&sig_path).unwrap()).unwrap();
        assert_eq!(sig.trusted_comment, tc);
        sig.verify(&pk, &bytes).unwrap();

        if pw.is_some() {
            let o = run(
                &ms,
                &["-S", "-s", s(&key_path), "-m", s(&file), "-x", s(&sig_path)],
                "not our secret words\n",
            );
            assert!(!o.status.success());
            assert!(
                String::from_utf8_lossy(&o.stderr).contains("Wrong password for that key"),
                "{o:?}"
            );
        }
    }
}
