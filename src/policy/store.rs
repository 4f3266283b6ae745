//! The live policy: one `ArcSwap<Policy>`, replaced whole. A bad policy at start is fatal (the
//! caller gets the error); a bad reload never is: the last good policy keeps serving.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arc_swap::ArcSwap;

use super::{load, LoadError, Policy};

#[derive(Debug, Clone)]
pub struct ReloadFailure {
    pub at: SystemTime,
    pub message: String,
}

#[derive(Debug)]
pub struct PolicyStore {
    path: PathBuf,
    current: ArcSwap<Policy>,
    last_error: Mutex<Option<ReloadFailure>>,
}

/// What a reload did.
#[derive(Debug, PartialEq, Eq)]
pub enum Reloaded {
    Changed,
    Unchanged,
}

impl PolicyStore {
    /// Loads the policy at `path`; an invalid policy is an error here (start-up must fail).
    pub fn open(path: &Path) -> Result<PolicyStore, LoadError> {
        let policy = load(path)?;
        Ok(PolicyStore {
            path: path.to_owned(),
            current: ArcSwap::from_pointee(policy),
            last_error: Mutex::new(None),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The snapshot a request works with from start to end.
    pub fn snapshot(&self) -> Arc<Policy> {
        self.current.load_full()
    }

    pub fn last_error(&self) -> Option<ReloadFailure> {
        self.last_error
            .lock()
            .expect("policy error lock is never poisoned")
            .clone()
    }

    /// Re-reads and compiles the policy; swaps it in only when it is valid and different.
    /// Blocking (file reads, compilation): call from the reload task, never from a request.
    pub fn reload(&self) -> Result<Reloaded, LoadError> {
        let result = load(&self.path);
        let mut last = self
            .last_error
            .lock()
            .expect("policy error lock is never poisoned");
        match result {
            Ok(policy) => {
                *last = None;
                if policy.inputs == self.current.load().inputs {
                    return Ok(Reloaded::Unchanged);
                }
                self.current.store(Arc::new(policy));
                Ok(Reloaded::Changed)
            }
            Err(e) => {
                *last = Some(ReloadFailure {
                    at: SystemTime::now(),
                    message: e.to_string(),
                });
                Err(e)
            }
        }
    }
}
