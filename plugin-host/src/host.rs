//! The host's state: triggers and their runtimes, the global cache, the link to the core.
//! The session with the core and the work it asks for live in the submodules:
//!
//! | module | concern |
//! |---|---|
//! | [`link`] | the link to the core: requests up (queries, writes), log lines |
//! | [`session`] | serving one core session: admission, the message dispatcher |
//! | [`runtime`] | a trigger's workers, call order, the crash-loop breaker, ticks and requests |
//! | [`pool`] | the cap on live workers (`--max-workers`) and the idle reaper |
//! | [`pipeline`] | a WAL trigger's batches: encoding, order, staging |
//! | [`dry_run`] | dry runs in fresh workers |
//! | [`admin`] | installs, plugin files and uploads |

mod admin;
mod dry_run;
mod link;
mod pipeline;
mod pool;
mod runtime;
mod session;

pub use link::CoreLink;
use pipeline::Queued;
pub use runtime::{CRASH_LIMIT, TriggerRuntime};

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{Arc, atomic::AtomicU64},
    time::Duration,
};

use parking_lot::Mutex;
use tokio::sync::mpsc;
use weir_proto::plugin::v1::{self as pb};

use crate::{
    cache::GlobalCache,
    venv::Venv,
    worker::{Level, TriggerId, Upstream, WorkerSpec},
};

/// Host settings.
#[derive(Debug, Clone)]
pub struct HostConfig {
    /// `--plugin-dir`.
    pub plugin_dir: PathBuf,
    /// Per-invocation timeout.
    pub plugin_timeout: Duration,
    /// Address-space limit per worker process.
    pub worker_memory: Option<u64>,
    /// How packages are installed into the venv.
    pub package_manager: crate::packages::PackageManager,
    /// Where `gh:` plugins come from.
    pub plugin_repo: String,
    /// Variables (beyond the fixed set) passed from the host's environment to workers:
    /// names, or prefixes ending in `*` (`--plugin-env`).
    pub plugin_env: Vec<String>,
    /// Workers with the speedups keep freed allocator arenas (`--worker-arena-cache`).
    pub arena_cache: bool,
    /// Confinement of workers (`--confine-workers`; `None`: unconfined).
    pub confinement: Option<Arc<crate::confine::Confinement>>,
    /// Fork workers from a pre-started fork server (`--worker-fork-server`).
    pub fork_server: bool,
    /// Modules the fork server imports before forking (`--worker-preload`).
    pub preload: Vec<String>,
    /// Most live trigger workers (`--max-workers`; 0: no cap).
    pub max_workers: usize,
    /// Stop workers idle this long (`--worker-idle-timeout`; `None`: never).
    pub idle_timeout: Option<Duration>,
}

/// Why a trigger's plugin cannot be found.
#[derive(Debug, thiserror::Error)]
pub enum PluginPathError {
    /// A plugin-directory name.
    #[error(transparent)]
    Path(#[from] crate::paths::PathError),
    /// A `gh:` plugin.
    #[error(transparent)]
    Gh(#[from] crate::gh::GhError),
}

/// The plugin host.
#[derive(Debug)]
pub struct Host {
    config: HostConfig,
    venv: Venv,
    cache: Arc<GlobalCache>,
    link: Arc<CoreLink>,
    triggers: Mutex<HashMap<TriggerId, Arc<TriggerRuntime>>>,
    /// Per-trigger ordered queues of WAL batches (bounded in practice: the core keeps at
    /// most a few batches per trigger in flight).
    pipelines: Mutex<HashMap<TriggerId, mpsc::UnboundedSender<Queued>>>,
    /// Incremented by every new session; batches queued by an ended session are not run
    /// (the core sends them again on the new one, in order).
    epoch: AtomicU64,
    gh: crate::gh::GhCache,
    /// Held while a new session is admitted.
    admission: tokio::sync::Mutex<()>,
    /// The environment of every worker ([`crate::env`]).
    worker_env: Arc<Vec<(String, String)>>,
    /// Forks workers (`None`: `--worker-fork-server false`).
    fork: Option<Arc<crate::forkserver::ForkServer>>,
    /// The cap on live workers and the idle reaper.
    pool: Arc<pool::WorkerPool>,
}
impl Host {
    /// A host over a prepared venv.
    pub fn new(config: HostConfig, venv: Venv) -> Arc<Self> {
        let mut env = crate::env::worker_environment(
            std::env::vars(),
            &venv.dir,
            &config.plugin_dir,
            &crate::venv::runtime_dir(&venv.dir),
            &config.plugin_env,
        );
        if config.confinement.is_some() {
            // A confined worker's home and temporary files live in the plugin directory.
            for (var, dir) in [("HOME", ".home"), ("TMPDIR", ".tmp")] {
                let path = config.plugin_dir.join(dir);
                let _ = std::fs::create_dir_all(&path);
                env.retain(|(k, _)| k != var);
                env.push((var.to_string(), path.display().to_string()));
            }
        }
        let worker_env = Arc::new(env);
        let fork = config.fork_server.then(|| {
            Arc::new(crate::forkserver::ForkServer::new(crate::forkserver::ForkServerConfig {
                python: venv.python.clone(),
                plugin_dir: config.plugin_dir.clone(),
                env: Arc::clone(&worker_env),
                confinement: config.confinement.clone(),
                preload: config.preload.clone(),
            }))
        });
        let pool = pool::WorkerPool::new(config.max_workers, config.idle_timeout);
        Arc::new(Self {
            venv,
            cache: Arc::new(GlobalCache::default()),
            link: Arc::new(CoreLink::default()),
            triggers: Mutex::new(HashMap::new()),
            pipelines: Mutex::new(HashMap::new()),
            epoch: AtomicU64::new(0),
            gh: crate::gh::GhCache::new(&config.plugin_repo, &config.plugin_dir),
            admission: tokio::sync::Mutex::new(()),
            worker_env,
            fork,
            pool,
            config,
        })
    }

    /// Stop every trigger: their workers (and everything those started) are killed.
    pub fn shutdown(&self) {
        self.triggers.lock().clear();
        self.pipelines.lock().clear();
    }

    /// The venv in use.
    pub fn venv(&self) -> &Venv {
        &self.venv
    }

    fn log(&self, id: &TriggerId, l: Level, text: impl Into<String>) {
        self.link.log(id, l, text.into());
    }

    /// How to start a worker for `trigger` (the rest comes from the host's settings).
    fn worker_spec(
        &self,
        trigger: TriggerId,
        plugin_path: PathBuf,
        args: Option<std::collections::BTreeMap<String, String>>,
        run_async: bool,
        dry_run: bool,
    ) -> WorkerSpec {
        WorkerSpec {
            trigger,
            python: self.venv.python.clone(),
            venv: self.venv.dir.clone(),
            plugin_dir: self.config.plugin_dir.clone(),
            plugin_path,
            args,
            run_async,
            memory_limit: self.config.worker_memory,
            dry_run,
            columns: self.venv.native,
            arena_cache: self.config.arena_cache,
            env: Arc::clone(&self.worker_env),
            confinement: self.config.confinement.clone(),
            fork: self.fork.clone(),
        }
    }

    fn set_trigger(&self, def: pb::Trigger) {
        let id = TriggerId { database: def.database.clone(), name: def.name.clone() };
        let plugin_path = self.config.plugin_dir.join(&def.plugin_filename);
        let args = def.arguments.as_ref().map(|a| a.values.clone().into_iter().collect());
        let spec = self.worker_spec(id.clone(), plugin_path, args, def.run_async, false);
        let mut triggers = self.triggers.lock();
        if triggers.get(&id).is_some_and(|t| t.def == def) {
            return;
        }
        // A new or changed definition: its old workers (if any) go with the old runtime.
        triggers.insert(id, Arc::new(TriggerRuntime::new(def, spec)));
    }

    /// Make the running triggers exactly `defs`: unchanged ones keep their workers (and
    /// trigger caches), others are dropped or (re)defined.
    fn sync_triggers(&self, defs: Vec<pb::Trigger>) {
        let keep: std::collections::HashSet<TriggerId> =
            defs.iter().map(|d| TriggerId { database: d.database.clone(), name: d.name.clone() }).collect();
        self.triggers.lock().retain(|id, _| keep.contains(id));
        self.pipelines.lock().retain(|id, _| keep.contains(id));
        for def in defs {
            self.set_trigger(def);
        }
    }

    fn drop_trigger(&self, database: &str, name: &str) {
        let id = TriggerId { database: database.to_string(), name: name.to_string() };
        self.triggers.lock().remove(&id);
        self.pipelines.lock().remove(&id);
    }

    /// The file or package a trigger's `plugin_filename` names: inside the plugin
    /// directory, or a `gh:` plugin's cached copy.
    async fn plugin_path(&self, name: &str) -> Result<PathBuf, PluginPathError> {
        Ok(match crate::gh::gh_path(name) {
            Some(path) => self.gh.resolve(path).await?,
            None => crate::paths::resolve(&self.config.plugin_dir, name)?,
        })
    }
}
