//! `carevault config check`: validate a configuration without starting anything.

use anyhow::Result;
use clap::Subcommand;

use crate::local::{ServerArgs, load_config};

#[derive(Subcommand)]
pub(crate) enum ConfigCommand {
    /// Validate the configuration (file + environment + flags) and print the result.
    Check(ServerArgs),
}

pub(crate) fn run(command: ConfigCommand) -> Result<()> {
    match command {
        ConfigCommand::Check(args) => {
            let config = load_config(&args)?;
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
