//! The one wasmtime engine of the process: compilation, the component cache, the
//! linker that grants plugins their only imports, and the epoch clock for deadlines.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Config, Engine};

use super::compile_cache::CompileCache;
use super::component::PluginComponent;
use super::digest::Digest;
use super::error::{FaultCause, PluginError};
use super::host_api::PluginState;
use super::wit::AnyPlugin;

/// Largest component file a plugin may be (the biggest, a Python plugin with its
/// embedded interpreter, is about 40 MiB): a larger file is refused before it is read.
pub const MAX_COMPONENT_BYTES: u64 = 512 << 20;

/// How often the epoch advances: the resolution of per-call deadlines.
pub(crate) const EPOCH_TICK: Duration = Duration::from_millis(5);

/// Compiles, caches and links plugin components. Create one per process and share it.
pub struct PluginEngine {
    pub(crate) engine: Engine,
    pub(crate) linker: Linker<PluginState>,
    cache: Mutex<HashMap<Digest, PluginComponent>>,
    compiled: CompileCache,
    _ticker: EpochTicker,
}

impl PluginEngine {
    /// An engine with fuel metering and epoch interruption on, and a linker that offers
    /// nothing but `recast:plugins/host`.
    pub fn new() -> Result<Self, PluginError> {
        Self::build(true)
    }

    /// Like [`PluginEngine::new`] without the on-disk cache of compiled components, so
    /// that every load compiles (for measuring compilation).
    pub fn without_disk_cache() -> Result<Self, PluginError> {
        Self::build(false)
    }

    fn build(disk_cache: bool) -> Result<Self, PluginError> {
        let runtime = |e: wasmtime::Error| PluginError { plugin: "(engine)".into(), digest: None, call: "start".into(), step: None, cause: FaultCause::Runtime { reason: format!("{e:#}") } };
        let mut config = Config::new();
        config.wasm_component_model(true).consume_fuel(true).epoch_interruption(true);
        // Compile on the calling thread: a hot reload compiles on the low-priority
        // watcher thread and must not spread over the cores training uses.
        config.parallel_compilation(false);
        let engine = Engine::new(&config).map_err(runtime)?;
        let mut linker = Linker::new(&engine);
        AnyPlugin::add_to_linker::<PluginState, HasSelf<PluginState>>(&mut linker, |state| state).map_err(runtime)?;
        let ticker = EpochTicker::start(engine.clone());
        let compiled = if disk_cache { CompileCache::new(&engine) } else { CompileCache::disabled(&engine) };
        Ok(PluginEngine { engine, linker, cache: Mutex::new(HashMap::new()), compiled, _ticker: ticker })
    }

    /// Read, compile and describe the component in `path` (cached by sha256, in memory
    /// and, for large components, on disk).
    pub fn load_file(&self, path: &Path) -> Result<PluginComponent, PluginError> {
        let bytes = crate::regular_file::read(path, MAX_COMPONENT_BYTES).map_err(|source| PluginError {
            plugin: path.display().to_string(),
            digest: None,
            call: "load".into(),
            step: None,
            cause: FaultCause::Unreadable { path: path.to_path_buf(), source },
        })?;
        self.load_bytes(&path.display().to_string(), &bytes)
    }

    /// Compile and describe a component from memory (cached by sha256). `label` names it
    /// in errors.
    pub fn load_bytes(&self, label: &str, bytes: &[u8]) -> Result<PluginComponent, PluginError> {
        let digest = Digest::of(bytes);
        if let Some(hit) = self.cache.lock().ok().and_then(|c| c.get(&digest).cloned()) {
            return Ok(hit);
        }
        let component = match self.compiled.load(&self.engine, digest, bytes.len()) {
            Some(component) => component,
            None => {
                let component = Component::new(&self.engine, bytes).map_err(|e| PluginError {
                    plugin: label.to_string(),
                    digest: Some(digest),
                    call: "load".into(),
                    step: None,
                    cause: FaultCause::NotAComponent { reason: not_a_component_reason(bytes, &e) },
                })?;
                self.compiled.store(&component, digest, bytes.len());
                component
            }
        };
        let described = PluginComponent::describe(&self.engine, component, label, digest, bytes.len())?;
        if let Ok(mut cache) = self.cache.lock() {
            cache.insert(digest, described.clone());
        }
        Ok(described)
    }
}

fn not_a_component_reason(bytes: &[u8], e: &wasmtime::Error) -> String {
    // A core module starts with version 1; a component with version 0xd, layer 1.
    if bytes.len() >= 8 && bytes[..4] == *b"\0asm" && bytes[4..8] == [1, 0, 0, 0] {
        "this is a core WebAssembly module; build plugins with `recast plugin build`, which turns the module into a component".into()
    } else {
        format!("{e:#}")
    }
}

/// Advances the engine's epoch every [`EPOCH_TICK`] so that per-call deadlines fire.
struct EpochTicker {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl EpochTicker {
    fn start(engine: Engine) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("recast-plugin-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    engine.increment_epoch();
                }
            })
            .ok();
        EpochTicker { stop, thread }
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
