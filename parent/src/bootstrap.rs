//! The bootstrap: this executable shipping itself through a command to a target where nothing
//! is installed but a POSIX shell (Mitogen's first stage and `BootstrapProtocol`).
//!
//! The method's command runs `sh -c <STAGE1>`. The two sides talk in lines, each marker 8 bytes
//! with its newline so no password prompt or banner can be taken for one:
//!
//! ```text
//! stage 1                                   parent
//! MITO000 <uname -s> <uname -m> <gzip 0|1> [glibc <x.y>] [musl]
//!                                           <mode> <size> <gzip 0|1> <sha256>
//!                                           (the executable that fits; gzip: how it is sent)
//!                                           or an empty line: none fits (stage 1 exits)
//!   (a whole, executable copy in the usual place: run it; else find a private place to run from)
//! MITO001 1, then exec of the cached copy   (mode 0: use the cache; 1: no cache; 2: replace it;
//!                                            3 0 0 <path>: run <path>, already on the target)
//! MITO001 0
//!                                           <n>, then exactly n bytes (gzip-compressed when
//!                                            the answer said 1: the target has gzip, and
//!                                            the method's link is not this machine's pipe)
//! MITO002, then exec of the new copy
//! MITO009 <why>, then exit                  (no private executable place, a failed write)
//! ```
//!
//! After `MITO001 1` or `MITO002` the framed protocol runs on the same stdin and stdout; stage 1
//! never reads past the bytes it was told of (`read` takes a line byte by byte, `head -c n`
//! reads at most `n`), and the parent sends nothing more until it sees the marker. The cache is
//! `<dir>/<sha256>`: a copy is written to a temporary name, its size checked, and linked into
//! place unless another parent's copy got there first (then that one is used; `mv` only where
//! the file system has no hard links), so two parents bootstrapping the same account at once
//! both run one good copy, and neither replaces the file the other runs from.

use std::ffi::OsString;
use std::io::Write;
use std::os::fd::BorrowedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use mitogen_core::sys;
use mitogen_core::{Error, Mutex, Result, StreamErrorKind};

use crate::io::{self, check, eof, wait};
use crate::prompt::PromptReader;
use crate::target::{Needs, Target};

/// Stage 1, run as `sh -c STAGE1 mitogen-stage1`. POSIX shell only (dash, bash, busybox sh),
/// and the tools every POSIX system has: `id`, `uname`, `ls`, `mkdir`, `chmod`, `rm`, `mv`,
/// `ln`, `head`, `cat` (and `gzip` and `getconf` when there are). About 2 KiB, so every method's command
/// line stays short. One line, and every variable written `${name}`: `sudo -i` hands its
/// command to a login shell with every character but `$` escaped, joining lines at escaped
/// newlines and expanding `$name` (but not `${name}`) before stage 1 runs.
///
/// What it runs is never a file another account could have written (OpenSSH's `StrictModes`
/// for keys): `y <dir>` passes only when every directory from `/` down to `<dir>`, both as
/// named and with symbolic links resolved, is owned by root or the account and writable by
/// neither its group nor others (unless sticky and root's, as `/tmp`: then no one else can
/// rename or remove what is in it); `y <dir> <file>` (`z <path>`) also needs the file to be a
/// regular file of the account's, mode 0700 or stricter, without an ACL, of the size expected.
/// Each refusal is reported as `MITO008 <uid> <ls -ldn line>`; a refused place is skipped, a
/// refused file in a private place is replaced by a fresh copy and never run.
pub(crate) const STAGE1: &str = concat!(
    // No HOME (`env -i`, `lxc-attach --clear-env`): the account's, from its passwd entry.
    "umask 077;set -f;[ \"${HOME}\" ]||eval \"HOME=~$(id -un)\";case ${HOME} in /*);;*)HOME=;;esac;",
    "c=${XDG_CACHE_HOME:-${HOME:+${HOME}/.cache}};c=${c:+${c}/mitogen};",
    // y <dir> [<file>]: the directory is private (every component, as named and, when one is a
    // symlink, as resolved) and the file in it, if named, is a whole copy that may run. One
    // `ls`, no fork on the warm path; a refusal is reported with the account's uid.
    "y(){ Y=${1};F=${2:+${Y}/${2}};k=0;[ \"${F}\" ]&&k=2;case ${Y} in /*);;*)return 1;;esac;set -- ${F:+\"${F}\"};q=${Y};p=;",
    "while [ \"${q}\" ];do [ -h \"${q}\" ]&&p=1;set -- \"${@}\" \"${q}\";q=${q%/*};done;",
    "[ \"${p}\" ]&&{ p=$(cd -P \"${Y}\"&&pwd -P)||return;while [ \"${p}\" ];do set -- \"${@}\" \"${p}\";p=${p%/*};done;};",
    "LC_ALL=C ls -ldn / \"${@}\" 2>/dev/null|{ while read -r m l o r;do n=/${r#* /};case ${m} in l*)[ \"${n%% -> *}\" = \"${F}\" ]&&b;;",
    "d????[!w]??[!w]*)[ \"${o}\" = 0 ]||[ -O \"${n}\" ]||b;;d????????[tT]*)[ \"${o}\" = 0 ]||b;;",
    "-???------|-???------.)[ -O \"${n}\" ]||b;set -- ${r};[ \"${2}\" = \"${S}\" ]&&[ ${k} = 2 ]&&k=0;;",
    "*)b;;esac;done;exit ${k};};};",
    "b(){ echo \"MITO008 $(id -u) ${m} ${l} ${o} ${r}\";k=1;};",
    "z(){ y \"${1%/*}\" \"${1##*/}\";};",
    "command -v gzip>/dev/null&&g=1||g=0;",
    // The C library: glibc's version (getconf, also where PATH leaves it out), musl's loader.
    "s=$(uname -sm);l=$(PATH=${PATH}:/usr/bin:/bin getconf GNU_LIBC_VERSION 2>/dev/null);[ -e /lib/ld-musl-${s#* }.so.1 ]&&l=\"${l} musl\";",
    "echo \"MITO000 ${s} ${g} ${l}\";",
    // An empty answer: no executable fits; nothing was written.
    "read C S Z H;[ \"${H}\" ]||exit 1;x=\"${c}/${H}\";a=;w=;[ \"${C}\" = 3 ]&&{ x=${H};w=1;};",
    // The warm path: the usual place is private and holds a whole copy that may run (`-x` is
    // false on a noexec mount), so nothing is probed.
    "[ \"${C}\" = 0 ]&&[ ! -h \"${c}\" ]&&[ -O \"${c}\" ]&&[ -x \"${x}\" ]&&y \"${c}\" \"${H}\"&&w=1;",
    "[ \"${w}\" ]||{ u=$(id -u);f=;T=;",
    "for d in ${c:+\"${c}\"} \"/dev/shm/mitogen-${u}\" \"${TMPDIR:-/tmp}/mitogen-${u}\";do ",
    "mkdir -p \"${d}\"&&[ ! -h \"${d}\" ]&&{ [ -O \"${d}\" ]||{ echo \"MITO008 ${u} $(LC_ALL=C ls -ldn \"${d}\")\";false;};}&&y \"${d}\"&&",
    "t=\"${d}/.t${$}\"&&echo>\"${t}\"&&chmod 700 \"${t}\"&&\"${t}\"&&{ rm -f \"${t}\";f=${d};break;};",
    "rm -f \"${t}\";T=\"${T} ${d}\";",
    "done;",
    "[ \"${f}\" ]||{ echo \"MITO009 nowhere to execute from:${T}\";exit 1;};",
    "x=\"${f}/${H}\";",
    "[ \"${C}\" = 1 ]&&{ x=\"${f}/.n${$}\";a=--mitogen-unlink;};",
    "[ \"${C}\" = 2 ]&&rm -f \"${x}\";",
    "[ \"${C}\" = 0 ]&&z \"${x}\"&&w=1;",
    "[ \"${w}\" ]||{ echo MITO001 0;",
    "read n;t=\"${x}.${$}\";D=cat;[ \"${Z}\" = 1 ]&&D='gzip -dc';",
    "head -c \"${n}\"|${D}>\"${t}\";",
    "z \"${t}\"&&chmod 700 \"${t}\"&&{ ln \"${t}\" \"${x}\" 2>/dev/null||z \"${x}\"||mv -f \"${t}\" \"${x}\";}||{ rm -f \"${t}\";echo \"MITO009 cannot write ${x}\";exit 1;};",
    "rm -f \"${t}\";echo MITO002;};};",
    // The script's own arguments are the command prefix (`Options::command_prefix`).
    "[ \"${w}\" ]&&echo MITO001 1;exec \"${@}\" \"${x}\" --mitogen-child ${a}",
);

/// The words that run stage 1: `sh -c STAGE1 mitogen-stage1 [<prefix>...]`, appended to a
/// method's command; stage 1 runs the executable behind `prefix` (`Options::command_prefix`).
pub(crate) fn stage1_argv(prefix: &[OsString]) -> Vec<OsString> {
    let mut argv: Vec<OsString> = ["sh", "-c", STAGE1, "mitogen-stage1"].into_iter().map(OsString::from).collect();
    argv.extend(prefix.iter().cloned());
    argv
}

/// The bytes shipped for an executable (see [`ship_debug_info`]): its file without the debug
/// sections (the file itself when it has none), or the whole file; their size and sha256 (the
/// name of the copy in a target's cache) and, made once, their gzip.
#[derive(Debug)]
struct Image {
    size: u64,
    sha256: String,
    /// Kept from the one read that hashed them: a file rebuilt in place meanwhile cannot make
    /// the bytes shipped differ from the sha256 named.
    bytes: Arc<Vec<u8>>,
    gzip: OnceLock<Arc<Vec<u8>>>,
}

impl Image {
    fn new(bytes: Vec<u8>) -> Image {
        let sha256 = mitogen_core::bytes_digest(&bytes);
        Image { size: bytes.len() as u64, sha256, bytes: Arc::new(bytes), gzip: OnceLock::new() }
    }

    /// The bytes, gzip-compressed at level 1: several times faster than the default level for
    /// a few percent more bytes, and the first connect waits for it.
    fn gzip(&self) -> Result<Arc<Vec<u8>>> {
        if let Some(g) = self.gzip.get() {
            return Ok(g.clone());
        }
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let gz = enc
            .write_all(&self.bytes)
            .and_then(|_| enc.finish())
            .map_err(|e| Error::stream_io("cannot compress", e))?;
        Ok(self.gzip.get_or_init(|| Arc::new(gz)).clone())
    }
}

/// Whether targets get whole executables, debug sections included ([`ship_debug_info`]).
static SHIP_DEBUG_INFO: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Ship executables whole, with their debug sections (`true`), or without them (`false`, the
/// default): `mitogen::Router::ship_debug_info` says what that changes. For the connects this
/// process makes from now on; a context it starts ships by its own setting (off unless it calls
/// this too), whatever image it was started from.
pub fn ship_debug_info(keep: bool) {
    SHIP_DEBUG_INFO.store(keep, std::sync::atomic::Ordering::Relaxed);
}

/// The size and sha256 of what a target gets for the executable at `path` (with
/// [`ship_debug_info`] as it is now): the name of its copy in a target's cache, and what the
/// child started from it reports. Without debug info that is the file without its debug
/// sections, so it differs from the file's own digest when the file has them.
///
/// # Errors
/// [`StreamError`](mitogen_core::StreamError) if the file cannot be read or is not an ELF
/// executable of a machine this library knows.
pub fn shipped_digest(path: &Path) -> Result<(u64, String)> {
    let exe = Executable::load(path)?;
    let image = exe.image()?;
    Ok((image.size, image.sha256.clone()))
}

/// An executable that can be shipped: its file, what it needs of a target, and its images.
#[derive(Debug)]
pub(crate) struct Executable {
    path: PathBuf,
    /// What it needs of a target, read from the file.
    needs: Needs,
    /// The file without its debug sections, or the file itself when it has none.
    stripped: Image,
    /// Whether the file has debug sections: `whole` differs from `stripped`.
    has_debug: bool,
    /// The whole file, read when first shipped with [`ship_debug_info`] on.
    whole: OnceLock<Image>,
}

impl Executable {
    fn load(path: &Path) -> Result<Executable> {
        // One read: what it needs, and the image shipped by default.
        let data = std::fs::read(path).map_err(|e| Self::unreadable(path, e))?;
        let needs = Needs::of_elf(&data).map_err(|e| Error::stream(format!("{}: {e}", path.display())))?;
        let stripped = crate::strip::without_debug_info(&data);
        let has_debug = stripped.is_some();
        let stripped = Image::new(stripped.unwrap_or(data));
        Ok(Executable { path: path.to_owned(), needs, stripped, has_debug, whole: OnceLock::new() })
    }

    fn unreadable(path: &Path, e: std::io::Error) -> Error {
        Error::stream_io(format!("cannot read executable {}", path.display()), e)
    }

    /// What a target gets: the stripped image, or the whole file if [`ship_debug_info`] is on.
    fn image(&self) -> Result<&Image> {
        if SHIP_DEBUG_INFO.load(std::sync::atomic::Ordering::Relaxed) {
            self.whole()
        } else {
            Ok(&self.stripped)
        }
    }

    /// The whole file, debug sections included.
    fn whole(&self) -> Result<&Image> {
        if !self.has_debug {
            return Ok(&self.stripped);
        }
        if let Some(whole) = self.whole.get() {
            return Ok(whole);
        }
        let data = std::fs::read(&self.path).map_err(|e| Self::unreadable(&self.path, e))?;
        Ok(self.whole.get_or_init(|| Image::new(data)))
    }
}

/// This process's own executable, hashed once (and compressed once, when first shipped).
fn own_executable() -> Result<Arc<Executable>> {
    static OWN: OnceLock<Arc<Executable>> = OnceLock::new();
    if let Some(e) = OWN.get() {
        return Ok(e.clone());
    }
    let e = Arc::new(Executable::load(Path::new("/proc/self/exe"))?);
    Ok(OWN.get_or_init(|| e).clone())
}

/// Executables registered for other targets ([`add_executable`]), in the order given.
fn registry() -> &'static Mutex<Vec<Arc<Executable>>> {
    static REGISTRY: Mutex<Vec<Arc<Executable>>> = Mutex::new(Vec::new());
    &REGISTRY
}

/// Ship `path` to targets this executable does not fit: this program built for another
/// target (`cargo build --target x86_64-unknown-linux-musl` gives one that fits any Linux
/// x86_64). What it fits (its machine, its C library and version) is read from the file; a
/// target gets this program's own executable if that fits, else the first registered one
/// that does, else one found in cargo's layout beside it: `target/<triple>/<profile>/<program>` of each `cargo build --target <triple>`.
///
/// # Errors
/// [`StreamError`](mitogen_core::StreamError) if the file cannot be read or is not an ELF
/// executable of a machine this library knows.
pub fn add_executable(path: &Path) -> Result<()> {
    register(Arc::new(Executable::load(path)?));
    Ok(())
}

/// Add `exe` to the registry, in place of an entry with the same sha256.
fn register(exe: Arc<Executable>) {
    log::debug!("registered {} ({})", exe.path.display(), exe.needs);
    let mut reg = registry().lock();
    reg.retain(|e| e.stripped.sha256 != exe.stripped.sha256);
    reg.push(exe);
}

/// The builds of this program in cargo's layout, found without registering them: for a program
/// running from `<target>/<profile>/prog` (or `<target>/<profile>/examples/prog`), every
/// `<target>/<triple>/<profile>/prog` that `cargo build --target <triple>` made. Read once.
fn discovered() -> &'static [Arc<Executable>] {
    static FOUND: OnceLock<Vec<Arc<Executable>>> = OnceLock::new();
    FOUND.get_or_init(|| {
        let Ok(own) = std::fs::read_link("/proc/self/exe") else { return Vec::new() };
        let mut found = Vec::new();
        for base in own.ancestors().skip(2).take(2) {
            let (Ok(rel), Ok(entries)) = (own.strip_prefix(base), std::fs::read_dir(base)) else { continue };
            for entry in entries.flatten() {
                let triple = entry.file_name().to_string_lossy().into_owned();
                let candidate = entry.path().join(rel);
                if triple.matches('-').count() >= 2 && candidate.is_file() {
                    match Executable::load(&candidate) {
                        Ok(exe) => found.push(Arc::new(exe)),
                        Err(e) => log::debug!("not a build of this program: {e}"),
                    }
                }
            }
        }
        found
    })
}

/// The executable to ship to `target`: this one if it fits, else the first registered or
/// discovered one that does; a [`NoExecutable`](StreamErrorKind::NoExecutable) error naming
/// the target, what each candidate needs, and the command that builds one that fits (none
/// for a system other than Linux, where contexts do not run).
///
/// A child context (an intermediate, `via=`) that has none asks its parent, which answers with
/// the first that fits of its own candidates (asking its own parent in turn): see
/// [`serve_executables`]. The answer is kept in this process's cache and registry, so the link
/// above carries it once for every later child.
fn executable_for(target: &Target, deadline: Instant) -> Result<Arc<Executable>> {
    let no_executable =
        |reason: String| Err(Error::stream_kind(StreamErrorKind::NoExecutable { target: target.to_string() }, reason));
    if target.os != "Linux" {
        return no_executable(format!(
            "the target runs {} on {} (`uname -sm`): contexts of this library run on Linux only, \
             and no build of this program can start there",
            target.os, target.machine
        ));
    }
    let own = own_executable()?;
    if own.needs.fit(target) {
        return Ok(own);
    }
    let registered = registry().lock().clone();
    let candidates = registered.iter().chain(discovered());
    if let Some(exe) = candidates.clone().find(|e| e.needs.fit(target)) {
        log::debug!("{target}: shipping {} ({})", exe.path.display(), exe.needs);
        return Ok(exe.clone());
    }
    let own_path = std::fs::read_link("/proc/self/exe").unwrap_or_else(|_| own.path.clone());
    let known: Vec<String> = std::iter::once((own_path.as_path(), &own.needs))
        .chain(candidates.map(|e| (e.path.as_path(), &e.needs)))
        .map(|(path, needs)| format!("{} needs {needs}", path.display()))
        .collect();
    let known = known.join("; ");
    if let Some(ec) = mitogen_core::ExternalContext::current() {
        return match fetch_from_parent(&ec, target, deadline) {
            Ok(exe) => Ok(exe),
            Err(Fetch::NoneFits(reason)) => no_executable(format!(
                "no executable of this program fits the target ({target}) in this context ({known}), \
                 nor in its parent, context {}: {reason}",
                ec.parent().context_id()
            )),
            Err(Fetch::Failed(e)) => Err(e.prefixed(&format!(
                "no executable of this program fits the target ({target}) in this context ({known}), \
                 and asking its parent failed"
            ))),
        };
    }
    let Some(machine) = target.known_machine() else {
        return no_executable(format!(
            "no executable of this program fits the target ({target}): {known}. This library knows \
             no Rust target for a Linux `{}` machine (`uname -m`): build this program for it if \
             `rustc --print target-list` has one, and register it with Router::add_executable",
            target.machine
        ));
    };
    let triple = machine.triple;
    no_executable(format!(
        "no executable of this program fits the target ({target}): {known}. Build one that does with \
         `cargo build --release --target {triple}` (static: it fits any Linux {}), and register \
         it with Router::add_executable, or leave it at target/{triple}/<profile>/ beside this \
         program's own build, where it is found",
        target.machine,
    ))
}

/// Why [`fetch_from_parent`] got no executable.
enum Fetch {
    /// The parent has none that fits either: its reason.
    NoneFits(String),
    /// The request or its answer failed.
    Failed(Error),
}

/// What a child asks its parent for on [`GET_MODULE`](mitogen_core::GET_MODULE): an executable
/// for `target`, within `timeout_ms`.
#[derive(serde::Serialize, serde::Deserialize)]
struct ExecutableRequest {
    target: Target,
    timeout_ms: u64,
}

/// The parent's answer: the sha256 of the executable and its bytes gzip-compressed, or why none
/// fits (the text of the parent's `NoExecutable` error).
type ExecutableAnswer = std::result::Result<(String, mitogen_core::Blob), String>;

/// Ask this context's parent for an executable that fits `target`, keep it in this process's
/// cache (named by its sha256, checked against it) and registry, and return it.
fn fetch_from_parent(
    ec: &mitogen_core::ExternalContext,
    target: &Target,
    deadline: Instant,
) -> std::result::Result<Arc<Executable>, Fetch> {
    let left = deadline.saturating_duration_since(Instant::now());
    let request = ExecutableRequest { target: target.clone(), timeout_ms: left.as_millis() as u64 };
    let msg = mitogen_core::Message::pickled(&request, mitogen_core::GET_MODULE).map_err(Fetch::Failed)?;
    let answer: ExecutableAnswer = ec.parent().send_await(msg, Some(left)).map_err(Fetch::Failed)?;
    let (sha256, gz) = answer.map_err(Fetch::NoneFits)?;
    log::debug!("{target}: the parent sent an executable ({} bytes compressed, sha256 {sha256})", gz.0.len());
    let failed = |what: &str, e: std::io::Error| Fetch::Failed(Error::stream_io(what.to_owned(), e));
    let mut data = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&gz.0[..]), &mut data)
        .map_err(|e| failed("the parent's executable does not decompress", e))?;
    let actual = mitogen_core::bytes_digest(&data);
    if actual != sha256 {
        return Err(Fetch::Failed(Error::stream(format!(
            "the parent's executable is not the one it named (sha256 {actual}, expected {sha256})"
        ))));
    }
    let dir = fetched_dir().map_err(|e| failed("no private directory for executables", e))?;
    let path = dir.join(&sha256);
    if !path.is_file() {
        let tmp = dir.join(format!(".{sha256}.{}", std::process::id()));
        std::fs::write(&tmp, &data)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|e| failed(&format!("cannot write {}", path.display()), e))?;
    }
    // The same checks as any entry: read back, named by its sha256, and what it needs.
    let exe = Executable::load(&path).map_err(Fetch::Failed)?;
    // The parent sent the image its own setting chose: stripped, or whole (ship_debug_info).
    let image = if exe.stripped.sha256 == sha256 { &exe.stripped } else { exe.whole().map_err(Fetch::Failed)? };
    if image.sha256 != sha256 || !exe.needs.fit(target) {
        let _ = std::fs::remove_file(&path);
        return Err(Fetch::Failed(Error::stream(format!(
            "{}: not the executable the parent sent for {target} (sha256 {}, needs {})",
            path.display(),
            image.sha256,
            exe.needs
        ))));
    }
    let _ = image.gzip.set(Arc::new(gz.0));
    let exe = Arc::new(exe);
    register(exe.clone());
    Ok(exe)
}

/// Where a child keeps the executables its parent sent: `$TMPDIR/mitogen-<uid>/executables`,
/// made private to this account (it is read and shipped from there, never run).
fn fetched_dir() -> std::io::Result<PathBuf> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    let uid = sys::uid();
    let dir = sys::temp_dir().join(format!("mitogen-{uid}")).join("executables");
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&dir)?;
    for d in [dir.parent().unwrap_or(&dir), &dir] {
        let m = std::fs::symlink_metadata(d)?;
        if !m.is_dir() || m.uid() != uid || m.permissions().mode() & 0o077 != 0 {
            return Err(std::io::Error::other(format!("{} is not a private directory of uid {uid}", d.display())));
        }
    }
    Ok(dir)
}

/// Answer children's requests for an executable that fits a target they cannot serve
/// ([`GET_MODULE`](mitogen_core::GET_MODULE), Mitogen's module responder for executables): the
/// first that fits of this process's own, registered and discovered executables, else, in a
/// child, its own parent's answer. Each request is answered from a thread of its own (reading
/// and compressing tens of MiB, or waiting for the parent, is not the broker's work). Installed
/// once per router, by every context that starts children through `via=`.
pub(crate) fn serve_executables(router: &mitogen_core::Router) {
    if router.has_handler(mitogen_core::GET_MODULE) {
        return;
    }
    let r = router.clone();
    let serve = move |msg: mitogen_core::Message| {
        if msg.is_dead() {
            return;
        }
        let r = r.clone();
        let answer = move || {
            let answer: ExecutableAnswer = match msg.unpickle::<ExecutableRequest>() {
                Err(e) => Err(format!("a request this context cannot read: {e}")),
                Ok(request) => {
                    let deadline = Instant::now() + Duration::from_millis(request.timeout_ms);
                    executable_for(&request.target, deadline)
                        .and_then(|exe| {
                            let image = exe.image()?;
                            Ok((image.sha256.clone(), mitogen_core::Blob(image.gzip()?.to_vec())))
                        })
                        .map_err(|e| e.to_string())
                }
            };
            if let Err(e) = msg.reply(&answer, Some(&r)) {
                log::error!("cannot answer a request for an executable from context {}: {e}", msg.src_id);
            }
        };
        if let Err(e) = sys::thread::spawn("mitogen-exe", 1 << 20, answer) {
            log::error!("cannot answer a request for an executable: {e}");
        }
    };
    let policy: mitogen_core::Policy = Arc::new(crate::routes::is_immediate_child);
    let options = mitogen_core::HandlerOptions {
        handle: Some(mitogen_core::GET_MODULE),
        policy: Some(policy),
        ..Default::default()
    };
    let _ = router.add_handler(serve, options); // another thread may have won the race
}

/// How stage 1 is to treat the cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CacheMode {
    /// Use a cached copy if there is one; ship and cache one otherwise.
    Use = 0,
    /// Ship a copy that the child deletes once running (the `no_cache` option).
    None = 1,
    /// Replace the cached copy (it failed to start).
    Replace = 2,
}

/// What stage 1 runs: this executable (shipped or cached, per [`CacheMode`]) or a path already
/// on the target (`Options::executable`, Mitogen's `python_path`), which ships nothing.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Run<'a> {
    /// The executable for the target's machine.
    Shipped {
        /// How stage 1 treats the cache.
        mode: CacheMode,
        /// gzip-compressed, if the target has gzip (else as it is).
        compress: bool,
    },
    /// This file on the target.
    Given(&'a Path),
}

/// What a finished bootstrap did.
#[derive(Debug)]
pub(crate) struct Shipped {
    /// The executable's sha256, which the child must report (`None`: a given path).
    pub(crate) sha256: Option<String>,
    /// Whether a cached copy was used (no executable bytes crossed).
    pub(crate) cached: bool,
    /// Executable bytes sent (compressed when the target has gzip).
    pub(crate) bytes_sent: usize,
}

/// The parent's side of stage 1, reading the child's stdout on `fd` and writing its stdin on
/// `wfd` (the same descriptor for a socket or a PTY), until the framed protocol may start.
/// Lines on `fd` that are not markers (banners) are passed to `other`; meanwhile `side` reads
/// the command's stderr or terminal, answering prompts. An error `side`'s prompts report (a
/// wrong password, an unknown host key) wins over the end of output it causes.
pub(crate) fn run(
    fd: BorrowedFd<'_>,
    wfd: BorrowedFd<'_>,
    side: &mut PromptReader<'_>,
    what: Run<'_>,
    deadline: Instant,
    cancelled: &dyn Fn() -> bool,
    other: &mut dyn FnMut(&str),
) -> Result<Shipped> {
    let mut lines = LineReader { fd, wfd, buf: Vec::new(), side, cancelled, deadline, refused: Vec::new() };
    let result = ship(&mut lines, wfd, what, other);
    if matches!(result.as_ref().map_err(Error::stream_kind_of), Err(Some(StreamErrorKind::Eof { .. }))) {
        // The command ended: what it said last on stderr may explain why.
        lines.side.drain(Instant::now() + Duration::from_secs(2))?;
    }
    result
}

fn ship(
    lines: &mut LineReader<'_, '_>,
    wfd: BorrowedFd<'_>,
    what: Run<'_>,
    other: &mut dyn FnMut(&str),
) -> Result<Shipped> {
    let hello = lines.marker("MITO000", other)?;
    let target =
        Target::parse(&hello).ok_or_else(|| Error::stream(format!("stage 1 sent a malformed report: {hello:?}")))?;
    let (mode, gzip) = match what {
        Run::Given(path) => {
            let path = path.to_str().filter(|p| !p.contains('\n')).ok_or_else(|| {
                Error::general(format!("executable {path:?} must be UTF-8 without a newline to run on a target"))
            })?;
            send(lines, wfd, other, format!("3 0 0 {path}\n").as_bytes())?;
            lines.marker("MITO001", other)?;
            return Ok(Shipped { sha256: None, cached: true, bytes_sent: 0 });
        }
        Run::Shipped { mode, compress } => (mode, compress && target.gzip),
    };
    let exe = match executable_for(&target, lines.deadline) {
        Ok(exe) => exe,
        Err(e) => {
            // Stage 1 exits at an empty answer, having written nothing.
            let _ = send(lines, wfd, other, b"\n");
            return Err(e);
        }
    };
    let image = exe.image()?;
    let header = format!("{} {} {} {}\n", mode as u8, image.size, u8::from(gzip), image.sha256);
    send(lines, wfd, other, header.as_bytes())?;
    let have = lines.marker("MITO001", other)?;
    if have.trim() == "1" {
        return Ok(Shipped { sha256: Some(image.sha256.clone()), cached: true, bytes_sent: 0 });
    }
    let data = if gzip { image.gzip()? } else { image.bytes.clone() };
    send(lines, wfd, other, format!("{}\n", data.len()).as_bytes())?;
    send(lines, wfd, other, &data)?;
    lines.marker("MITO002", other)?;
    Ok(Shipped { sha256: Some(image.sha256.clone()), cached: false, bytes_sent: data.len() })
}

/// Send `data` to stage 1. It may stop reading and say why (a full disk: `MITO009 cannot
/// write`) while the executable is still being sent: read what it said before calling it the
/// end of its output.
fn send(lines: &mut LineReader<'_, '_>, wfd: BorrowedFd<'_>, other: &mut dyn FnMut(&str), data: &[u8]) -> Result<()> {
    match io::send(wfd, data, lines.deadline, lines.cancelled) {
        Err(e) if matches!(e.stream_kind_of(), Some(StreamErrorKind::Eof { .. })) => {
            // No marker comes any more: this returns MITO009's error, or the end of output.
            lines.marker("MITO\u{0}", other).and(Err(e))
        }
        other => other,
    }
}

/// Reads lines from a descriptor, byte by byte past the last marker (nothing after it may be
/// consumed: it belongs to the framed protocol), while the command's stderr is read beside it.
///
/// Whatever the command writes, the reader keeps to its deadline (checked after every byte, so
/// a command flooding its output cannot outrun it) and to bounded memory: a line longer than
/// [`MAX_LINE`] is cut there and passed on in pieces.
struct LineReader<'a, 'b> {
    fd: BorrowedFd<'a>,
    wfd: BorrowedFd<'a>,
    buf: Vec<u8>,
    side: &'a mut PromptReader<'b>,
    cancelled: &'a dyn Fn() -> bool,
    deadline: Instant,
    /// What stage 1 refused to run (`MITO008`), described, each once.
    refused: Vec<String>,
}

/// The longest line of the command's output kept whole; longer ones are cut into pieces.
const MAX_LINE: usize = 4096;

/// Describe what stage 1 refused, from its `MITO008 <uid> <ls -ldn line>`: the path, and what
/// is wrong with it for the account `<uid>`.
fn describe_refusal(report: &str) -> String {
    // `<uid> <mode> <links> <owner> <group> <size> <month> <day> <time or year> <path>`.
    let mut rest = report.trim_start();
    let mut fields = Vec::new();
    while fields.len() < 9 {
        let Some((field, tail)) = rest.split_once(char::is_whitespace) else { break };
        fields.push(field);
        rest = tail.trim_start();
    }
    let [uid, mode, _, owner, group, ..] = fields[..] else { return format!("refused: {report}") };
    // A symlink is listed as `<path> -> <target>`.
    let path = if mode.starts_with('l') { rest.split(" -> ").next().unwrap_or(rest) } else { rest };
    let bit = |i: usize, c: char| mode.chars().nth(i) == Some(c);
    let mut why = Vec::new();
    match mode.chars().next() {
        Some('d') => {
            let sticky = bit(9, 't') || bit(9, 'T');
            if sticky && owner != "0" && (bit(5, 'w') || bit(8, 'w')) {
                why.push(format!("sticky and writable by others, but owned by uid {owner}, not root"));
            } else if !sticky && bit(8, 'w') {
                why.push("writable by everyone".to_owned());
            } else if !sticky && bit(5, 'w') {
                why.push(format!("writable by its group (gid {group})"));
            }
            if why.is_empty() || (owner != uid && owner != "0" && !sticky) {
                why.push(format!("owned by uid {owner}, not the account (uid {uid})"));
            }
        }
        Some('-') => {
            if mode.len() > 10 && !mode.ends_with('.') || mode.get(4..10) != Some("------") {
                why.push(format!("mode {mode} lets others than its owner at it (0700 or stricter needed)"));
            }
            if owner != uid {
                why.push(format!("owned by uid {owner}, not the account (uid {uid})"));
            }
        }
        Some('l') => why.push("a symbolic link".to_owned()),
        _ => why.push(format!("not a regular file ({mode})")),
    }
    format!("refused {path}: {}", why.join(", "))
}

impl LineReader<'_, '_> {
    /// Wait for a line starting with `marker`; returns the rest of it. `MITO009` is stage 1's
    /// own failure; end of output is [`StreamErrorKind::Eof`] (the caller adds the lines).
    fn marker(&mut self, marker: &str, other: &mut dyn FnMut(&str)) -> Result<String> {
        loop {
            let line = self.line()?;
            let line = line.trim_end_matches('\r');
            if let Some(rest) = line.strip_prefix(marker) {
                return Ok(rest.trim_start().to_owned());
            }
            if let Some(report) = line.strip_prefix("MITO008") {
                let refusal = describe_refusal(report);
                if !self.refused.contains(&refusal) {
                    log::warn!("stage 1 {refusal}");
                    other(&refusal);
                    self.refused.push(refusal);
                }
                continue;
            }
            if let Some(why) = line.strip_prefix("MITO009") {
                other(line);
                let mut text = format!("bootstrap failed on the target: {}", why.trim());
                for refusal in &self.refused {
                    text.push_str("; ");
                    text.push_str(refusal);
                }
                return Err(Error::stream(text));
            }
            other(line);
            self.side.data_line(line)?;
        }
    }

    fn line(&mut self) -> Result<String> {
        loop {
            // One byte at a time: a read must never take bytes past the marker's newline.
            let mut byte = [0u8; 1];
            match sys::read(self.fd, &mut byte) {
                Ok(0) => return self.eof(),
                Ok(_) if byte[0] == b'\n' || self.buf.len() == MAX_LINE => {
                    let line = String::from_utf8_lossy(&self.buf).into_owned();
                    self.buf.clear();
                    if byte[0] != b'\n' {
                        self.buf.push(byte[0]);
                    }
                    return Ok(line);
                }
                Ok(_) => {
                    self.buf.push(byte[0]);
                    // A flood never blocks: the deadline is kept here too.
                    check(self.deadline, self.cancelled)?;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if !self.buf.is_empty() {
                        let text = String::from_utf8_lossy(&self.buf).into_owned();
                        self.side.data_partial(&text, self.wfd, self.cancelled)?;
                    }
                    self.wait()?
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if sys::is_disconnection(&e) => return self.eof(),
                Err(e) => return Err(Error::stream_io("bootstrap read failed", e)),
            }
        }
    }

    /// The end of the data channel: its last, unterminated words may still be a failure.
    fn eof(&mut self) -> Result<String> {
        if !self.buf.is_empty() {
            let text = String::from_utf8_lossy(&std::mem::take(&mut self.buf)).into_owned();
            self.side.data_line(&text)?;
        }
        Err(eof())
    }

    /// Wait for stdout, reading stderr (and answering its prompts) meanwhile.
    fn wait(&mut self) -> Result<()> {
        loop {
            let mut fds = vec![sys::readable(self.fd)];
            fds.extend(self.side.fd().map(sys::readable));
            wait(&mut fds, self.deadline, self.cancelled)?;
            let side_ready = fds.get(1).is_some_and(|f| f.revents().is_some_and(|r| !r.is_empty()));
            let data_ready = fds[0].revents().is_some_and(|r| !r.is_empty());
            if side_ready {
                self.side.read_ready()?;
            }
            if data_ready {
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_name_the_path_and_what_is_wrong() {
        let cases = [
            (
                "1000 drwxrwxrwx 2 1000 1000 4096 Dec  4 18:42 /home/u/.cache/mitogen",
                "refused /home/u/.cache/mitogen: writable by everyone",
            ),
            (
                "1000 drwxrwxr-x 2 0 50 4096 Dec  4 18:42 /srv/my home",
                "refused /srv/my home: writable by its group (gid 50)",
            ),
            (
                "1000 drwxr-xr-x 2 1001 1001 4096 Dec  4 18:42 /home",
                "refused /home: owned by uid 1001, not the account (uid 1000)",
            ),
            (
                "1000 drwxrwxrwt 2 1001 0 40 Dec  4  2025 /tmp",
                "refused /tmp: sticky and writable by others, but owned by uid 1001, not root",
            ),
            (
                "1000 -rwxrwxrwx 1 1000 1000 9 Dec  4 18:42 /c/abc",
                "refused /c/abc: mode -rwxrwxrwx lets others than its owner at it (0700 or stricter needed)",
            ),
            (
                "1000 -rwx------+ 1 1000 1000 9 Dec  4 18:42 /c/abc",
                "refused /c/abc: mode -rwx------+ lets others than its owner at it (0700 or stricter needed)",
            ),
            (
                "1000 -rwx------ 1 1002 1002 9 Dec  4 18:42 /c/abc",
                "refused /c/abc: owned by uid 1002, not the account (uid 1000)",
            ),
            ("1000 lrwxrwxrwx 1 1000 1000 9 Dec  4 18:42 /c/abc -> /tmp/x", "refused /c/abc: a symbolic link"),
        ];
        for (report, want) in cases {
            assert_eq!(describe_refusal(report), want);
        }
    }

    #[test]
    fn stage1_is_short_one_line_and_safe_from_sudo_i() {
        // (It rides in every method's command line: sudo's, su's `-c` word, ssh's remote command.)
        assert!(STAGE1.len() < 2176, "stage 1 is {} bytes", STAGE1.len());
        assert!(!STAGE1.contains('\n'));
        // `$` may only start `${...}` or `$(...)` (or be the name in `${$}`): sudo -i expands
        // `$name` and `$$` early.
        let b = STAGE1.as_bytes();
        for (i, _) in STAGE1.match_indices('$') {
            assert!(matches!(b[i + 1], b'{' | b'(') || b[i - 1] == b'{', "{}", &STAGE1[i..]);
        }
    }
}
