//! Project automation: `cargo xtask <command>` (alias for
//! `cargo run --quiet --release --package xtask --`).

use std::process::ExitCode;

mod e2e;

const USAGE: &str = "\
usage: cargo xtask <command> [options]

commands:
  e2e     boot the image `edgeimage build` makes in QEMU/OVMF and check what it boots
          (run `cargo xtask e2e --help` for its options)
  demo    (not implemented yet)
  media   (not implemented yet)
  bench   (not implemented yet)
  dist    (not implemented yet)
";

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let Some(cmd) = args.next() else {
        eprint!("{USAGE}");
        return ExitCode::from(2);
    };
    let rest: Vec<String> = args.collect();
    match cmd.as_str() {
        "e2e" => e2e::main(&rest),
        "demo" | "media" | "bench" | "dist" => {
            eprintln!("xtask {cmd}: not implemented yet");
            ExitCode::from(2)
        }
        "-h" | "--help" | "help" => {
            print!("{USAGE}");
            ExitCode::SUCCESS
        }
        other => {
            eprintln!("xtask: unknown command {other:?}\n");
            eprint!("{USAGE}");
            ExitCode::from(2)
        }
    }
}
