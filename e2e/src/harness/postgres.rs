//! A throwaway Postgres cluster for tests: `initdb` into a fresh folder under `target/pg/`,
//! `pg_ctl start` on a free loopback port (trust auth, loopback only, its own socket folder),
//! stoppable and restartable on the same port (fault tests), stopped and removed on drop.
//!
//! `initdb` refuses to run as root. As root (CI containers) every Postgres command runs as the
//! `postgres` system user through `runuser`, and the cluster's folder is handed to that user;
//! as a normal user the commands run directly.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::error::{HarnessError, Result};
use super::net::{accepts, free_loopback_port, loopback, poll_until};
use super::paths::target_dir;
use super::process::run_bounded;

/// The system user the cluster runs as when the tests run as root.
const ROOT_RUNS_AS: &str = "postgres";

/// One running (or stopped) cluster. See the module docs.
#[derive(Debug)]
pub struct TestPostgres {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    as_root: bool,
    running: bool,
}

/// The folder holding `initdb` and `pg_ctl`: `$REFLOW_PG_BIN`, the newest
/// `/usr/lib/postgresql/*/bin`, or `PATH`.
pub fn postgres_bin_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("REFLOW_PG_BIN") {
        return Ok(PathBuf::from(dir));
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((v, bin))
        })
        .collect();
    found.sort();
    if let Some((_, bin)) = found.pop() {
        return Ok(bin);
    }
    std::env::var_os("PATH")
        .and_then(|path| {
            std::env::split_paths(&path).find(|d| d.join("initdb").is_file() && d.join("pg_ctl").is_file())
        })
        .ok_or_else(|| {
            HarnessError::Other(
                "Postgres binaries (initdb, pg_ctl) not found: apt-get install postgresql, or set REFLOW_PG_BIN".into(),
            )
        })
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .ok()
        .is_some_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

impl TestPostgres {
    /// A fresh cluster, started and accepting connections.
    pub fn start() -> Result<Self> {
        let bin = postgres_bin_dir()?;
        let as_root = is_root();
        let dir = target_dir()
            .join("pg")
            .join(uuid::Uuid::new_v4().simple().to_string());
        std::fs::create_dir_all(&dir).map_err(|e| HarnessError::io(&dir, e))?;
        let mut pg = Self {
            bin,
            dir,
            port: free_loopback_port()?,
            as_root,
            running: false,
        };
        if as_root {
            // The postgres user must own the cluster folder and reach it.
            let mut chown = Command::new("chown");
            chown.args(["-R", ROOT_RUNS_AS]).arg(&pg.dir);
            run_bounded(
                "chown of the Postgres folder",
                &mut chown,
                Duration::from_secs(10),
            )?;
        }
        let data = pg.data_dir();
        let mut initdb = pg.command("initdb");
        initdb.arg("-D").arg(&data).args([
            "-A",
            "trust",
            "-U",
            "reflow",
            "-E",
            "UTF8",
            "--no-sync",
            "--no-instructions",
        ]);
        run_bounded("initdb", &mut initdb, Duration::from_secs(120))?;
        pg.start_again()?;
        Ok(pg)
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// `program` from the Postgres bin folder, as the postgres user when running as root.
    fn command(&self, program: &str) -> Command {
        let exe = self.bin.join(program);
        if self.as_root {
            let mut cmd = Command::new("runuser");
            cmd.args(["-u", ROOT_RUNS_AS, "--"]).arg(exe);
            cmd
        } else {
            Command::new(exe)
        }
    }

    /// Starts the (stopped) cluster on its port and waits until it accepts connections.
    pub fn start_again(&mut self) -> Result<()> {
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} -c fsync=off -c max_connections=100",
            self.port,
            self.dir.display()
        );
        let mut ctl = self.command("pg_ctl");
        ctl.arg("-D")
            .arg(self.data_dir())
            .args(["-o", &options, "-l"])
            .arg(self.dir.join("server.log"))
            .args(["-w", "-t", "60", "start"]);
        run_bounded("pg_ctl start", &mut ctl, Duration::from_secs(90))
            .map_err(|e| HarnessError::Other(format!("{e}\nserver log:\n{}", self.log_tail())))?;
        self.running = true;
        let addr = loopback(self.port);
        poll_until(Duration::from_secs(30), || accepts(addr).then_some(())).ok_or_else(|| {
            HarnessError::NotReady {
                what: "postgres".into(),
                detail: self.log_tail(),
            }
        })
    }

    /// Stops the cluster (fast shutdown: open connections are cut, as in an outage).
    pub fn stop(&mut self) -> Result<()> {
        let mut ctl = self.command("pg_ctl");
        ctl.arg("-D")
            .arg(self.data_dir())
            .args(["-m", "fast", "-w", "-t", "60", "stop"]);
        run_bounded("pg_ctl stop", &mut ctl, Duration::from_secs(90))?;
        self.running = false;
        Ok(())
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `postgres://reflow@127.0.0.1:PORT/postgres` (trust auth: no password).
    pub fn url(&self) -> String {
        format!("postgres://reflow@127.0.0.1:{}/postgres", self.port)
    }

    /// A fresh database on this cluster; returns its URL (tests sharing a cluster stay apart).
    pub fn create_database(&self, name: &str) -> Result<String> {
        let mut psql = self.command("psql");
        psql.args([
            "-h",
            "127.0.0.1",
            "-p",
            &self.port.to_string(),
            "-U",
            "reflow",
            "-d",
            "postgres",
        ])
        .args([
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            &format!("CREATE DATABASE \"{name}\""),
        ]);
        run_bounded("psql create database", &mut psql, Duration::from_secs(30))?;
        Ok(format!("postgres://reflow@127.0.0.1:{}/{name}", self.port))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for TestPostgres {
    fn drop(&mut self) {
        if self.running {
            let mut ctl = self.command("pg_ctl");
            ctl.arg("-D")
                .arg(self.data_dir())
                .args(["-m", "immediate", "-w", "-t", "30", "stop"]);
            let _ = run_bounded("pg_ctl stop", &mut ctl, Duration::from_secs(40));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
