//! The watcher thread: notify events in, debounced per role, fetched, vetted, and sent
//! to the trainer as [`ReloadEvent`]s.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use notify::{EventKind, RecursiveMode, Watcher};

use super::vet::Vetting;
use super::{Candidate, DEBOUNCE, Rejection, ReloadEvent, WatchedPlugin};
use crate::plugins::{Digest, PluginEngine, PluginLimits};

/// A running watcher. Dropping it stops the thread.
pub struct ReloadWatcher {
    events: Receiver<ReloadEvent>,
    params: Arc<Mutex<BTreeMap<&'static str, String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    _watcher: notify::RecommendedWatcher,
}

/// A change seen but not yet acted on.
struct Pending {
    noticed: Instant,
    noticed_at: SystemTime,
    quiet_until: Instant,
}

impl ReloadWatcher {
    /// Watch `plugins`. `params` gives each role's current parameters for the trial
    /// `configure`; `lock` is the lock file when the run requires pinned digests.
    pub fn start(
        engine: Arc<PluginEngine>,
        plugins: Vec<WatchedPlugin>,
        params: BTreeMap<&'static str, String>,
        seed: u64,
        limits: PluginLimits,
        lock: Option<PathBuf>,
    ) -> Result<Self, notify::Error> {
        let (raw_tx, raw_rx) = mpsc::channel();
        let mut watcher = notify::recommended_watcher(raw_tx)?;
        for plugin in &plugins {
            for path in &plugin.paths {
                // A file is watched through its folder: an atomic replace (write a
                // temporary file, rename it over) gives the file a new inode.
                let (target, mode) = if path.is_dir() {
                    (path.clone(), if plugin.recursive { RecursiveMode::Recursive } else { RecursiveMode::NonRecursive })
                } else {
                    (path.parent().filter(|p| !p.as_os_str().is_empty()).map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from(".")), RecursiveMode::NonRecursive)
                };
                watcher.watch(&target, mode)?;
            }
        }
        if let Some(lock) = &lock
            && let Some(dir) = lock.parent()
        {
            watcher.watch(dir, RecursiveMode::NonRecursive)?;
        }
        let (tx, events) = mpsc::channel();
        let params = Arc::new(Mutex::new(params));
        let stop = Arc::new(AtomicBool::new(false));
        let vetting = Vetting { engine, seed, limits, lock };
        let seen = plugins.iter().map(|p| Some(p.running)).collect();
        let worker = Worker { plugins, seen, vetting, params: params.clone(), stop: stop.clone(), tx };
        let thread = std::thread::Builder::new().name("recast-plugin-reload".into()).spawn(move || worker.run(raw_rx)).map_err(|e| notify::Error::generic(&e.to_string()))?;
        Ok(ReloadWatcher { events, params, stop, thread: Some(thread), _watcher: watcher })
    }

    /// Events that arrived since the last call, without waiting.
    pub fn poll(&self) -> Vec<ReloadEvent> {
        self.events.try_iter().collect()
    }

    /// Tell the watcher the parameters `role` now runs with (a stage changed them), so
    /// trial instances are configured the same way.
    pub fn set_params(&self, role: &'static str, params: &str) {
        if let Ok(mut p) = self.params.lock() {
            p.insert(role, params.to_string());
        }
    }
}

/// How long dropping a watcher waits for its thread to notice the stop flag; a thread
/// still busy after that (e.g. rebuilding a plugin crate) is left to finish on its own,
/// so ending a run never waits on a plugin's file.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(2);

impl Drop for ReloadWatcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let deadline = Instant::now() + SHUTDOWN_WAIT;
            while !t.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if t.is_finished() {
                let _ = t.join();
            } else {
                tracing::warn!("the plugin watcher is still busy; the run ends without waiting for it");
            }
        }
    }
}

struct Worker {
    plugins: Vec<WatchedPlugin>,
    /// Per plugin, the digest last acted on (running, offered or rejected): the same
    /// bytes again are not a change. Cleared when the lock file changes.
    seen: Vec<Option<Digest>>,
    vetting: Vetting,
    params: Arc<Mutex<BTreeMap<&'static str, String>>>,
    stop: Arc<AtomicBool>,
    tx: Sender<ReloadEvent>,
}

impl Worker {
    fn run(mut self, raw: Receiver<notify::Result<notify::Event>>) {
        lower_priority();
        let mut pending: BTreeMap<usize, Pending> = BTreeMap::new();
        while !self.stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            let wait = pending.values().map(|p| p.quiet_until.saturating_duration_since(now)).min().unwrap_or(Duration::from_millis(200)).min(Duration::from_millis(200));
            match raw.recv_timeout(wait) {
                Ok(Ok(event)) if !matches!(event.kind, EventKind::Access(_)) => {
                    let now = Instant::now();
                    let lock_changed = self.vetting.lock.as_ref().is_some_and(|l| event.paths.iter().any(|p| p == l));
                    for (i, plugin) in self.plugins.iter().enumerate() {
                        if lock_changed {
                            self.seen[i] = None;
                        }
                        if lock_changed || event.paths.iter().any(|p| concerns(plugin, p)) {
                            let entry = pending.entry(i).or_insert(Pending { noticed: now, noticed_at: SystemTime::now(), quiet_until: now });
                            entry.quiet_until = now + DEBOUNCE;
                        }
                    }
                }
                Ok(Ok(_)) | Err(RecvTimeoutError::Timeout) => {}
                Ok(Err(e)) => tracing::warn!("plugin watcher: {e}"),
                Err(RecvTimeoutError::Disconnected) => break,
            }
            let now = Instant::now();
            let due: Vec<usize> = pending.iter().filter(|(_, p)| p.quiet_until <= now).map(|(i, _)| *i).collect();
            for i in due {
                if let Some(p) = pending.remove(&i)
                    && let Some(event) = self.vet(i, p)
                    && self.tx.send(event).is_err()
                {
                    return;
                }
            }
        }
    }

    /// Fetch and vet plugin `i`; `None` when its bytes are the ones last acted on.
    fn vet(&mut self, i: usize, pending: Pending) -> Option<ReloadEvent> {
        let started = Instant::now();
        let plugin = &mut self.plugins[i];
        let role = plugin.role;
        let reject = |label: String, digest: Option<Digest>, reason: String| Some(ReloadEvent::Rejected(Rejection { role, label, digest, reason, noticed_at: pending.noticed_at }));
        let fetched = match (plugin.fetch)() {
            Ok(f) => f,
            Err(reason) => return reject(plugin.paths.first().map(|p| p.display().to_string()).unwrap_or_default(), None, reason),
        };
        let digest = Digest::of(&fetched.bytes);
        if self.seen[i] == Some(digest) {
            return None;
        }
        self.seen[i] = Some(digest);
        let params = self.params.lock().ok().and_then(|p| p.get(role).cloned()).unwrap_or_default();
        match self.vetting.check(role, plugin.kind, &fetched, digest, &params) {
            Ok(component) => Some(ReloadEvent::Candidate(Candidate {
                role,
                component,
                bytes: std::sync::Arc::new(fetched.bytes),
                noticed: pending.noticed,
                noticed_at: pending.noticed_at,
                vetting: started.elapsed(),
            })),
            Err(reason) => reject(fetched.label, Some(digest), reason),
        }
    }
}

/// Whether a change to `path` may change `plugin`'s component.
fn concerns(plugin: &WatchedPlugin, path: &Path) -> bool {
    plugin.paths.iter().any(|watched| path == watched || (watched.is_dir() && path.starts_with(watched)))
}

/// Let training threads come first: compiling a new version may take a while longer,
/// but the steps that run meanwhile barely slow down.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: plain system calls on the calling thread; failure only leaves the priority.
    unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, 15);
    }
}
