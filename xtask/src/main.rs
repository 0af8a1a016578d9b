//! Project automation: `cargo xtask <command>` (alias for
//! `cargo run --quiet --release --package xtask --`).

use std::process::ExitCode;

mod bench;
mod bench_cache;
mod dist;
mod e2e;
mod fuzz;
mod media;
mod test;
mod util;

const USAGE: &str = "\
usage: cargo xtask <command> [options]

commands:
  e2e     boot the image `edgeimage build` makes in QEMU/OVMF and check what it boots
          (run `cargo xtask e2e --help` for its options)
  demo    build and sign the demo profile from a synthetic (not bootable) asset set, inspect
          and verify it
  media   --profile NAME|FILE | --all: build profiles into target/media/
  test    the test command: fmt, clippy, all tests, then the e2e boot test
          (--no-e2e to leave the boot test out)
  bench   build: time, CPU and peak memory of `edgeimage build` vs sgdisk/mkfs.fat/mtools/
          objcopy/zstd on the same inputs (--runs N)
          verify: `edgeimage verify` of a 2 GiB image with 600 MB of data (file, loop
          device, .zst) vs sha256sum of the image and a plain read of the data (--runs N)
          flash: `edgeimage flash` (write + read-back verify) of a signed 4 GiB image with
          600 MiB of data to a sparse file / loop device, and to 4 at once, vs bmaptool copy
          with the .bmap and zstd -dc | dd (--runs N; root for loop devices and cold caches)
  dist    the static edgeimage binary (musl, else static glibc) in target/dist/, the
          installer stick's /init
  fuzz    [TARGET ...] [--seconds N] [--seeds-only] [--jobs J]: seed corpora from the
          project's fixtures in target/fuzz-corpus/, then each cargo-fuzz target in fuzz/
          for N seconds (default 60; needs the nightly toolchain)
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
        "demo" => report(media::demo(&rest)),
        "media" => report(media::media(&rest)),
        "test" => report(test::main(&rest)),
        "bench" => report(bench::main(&rest)),
        "dist" => report(dist::main(&rest)),
        "fuzz" => report(fuzz::main(&rest)),
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

fn report(r: anyhow::Result<()>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::from(1)
        }
    }
}
