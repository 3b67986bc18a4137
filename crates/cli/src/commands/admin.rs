//! `carevault admin recover`: local administration that opens the data directory itself.

use std::sync::Arc;

use anyhow::Result;
use carevault_server::{SharedClock, SystemClock, environment};
use clap::Subcommand;

use crate::local::{ServerArgs, load_config_for_keys, runtime};

#[derive(Subcommand)]
pub(crate) enum AdminCommand {
    /// Issue a new enrollment token for an account (default `admin`) that has lost its
    /// credentials; run on the server machine.
    ///
    /// Example: carevault admin recover --data-dir carevault-data --user admin
    Recover {
        #[command(flatten)]
        server: ServerArgs,
        /// The account to recover.
        #[arg(long, default_value = "admin")]
        user: String,
    },
}

pub(crate) fn run(command: AdminCommand) -> Result<()> {
    match command {
        AdminCommand::Recover { server, user } => runtime()?.block_on(recover(server, &user)),
    }
}

async fn recover(args: ServerArgs, user: &str) -> Result<()> {
    let config = load_config_for_keys(&args, false)?;
    let clock: SharedClock = Arc::new(SystemClock);
    let env = environment::open(&config, clock.clone()).await?;
    let audit = Arc::new(
        carevault_server::audit::Audit::open(
            env.store.clone(),
            &env.keyring,
            &config.node_id,
            clock.clone(),
        )
        .await?,
    );
    let identity =
        carevault_server::identity::Identity::new(&config, env.store, env.keyring, clock)?;
    let scope = carevault_server::audit::AuditScope::local(
        audit,
        carevault_server::audit::AuditAction::UserRecover,
    );
    let issued = identity.reissue_enrollment(&scope, user).await?;
    println!(
        "enrollment token for {}: {}",
        issued.username, issued.enrollment_token
    );
    println!(
        "(expires {}; earlier enrollment tokens for this account no longer work)",
        issued.expires_at
    );
    Ok(())
}
