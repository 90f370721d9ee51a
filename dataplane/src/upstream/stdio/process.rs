//! One child process speaking newline-delimited JSON-RPC: a writer task serialises every line to
//! stdin, a reader task matches replies to our (remapped) ids, stderr goes to the log rate-limited,
//! and a waiter fails everything in flight with the exit status when the child dies.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{Instrument, debug, info, info_span, warn};

use super::StdioError;
use super::env::ChildEnv;
use super::redact::Redactor;
use super::routing::CallRoute;
use super::sandbox::{self, ChildSandbox};
use crate::upstream::{CallHooks, Inbound};

/// Longest line read from a child's stdout; longer ones are discarded (and logged).
const MAX_LINE_BYTES: usize = 16 * 1024 * 1024;
/// Longest stderr line logged; the rest of it is cut.
const MAX_STDERR_LINE: usize = 4096;
/// How long a child may live on after closing its stdout before it is killed.
const STDOUT_CLOSED_GRACE: Duration = Duration::from_secs(2);

/// Takes each notification or server-to-client request of the child that no in-flight call can
/// take (see `routing`); it must answer (or refuse) a request.
pub type Unrouted = Arc<dyn Fn(Inbound) + Send + Sync>;

/// What to run, and how. `command` is executed directly (no shell), with exactly `env`.
pub struct ChildSpec {
    pub command: String,
    pub args: Vec<String>,
    pub env: ChildEnv,
    /// Created (0700) before the spawn, removed once the child has exited; also the working dir.
    pub home: Option<PathBuf>,
    /// The sandbox to spawn it in; `None` only when a Target or the gateway turned it off.
    pub sandbox: Option<ChildSandbox>,
    /// For logs: which Target and instance this child serves.
    pub label: String,
    pub stderr_lines_per_second: u32,
    pub unrouted: Option<Unrouted>,
    /// Runs once when the process has exited (and been reaped).
    pub on_exit: Option<Box<dyn FnOnce(bool) + Send>>,
}

use super::routing::{Pending, Waiting, route};

/// A running (or exited) child. Ids on the wire are ours, counted per child: the ids of the
/// sessions it serves never reach it, so they cannot collide.
pub struct ChildProcess {
    label: Arc<str>,
    pid: Option<u32>,
    writer: Mutex<Option<mpsc::UnboundedSender<Vec<u8>>>>,
    pending: Pending,
    next_id: AtomicU64,
    exit: watch::Receiver<Option<Arc<str>>>,
    started: Instant,
    /// Milliseconds after `started` of the last request or reply.
    last_used_ms: AtomicU64,
    stop_requested: Arc<AtomicBool>,
    reaped: Arc<AtomicBool>,
}

impl std::fmt::Debug for ChildProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChildProcess")
            .field("label", &self.label)
            .field("pid", &self.pid)
            .finish_non_exhaustive()
    }
}

impl ChildProcess {
    /// Starts the child and its I/O tasks. Needs a tokio runtime.
    pub fn spawn(spec: ChildSpec) -> Result<Arc<Self>, StdioError> {
        let mut child = start_process(&spec)?;
        let pid = child.id();
        // A root span: the child outlives the request that happened to start it.
        let span = info_span!(parent: None, "stdio", child = %spec.label, pid);
        let (Some(stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return Err(StdioError::Spawn("stdio pipes unavailable".into()));
        };
        let (line_tx, line_rx) = mpsc::unbounded_channel::<Vec<u8>>();
        let (exit_tx, exit_rx) = watch::channel(None);
        let pending: Pending = Arc::default();
        let stop_requested = Arc::new(AtomicBool::new(false));
        // Set the moment the process is reaped: after that its pid may be reused, so nothing
        // signals it any more.
        let reaped = Arc::new(AtomicBool::new(false));

        tokio::spawn(write_stdin(stdin, line_rx).instrument(span.clone()));
        tokio::spawn(
            read_then_reap(
                stdout,
                pending.clone(),
                line_tx.clone(),
                spec.unrouted.clone(),
                (exit_rx.clone(), pid, reaped.clone()),
            )
            .instrument(span.clone()),
        );
        let rate = spec.stderr_lines_per_second.max(1);
        let redactor = Redactor::new(spec.env.secret_values());
        tokio::spawn(log_stderr(stderr, rate, redactor).instrument(span.clone()));
        let exit = Exit {
            pending: pending.clone(),
            home: spec.home.clone(),
            stopping: stop_requested.clone(),
            on_exit: spec.on_exit,
            reaped: reaped.clone(),
            tx: exit_tx,
        };
        tokio::spawn(exit.wait(child).instrument(span));

        Ok(Arc::new(Self {
            label: Arc::from(spec.label.as_str()),
            pid,
            writer: Mutex::new(Some(line_tx)),
            pending,
            next_id: AtomicU64::new(1),
            exit: exit_rx,
            started: Instant::now(),
            last_used_ms: AtomicU64::new(0),
            stop_requested,
            reaped,
        }))
    }

    pub fn pid(&self) -> Option<u32> {
        self.pid
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    /// `Some(status)` once the process has exited.
    pub fn exit_status(&self) -> Option<Arc<str>> {
        self.exit.borrow().clone()
    }

    pub fn is_alive(&self) -> bool {
        self.exit.borrow().is_none()
    }

    /// True when the exit (if any) was asked for by `stop`.
    pub fn stop_requested(&self) -> bool {
        self.stop_requested.load(Ordering::SeqCst)
    }

    pub fn age(&self) -> Duration {
        self.started.elapsed()
    }

    pub fn idle_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_used_ms.load(Ordering::Relaxed));
        self.started.elapsed().saturating_sub(last)
    }

    pub fn in_flight(&self) -> usize {
        self.pending.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub(crate) fn touch(&self) {
        let now = self.started.elapsed().as_millis();
        self.last_used_ms
            .store(u64::try_from(now).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// Resolves once the process has exited.
    pub async fn exited(&self) {
        let mut rx = self.exit.clone();
        let _ = rx.wait_for(Option::is_some).await;
    }

    fn write(&self, mut line: Vec<u8>) -> Result<(), StdioError> {
        line.push(b'\n');
        let writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        match writer.as_ref() {
            Some(tx) => tx
                .send(line)
                .map_err(|_| StdioError::Write("stdin is closed".into())),
            None => Err(StdioError::Write("the server is stopping".into())),
        }
    }

    /// `initialize` then `notifications/initialized`; returns the `initialize` result.
    pub async fn initialize(
        &self,
        params: &Value,
        timeout: Duration,
    ) -> Result<Map<String, Value>, StdioError> {
        let reply = self
            .request("initialize", Some(params), timeout)
            .await
            .map_err(|e| match e {
                StdioError::Timeout(_) | StdioError::Exited(_) => e,
                other => StdioError::Initialize(other.to_string()),
            })?;
        let result = match reply.get("result") {
            Some(Value::Object(r)) => r.clone(),
            _ => {
                let why = reply
                    .get("error")
                    .and_then(|e| e.get("message"))
                    .and_then(Value::as_str)
                    .unwrap_or("no result");
                return Err(StdioError::Initialize(why.to_owned()));
            }
        };
        self.notify("notifications/initialized", None)?;
        Ok(result)
    }

    /// One request; the reply keeps the child's `result` or `error` (its id is ours).
    pub async fn request(
        &self,
        method: &str,
        params: Option<&Value>,
        timeout: Duration,
    ) -> Result<Map<String, Value>, StdioError> {
        self.request_with(method, params, timeout, &CallHooks::default(), None)
            .await
    }

    /// `request` for a session: the child's notifications and requests about it go to
    /// `hooks.sink`, and `hooks.cancel` stops it (the child gets `notifications/cancelled`).
    pub async fn request_with(
        &self,
        method: &str,
        params: Option<&Value>,
        timeout: Duration,
        hooks: &CallHooks,
        session: Option<&str>,
    ) -> Result<Map<String, Value>, StdioError> {
        self.touch();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        let route = match (&hooks.sink, session) {
            (Some(sink), Some(session)) => Some(CallRoute {
                sink: sink.clone(),
                session: Arc::from(session),
                progress: params
                    .and_then(|p| p.pointer("/_meta/progressToken"))
                    .cloned(),
            }),
            _ => None,
        };
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, Waiting { tx, route });
        if let Some(status) = self.exit_status() {
            self.forget(id);
            return Err(StdioError::Exited(status.to_string()));
        }
        let mut msg = json!({"jsonrpc": "2.0", "id": id, "method": method});
        if let Some(p) = params {
            msg["params"] = p.clone();
        }
        let line = serde_json::to_vec(&msg).map_err(|e| StdioError::Write(e.to_string()))?;
        if let Err(e) = self.write(line) {
            self.forget(id);
            return Err(e);
        }
        let waited = tokio::select! {
            r = tokio::time::timeout(timeout, rx) => Some(r),
            () = hooks.cancelled() => None,
        };
        let out = match waited {
            Some(Ok(Ok(reply))) => Ok(reply),
            Some(Ok(Err(_))) => {
                // Dropped by the waiter: the child died with this request in flight.
                self.exited().await;
                let status = self.exit_status().unwrap_or_else(|| Arc::from("unknown"));
                Err(StdioError::Exited(status.to_string()))
            }
            Some(Err(_)) => {
                self.forget(id);
                let params = json!({"requestId": id, "reason": "timed out in the gateway"});
                let _ = self.notify("notifications/cancelled", Some(&params));
                Err(StdioError::Timeout(timeout))
            }
            None => {
                // Forgotten first, so a late reply finds no waiter and is dropped.
                self.forget(id);
                let params = json!({"requestId": id, "reason": "cancelled by the client"});
                let _ = self.notify("notifications/cancelled", Some(&params));
                Err(StdioError::Cancelled)
            }
        };
        self.touch();
        out
    }

    fn forget(&self, id: u64) {
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
    }

    /// Sends one notification.
    pub fn notify(&self, method: &str, params: Option<&Value>) -> Result<(), StdioError> {
        let mut msg = json!({"jsonrpc": "2.0", "method": method});
        if let Some(p) = params {
            msg["params"] = p.clone();
        }
        let line = serde_json::to_vec(&msg).map_err(|e| StdioError::Write(e.to_string()))?;
        self.write(line)
    }

    /// Graceful stop: close stdin, wait `grace`; SIGTERM the process group, wait `grace`;
    /// then SIGKILL it. Returns once the process has exited.
    pub async fn stop(&self, grace: Duration) {
        self.stop_requested.store(true, Ordering::SeqCst);
        drop(self.writer.lock().unwrap_or_else(|p| p.into_inner()).take());
        if tokio::time::timeout(grace, self.exited()).await.is_ok() {
            return;
        }
        let Some(pid) = self.pid else {
            return;
        };
        debug!(child = %self.label, pid, "no exit after stdin closed; SIGTERM");
        signal_group(pid, Signal::Term, &self.reaped);
        if tokio::time::timeout(grace, self.exited()).await.is_ok() {
            return;
        }
        warn!(child = %self.label, pid, "no exit after SIGTERM; SIGKILL");
        signal_group(pid, Signal::Kill, &self.reaped);
        self.exited().await;
    }
}

/// Creates the child's HOME (and private tmp), prepares its sandbox, and spawns it.
fn start_process(spec: &ChildSpec) -> Result<tokio::process::Child, StdioError> {
    if let Some(home) = &spec.home {
        make_private_dir(&home.join("tmp"))
            .map_err(|e| StdioError::Spawn(format!("cannot create its HOME: {e}")))?;
    }
    let cleanup = |e: StdioError| {
        if let Some(home) = &spec.home {
            let _ = std::fs::remove_dir_all(home);
        }
        e
    };
    let program = program(&spec.command, &spec.env);
    // Built before the fork; the child only applies it. Kept until the spawn returned: the
    // child inherits the ruleset's descriptor.
    let prepared = match (&spec.sandbox, &spec.home) {
        (Some(sb), Some(home)) => {
            let paths = sandbox::ChildPaths {
                program: &program,
                home,
            };
            Some(sandbox::prepare(sb, &paths).map_err(|e| cleanup(e.into()))?)
        }
        (Some(_), None) => {
            return Err(StdioError::Spawn(
                "a sandboxed child needs its own HOME".into(),
            ));
        }
        (None, _) => None,
    };
    let mut cmd = tokio::process::Command::new(&program);
    cmd.args(&spec.args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .current_dir(spec.home.as_deref().unwrap_or(std::path::Path::new("/")));
    spec.env.apply(&mut cmd);
    // Its own process group, so a stop reaches what it started too (npx → node → …).
    #[cfg(unix)]
    cmd.process_group(0);
    if let Some(p) = &prepared {
        p.install(&mut cmd);
    }
    let spawned = cmd.spawn();
    // The pre-exec step holds the namespace plan: dropped first, so `finish` can read the
    // child's report.
    drop(cmd);
    if let Some(Err(e)) = prepared.map(sandbox::Prepared::finish) {
        return Err(cleanup(e.into()));
    }
    spawned.map_err(|e| cleanup(StdioError::Spawn(format!("{}: {e}", spec.command))))
}

/// The only owner of stdin; when every sender is gone, stdin closes.
async fn write_stdin(
    mut stdin: tokio::process::ChildStdin,
    mut lines: mpsc::UnboundedReceiver<Vec<u8>>,
) {
    while let Some(line) = lines.recv().await {
        if let Err(e) = stdin.write_all(&line).await {
            debug!(error = %e, "stdin closed");
            break;
        }
        if stdin.flush().await.is_err() {
            break;
        }
    }
}

/// Routes stdout until EOF; a child whose stdout is gone cannot answer anything: if it does
/// not exit on its own shortly, it is killed.
async fn read_then_reap(
    stdout: tokio::process::ChildStdout,
    pending: Pending,
    replies: mpsc::UnboundedSender<Vec<u8>>,
    unrouted: Option<Unrouted>,
    (mut exit, pid, reaped): (
        watch::Receiver<Option<Arc<str>>>,
        Option<u32>,
        Arc<AtomicBool>,
    ),
) {
    read_stdout(stdout, &pending, &replies, unrouted.as_ref()).await;
    let exited = exit.wait_for(Option::is_some);
    if tokio::time::timeout(STDOUT_CLOSED_GRACE, exited)
        .await
        .is_err()
        && let Some(pid) = pid
    {
        warn!("stdout closed but the process lives on; SIGKILL");
        signal_group(pid, Signal::Kill, &reaped);
    }
}

/// What the waiter task does once the process has exited.
struct Exit {
    pending: Pending,
    home: Option<PathBuf>,
    stopping: Arc<AtomicBool>,
    on_exit: Option<Box<dyn FnOnce(bool) + Send>>,
    reaped: Arc<AtomicBool>,
    tx: watch::Sender<Option<Arc<str>>>,
}

impl Exit {
    async fn wait(self, mut child: tokio::process::Child) {
        let status = match child.wait().await {
            Ok(s) => s.to_string(),
            Err(e) => format!("wait failed: {e}"),
        };
        self.reaped.store(true, Ordering::SeqCst);
        let expected = self.stopping.load(Ordering::SeqCst);
        if expected {
            debug!(%status, "stopped");
        } else {
            warn!(%status, "exited unexpectedly");
        }
        // Cleaned up and counted before anyone waiting on the exit is woken.
        if let Some(home) = self.home {
            let _ = tokio::fs::remove_dir_all(&home).await;
        }
        if let Some(f) = self.on_exit {
            f(expected);
        }
        // Exit first, then fail what is in flight: a request that registers after the
        // drain sees the exit status instead of waiting forever.
        let _ = self.tx.send(Some(Arc::from(status.as_str())));
        let drained: Vec<_> = {
            let mut map = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            map.drain().collect()
        };
        drop(drained);
    }
}

#[derive(Clone, Copy)]
enum Signal {
    Term,
    Kill,
}

/// Signals the child's process group (its pid: it was made a group leader at spawn), unless the
/// child has been reaped already.
fn signal_group(pid: u32, signal: Signal, reaped: &AtomicBool) {
    if reaped.load(Ordering::SeqCst) {
        return;
    }
    #[cfg(unix)]
    {
        let Ok(pgid) = libc::pid_t::try_from(pid) else {
            return;
        };
        let sig = match signal {
            Signal::Term => libc::SIGTERM,
            Signal::Kill => libc::SIGKILL,
        };
        // SAFETY: kill(2) takes plain integers and has no memory effects; a negative pid names
        // the process group, which only our child (and what it started) belongs to.
        unsafe {
            libc::kill(-pgid, sig);
        }
    }
    #[cfg(not(unix))]
    let _ = (pid, signal);
}

/// A relative path with a `/` in it (`bin/server`) means the gateway's working directory, as
/// it reads in a manifest; the child itself runs in its HOME. Bare names are looked up in the
/// child's PATH here, so the sandbox can allow exactly that file.
fn program(command: &str, env: &ChildEnv) -> PathBuf {
    let path = std::path::Path::new(command);
    if path.is_relative()
        && command.contains('/')
        && let Ok(cwd) = std::env::current_dir()
    {
        return cwd.join(path);
    }
    if !command.contains('/')
        && let Some(found) = env
            .path_dirs()
            .map(|d| d.join(command))
            .find(|p| p.is_file())
    {
        return found;
    }
    path.to_path_buf()
}

fn make_private_dir(path: &std::path::Path) -> std::io::Result<()> {
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        b.mode(0o700);
    }
    b.create(path)
}

/// Reads newline-delimited JSON until EOF, routing each message.
async fn read_stdout(
    stdout: impl AsyncRead + Unpin,
    pending: &Pending,
    replies: &mpsc::UnboundedSender<Vec<u8>>,
    unrouted: Option<&Unrouted>,
) {
    let mut reader = BufReader::new(stdout);
    let mut line = Vec::new();
    loop {
        line.clear();
        match read_line_capped(&mut reader, &mut line).await {
            Ok(None) => break,
            Ok(Some(false)) => {
                warn!(
                    limit = MAX_LINE_BYTES,
                    "discarded an over-long line from the child"
                );
                continue;
            }
            Ok(Some(true)) => {}
            Err(e) => {
                debug!(error = %e, "stdout read failed");
                break;
            }
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match serde_json::from_slice::<Value>(&line) {
            Ok(Value::Array(items)) => {
                for item in items {
                    route(item, pending, replies, unrouted);
                }
            }
            Ok(msg) => route(msg, pending, replies, unrouted),
            Err(e) => debug!(error = %e, "child wrote a line that is not JSON"),
        }
    }
}

/// One line into `buf` (without the newline). `Ok(None)` at EOF, `Ok(Some(false))` when the
/// line was longer than the cap and was discarded.
async fn read_line_capped(
    reader: &mut (impl AsyncBufReadExt + Unpin),
    buf: &mut Vec<u8>,
) -> std::io::Result<Option<bool>> {
    let mut overflow = false;
    loop {
        let chunk = reader.fill_buf().await?;
        if chunk.is_empty() {
            return Ok((!buf.is_empty() || overflow).then_some(!overflow));
        }
        let (take, done) = match chunk.iter().position(|b| *b == b'\n') {
            Some(i) => (i + 1, true),
            None => (chunk.len(), false),
        };
        let body = &chunk[..if done { take - 1 } else { take }];
        if !overflow && buf.len() + body.len() <= MAX_LINE_BYTES {
            buf.extend_from_slice(body);
        } else {
            overflow = true;
            buf.clear();
        }
        reader.consume(take);
        if done {
            return Ok(Some(!overflow));
        }
    }
}

/// At most `per_second` lines per one-second window; the rest are counted and reported when
/// the next window opens (or at the end).
struct LineBudget {
    per_second: u32,
    window: Instant,
    logged: u32,
    suppressed: u64,
}

impl LineBudget {
    fn new(per_second: u32, now: Instant) -> Self {
        Self {
            per_second: per_second.max(1),
            window: now,
            logged: 0,
            suppressed: 0,
        }
    }

    /// Whether the line arriving at `now` may be logged, and how many were suppressed in the
    /// window that `now` closed (0 if none).
    fn admit(&mut self, now: Instant) -> (bool, u64) {
        let mut closed = 0;
        if now.saturating_duration_since(self.window) >= Duration::from_secs(1) {
            closed = std::mem::take(&mut self.suppressed);
            self.window = now;
            self.logged = 0;
        }
        if self.logged >= self.per_second {
            self.suppressed += 1;
            return (false, closed);
        }
        self.logged += 1;
        (true, closed)
    }
}

/// Logs stderr line by line, rate-limited by `LineBudget`, with injected values redacted.
async fn log_stderr(stderr: impl AsyncRead + Unpin, per_second: u32, redactor: Redactor) {
    let mut reader = BufReader::new(stderr);
    let mut line = Vec::new();
    let mut budget = LineBudget::new(per_second, Instant::now());
    loop {
        line.clear();
        match read_line_capped(&mut reader, &mut line).await {
            Ok(None) | Err(_) => break,
            Ok(Some(_)) => {}
        }
        let (log, suppressed) = budget.admit(Instant::now());
        if suppressed > 0 {
            warn!(suppressed, "stderr lines not logged (rate limit)");
        }
        if log {
            // Redacted whole, then cut: a cut must not leave half a secret behind.
            let text = redactor.redact(&String::from_utf8_lossy(&line));
            info!(stderr = %cut(&text, MAX_STDERR_LINE).trim_end());
        }
    }
    if budget.suppressed > 0 {
        warn!(
            suppressed = budget.suppressed,
            "stderr lines not logged (rate limit)"
        );
    }
}

/// The longest prefix of `text` of at most `max` bytes that ends on a character boundary.
fn cut(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stderr_budget_limits_each_window_and_reports_what_it_dropped() {
        let t0 = Instant::now();
        let mut b = LineBudget::new(3, t0);
        let first: Vec<bool> = (0..5).map(|_| b.admit(t0).0).collect();
        assert_eq!(first, [true, true, true, false, false]);
        // The next window opens: two lines were suppressed in the last one.
        assert_eq!(b.admit(t0 + Duration::from_millis(1_001)), (true, 2));
        assert_eq!(b.admit(t0 + Duration::from_millis(1_002)), (true, 0));
    }

    #[tokio::test]
    async fn capped_reader_splits_lines_and_discards_long_ones() {
        let long = vec![b'x'; MAX_LINE_BYTES + 10];
        let mut input = b"one\n".to_vec();
        input.extend_from_slice(&long);
        input.extend_from_slice(b"\ntwo");
        let mut r = BufReader::new(&input[..]);
        let mut buf = Vec::new();
        assert_eq!(
            read_line_capped(&mut r, &mut buf).await.unwrap(),
            Some(true)
        );
        assert_eq!(buf, b"one");
        buf.clear();
        assert_eq!(
            read_line_capped(&mut r, &mut buf).await.unwrap(),
            Some(false)
        );
        buf.clear();
        assert_eq!(
            read_line_capped(&mut r, &mut buf).await.unwrap(),
            Some(true)
        );
        assert_eq!(buf, b"two");
        buf.clear();
        assert_eq!(read_line_capped(&mut r, &mut buf).await.unwrap(), None);
    }
}
