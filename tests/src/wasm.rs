//! WebAssembly test workloads for the `wasm` runtime handler: WASI preview 1 modules written in
//! WAT (assembled with the `wat` crate), a WASI 0.2 command component (a core module wrapped by
//! `wit-component` with wasmtime's preview1 command adapter), and the two image forms they
//! travel in:
//!
//! - compat: an ordinary OCI image whose single layer holds the module at `/app.wasm`
//!   (`Entrypoint ["/app.wasm"]`, manifest annotation `module.wasm.image/variant=compat`);
//! - artifact: the CNCF wasm OCI artifact (config `application/vnd.wasm.config.v0+json`, one
//!   layer `application/wasm`, or the bytecodealliance component layer type, holding the raw
//!   module bytes), built by [`crate::oci::wasm_artifact`].
//!
//! Every module exports `memory` and `_start` and imports only from `wasi_snapshot_preview1`.
//! A line of output is always one `fd_write` call, so the CRI log never sees a line in parts.
//!
//! ```no_run
//! # async fn f(reg: &unicri_e2e::registry::Registry) -> anyhow::Result<()> {
//! let images = unicri_e2e::wasm::push_test_images(reg).await?;
//! println!("pull {}", images.hello_compat.reference);
//! # Ok(()) }
//! ```

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result, bail, ensure};

use crate::cni::PLUGINS;
use crate::oci::{Compression, Image, ImageBuilder, LayerBuilder};
use crate::registry::Registry;

/// Config media type of a wasm OCI artifact.
pub const WASM_CONFIG: &str = "application/vnd.wasm.config.v0+json";
/// Layer media type of a wasm OCI artifact holding a core module (or a component).
pub const WASM_LAYER: &str = "application/wasm";
/// Layer media type the bytecodealliance tools give a component.
pub const WASM_COMPONENT_LAYER: &str =
    "application/vnd.bytecodealliance.wasm.component.layer.v0+wasm";
/// Manifest annotation marking a compat-form image.
pub const COMPAT_VARIANT_KEY: &str = "module.wasm.image/variant";
/// Where a compat image keeps its module (and its entrypoint).
pub const COMPAT_MODULE_PATH: &str = "/app.wasm";
/// The module the daemon is expected to run from an artifact's layer annotation.
pub const ARTIFACT_TITLE: &str = "app.wasm";
/// What [`hello`] prints first.
pub const HELLO_LINE: &str = "hello from wasm";
/// What [`component`] prints.
pub const COMPONENT_LINE: &str = "hello from a component";
/// What [`grow`] prints when a growth is denied.
pub const GROW_FAILED: &str = "grow failed";
/// What [`grow`] prints when it reached [`GROW_CAP_MIB`] (no limit).
pub const GROW_CAPPED: &str = "grew to the cap without a limit";
/// How far [`grow`] grows (in MiB) before it gives up and exits 0.
pub const GROW_CAP_MIB: u32 = 1024;
/// The exit code of [`ticker`].
pub const TICKER_EXIT: i32 = 7;
/// The exit code of [`read_config`] when no `/config` directory is preopened.
pub const NO_CONFIG_EXIT: i32 = 2;
/// What [`read_config`] writes to stderr when no `/config` directory is preopened.
pub const NO_CONFIG_LINE: &str = "no /config preopen";

/// The WASI preview 1 functions the modules may import (name, WAT signature).
pub const WASI_IMPORTS: &[(&str, &str)] = &[
    ("fd_write", "(param i32 i32 i32 i32) (result i32)"),
    ("proc_exit", "(param i32)"),
    ("args_sizes_get", "(param i32 i32) (result i32)"),
    ("args_get", "(param i32 i32) (result i32)"),
    ("environ_sizes_get", "(param i32 i32) (result i32)"),
    ("environ_get", "(param i32 i32) (result i32)"),
    ("poll_oneoff", "(param i32 i32 i32 i32) (result i32)"),
    ("fd_prestat_get", "(param i32 i32) (result i32)"),
    ("fd_prestat_dir_name", "(param i32 i32 i32) (result i32)"),
    (
        "path_open",
        "(param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)",
    ),
    ("fd_read", "(param i32 i32 i32 i32) (result i32)"),
    ("fd_close", "(param i32) (result i32)"),
];

// ---------------------------------------------------------------------------------------------
// WAT assembly
// ---------------------------------------------------------------------------------------------
//
// Memory layout of every module (one 64 KiB page to start with):
//   0..8        the iovec of `$write` (ptr, len); 8..12 its nwritten
//   16..32      scratch for the *_sizes_get and prestat results
//   64..1024    string constants (data segments)
//   1024..1201  `$write_num_line`'s line buffer (prefix, digits, '\n' at 1200)
//   1280..1328  a poll_oneoff clock subscription; 1344..1376 its event; 1376 nevents
//   1400        path_open's fd; 1408..1416 fd_read's iovec; 1416 nread
//   2048..2304  a preopen's name
//   2304..4096  `$write_line`'s buffer
//   4096..8192  fd_read's buffer
//   8192..12288 argv / environ pointers (at most 1024)
//   12288..     argv / environ strings

const DATA_START: u32 = 64;
const DATA_END: u32 = 1024;

/// A WAT module under construction: string constants go to data segments, the body is text.
struct Wat {
    imports: Vec<&'static str>,
    data: Vec<(u32, Vec<u8>)>,
    next: u32,
}

impl Wat {
    fn new(imports: &[&'static str]) -> Wat {
        let mut all = vec!["fd_write", "proc_exit"];
        for i in imports {
            if !all.contains(i) {
                all.push(i);
            }
        }
        Wat {
            imports: all,
            data: Vec::new(),
            next: DATA_START,
        }
    }

    /// Places `s` in a data segment; returns (offset, length).
    fn string(&mut self, s: &str) -> (u32, u32) {
        let off = self.next;
        let len = u32::try_from(s.len()).expect("short string");
        self.next += len.max(1);
        assert!(
            self.next <= DATA_END,
            "string constants of a test module overflow their region"
        );
        self.data.push((off, s.as_bytes().to_vec()));
        (off, len)
    }

    /// Instructions writing `s` to `fd` with one `fd_write`.
    fn print(&mut self, fd: u32, s: &str) -> String {
        let (off, len) = self.string(s);
        format!("(call $write (i32.const {fd}) (i32.const {off}) (i32.const {len}))\n")
    }

    /// Instructions writing `<prefix><n>\n` to `fd` (`n` an i32 expression) with one `fd_write`.
    fn print_num(&mut self, fd: u32, prefix: &str, n: &str) -> String {
        assert!(prefix.len() < 100);
        let (off, len) = self.string(prefix);
        format!("(call $write_num_line (i32.const {fd}) (i32.const {off}) (i32.const {len}) {n})\n")
    }

    /// The whole module with `body` (which must define the exported `_start`).
    fn module(&self, body: &str) -> String {
        let mut m = String::from("(module\n");
        for name in &self.imports {
            let sig = WASI_IMPORTS
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, s)| *s)
                .expect("known WASI import");
            let _ = writeln!(
                m,
                "  (import \"wasi_snapshot_preview1\" \"{name}\" (func ${name} {sig}))"
            );
        }
        m.push_str("  (memory (export \"memory\") 1)\n");
        for (off, bytes) in &self.data {
            let _ = writeln!(m, "  (data (i32.const {off}) \"{}\")", escape(bytes));
        }
        m.push_str(HELPERS);
        m.push_str(body);
        m.push_str(")\n");
        m
    }
}

/// A WAT string literal's contents for `bytes`.
fn escape(bytes: &[u8]) -> String {
    let mut s = String::new();
    for b in bytes {
        match b {
            b'"' | b'\\' => {
                let _ = write!(s, "\\{b:02x}");
            }
            0x20..=0x7e => s.push(char::from(*b)),
            _ => {
                let _ = write!(s, "\\{b:02x}");
            }
        }
    }
    s
}

/// Helpers every module has (they use only `fd_write`).
const HELPERS: &str = r#"
  ;; one fd_write of [ptr, ptr+len) to fd
  (func $write (param $fd i32) (param $ptr i32) (param $len i32)
    (i32.store (i32.const 0) (local.get $ptr))
    (i32.store (i32.const 4) (local.get $len))
    (drop (call $fd_write (local.get $fd) (i32.const 0) (i32.const 1) (i32.const 8))))
  ;; length of the NUL-terminated string at p
  (func $strlen (param $p i32) (result i32) (local $n i32)
    (block $done
      (loop $next
        (br_if $done (i32.eqz (i32.load8_u (i32.add (local.get $p) (local.get $n)))))
        (local.set $n (i32.add (local.get $n) (i32.const 1)))
        (br $next)))
    (local.get $n))
  ;; 1 when the len bytes at p equal those at lit
  (func $has_prefix (param $p i32) (param $lit i32) (param $len i32) (result i32) (local $i i32)
    (block $no
      (loop $next
        (if (i32.ge_u (local.get $i) (local.get $len)) (then (return (i32.const 1))))
        (br_if $no (i32.ne (i32.load8_u (i32.add (local.get $p) (local.get $i)))
                           (i32.load8_u (i32.add (local.get $lit) (local.get $i)))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next)))
    (i32.const 0))
  ;; copies len (at most 1700) bytes at p, then '\n', to 2304 and writes the line at once
  (func $write_line (param $fd i32) (param $p i32) (param $len i32) (local $i i32)
    (if (i32.gt_u (local.get $len) (i32.const 1700)) (then (local.set $len (i32.const 1700))))
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $i) (local.get $len)))
        (i32.store8 (i32.add (i32.const 2304) (local.get $i))
                    (i32.load8_u (i32.add (local.get $p) (local.get $i))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next)))
    (i32.store8 (i32.add (i32.const 2304) (local.get $len)) (i32.const 10))
    (call $write (local.get $fd) (i32.const 2304) (i32.add (local.get $len) (i32.const 1))))
  ;; writes "<prefix><n in decimal>\n" at once (prefix shorter than 100 bytes)
  (func $write_num_line (param $fd i32) (param $pre i32) (param $prelen i32) (param $n i32)
    (local $p i32) (local $i i32)
    (i32.store8 (i32.const 1200) (i32.const 10))
    (local.set $p (i32.const 1200))
    (loop $digit
      (local.set $p (i32.sub (local.get $p) (i32.const 1)))
      (i32.store8 (local.get $p) (i32.add (i32.const 48) (i32.rem_u (local.get $n) (i32.const 10))))
      (local.set $n (i32.div_u (local.get $n) (i32.const 10)))
      (br_if $digit (local.get $n)))
    (local.set $p (i32.sub (local.get $p) (local.get $prelen)))
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $i) (local.get $prelen)))
        (i32.store8 (i32.add (local.get $p) (local.get $i))
                    (i32.load8_u (i32.add (local.get $pre) (local.get $i))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next)))
    (call $write (local.get $fd) (local.get $p) (i32.sub (i32.const 1201) (local.get $p))))
"#;

fn assemble(name: &str, text: &str) -> Result<Vec<u8>> {
    wat::parse_str(text).with_context(|| format!("assemble the {name} test module:\n{text}"))
}

// ---------------------------------------------------------------------------------------------
// The modules
// ---------------------------------------------------------------------------------------------

/// WAT of [`hello`].
pub fn hello_wat() -> String {
    hello_like_wat(HELLO_LINE)
}

/// `hello`-like WAT whose first line is `first`.
fn hello_like_wat(first: &str) -> String {
    let mut w = Wat::new(&[
        "args_sizes_get",
        "args_get",
        "environ_sizes_get",
        "environ_get",
    ]);
    let first = w.print(1, &format!("{first}\n"));
    let bye = w.print(2, "bye\n");
    let (greeting, greeting_len) = w.string("GREETING=");
    let body = format!(
        r#"
  (func (export "_start") (local $n i32) (local $i i32) (local $p i32)
    {first}
    ;; argv[1..], one line each
    (if (i32.eqz (call $args_sizes_get (i32.const 16) (i32.const 20)))
      (then
        (local.set $n (i32.load (i32.const 16)))
        (if (i32.and (i32.le_u (local.get $n) (i32.const 1024))
                     (i32.le_u (i32.load (i32.const 20)) (i32.const 53248)))
          (then
            (if (i32.eqz (call $args_get (i32.const 8192) (i32.const 12288)))
              (then
                (local.set $i (i32.const 1))
                (block $done
                  (loop $next
                    (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
                    (local.set $p (i32.load (i32.add (i32.const 8192) (i32.shl (local.get $i) (i32.const 2)))))
                    (call $write_line (i32.const 1) (local.get $p) (call $strlen (local.get $p)))
                    (local.set $i (i32.add (local.get $i) (i32.const 1)))
                    (br $next)))))))))
    ;; GREETING=<value>, when set
    (if (i32.eqz (call $environ_sizes_get (i32.const 16) (i32.const 20)))
      (then
        (local.set $n (i32.load (i32.const 16)))
        (if (i32.and (i32.le_u (local.get $n) (i32.const 1024))
                     (i32.le_u (i32.load (i32.const 20)) (i32.const 53248)))
          (then
            (if (i32.eqz (call $environ_get (i32.const 8192) (i32.const 12288)))
              (then
                (local.set $i (i32.const 0))
                (block $done
                  (loop $next
                    (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
                    (local.set $p (i32.load (i32.add (i32.const 8192) (i32.shl (local.get $i) (i32.const 2)))))
                    (if (call $has_prefix (local.get $p) (i32.const {greeting}) (i32.const {greeting_len}))
                      (then (call $write_line (i32.const 1) (local.get $p) (call $strlen (local.get $p)))))
                    (local.set $i (i32.add (local.get $i) (i32.const 1)))
                    (br $next)))))))))
    {bye})
"#
    );
    w.module(&body)
}

/// Writes `hello from wasm` to stdout, then each of argv[1..] on its own line, then
/// `GREETING=<value>` when that variable is set, then `bye` to stderr; returns (exit 0).
pub fn hello() -> Result<Vec<u8>> {
    assemble("hello", &hello_wat())
}

/// WAT of [`exit_code`].
pub fn exit_code_wat(n: u8) -> String {
    let mut w = Wat::new(&[]);
    let line = w.print(1, &format!("exiting with {n}\n"));
    w.module(&format!(
        "  (func (export \"_start\")\n    {line}    (call $proc_exit (i32.const {n})))\n"
    ))
}

/// Prints `exiting with <n>`, then `proc_exit(n)`.
pub fn exit_code(n: u8) -> Result<Vec<u8>> {
    assemble("exit_code", &exit_code_wat(n))
}

/// WAT of [`trap`].
pub fn trap_wat() -> String {
    let mut w = Wat::new(&[]);
    let line = w.print(1, "about to trap\n");
    w.module(&format!(
        "  (func (export \"_start\")\n    {line}    unreachable)\n"
    ))
}

/// Prints `about to trap`, then executes `unreachable`.
pub fn trap() -> Result<Vec<u8>> {
    assemble("trap", &trap_wat())
}

/// WAT of [`grow`].
pub fn grow_wat() -> String {
    let mut w = Wat::new(&[]);
    let start = w.print(1, "growing\n");
    let failed = w.print_num(1, &format!("{GROW_FAILED} after MiB: "), "(local.get $mib)");
    let capped = w.print(1, &format!("{GROW_CAPPED} ({GROW_CAP_MIB} MiB)\n"));
    w.module(&format!(
        r#"
  (func (export "_start") (local $mib i32)
    {start}
    (loop $more
      (if (i32.eq (memory.grow (i32.const 16)) (i32.const -1))
        (then
          {failed}
          unreachable))
      (local.set $mib (i32.add (local.get $mib) (i32.const 1)))
      (br_if $more (i32.lt_u (local.get $mib) (i32.const {GROW_CAP_MIB}))))
    {capped})
"#
    ))
}

/// Grows its memory by 1 MiB (`memory.grow 16`) until a growth is denied, then prints
/// `grow failed after MiB: <n>` and traps (`unreachable`); after [`GROW_CAP_MIB`] MiB without
/// a denial it prints [`GROW_CAPPED`] and returns (exit 0).
pub fn grow() -> Result<Vec<u8>> {
    assemble("grow", &grow_wat())
}

/// WAT of [`spin`].
pub fn spin_wat() -> String {
    let mut w = Wat::new(&[]);
    let line = w.print(1, "spinning\n");
    w.module(&format!(
        "  (func (export \"_start\")\n    {line}    (loop $forever (br $forever)))\n"
    ))
}

/// Prints `spinning`, then loops forever without calling the host.
pub fn spin() -> Result<Vec<u8>> {
    assemble("spin", &spin_wat())
}

/// WAT of [`ticker`].
pub fn ticker_wat(n: u32, ms: u32) -> String {
    let mut w = Wat::new(&["poll_oneoff"]);
    let tick = w.print_num(1, "tick ", "(local.get $i)");
    w.module(&format!(
        r#"
  ;; sleeps ms milliseconds: one relative CLOCK_MONOTONIC subscription
  (func $sleep_ms (param $ms i32)
    (i64.store (i32.const 1280) (i64.const 0))
    (i32.store8 (i32.const 1288) (i32.const 0))
    (i32.store (i32.const 1296) (i32.const 1))
    (i64.store (i32.const 1304) (i64.mul (i64.extend_i32_u (local.get $ms)) (i64.const 1000000)))
    (i64.store (i32.const 1312) (i64.const 0))
    (i32.store16 (i32.const 1320) (i32.const 0))
    (drop (call $poll_oneoff (i32.const 1280) (i32.const 1344) (i32.const 1) (i32.const 1376))))
  (func (export "_start") (local $i i32)
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $i) (i32.const {n})))
        {tick}
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (if (i32.lt_u (local.get $i) (i32.const {n}))
          (then (call $sleep_ms (i32.const {ms}))))
        (br $next)))
    (call $proc_exit (i32.const {TICKER_EXIT})))
"#
    ))
}

/// Prints `tick 0` … `tick <n-1>`, sleeping `ms` ms between lines (`poll_oneoff` on a relative
/// `CLOCK_MONOTONIC` subscription), then `proc_exit(7)`.
pub fn ticker(n: u32, ms: u32) -> Result<Vec<u8>> {
    assemble("ticker", &ticker_wat(n, ms))
}

/// WAT of [`read_config`].
pub fn read_config_wat() -> String {
    let mut w = Wat::new(&[
        "fd_prestat_get",
        "fd_prestat_dir_name",
        "path_open",
        "fd_read",
        "fd_close",
    ]);
    let (config, _) = w.string("/config");
    let (greeting, greeting_len) = w.string("greeting");
    let none = w.print(2, &format!("{NO_CONFIG_LINE}\n"));
    let open_failed = w.print_num(
        2,
        "cannot open /config/greeting: errno ",
        "(local.get $err)",
    );
    let read_failed = w.print_num(
        2,
        "cannot read /config/greeting: errno ",
        "(local.get $err)",
    );
    w.module(&format!(
        r#"
  ;; 1 when the len bytes at p name /config (a trailing '/' or NUL allowed)
  (func $is_config (param $p i32) (param $len i32) (result i32)
    (if (i32.lt_u (local.get $len) (i32.const 7)) (then (return (i32.const 0))))
    (if (i32.gt_u (local.get $len) (i32.const 8)) (then (return (i32.const 0))))
    (if (i32.eqz (call $has_prefix (local.get $p) (i32.const {config}) (i32.const 7)))
      (then (return (i32.const 0))))
    (if (i32.eq (local.get $len) (i32.const 7)) (then (return (i32.const 1))))
    (i32.or (i32.eq (i32.load8_u (i32.add (local.get $p) (i32.const 7))) (i32.const 47))
            (i32.eqz (i32.load8_u (i32.add (local.get $p) (i32.const 7))))))
  (func (export "_start") (local $fd i32) (local $len i32) (local $file i32) (local $n i32) (local $err i32)
    (local.set $fd (i32.const 3))
    (block $found
      (loop $next
        (if (i32.eqz (call $fd_prestat_get (local.get $fd) (i32.const 16)))
          (then
            (if (i32.eqz (i32.load8_u (i32.const 16)))
              (then
                (local.set $len (i32.load (i32.const 20)))
                (if (i32.le_u (local.get $len) (i32.const 256))
                  (then
                    (if (i32.eqz (call $fd_prestat_dir_name (local.get $fd) (i32.const 2048) (local.get $len)))
                      (then
                        (br_if $found (call $is_config (i32.const 2048) (local.get $len)))))))))))
        (local.set $fd (i32.add (local.get $fd) (i32.const 1)))
        (br_if $next (i32.lt_u (local.get $fd) (i32.const 32))))
      {none}
      (call $proc_exit (i32.const {NO_CONFIG_EXIT}))
      unreachable)
    ;; open greeting (rights: fd_read), symlinks followed
    (local.set $err
      (call $path_open (local.get $fd) (i32.const 1) (i32.const {greeting}) (i32.const {greeting_len})
                       (i32.const 0) (i64.const 2) (i64.const 0) (i32.const 0) (i32.const 1400)))
    (if (local.get $err)
      (then
        {open_failed}
        (call $proc_exit (i32.const 3))))
    (local.set $file (i32.load (i32.const 1400)))
    (block $eof
      (loop $read
        (i32.store (i32.const 1408) (i32.const 4096))
        (i32.store (i32.const 1412) (i32.const 4096))
        (local.set $err (call $fd_read (local.get $file) (i32.const 1408) (i32.const 1) (i32.const 1416)))
        (if (local.get $err)
          (then
            {read_failed}
            (call $proc_exit (i32.const 4))))
        (local.set $n (i32.load (i32.const 1416)))
        (br_if $eof (i32.eqz (local.get $n)))
        (call $write (i32.const 1) (i32.const 4096) (local.get $n))
        (br $read)))
    (drop (call $fd_close (local.get $file))))
"#
    ))
}

/// Finds the preopened directory `/config` (walking fds 3..32 with `fd_prestat_get` /
/// `fd_prestat_dir_name`), opens `greeting` in it and copies it to stdout; without such a
/// preopen writes [`NO_CONFIG_LINE`] to stderr and exits [`NO_CONFIG_EXIT`] (3 when the file
/// cannot be opened, 4 when it cannot be read).
pub fn read_config() -> Result<Vec<u8>> {
    assemble("read_config", &read_config_wat())
}

/// The core module inside [`component`]: [`hello`] with [`COMPONENT_LINE`] as its first line.
pub fn component_core_module() -> Result<Vec<u8>> {
    assemble("component core", &hello_like_wat(COMPONENT_LINE))
}

/// A WASI 0.2 component (the `wasi:cli/command` world): [`component_core_module`] wrapped by
/// `wit-component` with wasmtime 48's preview1 command adapter. Prints
/// `hello from a component` (then args, `GREETING=`, and `bye` on stderr like [`hello`]).
pub fn component() -> Result<Vec<u8>> {
    let core = component_core_module()?;
    let bytes = wit_component::ComponentEncoder::default()
        .validate(true)
        .module(&core)
        .context("component encoder: core module")?
        .adapter(
            wasi_preview1_component_adapter_provider::WASI_SNAPSHOT_PREVIEW1_ADAPTER_NAME,
            wasi_preview1_component_adapter_provider::WASI_SNAPSHOT_PREVIEW1_COMMAND_ADAPTER,
        )
        .context("component encoder: preview1 command adapter")?
        .encode()
        .context("encode the component")?;
    ensure!(
        is_component(&bytes),
        "wit-component produced no component header"
    );
    Ok(bytes)
}

/// Whether `bytes` start with the component-model header (`\0asm`, version 0x0d, layer 1).
pub fn is_component(bytes: &[u8]) -> bool {
    bytes.starts_with(b"\0asm\x0d\x00\x01\x00")
}

/// Whether `bytes` start with the core-module header (`\0asm`, version 1).
pub fn is_core_module(bytes: &[u8]) -> bool {
    bytes.starts_with(b"\0asm\x01\x00\x00\x00")
}

// ---------------------------------------------------------------------------------------------
// Images
// ---------------------------------------------------------------------------------------------

/// The compat form: one layer with `module` at `/app.wasm` (mode 0755), `Entrypoint
/// ["/app.wasm"]`, manifest annotation `module.wasm.image/variant=compat`, linux/amd64.
pub fn compat_image(module: &[u8]) -> Result<Image> {
    let layer = LayerBuilder::new()
        .file_with(COMPAT_MODULE_PATH, module, 0o755, 0, 0)
        .build(Compression::Gzip)?;
    ImageBuilder::new()
        .layer(layer)
        .entrypoint(&[COMPAT_MODULE_PATH])
        .annotation(COMPAT_VARIANT_KEY, "compat")
        .build()
}

/// The artifact form of `module`: [`crate::oci::wasm_artifact`] (config
/// `application/vnd.wasm.config.v0+json`, one layer of `layer_media_type`, e.g. [`WASM_LAYER`]
/// or [`WASM_COMPONENT_LAYER`], holding the raw bytes) with the layer titled `app.wasm`.
pub fn artifact(module: &[u8], layer_media_type: &str) -> Result<Image> {
    crate::oci::wasm_artifact(module, layer_media_type, Some(ARTIFACT_TITLE))
}

/// One image in the test registry.
#[derive(Clone, Debug)]
pub struct PushedImage {
    /// `127.0.0.1:<port>/e2e/wasm-<name>:<tag>`.
    pub reference: String,
    /// The manifest digest.
    pub manifest_digest: String,
    /// The config digest (the image id).
    pub config_digest: String,
}

impl PushedImage {
    /// The reference by digest: `127.0.0.1:<port>/e2e/wasm-<name>@sha256:…`.
    pub fn by_digest(&self) -> String {
        let repo = crate::oci::split_tag(&self.reference).0;
        format!("{repo}@{}", self.manifest_digest)
    }
    /// Whether `image_ref` (as CRI reports it: an image id or a repo digest) names this image.
    pub fn is_ref(&self, image_ref: &str) -> bool {
        image_ref == self.config_digest
            || image_ref == self.config_digest.trim_start_matches("sha256:")
            || image_ref.ends_with(&format!("@{}", self.manifest_digest))
    }
}

/// Every test image, pushed by [`push_test_images`].
#[derive(Clone, Debug)]
pub struct WasmImages {
    /// [`hello`], compat form.
    pub hello_compat: PushedImage,
    /// [`hello`], artifact form (`application/wasm`).
    pub hello_artifact: PushedImage,
    /// [`exit_code`]`(0)`, compat form.
    pub exit0: PushedImage,
    /// [`exit_code`]`(3)`, artifact form.
    pub exit3: PushedImage,
    /// [`trap`], compat form.
    pub trap: PushedImage,
    /// [`grow`], compat form.
    pub grow: PushedImage,
    /// [`spin`], artifact form.
    pub spin: PushedImage,
    /// [`ticker`]`(30, 300)`, compat form: about 9 s.
    pub ticker: PushedImage,
    /// [`ticker`]`(100_000, 100)`, compat form: runs for hours (stats, stop).
    pub ticker_long: PushedImage,
    /// [`read_config`], compat form.
    pub read_config: PushedImage,
    /// [`component`], artifact form (the bytecodealliance component layer type).
    pub component_artifact: PushedImage,
    /// [`component`], compat form.
    pub component_compat: PushedImage,
}

/// The line count of [`WasmImages::ticker`].
pub const TICKER_LINES: u32 = 30;
/// The pause (ms) between the lines of [`WasmImages::ticker`]: long enough that a `kill -9`
/// and restart of the daemon a second in fit well inside its run.
pub const TICKER_PAUSE_MS: u32 = 300;

async fn push_compat(reg: &Registry, name: &str, module: &[u8]) -> Result<PushedImage> {
    let img = compat_image(module)?;
    let repo = format!("e2e/wasm-{name}");
    let digest = reg
        .pusher()
        .push_image(&repo, "compat", &img)
        .await
        .with_context(|| format!("push {repo}:compat"))?;
    Ok(PushedImage {
        reference: format!("{}/{repo}:compat", reg.host()),
        manifest_digest: digest,
        config_digest: img.id().to_string(),
    })
}

async fn push_artifact(
    reg: &Registry,
    name: &str,
    module: &[u8],
    layer_media_type: &str,
) -> Result<PushedImage> {
    let img = artifact(module, layer_media_type)?;
    let repo = format!("e2e/wasm-{name}");
    let digest = reg
        .pusher()
        .push_image(&repo, "artifact", &img)
        .await
        .with_context(|| format!("push {repo}:artifact"))?;
    Ok(PushedImage {
        reference: format!("{}/{repo}:artifact", reg.host()),
        manifest_digest: digest,
        config_digest: img.id().to_string(),
    })
}

/// Builds every test module and pushes it to `reg` (see [`WasmImages`] for which form each
/// takes).
pub async fn push_test_images(reg: &Registry) -> Result<WasmImages> {
    let hello = hello()?;
    let component = component()?;
    Ok(WasmImages {
        hello_compat: push_compat(reg, "hello", &hello).await?,
        hello_artifact: push_artifact(reg, "hello", &hello, WASM_LAYER).await?,
        exit0: push_compat(reg, "exit0", &exit_code(0)?).await?,
        exit3: push_artifact(reg, "exit3", &exit_code(3)?, WASM_LAYER).await?,
        trap: push_compat(reg, "trap", &trap()?).await?,
        grow: push_compat(reg, "grow", &grow()?).await?,
        spin: push_artifact(reg, "spin", &spin()?, WASM_LAYER).await?,
        ticker: push_compat(reg, "ticker", &ticker(TICKER_LINES, TICKER_PAUSE_MS)?).await?,
        ticker_long: push_compat(reg, "ticker-long", &ticker(100_000, 100)?).await?,
        read_config: push_compat(reg, "read-config", &read_config()?).await?,
        component_artifact: push_artifact(reg, "component", &component, WASM_COMPONENT_LAYER)
            .await?,
        component_compat: push_compat(reg, "component", &component).await?,
    })
}

/// Returns `true` (and prints a loud `SKIP` line) when Debian's `docker-registry` or the CNI
/// bridge plugin is missing (the wasm tier needs no busybox).
pub fn skip_without_registry_and_cni(test: &str) -> bool {
    if crate::skip_without_registry(test) {
        return true;
    }
    if Path::new(PLUGINS).join("bridge").exists() {
        return false;
    }
    eprintln!(
        "\n******** SKIP {test}: needs {PLUGINS}/bridge (apt-get install -y containernetworking-plugins) ********\n"
    );
    true
}

/// Fails unless `bytes` is a valid core module that exports `memory` and `_start` and imports
/// only functions of [`WASI_IMPORTS`] from `wasi_snapshot_preview1`; returns its import names.
pub fn check_core_module(bytes: &[u8]) -> Result<Vec<String>> {
    ensure!(is_core_module(bytes), "not a core module header");
    wasmparser::Validator::new()
        .validate_all(bytes)
        .context("validate")?;
    let mut imports = Vec::new();
    let mut exports = Vec::new();
    for payload in wasmparser::Parser::new(0).parse_all(bytes) {
        match payload? {
            wasmparser::Payload::ImportSection(r) => {
                for i in r.into_imports() {
                    let i = i?;
                    if i.module != "wasi_snapshot_preview1" {
                        bail!("import from {}: {}", i.module, i.name);
                    }
                    if !WASI_IMPORTS.iter().any(|(n, _)| *n == i.name) {
                        bail!("unexpected WASI import {}", i.name);
                    }
                    ensure!(
                        matches!(i.ty, wasmparser::TypeRef::Func(_)),
                        "import {} is not a function",
                        i.name
                    );
                    imports.push(i.name.to_string());
                }
            }
            wasmparser::Payload::ExportSection(r) => {
                for e in r {
                    let e = e?;
                    exports.push((e.name.to_string(), e.kind));
                }
            }
            _ => {}
        }
    }
    ensure!(
        exports.contains(&("memory".to_string(), wasmparser::ExternalKind::Memory)),
        "no memory export: {exports:?}"
    );
    ensure!(
        exports.contains(&("_start".to_string(), wasmparser::ExternalKind::Func)),
        "no _start export: {exports:?}"
    );
    Ok(imports)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn imports_of(bytes: &[u8]) -> Vec<String> {
        let mut v = check_core_module(bytes).expect("a valid WASI module");
        v.sort();
        v
    }

    fn sorted(v: &[&str]) -> Vec<String> {
        let mut v: Vec<String> = v.iter().map(|s| s.to_string()).collect();
        v.sort();
        v
    }

    #[test]
    fn every_module_is_valid_wasi_preview1() {
        assert_eq!(
            imports_of(&hello().unwrap()),
            sorted(&[
                "fd_write",
                "proc_exit",
                "args_sizes_get",
                "args_get",
                "environ_sizes_get",
                "environ_get"
            ])
        );
        for n in [0, 3, 255] {
            assert_eq!(
                imports_of(&exit_code(n).unwrap()),
                sorted(&["fd_write", "proc_exit"])
            );
        }
        assert_eq!(
            imports_of(&trap().unwrap()),
            sorted(&["fd_write", "proc_exit"])
        );
        assert_eq!(
            imports_of(&grow().unwrap()),
            sorted(&["fd_write", "proc_exit"])
        );
        assert_eq!(
            imports_of(&spin().unwrap()),
            sorted(&["fd_write", "proc_exit"])
        );
        assert_eq!(
            imports_of(&ticker(3, 10).unwrap()),
            sorted(&["fd_write", "proc_exit", "poll_oneoff"])
        );
        assert_eq!(
            imports_of(&read_config().unwrap()),
            sorted(&[
                "fd_write",
                "proc_exit",
                "fd_prestat_get",
                "fd_prestat_dir_name",
                "path_open",
                "fd_read",
                "fd_close"
            ])
        );
        check_core_module(&component_core_module().unwrap()).unwrap();
    }

    #[test]
    fn modules_carry_their_text() {
        let has = |bytes: &[u8], s: &str| bytes.windows(s.len()).any(|w| w == s.as_bytes());
        assert!(has(&hello().unwrap(), "hello from wasm\n"));
        assert!(has(&hello().unwrap(), "GREETING="));
        assert!(has(&exit_code(3).unwrap(), "exiting with 3\n"));
        assert!(has(&grow().unwrap(), GROW_FAILED));
        assert!(has(&spin().unwrap(), "spinning\n"));
        assert!(has(&ticker(2, 1).unwrap(), "tick "));
        assert!(has(&read_config().unwrap(), "/config"));
        assert!(has(&read_config().unwrap(), NO_CONFIG_LINE));
        assert!(has(&component().unwrap(), COMPONENT_LINE));
        // the spin loop and the trap are there
        assert!(spin_wat().contains("(loop $forever (br $forever))"));
        assert!(trap_wat().contains("unreachable"));
        assert!(grow_wat().contains("memory.grow (i32.const 16)"));
    }

    #[test]
    fn strings_are_escaped() {
        assert_eq!(escape(b"a\"b\\c\n"), "a\\22b\\5cc\\0a");
        let m = exit_code_wat(5);
        assert!(m.contains("exiting with 5\\0a"), "{m}");
        wat::parse_str(Wat::new(&[]).module("(func (export \"_start\"))")).unwrap();
    }

    #[test]
    fn component_is_a_wasi_p2_command() {
        let c = component().unwrap();
        assert!(is_component(&c), "header {:02x?}", &c[..8]);
        assert!(!is_core_module(&c));
        let mut v = wasmparser::Validator::new_with_features(wasmparser::WasmFeatures::all());
        v.validate_all(&c).unwrap();
        // it exports wasi:cli/run and imports WASI 0.2 interfaces
        let mut exports = Vec::new();
        let mut imports = Vec::new();
        for p in wasmparser::Parser::new(0).parse_all(&c) {
            match p.unwrap() {
                wasmparser::Payload::ComponentExportSection(r) => {
                    for e in r {
                        exports.push(e.unwrap().name.name.to_string());
                    }
                }
                wasmparser::Payload::ComponentImportSection(r) => {
                    for i in r {
                        imports.push(i.unwrap().name.name.to_string());
                    }
                }
                _ => {}
            }
        }
        assert!(
            exports.iter().any(|e| e.starts_with("wasi:cli/run@0.2")),
            "{exports:?}"
        );
        assert!(
            imports.iter().any(|i| i.starts_with("wasi:cli/stdout@0.2")),
            "{imports:?}"
        );
    }

    #[test]
    fn compat_image_holds_the_module_at_app_wasm() {
        let m = hello().unwrap();
        let img = compat_image(&m).unwrap();
        let manifest: serde_json::Value = serde_json::from_slice(&img.manifest.data).unwrap();
        assert_eq!(manifest["annotations"][COMPAT_VARIANT_KEY], "compat");
        let config: serde_json::Value = serde_json::from_slice(&img.config.data).unwrap();
        assert_eq!(
            config["config"]["Entrypoint"],
            serde_json::json!(["/app.wasm"])
        );
        assert_eq!(img.layers.len(), 1);
        let mut ar = tar::Archive::new(img.layers[0].tar.as_slice());
        let mut found = false;
        for e in ar.entries().unwrap() {
            let mut e = e.unwrap();
            if e.path().unwrap().to_string_lossy() == "app.wasm" {
                assert_eq!(e.header().mode().unwrap() & 0o7777, 0o755);
                let mut data = Vec::new();
                std::io::Read::read_to_end(&mut e, &mut data).unwrap();
                assert_eq!(data, m);
                found = true;
            }
        }
        assert!(found);
    }

    #[test]
    fn artifact_has_wasm_media_types() {
        assert_eq!(WASM_CONFIG, "application/vnd.wasm.config.v0+json");
        assert_eq!(WASM_LAYER, "application/wasm");
        assert_eq!(
            WASM_COMPONENT_LAYER,
            "application/vnd.bytecodealliance.wasm.component.layer.v0+wasm"
        );
        for (module, media_type) in [
            (exit_code(3).unwrap(), WASM_LAYER),
            (component().unwrap(), WASM_COMPONENT_LAYER),
        ] {
            let a = artifact(&module, media_type).unwrap();
            let manifest: serde_json::Value = serde_json::from_slice(&a.manifest.data).unwrap();
            assert_eq!(manifest["mediaType"], crate::oci::OCI_MANIFEST);
            assert_eq!(manifest["config"]["mediaType"], WASM_CONFIG);
            assert_eq!(manifest["config"]["digest"], a.id());
            let layer = &manifest["layers"][0];
            assert_eq!(layer["mediaType"], media_type);
            assert_eq!(layer["digest"], crate::sha256_digest(&module));
            assert_eq!(layer["size"], module.len());
            assert_eq!(
                layer["annotations"]["org.opencontainers.image.title"],
                ARTIFACT_TITLE
            );
            assert_eq!(a.layers.len(), 1);
            assert_eq!(a.layers[0].blob, module);
        }
    }

    #[test]
    fn pushed_image_refs() {
        let p = PushedImage {
            reference: "127.0.0.1:5000/e2e/wasm-hello:compat".into(),
            manifest_digest: "sha256:aa".into(),
            config_digest: "sha256:bb".into(),
        };
        assert_eq!(p.by_digest(), "127.0.0.1:5000/e2e/wasm-hello@sha256:aa");
        assert!(p.is_ref("sha256:bb"));
        assert!(p.is_ref("127.0.0.1:5000/e2e/wasm-hello@sha256:aa"));
        assert!(!p.is_ref("sha256:aa"));
        assert!(!p.is_ref(""));
    }
}
