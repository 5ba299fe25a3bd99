//! The real `pim` binary, run as people would: `pim up` on a fresh data directory with no
//! PostgreSQL or Redis (or the distributed shape behind the gateway), then the client
//! commands. The helpers are here; each module is one area of the CLI.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const PIM: &str = env!("CARGO_BIN_EXE_pim");

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
}

struct Up {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Up {
    fn start(data: &Path) -> Self {
        let mut child = Command::new(PIM)
            .arg("up")
            .env("PIM_DATA_DIR", data)
            .env("PIM_LISTEN_ADDR", "127.0.0.1:0")
            .env_remove("PIM_REDIS_URL")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("pim up starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self { child, lines }
    }

    /// Reads output lines until `done` says it has what it needs.
    fn read_until(&self, mut done: impl FnMut(&str) -> bool) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut seen = Vec::new();
        while Instant::now() < deadline {
            if let Ok(line) = self.lines.recv_timeout(Duration::from_millis(100)) {
                let finished = done(&line);
                seen.push(line);
                if finished {
                    return seen;
                }
            }
        }
        panic!("pim up did not print what was expected; it printed {seen:?}");
    }

    /// SIGTERM, then wait for a clean exit.
    fn terminate(mut self) {
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .expect("kill runs");
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                assert!(status.success(), "pim up exits cleanly on SIGTERM: {status}");
                return;
            }
            assert!(Instant::now() < deadline, "pim up did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn field(lines: &[String], label: &str) -> String {
    lines
        .iter()
        .find_map(|l| l.trim().strip_prefix(label).map(|v| v.trim().to_owned()))
        .unwrap_or_else(|| panic!("no {label:?} in {lines:?}"))
}

/// A fresh `pim up` in a directory of its own, its address, and its administrator signed in.
fn up_with_admin() -> (PathBuf, Up, String, Client) {
    let dir = std::env::temp_dir().join(format!("pim-cli-{}", uuid::Uuid::now_v7().simple()));
    let up = Up::start(&dir.join("data"));
    let printed = up.read_until(|l| l.contains("password:"));
    let server = field(&printed, "PIM is up at");
    let password = field(&printed, "password:");
    let admin = Client {
        server: server.clone(),
        token_file: dir.join("admin-token"),
    };
    admin.ok(
        &["login", "--user", "admin", "--password-stdin"],
        Some(&format!("{password}\n")),
    );
    (dir, up, server, admin)
}

struct Client {
    server: String,
    token_file: PathBuf,
}

impl Client {
    fn run(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut child = Command::new(PIM)
            .args(args)
            .env("PIM_SERVER", &self.server)
            .env("PIM_TOKEN_FILE", &self.token_file)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("pim runs");
        let mut input = child.stdin.take().expect("piped stdin");
        if let Some(text) = stdin {
            input.write_all(text.as_bytes()).expect("write stdin");
        }
        drop(input);
        child.wait_with_output().expect("pim finishes")
    }

    /// `pim` with its output's reader gone before it prints (`pim … | head -0`).
    fn run_reader_gone(&self, args: &[&str]) -> Output {
        let mut child = Command::new(PIM)
            .args(args)
            .env("PIM_SERVER", &self.server)
            .env("PIM_TOKEN_FILE", &self.token_file)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("pim runs");
        drop(child.stdout.take());
        child.wait_with_output().expect("pim finishes")
    }

    /// `pim mfa enroll`, answering its prompt with a code from the URI it shows.
    fn enroll_mfa(&self) -> totp_rs::TOTP {
        let mut child = Command::new(PIM)
            .args(["mfa", "enroll"])
            .env("PIM_SERVER", &self.server)
            .env("PIM_TOKEN_FILE", &self.token_file)
            .env_remove("PIM_MFA_CODE")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("pim runs");
        let mut stdout = BufReader::new(child.stdout.take().expect("piped"));
        let mut uri = String::new();
        while !uri.trim_start().starts_with("otpauth://") {
            uri.clear();
            assert!(
                stdout.read_line(&mut uri).expect("read") > 0,
                "pim mfa enroll showed no URI"
            );
        }
        let authenticator = totp_rs::TOTP::from_url(uri.trim()).expect("a valid otpauth URI");
        let mut stdin = child.stdin.take().expect("piped");
        writeln!(stdin, "{}", authenticator.generate(now_secs())).expect("write");
        drop(stdin);
        let out = child.wait_with_output().expect("pim finishes");
        assert!(
            out.status.success(),
            "enrol failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        authenticator
    }

    fn ok(&self, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.run(args, stdin);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "pim {args:?} failed: {stdout} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }
}

/// A `pim up` a failed test left running is killed with it (`terminate` stops it cleanly
/// first when the test gets that far).
impl Drop for Up {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Child processes killed when the test ends, however it ends.
struct Processes(Vec<std::process::Child>);

impl Drop for Processes {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

mod accounts;
mod as_code;
mod gateway;
mod groups;
mod scripting;
mod walkthrough;
