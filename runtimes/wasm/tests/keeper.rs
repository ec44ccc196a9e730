//! The `wasm` keeper driven over its socket with the daemon's client: real wasmtime, real
//! threads, modules assembled from WAT.

use std::path::PathBuf;
use std::time::Duration;

use unicri_runtime_linux::keeper::KeeperClient;
use unicri_runtime_linux::keeper::proto::{ContainerInfo, CreateRequest};
use unicri_runtime_wasm::spec::{Preopen, WasmSpec};

const PRELUDE: &str = r#"
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func $print (param $fd i32) (param $ptr i32) (param $len i32)
    (i32.store (i32.const 0) (local.get $ptr))
    (i32.store (i32.const 4) (local.get $len))
    (drop (call $fd_write (local.get $fd) (i32.const 0) (i32.const 1) (i32.const 8))))
"#;

fn module(body: &str, data: &str) -> Vec<u8> {
    let text = format!(
        "(module {PRELUDE} (data (i32.const 64) \"{data}\") (func (export \"_start\") {body}))"
    );
    wat::parse_str(text).expect("valid wat")
}

struct Keeper {
    _dir: tempfile::TempDir,
    root: PathBuf,
    client: KeeperClient,
}

fn keeper() -> Keeper {
    let dir = tempfile::tempdir().expect("tempdir");
    let kdir = dir.path().join("keeper");
    let cfg = unicri_runtime_wasm::keeper::KeeperConfig {
        dir: kdir.clone(),
        idle_exit: None,
    };
    std::thread::spawn(move || unicri_runtime_wasm::keeper::run(cfg));
    let sock = kdir.join("keeper.sock");
    for _ in 0..500 {
        if sock.exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(sock.exists(), "the keeper did not start");
    Keeper {
        root: dir.path().to_path_buf(),
        client: KeeperClient::new(kdir, "/nonexistent/unicri", 0),
        _dir: dir,
    }
}

impl Keeper {
    async fn create(&self, id: &str, wasm: &[u8], limit: u64) -> ContainerInfo {
        self.create_with(id, wasm, |s| s.memory_limit = limit).await
    }

    async fn create_with(
        &self,
        id: &str,
        wasm: &[u8],
        tweak: impl FnOnce(&mut WasmSpec),
    ) -> ContainerInfo {
        let bundle = self.root.join(id);
        std::fs::create_dir_all(bundle.join("rootfs")).expect("mkdir");
        std::fs::write(bundle.join("rootfs/app.wasm"), wasm).expect("write");
        let mut spec = WasmSpec {
            module: bundle.join("rootfs/app.wasm"),
            args: vec!["/app.wasm".into()],
            preopens: vec![Preopen {
                host: bundle.join("rootfs"),
                guest: "/".into(),
                readonly: false,
            }],
            ..WasmSpec::default()
        };
        tweak(&mut spec);
        std::fs::write(
            bundle.join("wasm.json"),
            serde_json::to_vec(&spec).expect("json"),
        )
        .expect("write");
        self.client
            .create(CreateRequest {
                id: id.into(),
                bundle: bundle.clone(),
                log_path: Some(bundle.join("log")),
                ..CreateRequest::default()
            })
            .await
            .expect("create")
    }

    async fn run(&self, id: &str, wasm: &[u8], limit: u64) -> ContainerInfo {
        self.create(id, wasm, limit).await;
        self.client.start(id).await.expect("start");
        self.client
            .wait(id, Duration::from_secs(30))
            .await
            .expect("wait")
            .expect("known")
    }

    fn log(&self, id: &str) -> String {
        std::fs::read_to_string(self.root.join(id).join("log")).unwrap_or_default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn modules_run_exit_trap_and_hit_their_memory_limit() {
    let k = keeper();
    let hello = module(
        "(call $print (i32.const 1) (i32.const 64) (i32.const 12))
         (call $print (i32.const 2) (i32.const 76) (i32.const 4))",
        "hello wasm\\n\\nbye\\n",
    );
    let info = k.run("hello", &hello, 0).await;
    let exit = info.exit.expect("exited");
    assert_eq!((exit.code, exit.oom_killed), (0, false));
    let log = k.log("hello");
    assert!(log.contains(" stdout F hello wasm\n"), "{log}");
    assert!(log.contains(" stdout F \n"), "{log}");
    assert!(log.contains(" stderr F bye\n"), "{log}");

    let three = module("(call $proc_exit (i32.const 3))", "");
    assert_eq!(k.run("three", &three, 0).await.exit.expect("exit").code, 3);

    let trap = module("unreachable", "");
    let exit = k.run("trap", &trap, 0).await.exit.expect("exit");
    assert_eq!(exit.code, 134);
    assert!(exit.message.contains("unreachable"), "{}", exit.message);

    // grows 1 MiB at a time until refused, then traps
    let grow = module(
        "(block $done (loop $l
            (br_if $done (i32.eq (memory.grow (i32.const 16)) (i32.const -1)))
            (br_if $done (i32.gt_u (memory.size) (i32.const 8192)))
            (br $l)))
         (if (i32.lt_u (memory.size) (i32.const 8192)) (then unreachable))",
        "",
    );
    let exit = k.run("grow", &grow, 4 << 20).await.exit.expect("exit");
    assert!(exit.oom_killed, "{exit:?}");
    assert_eq!(exit.code, 137);
    let exit = k.run("grow-free", &grow, 0).await.exit.expect("exit");
    assert_eq!((exit.code, exit.oom_killed), (0, false), "{exit:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_ends_a_spinning_and_a_sleeping_instance() {
    let k = keeper();
    let spin = module("(loop $l (br $l))", "");
    k.create("spin", &spin, 0).await;
    k.client.start("spin").await.expect("start");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let info = k.client.state("spin").await.expect("state").expect("known");
    assert_eq!(info.state, "running");
    let usage = info.usage.expect("usage while running");
    assert!(usage.cpu_ns > 50_000_000, "{usage:?}");
    assert_eq!(usage.memory_bytes, 65536);
    k.client.kill("spin", 15, false).await.expect("kill");
    let info = k
        .client
        .wait("spin", Duration::from_secs(10))
        .await
        .expect("wait")
        .expect("known");
    assert_eq!(info.exit.expect("exited").code, 143);

    // sleeps 60 s in poll_oneoff: a kill must not wait for it
    let sleep = module(
        "(i64.store (i32.const 200) (i64.const 0))
         (i32.store8 (i32.const 208) (i32.const 0))
         (i32.store (i32.const 216) (i32.const 1))
         (i64.store (i32.const 224) (i64.const 60000000000))
         (i64.store (i32.const 232) (i64.const 0))
         (i32.store16 (i32.const 240) (i32.const 0))
         (drop (call $poll (i32.const 200) (i32.const 300) (i32.const 1) (i32.const 400)))",
        "",
    );
    k.create("sleep", &sleep, 0).await;
    k.client.start("sleep").await.expect("start");
    tokio::time::sleep(Duration::from_millis(200)).await;
    k.client.kill("sleep", 9, false).await.expect("kill");
    let info = k
        .client
        .wait("sleep", Duration::from_secs(10))
        .await
        .expect("wait")
        .expect("known");
    assert_eq!(
        info.exit.expect("killed within 10 s of a 60 s sleep").code,
        137
    );
    k.client.delete("sleep").await.expect("delete");
    assert!(k.client.state("sleep").await.expect("state").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cpu_quota_holds_and_modules_are_compiled_once_to_the_disk_cache() {
    let k = keeper();
    let spin = module("(loop $l (br $l))", "");
    // 10 ms of CPU per 100 ms period: over one second it may use about 100 ms, never the
    // whole second an unthrottled spin takes
    k.create_with("slow", &spin, |s| {
        s.cpu_quota_us = 10_000;
        s.cpu_period_us = 100_000;
    })
    .await;
    k.client.start("slow").await.expect("start");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let usage = k
        .client
        .state("slow")
        .await
        .expect("state")
        .expect("known")
        .usage
        .expect("usage");
    assert!(
        usage.cpu_ns < 400_000_000,
        "a 10% quota used {} ms of CPU in 1 s",
        usage.cpu_ns / 1_000_000
    );
    assert!(usage.cpu_ns > 20_000_000, "it did run: {usage:?}");
    k.client.delete("slow").await.expect("delete");

    // the same module again: one cache entry, and it is machine code for this engine
    k.create("again", &spin, 0).await;
    let cache = k.root.join("keeper/cache");
    let entries: Vec<_> = std::fs::read_dir(&cache)
        .expect("cache dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert!(entries[0].ends_with(".cwasm"), "{entries:?}");
    let code = std::fs::read(cache.join(&entries[0])).expect("read");
    assert_eq!(
        &code[..4],
        b"\x7fELF",
        "wasmtime's precompiled format is an ELF image"
    );
    k.client.delete("again").await.expect("delete");
}
