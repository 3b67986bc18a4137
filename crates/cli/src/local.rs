//! What the commands that work on the local data directory share: where the configuration
//! comes from (`ServerArgs`), loading it, logging, and the async runtime.

use std::path::PathBuf;

use anyhow::{Context, Result};
use carevault_server::{Config, FileConfig};
use clap::Args;

#[derive(Args, Clone)]
pub(crate) struct ServerArgs {
    /// A TOML configuration file.
    #[arg(long, env = "CAREVAULT_CONFIG")]
    pub(crate) config: Option<PathBuf>,
    /// Address to listen on (CAREVAULT_LISTEN), default 127.0.0.1:8443.
    #[arg(long)]
    listen: Option<String>,
    /// Data directory (CAREVAULT_DATA_DIR), default ./carevault-data.
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

impl ServerArgs {
    /// The flags as the environment variables they stand for (they win over both).
    pub(crate) fn overrides(&self) -> Vec<(String, String)> {
        let mut vars = Vec::new();
        if let Some(listen) = &self.listen {
            vars.push(("CAREVAULT_LISTEN".to_owned(), listen.clone()));
        }
        if let Some(dir) = &self.data_dir {
            vars.push((
                "CAREVAULT_DATA_DIR".to_owned(),
                dir.to_string_lossy().into_owned(),
            ));
        }
        vars
    }
}

/// Threads of the runtime's blocking pool.
const BLOCKING_THREADS: usize = 16;

pub(crate) fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        // Blocking work is bounded anyway (8 store scans at once, password hashing); tokio's
        // default of 512 threads let bursts leave dozens behind, each with its own allocator
        // heap, which locked memory (see `memory`) can never give back (peak RSS 339 MiB).
        .max_blocking_threads(BLOCKING_THREADS)
        .build()
        .context("cannot start the async runtime")
}

pub(crate) fn load_config(args: &ServerArgs) -> Result<Config> {
    let mut file = FileConfig::load(args.config.as_deref(), std::env::vars())?;
    if let Some(listen) = &args.listen {
        file.listen = Some(listen.clone());
    }
    if let Some(dir) = &args.data_dir {
        file.data_dir = Some(dir.clone());
    }
    Ok(Config::from_file(file)?)
}

/// The configuration of a command that unseals keys in this process, whose memory is protected
/// (locked, not dumpable) before any key is read. The server commands set up logging first, so
/// that a failure to lock is logged.
pub(crate) fn load_config_for_keys(args: &ServerArgs, logging: bool) -> Result<Config> {
    let config = load_config(args)?;
    if logging {
        init_logging(&config);
    }
    carevault_server::memory::protect_process(config.key_lock_memory)?;
    Ok(config)
}

fn init_logging(config: &Config) {
    let filter = std::env::var("CAREVAULT_LOG")
        .unwrap_or_else(|_| format!("{},hyper=warn,rustls=warn", config.log_level));
    let _ = tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .try_init();
}
