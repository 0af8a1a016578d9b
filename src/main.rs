//! The `edgeimage` command: parses arguments and calls the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Signed, byte-reproducible Talos Linux boot media for bare-metal edge hosts.
#[derive(Parser)]
#[command(name = "edgeimage", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Compose a bootable Talos UEFI disk image (`DIR/<name>/<name>.raw.zst`) from a profile.
    Build {
        /// The hardware profile (TOML), e.g. profiles/edge-amd64.toml.
        #[arg(long, value_name = "FILE")]
        profile: PathBuf,
        /// Boot assets: a directory like the imager's /usr/install/<arch>/, or an OCI archive
        /// (docker save / OCI layout) of the imager image. Overrides the profile's assets.source.
        #[arg(long, value_name = "DIR|ARCHIVE")]
        assets: Option<PathBuf>,
        /// Directory for the outputs (created if missing): the build replaces the output set
        /// `DIR/<name>/` as a whole.
        #[arg(long, value_name = "DIR", default_value = ".")]
        out: PathBuf,
        /// Also write the uncompressed image `<name>.raw` (sparse).
        #[arg(long)]
        raw: bool,
        /// Print the build report as JSON on stdout.
        #[arg(long)]
        json: bool,
        /// No progress output.
        #[arg(long, short)]
        quiet: bool,
        /// Sign the manifest with this minisign secret key (default: the profile's
        /// `[signing] key`; without either the build is unsigned).
        #[arg(long, value_name = "KEY")]
        sign_key: Option<PathBuf>,
        /// Read the key's passphrase from this environment variable (never from the command
        /// line); default: the profile's `passphrase_env`, else ask on the terminal.
        #[arg(long, value_name = "VAR")]
        passphrase_env: Option<String>,
        /// The static edgeimage the installer image runs as /init (profiles with
        /// [installer]; default: the profile's `binary`, else this executable if static).
        #[arg(long, value_name = "PATH")]
        installer_binary: Option<PathBuf>,
    },
    /// Sign an existing manifest (`<name>.manifest.json` → `<name>.manifest.json.minisig`).
    Sign {
        /// The manifest written by `edgeimage build`.
        manifest: PathBuf,
        /// The minisign secret key (mode 0600).
        #[arg(long, value_name = "KEY")]
        key: PathBuf,
        /// Read the key's passphrase from this environment variable; default: ask on the
        /// terminal.
        #[arg(long, value_name = "VAR")]
        passphrase_env: Option<String>,
    },
    /// Prove that an image, a compressed image, a manifest or a written disk holds exactly
    /// what a trusted key signed. Exit codes: 0 verified, 3 unsigned, 4 unknown key,
    /// 5 revoked key, 6 bad signature, 7 content mismatch, 8 unreadable target,
    /// 9 older than --min-build, 10 not the --profile named, 1 other errors.
    Verify {
        /// `<name>.raw`, `<name>.raw.zst`, `<name>.manifest.json`, or a block device.
        target: PathBuf,
        /// The trust store: a directory with trusted/*.pub and an optional revoked list
        /// (default: $EDGEIMAGE_TRUST).
        #[arg(long, value_name = "DIR", env = "EDGEIMAGE_TRUST")]
        trust: PathBuf,
        /// Refuse builds older than this build number.
        #[arg(long, value_name = "N")]
        min_build: Option<u64>,
        /// Refuse media built from another profile (with --min-build: refuse older builds of
        /// this profile).
        #[arg(long, value_name = "NAME")]
        profile: Option<String>,
        /// Use this manifest (and its .minisig) instead of the one inside or next to TARGET.
        #[arg(long, value_name = "FILE")]
        manifest: Option<PathBuf>,
        /// Print the report as JSON on stdout.
        #[arg(long)]
        json: bool,
        /// No progress output.
        #[arg(long, short)]
        quiet: bool,
    },
    /// Write an image to one or more disks (or files) at once and prove, by reading each back
    /// from the device, that it holds what was signed. The partition table is written last;
    /// a target that fails is left without one. Exit codes: 0 all verified, 3/4/5/6/9/10 the
    /// image refused (as for verify), 7 the image did not match its digests while writing,
    /// 11 a target refused (nothing written), 12 not confirmed, 13 some targets failed,
    /// 130 interrupted, 1 other errors.
    Flash {
        /// The image: `<name>.raw.zst` / `<name>.raw` (with its manifest), a raw image with a
        /// `.bmap` next to it, or a plain raw / zstd / xz / gzip image (found by magic bytes).
        image: PathBuf,
        /// A whole disk (`/dev/sdb`, `/dev/disk/by-id/usb-…`) or a file to write (created or
        /// truncated; written sparsely). Repeat for several targets.
        #[arg(long = "target", short = 't', value_name = "PATH")]
        targets: Vec<PathBuf>,
        /// The disk with this serial number (see `edgeimage devices`). Repeatable.
        #[arg(long = "serial", value_name = "SERIAL")]
        serials: Vec<String>,
        /// The trust store (trusted/*.pub, revoked); default: $EDGEIMAGE_TRUST.
        #[arg(long, value_name = "DIR", env = "EDGEIMAGE_TRUST")]
        trust: Option<PathBuf>,
        /// Write an image that is unsigned, or signed by a key not in the trust store.
        /// (Revoked keys and bad signatures are always refused.)
        #[arg(long)]
        allow_unsigned: bool,
        /// Use this manifest (and its .minisig) instead of the one inside or next to IMAGE.
        #[arg(long, value_name = "FILE")]
        manifest: Option<PathBuf>,
        /// Use this block map instead of `<stem>.bmap` next to IMAGE (images without a
        /// manifest).
        #[arg(long, value_name = "FILE")]
        bmap: Option<PathBuf>,
        /// Refuse builds older than this build number.
        #[arg(long, value_name = "N")]
        min_build: Option<u64>,
        /// Refuse media built from another profile.
        #[arg(long, value_name = "NAME")]
        profile: Option<String>,
        /// Do not ask for confirmation before overwriting disks.
        #[arg(long, short)]
        yes: bool,
        /// Skip a safety check, by name: partition, mounted, swap, held, system, source,
        /// too-small, read-only, block-size. Repeat or separate with commas.
        #[arg(long, value_name = "CHECK", value_delimiter = ',')]
        force: Vec<String>,
        /// Append one JSON record per target to this file (with --inventory: the line's
        /// log, which also says which rows were written already).
        #[arg(long, value_name = "FILE")]
        record: Option<PathBuf>,
        /// Personalize each target from a row of this inventory (CSV or JSON: id, disk_serial
        /// or host_serial or neither, fields for the templates); every row is validated first.
        #[arg(long, value_name = "FILE", requires_all = ["personalize", "record"])]
        inventory: Option<PathBuf>,
        /// The profile whose [[personalize]] templates fill the image's slots (they must be
        /// the templates the image was signed with).
        #[arg(long, value_name = "PROFILE", requires = "inventory")]
        personalize: Option<PathBuf>,
        /// Write an inventory row again although the log says it was written.
        #[arg(long, requires = "inventory")]
        reuse: bool,
        /// What to do with the image's unmapped space on the target: keep (fastest), zero,
        /// discard.
        #[arg(long, value_name = "HOW", default_value = "keep")]
        unmapped: String,
        /// Rewrites of a chunk that reads back wrong before the target fails.
        #[arg(long, value_name = "N", default_value_t = 2)]
        retries: u32,
        /// Give up on a target that makes no progress for this many seconds.
        #[arg(long, value_name = "SECONDS", default_value_t = 120)]
        stall_timeout: u64,
        /// Progress and results as JSON lines on stdout (events: begin, start, progress,
        /// verified, failed, done).
        #[arg(long)]
        json: bool,
        /// No progress output (the verdict is still printed).
        #[arg(long, short)]
        quiet: bool,
    },
    /// Watch for disks appearing on allowed ports and write the image to each as it arrives
    /// (several at once), unattended. Never a disk that was present when the station started,
    /// never one on a port no rule allows. Status lines on stderr, or JSON events with
    /// --json (station-start, arrived, ignored, finished, gone, station-done).
    Station {
        /// The image (as for flash).
        image: PathBuf,
        /// Allowed ports: sysfs:GLOB (the disk's sysfs device path), by-id:GLOB, or
        /// transport:NAME; repeat or separate with commas.
        #[arg(long, value_name = "RULE", value_delimiter = ',', required = true)]
        ports: Vec<String>,
        /// The trust store (trusted/*.pub, revoked); default: $EDGEIMAGE_TRUST.
        #[arg(long, value_name = "DIR", env = "EDGEIMAGE_TRUST")]
        trust: Option<PathBuf>,
        /// Write an image that is unsigned or signed by an unknown key.
        #[arg(long)]
        allow_unsigned: bool,
        /// Refuse builds older than this build number.
        #[arg(long, value_name = "N")]
        min_build: Option<u64>,
        /// Refuse media built from another profile.
        #[arg(long, value_name = "NAME")]
        profile: Option<String>,
        /// Append one JSON record per device to this file.
        #[arg(long, value_name = "FILE")]
        record: Option<PathBuf>,
        /// Personalize each device from a row of this inventory (as for flash; needs
        /// --personalize and --record, the line's log).
        #[arg(long, value_name = "FILE", requires_all = ["personalize", "record"])]
        inventory: Option<PathBuf>,
        /// The profile whose [[personalize]] templates fill the image's slots.
        #[arg(long, value_name = "PROFILE", requires = "inventory")]
        personalize: Option<PathBuf>,
        /// Write an inventory row again although the log says it was written.
        #[arg(long, requires = "inventory")]
        reuse: bool,
        /// The operator's name, in every record.
        #[arg(long, value_name = "NAME")]
        operator: Option<String>,
        /// This station's name, in every record.
        #[arg(long, value_name = "NAME")]
        station_name: Option<String>,
        /// Devices written at once.
        #[arg(long, value_name = "N", default_value_t = 4)]
        parallel: usize,
        /// Stop after this many devices finished.
        #[arg(long, value_name = "N")]
        count: Option<usize>,
        /// Stop after this many seconds with nothing running and nothing arriving.
        #[arg(long, value_name = "SECONDS")]
        idle_exit: Option<u64>,
        /// Events as JSON lines on stdout.
        #[arg(long)]
        json: bool,
    },
    /// List the disks that could be flashed: path, by-id, model, serial, size, transport,
    /// and why a disk would be refused (mounted, held, system disk, …). Reads sysfs and
    /// /proc only, so it also works in an initramfs.
    Devices {
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Install the payload of an installer stick onto this host's disk: verify the payload's
    /// signature and digests, choose the disk by the configuration's rules, write and read
    /// back, record the result. (At boot the stick runs this as /init.) Exit codes: 0
    /// installed, 1 failed.
    Install {
        /// The installer configuration (installer.json, as the installer image carries it).
        #[arg(
            long,
            value_name = "FILE",
            default_value = "/etc/edgeimage/installer.json"
        )]
        config: PathBuf,
        /// Take the payload from this directory (`<name>.raw.zst`, its manifest and
        /// signature, `trust/`) instead of the stick's payload partition.
        #[arg(long, value_name = "DIR")]
        payload: Option<PathBuf>,
        /// Write the install record into this directory (default: the stick's records
        /// partition).
        #[arg(long, value_name = "DIR")]
        records: Option<PathBuf>,
        /// Scratch directory for the payload copied off the stick.
        #[arg(long, value_name = "DIR", default_value = "/run/edgeimage")]
        work: PathBuf,
        /// Read sysfs, /proc and /dev under this directory instead of / (tests, chroots).
        #[arg(long, value_name = "DIR", default_value = "/")]
        system_root: PathBuf,
        /// Print the install record as JSON on stdout.
        #[arg(long)]
        json: bool,
        /// No progress output.
        #[arg(long, short)]
        quiet: bool,
    },
    /// Read factory record logs.
    #[command(subcommand)]
    Records(RecordsCommand),
    /// Manage signing keys.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Show what an image holds: partitions, ESP files, UKI sections and command line, META.
    Inspect {
        /// The image: `<name>.raw` or `<name>.raw.zst`.
        image: PathBuf,
        /// Machine-readable JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum RecordsCommand {
    /// Totals, failures by kind, rows written twice (there must be none) and, with
    /// --inventory, the rows not written yet. Exit code 0, or 1 when a row was written twice.
    Summarize {
        /// The append-only record log (JSON lines).
        log: PathBuf,
        /// The inventory the line works through.
        #[arg(long, value_name = "FILE")]
        inventory: Option<PathBuf>,
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum KeyCommand {
    /// Write a minisign key pair: `<DIR>/<NAME>.pub` and `<DIR>/<NAME>.key` (mode 0600,
    /// passphrase-encrypted unless --unencrypted).
    Generate {
        /// Name of the key files.
        #[arg(long)]
        name: String,
        /// Directory for the key files (created if missing).
        #[arg(long, value_name = "DIR", default_value = ".")]
        out: PathBuf,
        /// Read the passphrase from this environment variable; default: ask on the terminal
        /// (twice).
        #[arg(long, value_name = "VAR")]
        passphrase_env: Option<String>,
        /// Store the secret key unencrypted (for automation that keeps it in a vault).
        #[arg(long, conflicts_with = "passphrase_env")]
        unencrypted: bool,
        /// Replace existing key files of that name.
        #[arg(long)]
        force: bool,
    },
}

/// Set by SIGINT/SIGTERM; the flash engine stops at the next chunk.
static CANCEL: std::sync::OnceLock<std::sync::Arc<std::sync::atomic::AtomicBool>> =
    std::sync::OnceLock::new();

extern "C" fn on_signal(_: libc::c_int) {
    if let Some(c) = CANCEL.get() {
        c.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

fn cancel_on_signals() -> std::sync::Arc<std::sync::atomic::AtomicBool> {
    let c = CANCEL
        .get_or_init(|| std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false)))
        .clone();
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic that outlives the process.
        unsafe { libc::signal(sig, on_signal as *const () as libc::sighandler_t) };
    }
    c
}

fn run(cli: Cli) -> anyhow::Result<u8> {
    match cli.command {
        Command::Flash {
            image,
            targets,
            serials,
            trust,
            allow_unsigned,
            manifest,
            bmap,
            min_build,
            profile,
            yes,
            force,
            record,
            inventory,
            personalize,
            reuse,
            unmapped,
            retries,
            stall_timeout,
            json,
            quiet,
        } => {
            use edgeimage::flash::{self, devices::Check, medium::Unmapped, TargetArg};
            let force = force
                .iter()
                .map(|f| {
                    Check::parse(f).ok_or_else(|| {
                        anyhow::anyhow!(
                            "--force {f}: no such check (partition, mounted, swap, held, system, source, too-small, read-only, block-size)"
                        )
                    })
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let unmapped = match unmapped.as_str() {
                "keep" => Unmapped::Keep,
                "zero" => Unmapped::Zero,
                "discard" => Unmapped::Discard,
                o => anyhow::bail!("--unmapped {o}: use keep, zero or discard"),
            };
            let opts = flash::FlashOptions {
                image,
                targets: targets
                    .into_iter()
                    .map(TargetArg::Path)
                    .chain(serials.into_iter().map(TargetArg::Serial))
                    .collect(),
                source: flash::source::SourceOptions {
                    trust,
                    allow_unsigned,
                    manifest,
                    bmap,
                    min_build,
                    profile,
                },
                yes,
                force,
                record,
                settings: flash::pipeline::Settings {
                    retries,
                    unmapped,
                    stall: std::time::Duration::from_secs(stall_timeout.max(1)),
                    ..Default::default()
                },
                style: flash::ui::Style::choose(json, quiet),
                system_root: PathBuf::from("/"),
                line: inventory.map(|inventory| {
                    edgeimage::factory::line::LineOptions::new(
                        inventory,
                        personalize.unwrap_or_default(),
                        reuse,
                    )
                }),
            };
            let summary = flash::flash(&opts, cancel_on_signals());
            for l in &summary.lines {
                if json {
                    eprintln!("{l}");
                } else {
                    println!("{l}");
                }
            }
            return Ok(summary.exit_code);
        }
        Command::Install {
            config,
            payload,
            records,
            work,
            system_root,
            json,
            quiet,
        } => {
            use edgeimage::install::{self, run};
            let opts = run::InstallOptions {
                config: install::load_config(&config)?,
                payload: payload.map_or(run::Payload::Stick, run::Payload::Dir),
                records,
                system_root,
                work,
                style: edgeimage::flash::ui::Style::choose(false, quiet || json),
            };
            // Progress and verdict go to stderr as they happen.
            let report = run::run(&opts, cancel_on_signals());
            if json {
                println!("{}", serde_json::to_string_pretty(&report.record)?);
            }
            return Ok(if report.ok { 0 } else { 1 });
        }
        Command::Station {
            image,
            ports,
            trust,
            allow_unsigned,
            min_build,
            profile,
            record,
            inventory,
            personalize,
            reuse,
            operator,
            station_name,
            parallel,
            count,
            idle_exit,
            json,
        } => {
            use edgeimage::flash::{self, station};
            let ports = ports
                .iter()
                .map(|p| station::PortRule::parse(p))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let opts = station::StationOptions {
                flash: flash::FlashOptions {
                    image,
                    targets: Vec::new(),
                    source: flash::source::SourceOptions {
                        trust,
                        allow_unsigned,
                        manifest: None,
                        bmap: None,
                        min_build,
                        profile,
                    },
                    yes: true,
                    force: Vec::new(),
                    record,
                    settings: Default::default(),
                    style: flash::ui::Style::Quiet,
                    system_root: PathBuf::from("/"),
                    line: inventory.map(|inventory| {
                        let mut lo = edgeimage::factory::line::LineOptions::new(
                            inventory,
                            personalize.unwrap_or_default(),
                            reuse,
                        );
                        lo.operator = operator;
                        lo.station = station_name;
                        lo
                    }),
                },
                ports,
                parallel,
                count,
                idle_exit: idle_exit.map(std::time::Duration::from_secs),
                json,
            };
            let sum = station::run(&opts, cancel_on_signals())?;
            return Ok(if sum.failed > 0 {
                edgeimage::flash::exit::TARGET_FAILED
            } else {
                0
            });
        }
        Command::Records(RecordsCommand::Summarize {
            log,
            inventory,
            json,
        }) => {
            use edgeimage::factory;
            let inv = inventory
                .as_deref()
                .map(factory::Inventory::load)
                .transpose()?;
            let mut tally = factory::log::Tally::default();
            let torn = factory::log::scan(&log, &mut |e| {
                tally.add(&e);
                Ok(())
            })?;
            for t in &torn {
                eprintln!("warning: {}", t.message);
            }
            let sum = tally.summary(inv.as_ref());
            if json {
                println!("{}", serde_json::to_string_pretty(&sum)?);
            } else {
                print!("{}", sum.render());
            }
            return Ok(if sum.ok() { 0 } else { 1 });
        }
        Command::Devices { json } => {
            let sys = edgeimage::flash::devices::System::host();
            let disks = sys.disks()?;
            if json {
                // Each disk with the checks that would refuse it whatever the image.
                let listed: Vec<serde_json::Value> = disks
                    .iter()
                    .map(|d| {
                        let mut v = serde_json::to_value(d).unwrap_or_default();
                        if let Some(o) = v.as_object_mut() {
                            let why = d.refusals(&sys, 0, None, &[]);
                            o.insert(
                                "refusals".into(),
                                serde_json::to_value(why).unwrap_or_default(),
                            );
                        }
                        v
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&listed)?);
            } else {
                print!("{}", edgeimage::flash::devices::render_table(&disks, &sys));
            }
        }
        Command::Build {
            profile,
            assets,
            out,
            raw,
            json,
            quiet,
            sign_key,
            passphrase_env,
            installer_binary,
        } => {
            let opts = edgeimage::build::BuildOptions {
                profile,
                assets,
                out_dir: out,
                raw,
                epoch: edgeimage::build::source_date_epoch()?,
                sign_key,
                passphrase_env,
                installer_binary,
            };
            let mut reporter = edgeimage::progress::Reporter::stderr(quiet);
            let report = edgeimage::build::build(&opts, &mut reporter)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!(
                    "built {} ({} bytes image, sha256-1m {})",
                    report.outputs.zst.display(),
                    report.outputs.image_size,
                    report.outputs.image_sha256
                );
                if let Some(r) = &report.outputs.raw {
                    println!("built {}", r.display());
                }
                println!("built {}", report.manifest.display());
                match (&report.signature, &report.key_id) {
                    (Some(s), Some(k)) => println!("signed {} with key {k}", s.display()),
                    _ => println!("not signed (no --sign-key and no [signing] key in the profile)"),
                }
                println!("built {}", report.bmap.display());
                if let Some(i) = &report.installer {
                    println!("built {}", i.outputs.zst.display());
                    if let Some(r) = &i.outputs.raw {
                        println!("built {}", r.display());
                    }
                }
                println!("output set {}", report.set.display());
            }
        }
        Command::Sign {
            manifest,
            key,
            passphrase_env,
        } => {
            let source = edgeimage::sign::PassphraseSource::env_or_prompt(passphrase_env);
            let key = edgeimage::sign::SecretKey::load_with(&key, &source)?;
            let sig = edgeimage::build::sign_manifest_file(&manifest, &key)?;
            println!("signed {} with key {}", sig.display(), key.key_id_hex());
        }
        Command::Verify {
            target,
            trust,
            min_build,
            profile,
            manifest,
            json,
            quiet,
        } => {
            let opts = edgeimage::verify::VerifyOptions {
                trust,
                min_build,
                profile,
                manifest,
            };
            let mut reporter = edgeimage::progress::Reporter::stderr(quiet || json);
            let report = edgeimage::verify::verify(&target, &opts, &mut reporter);
            drop(reporter);
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!("{}", report.verdict);
                for l in report.details() {
                    println!("{l}");
                }
            }
            return Ok(report.exit_code);
        }
        Command::Key(KeyCommand::Generate {
            name,
            out,
            passphrase_env,
            unencrypted,
            force,
        }) => {
            let pass = if unencrypted {
                None
            } else {
                Some(edgeimage::sign::read_passphrase(
                    &edgeimage::sign::PassphraseSource::env_or_prompt(passphrase_env),
                    "passphrase for the new secret key",
                    true,
                )?)
            };
            let (pub_path, key_path, pk) = edgeimage::sign::generate_key_pair(
                &out,
                &name,
                pass.as_deref().map(|p| &p[..]),
                edgeimage::sign::Kdf::Sensitive,
                force,
            )?;
            println!(
                "public key {} (key ID {})",
                pub_path.display(),
                pk.key_id_hex()
            );
            println!(
                "secret key {} (mode 0600{}): keep it out of any repository",
                key_path.display(),
                if unencrypted {
                    ", NOT encrypted"
                } else {
                    ", encrypted"
                }
            );
        }
        Command::Inspect { image, json } => {
            edgeimage::inspect::check_target(&image)?;
            let i = edgeimage::inspect::inspect(&image)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&i)?);
            } else {
                print!("{}", edgeimage::inspect::render(&i)?);
            }
        }
    }
    Ok(0)
}

fn main() -> ExitCode {
    // As /init of the installer stick's initramfs.
    if std::process::id() == 1 {
        edgeimage::install::init_main();
    }
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
