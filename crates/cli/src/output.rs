//! `--output table|json` for the listing commands: a table for people, the server's answer as
//! JSON for scripts.

use clap::{Args, ValueEnum};
use serde_json::Value;

#[derive(Clone, Copy, Default, ValueEnum)]
pub(crate) enum Format {
    #[default]
    Table,
    Json,
}

#[derive(Args, Clone, Copy, Default)]
pub(crate) struct OutputArgs {
    /// `table` (for people) or `json` (the server's answer as it is, for scripts and jq).
    #[arg(long, value_enum, default_value_t)]
    output: Format,
}

impl OutputArgs {
    /// With `--output json`, print `answer` and return true: the caller prints no table.
    pub(crate) fn printed_json(self, answer: &Value) -> anyhow::Result<bool> {
        match self.output {
            Format::Table => Ok(false),
            Format::Json => {
                println!("{}", serde_json::to_string_pretty(answer)?);
                Ok(true)
            }
        }
    }
}
