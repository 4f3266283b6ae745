//! File watching shared by policy and certificate reloads: watch directories (not files), so
//! editors' rename-on-save and Kubernetes' `..data` symlink swaps are seen, and turn bursts of
//! events into one wake-up after a quiet period.

use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;

/// How long events must stop before a reload runs.
pub const DEBOUNCE: Duration = Duration::from_millis(200);

/// The directory to watch for `path`: itself if it is a directory, else its parent.
pub fn watch_dir(path: &Path) -> PathBuf {
    if path.is_dir() {
        path.to_owned()
    } else {
        match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
            _ => PathBuf::from("."),
        }
    }
}

/// Watches `dirs`; the receiver gets one message per burst of changes (bounded: at most one pending).
/// The watcher must be kept alive by the caller.
pub fn watch(dirs: &[PathBuf]) -> notify::Result<(RecommendedWatcher, mpsc::Receiver<()>)> {
    let (tx, rx) = mpsc::channel(1);
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if let Ok(ev) = res {
            if !ev.kind.is_access() {
                // A full channel already holds a pending wake-up; dropping this one loses nothing.
                let _ = tx.try_send(());
            }
        }
    })?;
    for d in dirs {
        watcher.watch(d, RecursiveMode::NonRecursive)?;
    }
    Ok((watcher, rx))
}

/// Waits for the next change, then for `DEBOUNCE` of quiet. `None` when the watcher is gone.
pub async fn next_change(rx: &mut mpsc::Receiver<()>) -> Option<()> {
    rx.recv().await?;
    loop {
        match tokio::time::timeout(DEBOUNCE, rx.recv()).await {
            Ok(Some(())) => continue,
            Ok(None) => return None,
            Err(_) => return Some(()),
        }
    }
}
