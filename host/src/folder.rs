//! Watch a folder and run a blocking action once it has been quiet for a while: editors and
//! `kubectl cp` write in bursts, and one recompilation per burst is what both sources want.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::mpsc;
use tracing::{Instrument, Span, error};

#[derive(Debug, thiserror::Error)]
#[error("watching {path}: {message}")]
pub struct WatchError {
    pub path: PathBuf,
    pub message: String,
}

/// A running folder watch; dropping it stops watching.
pub struct FolderWatch {
    _watcher: notify::RecommendedWatcher,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FolderWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Watches `dir` recursively; after any change (reads excepted) and then `quiet` without another,
/// runs `on_change` on the blocking pool, inside `span`. Changes during a run queue one more run.
/// Must be called inside a tokio runtime.
pub fn watch_folder<F>(
    dir: &Path,
    quiet: Duration,
    span: Span,
    on_change: F,
) -> Result<FolderWatch, WatchError>
where
    F: Fn() + Send + Sync + 'static,
{
    let watch_err = |e: notify::Error| WatchError {
        path: dir.to_path_buf(),
        message: e.to_string(),
    };
    let (tx, mut rx) = mpsc::channel::<()>(1);
    let mut watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        if ev.is_ok_and(|e| !e.kind.is_access()) {
            // A full channel already means "run soon".
            let _ = tx.try_send(());
        }
    })
    .map_err(watch_err)?;
    notify::Watcher::watch(&mut watcher, dir, notify::RecursiveMode::Recursive)
        .map_err(watch_err)?;

    let on_change = std::sync::Arc::new(on_change);
    let task = tokio::spawn(
        async move {
            while rx.recv().await.is_some() {
                while let Ok(Some(())) = tokio::time::timeout(quiet, rx.recv()).await {}
                let run = on_change.clone();
                if let Err(e) = tokio::task::spawn_blocking(move || run()).await {
                    error!(error = %e, "folder change handler panicked");
                }
            }
        }
        .instrument(span),
    );
    Ok(FolderWatch {
        _watcher: watcher,
        task,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("reflow-host-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        dir
    }

    async fn wait_for(runs: &AtomicUsize, at_least: usize) -> usize {
        for _ in 0..100 {
            if runs.load(Ordering::SeqCst) >= at_least {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        runs.load(Ordering::SeqCst)
    }

    #[tokio::test]
    async fn a_burst_of_writes_runs_the_action_once() {
        let dir = scratch("burst");
        let runs = Arc::new(AtomicUsize::new(0));
        let counted = runs.clone();
        let watch = watch_folder(&dir, Duration::from_millis(150), Span::none(), move || {
            counted.fetch_add(1, Ordering::SeqCst);
        })
        .expect("watch");
        for i in 0..5 {
            std::fs::write(dir.join(format!("f{i}.yaml")), "x").expect("write");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(wait_for(&runs, 1).await, 1, "one run after the burst");
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            runs.load(Ordering::SeqCst),
            1,
            "and no second run without a change"
        );

        std::fs::write(dir.join("later.yaml"), "y").expect("write");
        assert_eq!(wait_for(&runs, 2).await, 2, "a later change runs again");
        drop(watch);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn dropping_the_watch_stops_it() {
        let dir = scratch("drop");
        let runs = Arc::new(AtomicUsize::new(0));
        let counted = runs.clone();
        let watch = watch_folder(&dir, Duration::from_millis(50), Span::none(), move || {
            counted.fetch_add(1, Ordering::SeqCst);
        })
        .expect("watch");
        drop(watch);
        std::fs::write(dir.join("after.yaml"), "x").expect("write");
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(runs.load(Ordering::SeqCst), 0);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_missing_folder_is_an_error_naming_it() {
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        let _g = rt.enter();
        let missing = std::env::temp_dir().join("reflow-host-does-not-exist-7f3a");
        let err = watch_folder(&missing, Duration::from_millis(10), Span::none(), || {})
            .err()
            .expect("a missing folder cannot be watched");
        assert!(
            err.to_string().contains("reflow-host-does-not-exist-7f3a"),
            "{err}"
        );
    }
}
