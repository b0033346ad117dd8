//! A real `nexus serve` on a temporary SQLite database, and the `nexus` binary run as a
//! user runs it: a config folder of its own, arguments, standard input, and a
//! pseudo-terminal where the command behaves differently on one.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_nexus");
pub const PASSWORD: &str = "a-strong-password";

/// Variables of the user's shell that would change what the client does.
const CLIENT_VARIABLES: [&str; 6] = ["NEXUS_SERVER", "NEXUS_API_KEY", "NEXUS_TENANT", "NEXUS_CONTEXT", "NO_COLOR", "XDG_CONFIG_HOME"];

pub struct Server {
    pub url: String,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Server {
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// `nexus serve` with `env` on top of the defaults (no auth rate limit: the tests log in
    /// often from one address).
    pub fn start_with(env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let port = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port").local_addr().expect("its address").port();
        let mut command = Command::new(BIN);
        command
            .arg("serve")
            .env("NEXUS_LISTEN", format!("127.0.0.1:{port}"))
            .env("NEXUS_METRICS_LISTEN", "127.0.0.1:0")
            .env("NEXUS_DATABASE_URL", format!("sqlite://{}", dir.path().join("nexus.db").display()))
            .env("NEXUS_AUTH_RATE", "0")
            .env("NEXUS_LOGIN_FAILURES", "0")
            .env("NEXUS_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        for (name, value) in env {
            command.env(name, value);
        }
        let child = command.spawn().expect("nexus serve starts");
        let server = Self { url: format!("http://127.0.0.1:{port}"), child, _dir: dir };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !healthy(port) {
            assert!(Instant::now() < deadline, "nexus serve did not answer /healthz within 60 s");
            std::thread::sleep(Duration::from_millis(100));
        }
        server
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn healthy(port: u16) -> bool {
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else { return false };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").is_err() {
        return false;
    }
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer.starts_with("HTTP/1.1 200")
}

/// What one command did.
#[derive(Debug)]
pub struct Outcome {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Outcome {
    #[track_caller]
    pub fn ok(self) -> Self {
        assert_eq!(self.code, 0, "the command failed: {self:#?}");
        assert!(!self.stderr.contains("panicked"), "{self:#?}");
        self
    }

    #[track_caller]
    pub fn failed(self) -> Self {
        assert_eq!(self.code, 1, "the command should fail with status 1: {self:#?}");
        assert!(!self.stderr.contains("panicked") && !self.stderr.contains("stack backtrace"), "no stack traces: {self:#?}");
        self
    }

    pub fn lines(&self) -> Vec<&str> {
        self.stdout.lines().collect()
    }
}

/// A user: a config folder of their own, and the variables they set.
pub struct User {
    pub config: tempfile::TempDir,
    pub env: Vec<(String, String)>,
}

impl User {
    pub fn new() -> Self {
        Self { config: tempfile::tempdir().expect("a config folder"), env: Vec::new() }
    }

    pub fn config_file(&self) -> PathBuf {
        self.config.path().join("nexus").join("config.yaml")
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(BIN);
        command.args(args).env("NEXUS_CONFIG_DIR", self.config.path().join("nexus"));
        for name in CLIENT_VARIABLES {
            command.env_remove(name);
        }
        for (name, value) in &self.env {
            command.env(name, value);
        }
        command
    }

    /// Runs `nexus ARGS` with `stdin` piped in (not a terminal).
    pub fn run_with_input(&self, args: &[&str], stdin: &str) -> Outcome {
        let mut child = self.command(args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("nexus runs");
        child.stdin.take().expect("stdin").write_all(stdin.as_bytes()).expect("stdin written");
        let output = wait_bounded(child);
        Outcome {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    pub fn run(&self, args: &[&str]) -> Outcome {
        self.run_with_input(args, "")
    }

    /// Runs `nexus ARGS` in `dir` (relative paths are the user's there).
    pub fn run_in(&self, dir: &Path, args: &[&str]) -> Outcome {
        let child = self.command(args).current_dir(dir).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("nexus runs");
        let output = wait_bounded(child);
        Outcome {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// Starts `nexus ARGS` in the background, its output piped.
    pub fn spawn(&self, args: &[&str]) -> Child {
        self.command(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("nexus runs")
    }

    /// Starts `nexus ARGS` on a pseudo-terminal (standard input, output and error).
    pub fn on_terminal(&self, args: &[&str]) -> Terminal {
        Terminal::spawn(self.command(args))
    }

    /// Registers `email` on `server` and logs in: the user's current context.
    pub fn signed_up(server: &Server, email: &str) -> Self {
        let user = Self::new();
        user.run_with_input(&["register", "--server", &server.url, "--email", email, "--password-stdin"], &format!("{PASSWORD}\n")).ok();
        user
    }

    /// Signed up, with a tenant of their own as the context's tenant.
    pub fn with_tenant(server: &Server, email: &str) -> (Self, String) {
        let user = Self::signed_up(server, email);
        let tenant = user.run(&["tenants", "create", "Acme", "--use", "-o", "name"]).ok().stdout.trim().to_owned();
        assert!(tenant.starts_with("t_"), "{tenant}");
        (user, tenant)
    }
}

fn wait_bounded(child: Child) -> std::process::Output {
    let (send, receive) = std::sync::mpsc::channel();
    let id = child.id();
    std::thread::spawn(move || {
        let _ = send.send(child.wait_with_output());
    });
    match receive.recv_timeout(Duration::from_secs(120)) {
        Ok(output) => output.expect("nexus ran"),
        Err(_) => {
            let _ = Command::new("kill").arg("-9").arg(id.to_string()).status();
            panic!("nexus did not finish within 120 s");
        }
    }
}

/// A process on a pseudo-terminal: what it writes is collected, what is typed is sent.
pub struct Terminal {
    child: Child,
    master: std::fs::File,
    output: Arc<Mutex<Vec<u8>>>,
}

impl Terminal {
    fn spawn(mut command: Command) -> Self {
        use rustix::pty::{OpenptFlags, grantpt, openpt, ptsname, unlockpt};
        let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY).expect("a pseudo-terminal");
        grantpt(&master).expect("grantpt");
        unlockpt(&master).expect("unlockpt");
        let name = ptsname(&master, Vec::new()).expect("ptsname");
        let path = PathBuf::from(name.to_str().expect("a path"));
        let slave = || std::fs::OpenOptions::new().read(true).write(true).open(&path).expect("the terminal's slave side");
        command.stdin(slave()).stdout(slave()).stderr(slave());
        let child = command.spawn().expect("nexus runs");
        drop(command);
        let master = std::fs::File::from(master);
        let output = Arc::new(Mutex::new(Vec::new()));
        let mut reader = master.try_clone().expect("a second handle");
        let collected = Arc::clone(&output);
        std::thread::spawn(move || {
            let mut buffer = [0u8; 4096];
            // Reading fails (EIO) once the process and every copy of the slave are gone.
            while let Ok(read) = reader.read(&mut buffer) {
                if read == 0 {
                    break;
                }
                collected.lock().expect("output").extend_from_slice(&buffer[..read]);
            }
        });
        Self { child, master, output }
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.output.lock().expect("output")).into_owned()
    }

    #[track_caller]
    pub fn expect(&self, text: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.text().contains(text) {
            assert!(Instant::now() < deadline, "{text:?} did not appear on the terminal: {:?}", self.text());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn type_line(&mut self, line: &str) {
        self.master.write_all(format!("{line}\n").as_bytes()).expect("typed");
    }

    /// Waits for the process to end; its status code and everything it wrote.
    pub fn finish(mut self) -> (i32, String) {
        let deadline = Instant::now() + Duration::from_secs(120);
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("the process") {
                break status;
            }
            assert!(Instant::now() < deadline, "nexus did not finish on the terminal: {:?}", self.text());
            std::thread::sleep(Duration::from_millis(50));
        };
        // Let the reader drain what is left.
        std::thread::sleep(Duration::from_millis(200));
        (status.code().unwrap_or(-1), self.text())
    }
}

/// The repository's `examples/` folder.
pub fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples")
}

pub fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::create_dir_all(path.parent().expect("a parent")).expect("the folder");
    std::fs::write(&path, text).expect("written");
    path
}

pub fn agent(name: &str, pattern: &str) -> String {
    format!(
        "apiVersion: astromesh/v1\nkind: Agent\nmetadata:\n  name: {name}\n  version: \"1.0.0\"\nspec:\n  model:\n    primary:\n      provider: ollama\n      model: \"llama3.1:8b\"\n  orchestration:\n    pattern: {pattern}\n"
    )
}

/// A blocking HTTP call to the API (what another user or process does meanwhile).
pub fn http(method: &str, url: &str, headers: &[(&str, &str)], body: Option<(&str, &str)>) -> (u16, String) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
    runtime.block_on(async {
        let client = reqwest::Client::new();
        let mut request = client.request(method.parse().expect("a method"), url);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Some((content_type, body)) = body {
            request = request.header("content-type", content_type).body(body.to_owned());
        }
        let answer = request.send().await.expect("the server answers");
        let status = answer.status().as_u16();
        (status, answer.text().await.expect("a body"))
    })
}
