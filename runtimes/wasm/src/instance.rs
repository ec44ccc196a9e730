//! One running WebAssembly container: a thread of the keeper with its own current-thread tokio
//! runtime, inside the pod's network namespace (`setns` is per thread), running one instance.
//!
//! * stdout/stderr go line by line into the CRI log file ([`LogSink`]).
//! * Memory: a [`Limiter`] bounds all linear memories together by the CRI memory limit; a denied
//!   growth makes `memory.grow` return -1, and if the instance then ends badly it is reported as
//!   OOM-killed.
//! * CPU: at every epoch tick the instance yields; over its CFS quota in the current period it
//!   sleeps until the period ends.
//! * Kill: the instance's future is dropped (a signal number arrives on a channel) — also in the
//!   middle of a blocking WASI call — and it ends with `128 + signal`.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use unicri_runtime_linux::keeper::logs::{LineSplitter, LogFile, Stream};
use unicri_runtime_linux::keeper::proto::Usage;
use wasmtime::component::ResourceTable;
use wasmtime::{ResourceLimiter, Store, UpdateDeadline};
use wasmtime_wasi::cli::AsyncStdoutStream;
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use crate::engine::{Compiled, Runtime};
use crate::spec::WasmSpec;

/// Exit code of an instance that trapped (the `wasmtime` CLI's: 128 + SIGABRT).
pub const TRAP_EXIT_CODE: i32 = 134;
/// Exit code of an instance that trapped after its memory limit was hit (128 + SIGKILL, as an
/// OOM-killed process).
pub const OOM_EXIT_CODE: i32 = 137;

/// Store data of a core module.
pub struct ModuleState {
    /// WASI preview 1.
    pub wasi: WasiP1Ctx,
    limiter: Limiter,
}

/// Store data of a component.
pub struct ComponentState {
    ctx: WasiCtx,
    table: ResourceTable,
    limiter: Limiter,
}

impl WasiView for ComponentState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.ctx,
            table: &mut self.table,
        }
    }
}

/// Live counters of one instance, read by the keeper for `State`/`List` answers.
#[derive(Debug, Default)]
pub struct Meter {
    memory: AtomicU64,
    memory_max: AtomicU64,
    limit: u64,
    denied: AtomicBool,
    tid: AtomicI32,
    cpu_final: AtomicU64,
}

impl Meter {
    /// A meter for an instance limited to `limit` bytes (0: none).
    pub fn new(limit: u64) -> Arc<Meter> {
        Arc::new(Meter {
            limit,
            ..Meter::default()
        })
    }

    /// Usage now: CPU from the thread's schedstat while it runs, its final figure after.
    pub fn usage(&self) -> Usage {
        let tid = self.tid.load(Ordering::Acquire);
        let cpu_ns = if tid > 0 {
            std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat"))
                .ok()
                .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
                .unwrap_or(0)
        } else {
            self.cpu_final.load(Ordering::Acquire)
        };
        Usage {
            cpu_ns,
            memory_bytes: self.memory.load(Ordering::Acquire),
            memory_max_bytes: self.memory_max.load(Ordering::Acquire),
            memory_limit_bytes: self.limit,
        }
    }
}

/// Bounds the instance's linear memories together.
struct Limiter {
    meter: Arc<Meter>,
    total: usize,
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let total = self.total.saturating_sub(current).saturating_add(desired);
        if self.meter.limit > 0 && total as u64 > self.meter.limit {
            self.meter.denied.store(true, Ordering::Release);
            return Ok(false);
        }
        self.total = total;
        self.meter.memory.store(total as u64, Ordering::Release);
        self.meter
            .memory_max
            .fetch_max(total as u64, Ordering::AcqRel);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 1_000_000)
    }
}

/// One stream's bytes into the CRI log file.
struct LogSink {
    splitter: Arc<Mutex<LineSplitter>>,
    log: Option<LogFile>,
}

impl tokio::io::AsyncWrite for LogSink {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if let Some(log) = &self.log {
            self.splitter
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .feed(buf, log);
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// How an instance ended.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Exit code.
    pub code: i32,
    /// The signal that ended it (a kill).
    pub signal: Option<i32>,
    /// A memory growth was denied and it then failed.
    pub oom_killed: bool,
    /// The trap or error message.
    pub message: String,
}

/// A started instance.
#[derive(Debug)]
pub struct Running {
    kill: Option<tokio::sync::oneshot::Sender<i32>>,
    /// Its counters.
    pub meter: Arc<Meter>,
}

impl Running {
    /// Ends the instance with `128 + signal` (every signal ends a module: it cannot handle one).
    pub fn kill(&mut self, signal: i32) {
        if let Some(tx) = self.kill.take() {
            let _ = tx.send(signal);
        }
    }
}

/// Starts `compiled` on a thread of its own; `on_exit` is called on that thread when it ends.
pub fn start(
    rt: Arc<Runtime>,
    compiled: Compiled,
    spec: WasmSpec,
    log: Option<LogFile>,
    on_exit: impl FnOnce(Outcome) + Send + 'static,
) -> std::io::Result<Running> {
    let meter = Meter::new(spec.memory_limit);
    let (tx, rx) = tokio::sync::oneshot::channel();
    let m = meter.clone();
    std::thread::Builder::new()
        .name("wasm".into())
        .stack_size(256 * 1024)
        .spawn(move || {
            m.tid
                .store(nix::unistd::gettid().as_raw(), Ordering::Release);
            let outcome = run_thread(&rt, compiled, &spec, log, &m, rx);
            let cpu = thread_cpu().as_nanos() as u64;
            m.cpu_final.store(cpu, Ordering::Release);
            m.tid.store(0, Ordering::Release);
            on_exit(outcome);
        })?;
    Ok(Running {
        kill: Some(tx),
        meter,
    })
}

fn run_thread(
    rt: &Arc<Runtime>,
    compiled: Compiled,
    spec: &WasmSpec,
    log: Option<LogFile>,
    meter: &Arc<Meter>,
    kill: tokio::sync::oneshot::Receiver<i32>,
) -> Outcome {
    let failed = |message: String| Outcome {
        code: 128,
        message,
        ..Outcome::default()
    };
    if let Some(netns) = &spec.netns {
        let entered = std::fs::File::open(netns).and_then(|f| {
            nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).map_err(Into::into)
        });
        if let Err(e) = entered {
            return failed(format!(
                "enter the pod network namespace {}: {e}",
                netns.display()
            ));
        }
    }
    let tokio_rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return failed(format!("start the instance's runtime: {e}")),
    };
    let out = Arc::new(Mutex::new(LineSplitter::new(Stream::Stdout)));
    let err = Arc::new(Mutex::new(LineSplitter::new(Stream::Stderr)));
    let outcome = tokio_rt.block_on(async {
        let run = run_instance(rt, compiled, spec, &log, &out, &err, meter);
        tokio::select! {
            outcome = run => outcome,
            Ok(signal) = kill => Outcome {
                code: 128 + signal,
                signal: Some(signal),
                ..Outcome::default()
            },
        }
    });
    if let Some(log) = &log {
        for s in [&out, &err] {
            s.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .finish(log);
        }
    }
    outcome
}

fn wasi_builder(
    spec: &WasmSpec,
    log: &Option<LogFile>,
    out: &Arc<Mutex<LineSplitter>>,
    err: &Arc<Mutex<LineSplitter>>,
) -> Result<WasiCtxBuilder, String> {
    let mut b = WasiCtxBuilder::new();
    b.args(&spec.args)
        .envs(&spec.env)
        // not on-thread blocking: a sleeping poll_oneoff must stay cancellable by a kill
        .allow_blocking_current_thread(false)
        .inherit_network()
        .allow_ip_name_lookup(true)
        .stdout(AsyncStdoutStream::new(
            8192,
            LogSink {
                splitter: out.clone(),
                log: log.clone(),
            },
        ))
        .stderr(AsyncStdoutStream::new(
            8192,
            LogSink {
                splitter: err.clone(),
                log: log.clone(),
            },
        ));
    for p in &spec.preopens {
        let perms = if p.readonly {
            FsPerms::ReadOnly
        } else {
            FsPerms::ReadWrite
        };
        b.preopened_dir(&p.host, &p.guest, perms)
            .map_err(|e| format!("preopen {} at {}: {e:#}", p.host.display(), p.guest))?;
    }
    Ok(b)
}

/// CPU quota enforcement at epoch ticks.
struct Throttle {
    quota: Duration,
    period: Duration,
    window: Instant,
    cpu_at_window: Duration,
}

/// CPU time of the calling thread.
fn thread_cpu() -> Duration {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)
        .map(|t| Duration::new(t.tv_sec() as u64, t.tv_nsec() as u32))
        .unwrap_or_default()
}

impl Throttle {
    fn new(spec: &WasmSpec) -> Option<Throttle> {
        (spec.cpu_quota_us > 0).then(|| Throttle {
            quota: Duration::from_micros(spec.cpu_quota_us as u64),
            period: Duration::from_micros(spec.cpu_period_us.max(1000) as u64),
            window: Instant::now(),
            cpu_at_window: thread_cpu(),
        })
    }

    /// How long to sleep now to stay within the quota.
    fn check(&mut self) -> Option<Duration> {
        let now = Instant::now();
        let cpu = thread_cpu();
        if now.duration_since(self.window) >= self.period {
            self.window = now;
            self.cpu_at_window = cpu;
            return None;
        }
        if cpu.saturating_sub(self.cpu_at_window) >= self.quota {
            let rest = (self.window + self.period).saturating_duration_since(now);
            self.window += self.period;
            self.cpu_at_window = cpu;
            return Some(rest);
        }
        None
    }
}

fn deadline_callback<T>(
    spec: &WasmSpec,
) -> impl FnMut(wasmtime::StoreContextMut<'_, T>) -> wasmtime::Result<UpdateDeadline>
+ Send
+ Sync
+ 'static {
    let mut throttle = Throttle::new(spec);
    move |_| {
        Ok(match throttle.as_mut().and_then(Throttle::check) {
            Some(sleep) => UpdateDeadline::YieldCustom(1, Box::pin(tokio::time::sleep(sleep))),
            None => UpdateDeadline::Yield(1),
        })
    }
}

async fn run_instance(
    rt: &Arc<Runtime>,
    compiled: Compiled,
    spec: &WasmSpec,
    log: &Option<LogFile>,
    out: &Arc<Mutex<LineSplitter>>,
    err: &Arc<Mutex<LineSplitter>>,
    meter: &Arc<Meter>,
) -> Outcome {
    let mut builder = match wasi_builder(spec, log, out, err) {
        Ok(b) => b,
        Err(message) => {
            return Outcome {
                code: 128,
                message,
                ..Outcome::default()
            };
        }
    };
    let limiter = Limiter {
        meter: meter.clone(),
        total: 0,
    };
    let result: wasmtime::Result<i32> = match compiled {
        Compiled::Module(pre) => {
            let mut store = Store::new(
                rt.engine(),
                ModuleState {
                    wasi: builder.build_p1(),
                    limiter,
                },
            );
            store.limiter(|s| &mut s.limiter);
            store.set_epoch_deadline(1);
            store.epoch_deadline_callback(deadline_callback(spec));
            async {
                let instance = pre.instantiate_async(&mut store).await?;
                let start = instance.get_typed_func::<(), ()>(&mut store, "_start")?;
                start.call_async(&mut store, ()).await?;
                Ok(0)
            }
            .await
        }
        Compiled::Component(pre) => {
            let mut store = Store::new(
                rt.engine(),
                ComponentState {
                    ctx: builder.build(),
                    table: ResourceTable::new(),
                    limiter,
                },
            );
            store.limiter(|s| &mut s.limiter);
            store.set_epoch_deadline(1);
            store.epoch_deadline_callback(deadline_callback(spec));
            async {
                let command = pre.instantiate_async(&mut store).await?;
                let ran = command.wasi_cli_run().call_run(&mut store).await?;
                Ok(if ran.is_ok() { 0 } else { 1 })
            }
            .await
        }
    };
    let denied = meter.denied.load(Ordering::Acquire);
    match result {
        Ok(code) => Outcome {
            code,
            oom_killed: denied && code != 0,
            ..Outcome::default()
        },
        Err(e) => {
            if let Some(exit) = e.downcast_ref::<wasmtime_wasi::I32Exit>() {
                return Outcome {
                    code: exit.0,
                    oom_killed: denied && exit.0 != 0,
                    ..Outcome::default()
                };
            }
            let message = match e.downcast_ref::<wasmtime::Trap>() {
                Some(trap) => format!("wasm trap: {trap}"),
                None => format!("{e:#}"),
            };
            let message = if denied {
                format!(
                    "{message} (after a memory growth beyond the limit of {} bytes was denied)",
                    meter.limit
                )
            } else {
                message
            };
            Outcome {
                code: if denied {
                    OOM_EXIT_CODE
                } else {
                    TRAP_EXIT_CODE
                },
                signal: None,
                oom_killed: denied,
                message,
            }
        }
    }
}
