//! A pseudo-terminal to drive interactive commands (`enroll`, `login`) as a person would: the
//! command runs in a session of its own with the terminal as its controlling one (`setsid -c`),
//! so hidden-password prompts read from it exactly as from a real terminal.

use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, Command, ExitStatus};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use carevault_testkit::wait_for;
use rustix::pty::{OpenptFlags, grantpt, openpt, ptsname, unlockpt};

pub struct Terminal {
    master: File,
    output: Arc<Mutex<Vec<u8>>>,
    /// How much of the output `expect` has consumed.
    seen: usize,
    child: Child,
}

impl Terminal {
    /// Start `bin args` on a new terminal, with `env` on top of a clean CareVault environment.
    pub fn spawn(bin: &Path, args: &[&str], env: &[(&str, &str)]) -> Self {
        let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY).unwrap();
        grantpt(&master).unwrap();
        unlockpt(&master).unwrap();
        let name = ptsname(&master, Vec::new()).unwrap();
        let slave = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(name.to_str().unwrap())
            .unwrap();
        let mut cmd = Command::new("setsid");
        cmd.args(["-c", "-w"])
            .arg(bin)
            .args(args)
            .env_remove("CAREVAULT_LISTEN")
            .env_remove("CAREVAULT_DATA_DIR")
            .env_remove("CAREVAULT_DATABASE_URL")
            .env_remove("CAREVAULT_SERVER")
            .env_remove("CAREVAULT_CA_CERT")
            .env_remove("CAREVAULT_PROFILE")
            .stdin(slave.try_clone().unwrap())
            .stdout(slave.try_clone().unwrap())
            .stderr(slave);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .expect("setsid (util-linux) is needed for this test");
        drop(cmd); // closes our copies of the terminal's far end
        let master = File::from(master);
        let output = Arc::new(Mutex::new(Vec::new()));
        let mut reader = master.try_clone().unwrap();
        let sink = output.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            // Ends with EIO once the command has exited and the terminal is closed.
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        Self {
            master,
            output,
            seen: 0,
            child,
        }
    }

    /// Everything the command printed so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.output.lock().unwrap()).into_owned()
    }

    /// Wait until `needle` appears after what was consumed; return the text up to its end.
    pub fn expect(&mut self, needle: &str) -> String {
        let mut end = None;
        wait_for(
            &format!("{needle:?} on the terminal"),
            Duration::from_secs(60),
            || {
                let out = self.output.lock().unwrap();
                end = out[self.seen.min(out.len())..]
                    .windows(needle.len())
                    .position(|w| w == needle.as_bytes())
                    .map(|at| self.seen + at + needle.len());
                end.is_some()
            },
        );
        let end = end.unwrap_or(self.seen);
        let chunk =
            String::from_utf8_lossy(&self.output.lock().unwrap()[self.seen..end]).into_owned();
        self.seen = end;
        chunk
    }

    /// Type a line and press Enter.
    pub fn send_line(&mut self, line: &str) {
        self.master
            .write_all(format!("{line}\n").as_bytes())
            .unwrap();
    }

    pub fn wait(&mut self) -> ExitStatus {
        self.child.wait().unwrap()
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
