//! `carevault config check`: validate a configuration without starting anything.

use anyhow::{Result, bail};
use clap::Subcommand;

use crate::local::ServerArgs;

#[derive(Subcommand)]
pub(crate) enum ConfigCommand {
    /// Validate the configuration (file + environment + flags) and print every problem, each
    /// with its key, where it was set and what is expected; then check that the files it names
    /// exist with private modes.
    ///
    /// Example: carevault config check --config /etc/carevault/carevault.toml
    Check(ServerArgs),
}

pub(crate) fn run(command: ConfigCommand) -> Result<()> {
    match command {
        ConfigCommand::Check(args) => {
            let env = std::env::vars().chain(args.overrides());
            let checked = carevault_server::config::check(args.config.as_deref(), env);
            if !checked.problems.is_empty() {
                for problem in &checked.problems {
                    println!("{problem}");
                }
                let n = checked.problems.len();
                bail!(
                    "{n} problem{} in the configuration; docs/configuration.md describes every key",
                    if n == 1 { "" } else { "s" }
                );
            }
            let Some(config) = checked.config else {
                bail!("the configuration does not validate");
            };
            println!("configuration is valid");
            println!("listen:   {}", config.listen);
            println!("data dir: {}", config.data_dir.display());
            println!(
                "tls:      {}",
                if config.plain_http {
                    "off (plain HTTP on loopback)"
                } else {
                    "on"
                }
            );
            Ok(())
        }
    }
}
