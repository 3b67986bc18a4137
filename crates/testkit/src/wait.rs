//! Waiting for something a server does in its own time (a background job, a log line read by
//! another thread), with a deadline that bounds a hang and measures nothing.

use std::time::{Duration, Instant};

/// Poll `done` until it holds; panic naming `what` after `within`.
pub fn wait_for(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "gave up waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
