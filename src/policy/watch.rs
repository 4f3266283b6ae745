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

/// Which changed paths matter: Kubernetes' `..`-prefixed bookkeeping (the `..data` swap) always,
/// otherwise a file name `relevant` accepts. Other writes in the directory (logs, editors' swap
/// files) wake nothing.
pub fn matters(path: &Path, relevant: &(dyn Fn(&str) -> bool + Send + Sync)) -> bool {
    match path.file_name().and_then(|n| n.to_str()) {
        Some(name) => name.starts_with("..") || relevant(name),
        None => true,
    }
}

/// Policy files: `*.yaml` / `*.yml` in a policy directory, or the one policy file.
pub fn policy_names(path: &Path) -> Box<dyn Fn(&str) -> bool + Send + Sync> {
    if path.is_dir() {
        Box::new(|name: &str| {
            !name.starts_with('.') && (name.ends_with(".yaml") || name.ends_with(".yml"))
        })
    } else {
        let own = file_name(path);
        Box::new(move |name: &str| name == own)
    }
}

/// Exactly the given files (certificate and key).
pub fn file_names(paths: &[&Path]) -> Box<dyn Fn(&str) -> bool + Send + Sync> {
    let names: Vec<String> = paths.iter().map(|p| file_name(p)).collect();
    Box::new(move |name: &str| names.iter().any(|n| n == name))
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .to_owned()
}

/// Watches `dirs` for changes to paths `relevant` accepts (see `matters`); the receiver gets one
/// message per burst of changes (bounded: at most one pending). The caller keeps the watcher alive.
pub fn watch(
    dirs: &[PathBuf],
    relevant: Box<dyn Fn(&str) -> bool + Send + Sync>,
) -> notify::Result<(RecommendedWatcher, mpsc::Receiver<()>)> {
    let (tx, rx) = mpsc::channel(1);
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if let Ok(ev) = res {
            if !ev.kind.is_access() && ev.paths.iter().any(|p| matters(p, &*relevant)) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_policy_files_and_kubernetes_swaps_wake_a_reload() {
        let dir = tempfile::tempdir().unwrap();
        let names = policy_names(dir.path());
        assert!(matters(&dir.path().join("api.yaml"), &*names));
        assert!(matters(&dir.path().join("..data"), &*names));
        assert!(!matters(&dir.path().join("access.log"), &*names));
        assert!(!matters(&dir.path().join(".api.yaml.swp"), &*names));
        let file = dir.path().join("policy.yaml");
        std::fs::write(&file, "").unwrap();
        let one = policy_names(&file);
        assert!(matters(&file, &*one));
        assert!(!matters(&dir.path().join("other.yaml"), &*one));
    }
}
