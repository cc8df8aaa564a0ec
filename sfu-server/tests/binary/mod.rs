//! Shared by the tests that run the built `sfu-server` binary.
#![allow(dead_code, unreachable_pub)] // each test file uses a different part

use std::process::{Command, Output};

/// The binary with no `SFU_*` or `RUST_LOG` settings inherited from the
/// environment running the tests.
pub fn sfu_server() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_sfu-server"));
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("SFU_") {
            command.env_remove(&key);
        }
    }
    command.env_remove("RUST_LOG");
    command
}

/// The binary on any free HTTP and UDP ports of 127.0.0.1, logging
/// warnings only (it prints its URL on standard output once it listens).
pub fn sfu_server_on_free_ports() -> Command {
    let mut command = sfu_server();
    command.args([
        "--http",
        "127.0.0.1:0",
        "--udp",
        "127.0.0.1:0",
        "--log",
        "warn",
    ]);
    command
}

/// Runs it to the end.
pub fn run(command: &mut Command) -> Output {
    command.output().expect("the sfu-server binary runs")
}

/// Sends `signal` to a child process.
#[cfg(unix)]
pub fn signal(child: &std::process::Child, signal: nix::sys::signal::Signal) {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, signal).expect("the child takes signals");
}
