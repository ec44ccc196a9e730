//! The wasmtime engine of the keeper and its compile cache.
//!
//! One [`Engine`] per keeper: epoch interruption on (a ticker thread advances the epoch every
//! [`TICK`], so a running instance reaches a yield point at least that often: stop, CPU quota),
//! async support on (an instance is a future; dropping it ends the instance even inside a
//! blocking WASI call). A module is compiled once per content digest: the machine code goes to
//! `<cache>/<sha256>-<engine hash>.cwasm` and later creates load it (no Cranelift run); within
//! the keeper's life the loaded module and its pre-linked instance stay in memory, so a warm
//! create does no compilation and no linking at all.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, Linker as ComponentLinker};
use wasmtime::{Config, Engine, InstancePre, Linker, Module};
use wasmtime_wasi::p2::bindings::CommandPre;

use crate::error::WasmError;
use crate::instance::{ComponentState, ModuleState};
use crate::spec::ModuleKind;

/// How often the epoch advances.
pub const TICK: Duration = Duration::from_millis(10);

/// A compiled, pre-linked WebAssembly binary.
#[derive(Clone)]
pub enum Compiled {
    /// A core module (WASI preview 1).
    Module(InstancePre<ModuleState>),
    /// A component (WASI 0.2 command).
    Component(CommandPre<ComponentState>),
}

impl std::fmt::Debug for Compiled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Compiled::Module(_) => f.write_str("Compiled::Module"),
            Compiled::Component(_) => f.write_str("Compiled::Component"),
        }
    }
}

/// How a [`Runtime::load`] was served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// Already in memory.
    Memory,
    /// Loaded from the on-disk cache.
    Disk,
    /// Compiled now (and written to the cache).
    Compiled,
}

/// The engine, the linkers and the caches.
pub struct Runtime {
    engine: Engine,
    module_linker: Linker<ModuleState>,
    component_linker: ComponentLinker<ComponentState>,
    cache_dir: PathBuf,
    engine_hash: String,
    loaded: Mutex<HashMap<String, Compiled>>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("cache_dir", &self.cache_dir)
            .finish_non_exhaustive()
    }
}

fn wasm_err(what: &str) -> impl FnOnce(wasmtime::Error) -> WasmError + '_ {
    move |e| WasmError::Compile {
        what: what.to_string(),
        message: format!("{e:#}"),
    }
}

impl Runtime {
    /// An engine whose compile cache lives in `cache_dir`; starts the epoch ticker thread.
    pub fn new(cache_dir: &Path) -> Result<Arc<Runtime>, WasmError> {
        let mut config = Config::new();
        config.epoch_interruption(true);
        config.cranelift_opt_level(wasmtime::OptLevel::Speed);
        let engine = Engine::new(&config).map_err(wasm_err("engine"))?;
        let mut module_linker = Linker::new(&engine);
        wasmtime_wasi::p1::add_to_linker_async(&mut module_linker, |s: &mut ModuleState| {
            &mut s.wasi
        })
        .map_err(wasm_err("link wasi preview 1"))?;
        let mut component_linker = ComponentLinker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut component_linker)
            .map_err(wasm_err("link wasi 0.2"))?;
        std::fs::create_dir_all(cache_dir)
            .map_err(WasmError::io(format!("create {}", cache_dir.display())))?;
        let mut h = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        let rt = Arc::new(Runtime {
            engine_hash: format!("{:016x}", h.finish()),
            engine,
            module_linker,
            component_linker,
            cache_dir: cache_dir.to_path_buf(),
            loaded: Mutex::new(HashMap::new()),
        });
        let weak = Arc::downgrade(&rt);
        std::thread::Builder::new()
            .name("epoch".into())
            .spawn(move || {
                while let Some(rt) = weak.upgrade() {
                    rt.engine.increment_epoch();
                    drop(rt);
                    std::thread::sleep(TICK);
                }
            })
            .map_err(WasmError::io("spawn the epoch thread"))?;
        Ok(rt)
    }

    /// The engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The compiled form of the binary at `path` (of `kind`): from memory, from the disk cache,
    /// or compiled now. Blocking (compilation takes a while): call from a blocking thread.
    pub fn load(&self, path: &Path, kind: ModuleKind) -> Result<(Compiled, Source), WasmError> {
        let bytes =
            std::fs::read(path).map_err(WasmError::io(format!("read {}", path.display())))?;
        let digest = hex::encode(Sha256::digest(&bytes));
        let key = format!("{digest}-{}", self.engine_hash);
        if let Some(c) = self.lock().get(&key) {
            return Ok((c.clone(), Source::Memory));
        }
        let file = self.cache_dir.join(format!("{key}.cwasm"));
        let what = path.display().to_string();
        let (compiled, source) = match self.load_cached(&file, kind) {
            Some(c) => (c, Source::Disk),
            None => {
                let c = match kind {
                    ModuleKind::Module => {
                        let m = Module::new(&self.engine, &bytes).map_err(wasm_err(&what))?;
                        write_atomic(&file, &m.serialize().map_err(wasm_err(&what))?);
                        self.pre_module(&m, &what)?
                    }
                    ModuleKind::Component => {
                        let c = Component::new(&self.engine, &bytes).map_err(wasm_err(&what))?;
                        write_atomic(&file, &c.serialize().map_err(wasm_err(&what))?);
                        self.pre_component(&c, &what)?
                    }
                };
                (c, Source::Compiled)
            }
        };
        self.lock().insert(key, compiled.clone());
        Ok((compiled, source))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Compiled>> {
        self.loaded
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn pre_module(&self, m: &Module, what: &str) -> Result<Compiled, WasmError> {
        let pre = self
            .module_linker
            .instantiate_pre(m)
            .map_err(|e| WasmError::InvalidArgument(format!("module {what}: {e:#}")))?;
        Ok(Compiled::Module(pre))
    }

    fn pre_component(&self, c: &Component, what: &str) -> Result<Compiled, WasmError> {
        let pre = self
            .component_linker
            .instantiate_pre(c)
            .and_then(CommandPre::new)
            .map_err(|e| {
                WasmError::InvalidArgument(format!(
                    "component {what} is not a WASI 0.2 command: {e:#}"
                ))
            })?;
        Ok(Compiled::Component(pre))
    }

    /// The cached machine code in `file`, if it is there and loads.
    fn load_cached(&self, file: &Path, kind: ModuleKind) -> Option<Compiled> {
        if !file.exists() {
            return None;
        }
        let what = file.display().to_string();
        let loaded = match kind {
            ModuleKind::Module => cache::module(&self.engine, file)
                .map_err(wasm_err(&what))
                .and_then(|m| self.pre_module(&m, &what)),
            ModuleKind::Component => cache::component(&self.engine, file)
                .map_err(wasm_err(&what))
                .and_then(|c| self.pre_component(&c, &what)),
        };
        match loaded {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(file = %file.display(), error = %e, "dropping an unusable compile cache entry");
                let _ = std::fs::remove_file(file);
                None
            }
        }
    }
}

/// Writes through a temp file and a rename, so a reader never sees half a cache entry.
fn write_atomic(file: &Path, data: &[u8]) {
    let tmp = file.with_extension(format!("tmp{}", std::process::id()));
    let result = std::fs::write(&tmp, data).and_then(|()| std::fs::rename(&tmp, file));
    if let Err(error) = result {
        let _ = std::fs::remove_file(&tmp);
        tracing::warn!(file = %file.display(), %error, "cannot write the compile cache");
    }
}

#[allow(unsafe_code)]
mod cache {
    use std::path::Path;
    use wasmtime::component::Component;
    use wasmtime::{Engine, Module};

    pub fn module(engine: &Engine, file: &Path) -> wasmtime::Result<Module> {
        // SAFETY: the file is machine code this keeper's engine wrote into its own cache
        // directory (root-owned, under the state dir) through a rename, keyed by the engine's
        // compatibility hash; wasmtime still checks its header and engine settings.
        unsafe { Module::deserialize_file(engine, file) }
    }

    pub fn component(engine: &Engine, file: &Path) -> wasmtime::Result<Component> {
        // SAFETY: as for `module`: our own cache entry, written atomically by this engine.
        unsafe { Component::deserialize_file(engine, file) }
    }
}
