//! `sluice`: topics, produce, consume, cluster and bench from the command line.
//!
//! Exit codes: 0 success, 1 the broker refused (stderr: the reason and a sentence),
//! 2 usage error, 3 could not connect.

mod args;
mod commands;
mod failure;
mod output;
mod target;

use std::io::Write;

use clap::{CommandFactory, Parser};

use args::{Cli, Command};
use failure::Failure;
use target::Target;

fn main() {
    let cli = Cli::parse();
    let code = match run(cli) {
        Ok(()) => 0,
        Err(failure) => {
            if !failure.message.is_empty() {
                eprintln!("sluice: {}", failure.message);
            }
            failure.code
        }
    };
    std::process::exit(code);
}

fn run(cli: Cli) -> Result<(), Failure> {
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    if let Command::Completions { shell } = cli.command {
        clap_complete::generate(shell, &mut Cli::command(), "sluice", &mut out);
        return Ok(out.flush()?);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::other(format!("cannot start the async runtime: {e}")))?;
    let target = Target::from_cli(&cli)?;
    let result = runtime.block_on(async {
        let client = target.connect().await?;
        match cli.command {
            Command::Topic(command) => {
                commands::topic::run(&client, command, cli.format, &mut out).await
            }
            Command::Produce(args) => {
                commands::produce::run(&client, args, cli.format, &mut out).await
            }
            Command::Consume(args) => {
                commands::consume::run(&client, args, cli.format, &mut out).await
            }
            Command::Cluster(command) => {
                commands::cluster::run(&client, command, cli.format, &mut out).await
            }
            Command::Group(command) => {
                commands::group::run(&client, command, cli.format, &mut out).await
            }
            Command::Acl(command) => {
                commands::acl::run(&client, command, cli.format, &mut out).await
            }
            Command::User(command) => {
                commands::user::run(&client, command, cli.format, &mut out).await
            }
            Command::Quota(command) => {
                commands::quota::run(&client, command, cli.format, &mut out).await
            }
            Command::Audit(command) => {
                commands::audit::run(&client, command, cli.format, &mut out).await
            }
            Command::Bench(args) => {
                commands::bench::run(&client, &target, args, cli.format, &mut out).await
            }
            Command::Completions { .. } => Ok(()),
        }
    });
    let flushed = out.flush();
    result?;
    // A closed pipe becomes a quiet exit 0 in `Failure::from`.
    Ok(flushed?)
}
