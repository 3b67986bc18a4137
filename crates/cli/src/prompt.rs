//! Asking the person at the terminal: hidden secrets, lines, yes/no. Without a terminal
//! (scripts, tests), each answer is one line of standard input and prompts are not shown.

use std::io::{BufRead, IsTerminal};

use anyhow::{Result, bail};
use zeroize::Zeroizing;

/// True when a person can answer (standard input is a terminal).
pub(crate) fn interactive() -> bool {
    std::io::stdin().is_terminal()
}

/// Read a secret: hidden prompt on a terminal, one line of standard input otherwise.
pub(crate) fn secret(prompt: &str) -> Result<Zeroizing<String>> {
    if interactive() {
        Ok(Zeroizing::new(rpassword::prompt_password(prompt)?))
    } else {
        line_stdin()
    }
}

/// Read a line (trimmed), showing `prompt` on a terminal.
pub(crate) fn line(prompt: &str) -> Result<String> {
    if interactive() {
        eprint!("{prompt}");
    }
    Ok(line_stdin()?.trim().to_owned())
}

/// Ask a yes/no question on a terminal (the default is yes); false without a terminal.
pub(crate) fn confirm(question: &str) -> Result<bool> {
    if !interactive() {
        return Ok(false);
    }
    let answer = line(&format!("{question} [Y/n] "))?;
    Ok(matches!(
        answer.to_ascii_lowercase().as_str(),
        "" | "y" | "yes"
    ))
}

fn line_stdin() -> Result<Zeroizing<String>> {
    let mut line = Zeroizing::new(String::new());
    let n = std::io::stdin().lock().read_line(&mut line)?;
    if n == 0 {
        bail!("unexpected end of input");
    }
    let trimmed = Zeroizing::new(line.trim_end_matches(['\r', '\n']).to_owned());
    Ok(trimmed)
}
