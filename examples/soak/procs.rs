//! The processes the soak starts: a private PostgreSQL cluster, a private Redis and the server
//! nodes. Each is a guard whose `Drop` stops what it started, so nothing outlives the run, also
//! when it fails or panics.

use std::fs::File;
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// A free loopback port (bound then released; a race with another process is possible and
/// shows up as a start failure).
pub fn free_port() -> Result<u16, String> {
    let l =
        TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(|e| format!("no free port: {e}"))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| format!("no free port: {e}"))
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.trim_ascii() == b"0")
        .unwrap_or(false)
}

/// Runs `cmd`, failing with its output when it fails.
fn run(mut cmd: Command, what: &str) -> Result<String, String> {
    let out = cmd
        .output()
        .map_err(|e| format!("{what}: cannot run: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{what}: {}\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A private PostgreSQL cluster on a loopback port (as `.ci/postgres.sh` starts it).
pub struct Postgres {
    bin: PathBuf,
    dir: TempDir,
    root: bool,
    pub port: u16,
    pub url: String,
}

impl Postgres {
    /// Initializes a cluster in a temp dir (trust auth), starts it and creates database `soak`.
    pub fn start() -> Result<Postgres, String> {
        let bin = newest_pg_bin().ok_or(
            "PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb): \
             apt-get install -y --no-install-recommends postgresql",
        )?;
        let dir = tempfile::Builder::new()
            .prefix("api-keys-soak-pg.")
            .tempdir()
            .map_err(|e| format!("temp dir: {e}"))?;
        let root = is_root();
        if root {
            let mut c = Command::new("chown");
            c.arg("postgres:postgres").arg(dir.path());
            run(c, "chown the PostgreSQL dir")?;
        }
        let mut pg = Postgres {
            bin,
            dir,
            root,
            port: 0,
            url: String::new(),
        };
        let mut c = pg.as_owner("initdb");
        c.arg("-D")
            .arg(pg.data())
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8"]);
        run(c, "initdb")?;
        let mut last = String::new();
        for _ in 0..3 {
            pg.port = free_port()?;
            let mut c = pg.as_owner("pg_ctl");
            c.arg("-D")
                .arg(pg.data())
                .arg("-l")
                .arg(pg.dir.path().join("log"))
                .arg("-o")
                .arg(format!(
                    "-c listen_addresses=127.0.0.1 -p {} -k {} -c max_connections=200",
                    pg.port,
                    pg.dir.path().display()
                ))
                .args(["-w", "-t", "60", "start"]);
            match run(c, "pg_ctl start") {
                Ok(_) => {
                    pg.psql("postgres", "CREATE DATABASE soak")?;
                    pg.url = format!("postgres://postgres@127.0.0.1:{}/soak", pg.port);
                    return Ok(pg);
                }
                Err(e) => last = e,
            }
        }
        Err(format!(
            "{last}\n{}",
            std::fs::read_to_string(pg.dir.path().join("log")).unwrap_or_default()
        ))
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// A command of the PostgreSQL binaries, as the `postgres` user when we are root.
    fn as_owner(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        if self.root {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        }
    }

    /// Runs one SQL statement through `psql` and returns its unaligned output.
    pub fn psql(&self, db: &str, sql: &str) -> Result<String, String> {
        let mut c = Command::new(self.bin.join("psql"));
        c.args([
            "-h",
            "127.0.0.1",
            "-p",
            &self.port.to_string(),
            "-U",
            "postgres",
        ])
        .args([
            "-d",
            db,
            "-v",
            "ON_ERROR_STOP=1",
            "-q",
            "-A",
            "-t",
            "-c",
            sql,
        ]);
        run(c, "psql").map(|s| s.trim().to_string())
    }

    /// `pg_ctl restart -m fast` (same options as at start).
    pub fn restart_fast(&self) -> Result<(), String> {
        let mut c = self.as_owner("pg_ctl");
        c.arg("-D")
            .arg(self.data())
            .arg("-l")
            .arg(self.dir.path().join("log"))
            .args(["-m", "fast", "-w", "-t", "60", "restart"]);
        run(c, "pg_ctl restart -m fast").map(|_| ())
    }

    /// Terminates every backend connected to database `soak` (the nodes' pools and feeds)
    /// from the server side; returns how many.
    pub fn terminate_backends(&self) -> Result<u64, String> {
        let out = self.psql(
            "postgres",
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE datname = 'soak' AND pid <> pg_backend_pid()",
        )?;
        out.parse()
            .map_err(|_| format!("pg_terminate_backend: unexpected output {out:?}"))
    }

    fn postmaster_pid(&self) -> Option<String> {
        let text = std::fs::read_to_string(self.data().join("postmaster.pid")).ok()?;
        text.lines().next().map(str::to_string)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let Some(pid) = self.postmaster_pid() else {
            return;
        };
        // SIGINT: fast shutdown.
        let _ = Command::new("kill").args(["-INT", &pid]).status();
        let until = Instant::now() + Duration::from_secs(10);
        while Instant::now() < until && self.data().join("postmaster.pid").exists() {
            std::thread::sleep(Duration::from_millis(100));
        }
        if self.data().join("postmaster.pid").exists() {
            let _ = Command::new("kill").args(["-QUIT", &pid]).status();
        }
    }
}

fn newest_pg_bin() -> Option<PathBuf> {
    let mut dirs: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| {
            let e = e.ok()?;
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    dirs.sort();
    dirs.pop().map(|(_, b)| b)
}

/// A child process killed (SIGKILL) and reaped on drop.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Sends `signal` (e.g. `-TERM`) to a child through kill(1) and waits for it (at most 10 s,
/// then SIGKILL).
fn stop_child(child: &mut Child, signal: &str) {
    let _ = Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status();
    let until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < until {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// A private Redis on a loopback port. Unlike `.ci/redis.sh` it keeps an append-only file
/// (`appendfsync always`) in its temp dir: the README asks for persistence where credits
/// matter, and the soak stops and starts Redis and then checks that no credit was re-issued.
pub struct Redis {
    dir: TempDir,
    pub port: u16,
    pub url: String,
    child: Option<Proc>,
}

impl Redis {
    pub fn start() -> Result<Redis, String> {
        let dir = tempfile::Builder::new()
            .prefix("api-keys-soak-redis.")
            .tempdir()
            .map_err(|e| format!("temp dir: {e}"))?;
        let port = free_port()?;
        let mut r = Redis {
            dir,
            port,
            url: format!("redis://127.0.0.1:{port}/"),
            child: None,
        };
        r.spawn()?;
        Ok(r)
    }

    fn spawn(&mut self) -> Result<(), String> {
        let log = self.dir.path().join("redis.log");
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "yes", "--appendfsync", "always"])
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| {
                format!(
                    "cannot run redis-server ({e}): apt-get install -y --no-install-recommends redis-server"
                )
            })?;
        self.child = Some(Proc(child));
        let until = Instant::now() + Duration::from_secs(10);
        while Instant::now() < until {
            if redis_ping(self.port) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(format!(
            "redis-server did not answer PING; its log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        ))
    }

    /// SIGTERM (Redis fsyncs its append-only file and exits).
    pub fn stop(&mut self) {
        if let Some(mut p) = self.child.take() {
            stop_child(&mut p.0, "-TERM");
        }
    }

    pub fn restart(&mut self) -> Result<(), String> {
        self.stop();
        self.spawn()
    }

    /// Whether the process exited (unbidden: `stop` forgets it).
    pub fn exited(&mut self) -> Option<String> {
        let c = self.child.as_mut()?;
        match c.0.try_wait() {
            Ok(Some(status)) => Some(status.to_string()),
            _ => None,
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

fn redis_ping(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if s.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 7];
    s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
}

/// One example-server node.
pub struct Node {
    pub index: usize,
    pub port: u16,
    server: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    log_dir: PathBuf,
    starts: u32,
    child: Option<Proc>,
}

impl Node {
    pub fn new(
        index: usize,
        server: &Path,
        args: Vec<String>,
        env: Vec<(String, String)>,
        log_dir: &Path,
    ) -> Result<Node, String> {
        Ok(Node {
            index,
            port: free_port()?,
            server: server.to_path_buf(),
            args,
            env,
            log_dir: log_dir.to_path_buf(),
            starts: 0,
            child: None,
        })
    }

    /// Starts the process and waits (at most `wait`) for the manager session it prints.
    pub fn start(&mut self, wait: Duration) -> Result<String, String> {
        self.starts += 1;
        let out_path = self
            .log_dir
            .join(format!("node{}.{}.log", self.index, self.starts));
        let out = File::create(&out_path).map_err(|e| format!("{}: {e}", out_path.display()))?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        let child = Command::new(&self.server)
            .arg(self.port.to_string())
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", self.server.display()))?;
        self.child = Some(Proc(child));
        let until = Instant::now() + wait;
        loop {
            let text = std::fs::read_to_string(&out_path).unwrap_or_default();
            if let Some(session) = manager_session(&text) {
                return Ok(session);
            }
            if let Some(status) = self.exited() {
                return Err(format!(
                    "node {} exited at start ({status}):\n{text}",
                    self.index
                ));
            }
            if Instant::now() > until {
                return Err(format!(
                    "node {} printed no manager session within {wait:?}:\n{text}",
                    self.index
                ));
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// SIGKILL, reaped.
    pub fn kill(&mut self) {
        self.child = None;
    }

    /// Whether the process exited on its own (`kill` forgets it).
    pub fn exited(&mut self) -> Option<String> {
        let c = self.child.as_mut()?;
        match c.0.try_wait() {
            Ok(Some(status)) => Some(status.to_string()),
            _ => None,
        }
    }
}

/// The session of alice (manager of acme) among the lines the server prints at start:
/// `  alice — manager of acme   acme.alice.manager.<expiry>.<32 hex>`.
pub fn manager_session(stdout: &str) -> Option<String> {
    stdout.lines().find_map(|line| {
        let rest = line.trim_start().strip_prefix("alice — manager of acme")?;
        let session = rest.trim();
        let mut parts = session.split('.');
        let ok = parts.next() == Some("acme")
            && parts.next() == Some("alice")
            && parts.next() == Some("manager")
            && parts.next().is_some_and(|e| e.parse::<i64>().is_ok())
            && parts
                .next()
                .is_some_and(|s| s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit()))
            && parts.next().is_none();
        ok.then(|| session.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::manager_session;

    #[test]
    fn the_printed_manager_session_is_found_exactly() {
        let out = "api-keys example server on http://127.0.0.1:1\n  alice — manager of acme    acme.alice.manager.1800000000.00112233445566778899aabbccddeeff\n  bob — member of acme       acme.bob.member.1800000000.00112233445566778899aabbccddeeff\n";
        assert_eq!(
            manager_session(out).as_deref(),
            Some("acme.alice.manager.1800000000.00112233445566778899aabbccddeeff")
        );
        assert_eq!(
            manager_session("  alice — manager of acme    acme.alice.manager.x.00"),
            None
        );
        assert_eq!(manager_session("nothing"), None);
    }
}
