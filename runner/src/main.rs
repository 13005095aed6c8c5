//! `layercache`: the CI runner. Restores the Docker layer cache before `docker build` and pushes
//! only the new layers after.
//!
//! - [`cli`] — flags.
//! - [`build`] — `build`, `restore`, `save`, `key`: key computation and the command flows.
//! - [`detect`] — engine detection (version, image store) and the build path chosen from it.
//! - [`classic`] — the classic-builder build, restored images as `cachefrom`.
//! - [`buildkit`] — the BuildKit build through `docker buildx`, registry cache on the server.
//! - [`reuse`] — steps run vs reused, from the engine's build output.
//! - [`context`] — the deterministic build-context tar (`.dockerignore`, normalised headers).
//! - [`engine`] — the Docker engine (bollard), chain IDs, skip sets, build-output stage parsing.
//! - [`client`] — the cache server's HTTP API.
//! - [`restore`] — lookup + streaming `docker load`.
//! - [`push`] — `docker save` → missing blobs → upload → commit.
//! - [`report`] — summary, `--json`, progress.
//! - [`server_cmds`] — `status` and `ls`.
//! - [`steps`] — `layercache steps`, the Jet-style pipeline runner.

mod build;
mod buildkit;
mod classic;
mod cli;
mod client;
mod context;
mod detect;
mod engine;
mod push;
mod report;
mod restore;
mod retry;
mod reuse;
mod server_cmds;
mod steps;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Build(args) => build::build(args).await,
        Command::Restore(args) => build::restore(args).await,
        Command::Save(args) => build::save(args).await,
        Command::Key(args) => build::key(args),
        Command::Status(args) => server_cmds::status(args).await,
        Command::Ls(args) => server_cmds::ls(args).await,
        Command::Steps(args) => steps::run(args).await,
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
