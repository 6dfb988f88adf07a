//! `rayd`: start, stop and inspect a rayd node by hand.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    rayd_cli::main(rayd_cli::Cli::parse())
}
