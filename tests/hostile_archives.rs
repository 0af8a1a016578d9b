//! Image archives and extension archives as a hostile user would craft them: layer bombs
//! (zstd and gzip, with right and wrong digests), a layer whose diff_id is wrong, tens of
//! thousands of long PAX paths, a tiny extension holding a directory 60,000 levels deep, and
//! unpacked `docker save` directories whose layers are symbolic links. Each case runs the
//! binary under a watchdog (a regression fails instead of hanging), with `TMPDIR` set to a
//! fresh directory, and checks the exit, the message, the child's peak memory and, for the
//! bombs, the temporary space it held. Fixtures are generated in code
//! (`edgeimage::assets::oci::fixtures`): bombs are hand-made zstd RLE blocks and repeated gzip
//! members, a few KiB to a few MiB that would expand to GiBs.

mod common;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::watch::{self, Ran};
use common::*;
use edgeimage::assets::oci::fixtures::{self as fx, ZstdFrame};
use edgeimage::talos::Arch;

const WATCHDOG: Duration = Duration::from_secs(60);
const MIB: u64 = 1 << 20;
/// The most memory a refusal may take.
const PEAK_RSS_MAX_MIB: u64 = 300;
/// The most temporary space a refused bomb may hold.
const TMP_MAX_MIB: u64 = 32;

/// Run `edgeimage args` (with a fixed `SOURCE_DATE_EPOCH`) under [`watch::run`]: `TMPDIR` a
/// fresh directory, its peak memory and temporary space measured, killed (and the test failed)
/// after [`WATCHDOG`].
fn watched(args: &[&str]) -> Ran {
    watch::run(args, &[("SOURCE_DATE_EPOCH", "1700000000")], WATCHDOG)
}

/// `build` of the fixture's profile with `--assets archive`.
fn build_from(f: &Fixture, archive: &Path) -> Ran {
    let out = f.dir.path().join("out");
    watched(&[
        "build",
        "-q",
        "--profile",
        s(&f.profile),
        "--out",
        s(&out),
        "--assets",
        s(archive),
    ])
}

/// An imager-like OCI archive of `layers` in the fixture's directory.
fn oci_archive(f: &Fixture, name: &str, layers: &[fx::Layer]) -> PathBuf {
    let p = f.dir.path().join(name);
    let members = fx::oci_members(Arch::Amd64, layers).unwrap();
    fs::write(&p, fx::outer_tar(&members).unwrap()).unwrap();
    p
}

/// A layer whose config lists a diff_id that nothing matches.
fn wrong_diff_id(stored: Vec<u8>) -> fx::Layer {
    fx::Layer {
        stored,
        diff_id: fx::sha256(b"not this layer"),
    }
}

const REG: tar::EntryType = tar::EntryType::Regular;
const GIB: u64 = 1 << 30;

/// Case 1: layer bombs, zstd and gzip. With a wrong digest nothing is decompressed; with the
/// right one decompression stops at the layer's bound, a kept file's header past the bound is
/// refused before anything is written, and TMPDIR never holds more than a few KiB.
#[test]
fn layer_bombs_are_refused_at_their_bound_before_filling_tmpdir() {
    let f = small_fixture("");
    // zstd: the kept vmlinuz claims 3 GiB (zeros, 96 KiB stored).
    let head = fx::entry_header(b"usr/install/amd64/vmlinuz", REG, 3 * GIB);
    let zstd_bomb = ZstdFrame::new().raw(&head).repeat(0, 3 * GIB).finish();
    let a = oci_archive(&f, "zstd.tar", &[wrong_diff_id(zstd_bomb.clone())]);
    build_from(&f, &a)
        .refused_with_code(1, &[
            "zstd.tar: layer 1/1 (sha256:",
            "entry 1: its header claims 3221225472 bytes of data, reaching past 256.0 MiB, the \
             most a layer of",
        ])
        .bounded(PEAK_RSS_MAX_MIB, TMP_MAX_MIB)
        .report("zstd bomb, kept file");

    // gzip: a small valid tar, then 2 GiB of zeros (2 MiB stored): decompression stops at
    // 256 MiB.
    let mut tar = fx::entry(b"usr/install/amd64/vmlinuz", REG, b"kernel");
    tar.extend(fx::tar_end());
    let gzip_bomb = fx::gzip_with_zeros(&tar, 2 * GIB).unwrap();
    assert!(gzip_bomb.len() < 4 << 20, "{}", gzip_bomb.len());
    let a = oci_archive(&f, "gzip.tar", &[wrong_diff_id(gzip_bomb.clone())]);
    build_from(&f, &a)
        .refused_with_code(
            1,
            &[
                "gzip.tar: layer 1/1 (sha256:",
                "decompresses past 256.0 MiB, the most a layer of",
                "nothing of it is used",
            ],
        )
        .bounded(PEAK_RSS_MAX_MIB, TMP_MAX_MIB)
        .report("gzip bomb, trailing zeros");

    // Either bomb behind a wrong digest: refused by the pass over the blobs, before any
    // decompression.
    for (name, bomb) in [("zstd-bad.tar", zstd_bomb), ("gzip-bad.tar", gzip_bomb)] {
        let good = fx::Layer::new(&tar, tar.clone());
        let mut members =
            fx::oci_members(Arch::Amd64, &[wrong_diff_id(bomb.clone()), good]).unwrap();
        let hex = fx::sha256(&bomb)["sha256:".len()..].to_string();
        let blob = &mut members
            .iter_mut()
            .find(|(n, _)| n.ends_with(&hex))
            .unwrap()
            .1;
        let at = blob.len() / 2;
        blob[at] ^= 0x55;
        let p = f.dir.path().join(name);
        fs::write(&p, fx::outer_tar(&members).unwrap()).unwrap();
        let ran = build_from(&f, &p);
        ran.refused_with_code(
            1,
            &[&format!(
                "{name}: layer 1/2 (sha256:{hex}): digest mismatch: expected sha256:{hex}"
            )],
        )
        .bounded(PEAK_RSS_MAX_MIB, TMP_MAX_MIB)
        .report(name);
        assert_eq!(ran.peak_tmp_mib, 0);
    }
}

/// Case 2: a layer whose diff_id is wrong. Its blob digest is right, so it is decompressed,
/// but within its bound: a wrong diff_id is found after 200 MiB in about a second, and a layer
/// that would expand to 3 GiB stops at its bound. Nothing of either is used.
#[test]
fn a_wrong_diff_id_is_found_within_the_layers_bound() {
    let f = small_fixture("");
    let mut tail = fx::entry(b"usr/install/amd64/vmlinuz", REG, b"kernel");
    tail.extend(fx::tar_end());
    let within = ZstdFrame::new()
        .raw(&fx::entry_header(b"usr/share/big", REG, 200 * MIB))
        .repeat(0, 200 * MIB)
        .raw(&tail)
        .finish();
    let a = oci_archive(&f, "diffid.tar", &[wrong_diff_id(within)]);
    let ran = build_from(&f, &a);
    ran.refused_with_code(
        1,
        &[
            "diffid.tar: layer 1/1 (sha256:",
            "uncompressed digest mismatch: the config's rootfs.diff_ids says",
        ],
    )
    .bounded(PEAK_RSS_MAX_MIB, TMP_MAX_MIB)
    .report("wrong diff_id, 200 MiB");
    // The pins were never reached: nothing of the layer was used.
    assert!(!ran.stderr.contains("pin"), "{}", ran.stderr);

    let mut frame = ZstdFrame::new();
    frame
        .raw(&fx::entry_header(b"usr/share/big", REG, 200 * MIB))
        .repeat(0, 200 * MIB);
    for i in 0..15 {
        let name = format!("usr/share/big{i}");
        frame
            .raw(&fx::entry_header(name.as_bytes(), REG, 200 * MIB))
            .repeat(0, 200 * MIB);
    }
    let past = frame.finish();
    let a = oci_archive(&f, "diffid-big.tar", &[wrong_diff_id(past)]);
    build_from(&f, &a)
        .refused_with_code(
            1,
            &[
                "diffid-big.tar: layer 1/1 (sha256:",
                "entry 2: its header claims 209715200 bytes of data, reaching past 256.0 MiB",
            ],
        )
        .bounded(PEAK_RSS_MAX_MIB, TMP_MAX_MIB)
        .report("wrong diff_id, 3.2 GiB");
}

/// Streams tar entries into a zstd encoder, so the test never holds the whole tar.
fn zstd_layer(entries: impl Iterator<Item = Vec<u8>>) -> fx::Layer {
    use sha2::{Digest, Sha256};
    let mut enc = zstd::stream::Encoder::new(Vec::new(), 1).unwrap();
    let mut sha = Sha256::new();
    for e in entries.chain(std::iter::once(fx::tar_end())) {
        sha.update(&e);
        enc.write_all(&e).unwrap();
    }
    fx::Layer {
        stored: enc.finish().unwrap(),
        diff_id: format!("sha256:{}", hex::encode(sha.finalize())),
    }
}

/// Case 3: 60,000 long PAX paths. Paths of 58 KB (3.5 GB of them) are refused at the first;
/// 60,000 distinct paths of 4000 bytes (240 MB of them) are refused when the tree would hold
/// more than 32 MiB of paths. Memory stays flat.
#[test]
fn sixty_thousand_long_pax_paths_take_bounded_memory() {
    let f = small_fixture("");
    let long = |len: usize| {
        let mut p = "d/".repeat(len / 2 + 1).into_bytes();
        p.truncate(len);
        move |i: u32| {
            p[..8].copy_from_slice(format!("{i:08}").as_bytes());
            fx::entry(&p, tar::EntryType::Directory, b"")
        }
    };
    let layer = zstd_layer((0..60_000).map(long(58_000)));
    let a = oci_archive(&f, "pax-long.tar", &[layer]);
    build_from(&f, &a)
        .refused_with_code(
            1,
            &[
                "pax-long.tar: layer 1/1 (sha256:",
                "entry 1: its path is 58000 bytes, more than the 4096-byte limit",
            ],
        )
        .bounded(PEAK_RSS_MAX_MIB, TMP_MAX_MIB)
        .report("60k PAX paths of 58 KB");

    let layer = zstd_layer((0..60_000).map(long(4000)));
    let a = oci_archive(&f, "pax-many.tar", &[layer]);
    let ran = build_from(&f, &a);
    ran.refused_with_code(
        1,
        &[
            "pax-many.tar: layer 1/1 (sha256:",
            "entry 8389: the paths and link targets of the entries so far take more than the \
             32.0 MiB limit",
        ],
    )
    .bounded(PEAK_RSS_MAX_MIB, TMP_MAX_MIB)
    .report("60k PAX paths of 4000 bytes");
    assert!(!ran.stderr.contains("d/d/d/d"), "{}", ran.stderr);
}

/// Case 4: a `.tar.zst` extension of a few hundred bytes holding a directory 60,000 levels
/// deep is refused at that entry, before any tree is built.
#[test]
fn a_tiny_extension_with_a_sixty_thousand_level_directory_is_refused() {
    use edgeimage::extension::fixtures as xf;
    let f = small_fixture("");
    let mut tar = xf::tar_bytes(&xf::edgehostlet()).unwrap();
    tar.truncate(tar.len() - 1024);
    let deep = "rootfs/usr/local/".to_string() + &"a/".repeat(60_000);
    tar.extend(fx::entry(deep.as_bytes(), tar::EntryType::Directory, b""));
    tar.extend(fx::tar_end());
    let zst = zstd::encode_all(&tar[..], 19).unwrap();
    assert!(zst.len() < 2048, "{}", zst.len());
    let path = f.dir.path().join("deep.tar.zst");
    fs::write(&path, &zst).unwrap();
    let pin = edgeimage::extension::input_sha256(&path).unwrap();
    add(
        &f,
        &format!("[[extensions]]\npath = \"deep.tar.zst\"\nsha256 = \"{pin}\"\n"),
    );
    let out = f.dir.path().join("out");
    let ran = watched(&["build", "-q", "--profile", s(&f.profile), "--out", s(&out)]);
    ran.refused_with_code(
        1,
        &[
            "deep.tar.zst: entry ",
            "its path nests 60003 levels deep, more than the 64-level limit",
        ],
    )
    .bounded(PEAK_RSS_MAX_MIB, TMP_MAX_MIB)
    .report(&format!("{}-byte extension, 60k levels", zst.len()));
    assert!(!ran.stderr.contains("a/a/a/a"), "{}", ran.stderr);
}

/// The fixture's assets as one plain layer of an imager-like image.
fn asset_layer(f: &Fixture) -> fx::Layer {
    let mut tar = Vec::new();
    for name in [
        "vmlinuz",
        "initramfs.xz",
        "systemd-boot.efi",
        "systemd-stub.efi",
    ] {
        let data = fs::read(f.dir.path().join("assets").join(name)).unwrap();
        let path = format!("usr/install/amd64/{name}");
        tar.extend(fx::entry(path.as_bytes(), REG, &data));
    }
    tar.extend(fx::tar_end());
    fx::Layer::new(&tar, tar.clone())
}

/// Case 5: an unpacked `docker save` directory (as `--assets`, and as an extension) whose
/// `layer.tar` is a symbolic link, to a file outside, to a file inside, or below a linked
/// directory: refused, the link never followed. The same directory without links builds.
#[test]
fn links_in_an_unpacked_docker_save_directory_are_never_followed() {
    let f = small_fixture("");
    let members = fx::docker_save_members(Arch::Amd64, &[asset_layer(&f)]).unwrap();
    let layer_name = members
        .iter()
        .find(|(n, _)| n.ends_with("/layer.tar"))
        .unwrap()
        .0
        .clone();
    let layer_bytes = members
        .iter()
        .find(|(n, _)| *n == layer_name)
        .unwrap()
        .1
        .clone();
    let outside = f.dir.path().join("outside");
    fs::create_dir(&outside).unwrap();
    fs::write(outside.join("layer.tar"), &layer_bytes).unwrap();

    // Unpacked as it is, it builds the same image as the asset directory.
    let plain = f.dir.path().join("plain");
    fx::write_members(&members, &plain).unwrap();
    let ran = build_from(&f, &plain);
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    // The four assets (3 MiB) were kept in anonymous temporary files: what the watch over
    // TMPDIR sees.
    assert!(ran.peak_tmp_mib >= 2, "saw {} MiB", ran.peak_tmp_mib);

    type Setup = (&'static str, Box<dyn Fn(&Path)>);
    let cases: [Setup; 3] = [
        ("a file outside", {
            let (o, l) = (outside.clone(), layer_name.clone());
            Box::new(move |d: &Path| {
                std::os::unix::fs::symlink(o.join("layer.tar"), d.join(&l)).unwrap()
            })
        }),
        ("a file inside", {
            let (l, b) = (layer_name.clone(), layer_bytes.clone());
            Box::new(move |d: &Path| {
                fs::write(d.join("inside.tar"), &b).unwrap();
                std::os::unix::fs::symlink("../inside.tar", d.join(&l)).unwrap()
            })
        }),
        ("a linked directory", {
            let (o, l) = (outside.clone(), layer_name.clone());
            Box::new(move |d: &Path| {
                let parent = d.join(&l).parent().unwrap().to_path_buf();
                fs::remove_dir(&parent).unwrap();
                std::os::unix::fs::symlink(&o, &parent).unwrap()
            })
        }),
    ];
    for (i, (what, setup)) in cases.iter().enumerate() {
        let d = f.dir.path().join(format!("linked-{i}"));
        fx::write_members(&members, &d).unwrap();
        fs::remove_file(d.join(&layer_name)).unwrap();
        setup(&d);
        let ran = build_from(&f, &d);
        let word = if *what == "a linked directory" {
            "passes through a symbolic link"
        } else {
            "is a symbolic link"
        };
        ran.refused_with_code(1, &[&layer_name, word, "never followed"])
            .bounded(PEAK_RSS_MAX_MIB, TMP_MAX_MIB)
            .report(what);
    }

    // As an extension: a docker-save directory whose layer links outside.
    use edgeimage::extension::fixtures as xf;
    let tar = xf::tar_bytes(&xf::edgehostlet()).unwrap();
    let members =
        fx::docker_save_members(Arch::Amd64, &[fx::Layer::new(&tar, tar.clone())]).unwrap();
    let ext = f.dir.path().join("ext");
    fx::write_members(&members, &ext).unwrap();
    fs::write(outside.join("ext-layer.tar"), &tar).unwrap();
    fs::remove_file(ext.join(&layer_name)).unwrap();
    std::os::unix::fs::symlink(outside.join("ext-layer.tar"), ext.join(&layer_name)).unwrap();
    let pin = edgeimage::extension::input_sha256(&ext).unwrap();
    add(
        &f,
        &format!("[[extensions]]\npath = \"ext\"\nsha256 = \"{pin}\"\n"),
    );
    let out = f.dir.path().join("out-ext");
    watched(&["build", "-q", "--profile", s(&f.profile), "--out", s(&out)])
        .refused_with_code(
            1,
            &[
                "extension",
                &layer_name,
                "is a symbolic link",
                "never followed",
            ],
        )
        .bounded(PEAK_RSS_MAX_MIB, TMP_MAX_MIB)
        .report("extension");
}

/// The README's input limits list the archive limits with the values the code applies.
#[test]
fn the_readme_lists_the_archive_limits() {
    use edgeimage::assets::oci::{self, walk};
    use edgeimage::progress::human_bytes;
    let section = readme_section("Input limits");
    let section = section.as_str();
    let human = |n: u64| human_bytes(n).replace(".0 ", " ");
    for value in [
        human(oci::MIN_EXPANSION),
        format!("{} ×", oci::MAX_EXPANSION_RATIO),
        human(oci::MAX_EXPANSION),
        human(oci::MAX_IMAGE_UNCOMPRESSED),
        format!("{} layers", oci::MAX_LAYERS),
        human(oci::MAX_KEPT_FILE),
        human(oci::MAX_KEPT_TOTAL),
        format!("{} bytes", walk::MAX_PATH),
        human(walk::MAX_EXTENSION_HEADER),
        format!("{} entries", walk::MAX_ENTRIES),
        human(walk::MAX_PATH_BYTES),
        format!("{} levels", walk::MAX_DEPTH),
        human(oci::MAX_JSON_BLOB),
    ] {
        assert!(
            section.contains(&value),
            "the README's input limits do not say {value:?}"
        );
    }
}
