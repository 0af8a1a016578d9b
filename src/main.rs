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
    /// Compose a bootable Talos UEFI disk image (`<name>.raw.zst`) from a profile.
    Build {
        /// The hardware profile (TOML), e.g. profiles/edge-amd64.toml.
        #[arg(long, value_name = "FILE")]
        profile: PathBuf,
        /// Boot assets: a directory like the imager's /usr/install/<arch>/, or an OCI archive
        /// (docker save / OCI layout) of the imager image. Overrides the profile's assets.source.
        #[arg(long, value_name = "DIR|ARCHIVE")]
        assets: Option<PathBuf>,
        /// Directory for the outputs (created if missing).
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
    },
    /// Show what an image holds: partitions, ESP files, UKI sections and command line, META.
    Inspect {
        /// The image: `<name>.raw` or `<name>.raw.zst`.
        image: PathBuf,
        /// Machine-readable JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Build {
            profile,
            assets,
            out,
            raw,
            json,
            quiet,
        } => {
            let opts = edgeimage::build::BuildOptions {
                profile,
                assets,
                out_dir: out,
                raw,
                epoch: edgeimage::build::source_date_epoch()?,
            };
            let mut reporter = edgeimage::progress::Reporter::stderr(quiet);
            let report = edgeimage::build::build(&opts, &mut reporter)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!(
                    "built {} ({} bytes image, sha256 {})",
                    report.outputs.zst.display(),
                    report.outputs.image_size,
                    report.outputs.image_sha256
                );
                if let Some(r) = &report.outputs.raw {
                    println!("built {}", r.display());
                }
            }
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
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
