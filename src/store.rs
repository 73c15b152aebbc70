//! `transform_store` and the leader's side of `transform_lock`: the program's output goes to a
//! temporary file as it comes (splice(2), no copy through userspace), the client is served from
//! that file (sendfile where the connection allows it), and the file is published with a
//! rename, as nginx's proxy_store does, only when everything went right: exit 0, the whole
//! output, a 200. Anything else removes it, so a partial output never appears at the final
//! path; a worker killed meanwhile leaves a `transform-<pid>-*` file that the next worker
//! removes when it starts.

use std::ffi::CString;
use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};

use std::path::PathBuf;
use std::sync::Mutex;

use nginx_sys::{
    ngx_int_t, ngx_path_t, NGX_HTTP_INTERNAL_SERVER_ERROR, NGX_LOG_CRIT, NGX_LOG_ERR, NGX_LOG_WARN,
};

use crate::conf::{Store as StoreConf, TransformConf};
use crate::lock::{self, Claim, State, Ticket};
use crate::log::escape;
use crate::nginx::file::{self, PoolFile};
use crate::nginx::Http;
use crate::os;

/// What the storing request does with its temporary file.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Stage {
    /// Before the commit: the program runs, nothing decided.
    Ready,
    /// The output goes to the file.
    Writing,
    /// The file is removed (not a response to store, or writing it failed): the output goes
    /// straight to the client.
    Dropped,
    /// Published (or, for a lock without store, complete).
    Done,
}

/// A leader's temporary file, where it is published, and its hold on the lock.
pub struct Store {
    file: PoolFile,
    written: u64,
    target: Option<CString>,
    access: u32,
    ticket: Option<Ticket>,
    stage: Stage,
    /// The waiters were told the output is whole (its Content-Length reached).
    shared_whole: bool,
    /// splice(2) into a file is not reported by inotify on this kernel: touch the file for the
    /// waiters after each write.
    touch: bool,
}

/// What the content handler does for a location with a store or a lock.
pub enum Plan {
    /// Run the program (with the store, if there is one).
    Run(Option<Store>),
    /// Another request runs it: wait for its output.
    Follow(lock::Watch),
}

/// Evaluates the store path and the lock key, creates the temporary file and claims the lock.
/// Errors here never fail the request: it runs unstored (logged).
pub fn plan(http: Http, conf: &TransformConf) -> Result<Plan, ngx_int_t> {
    let target = match conf.store {
        StoreConf::On => match file::uri_path(http) {
            Some(p) => Some(p),
            None => return Err(NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t),
        },
        StoreConf::Path(cv) => {
            // SAFETY: compiled by transform_store, alive with the configuration.
            match http.complex_value(unsafe { &*cv }) {
                Some(v) => Some(v.to_vec()),
                None => return Err(NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t),
            }
        }
        _ => None,
    };
    let target = match target {
        Some(path) => match check_path(&path) {
            Ok(c) => Some(c),
            Err(why) => {
                log_error!(
                    NGX_LOG_ERR,
                    http.log(),
                    0,
                    "transform_store path \"{}\" {why}: the output is not stored",
                    escape(&path)
                );
                None
            }
        },
        None => None,
    };
    let key = match conf.lock_key() {
        _ if conf.lock == 0 => None,
        Some(cv) => match http.complex_value(cv) {
            Some(v) => Some(v.to_vec()),
            None => return Err(NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t),
        },
        None => target.as_ref().map(|t| t.as_bytes().to_vec()),
    };
    if target.is_none() && key.is_none() {
        return Ok(Plan::Run(None));
    }
    let access = conf.store_access as u32;
    let file = match file::create_temp(http, conf.temp_path, access.max(0o600)) {
        Ok(f) => f,
        Err(e) => {
            log_error!(
                NGX_LOG_CRIT,
                http.log(),
                os::errno(&e),
                "transform: cannot create a temporary file in transform_temp_path; the output is \
                 neither stored nor shared"
            );
            return Ok(Plan::Run(None));
        }
    };
    let mut ticket = None;
    if let Some(key) = key {
        match lock::claim(conf.lock_zone, &lock::hash(&key), file.name().to_bytes()) {
            Claim::Leader(t) => ticket = Some(t),
            Claim::Follow(watch) => {
                // The pool removes our own temporary file.
                os::unlink_quietly(file.name().to_bytes());
                return Ok(Plan::Follow(watch));
            }
            Claim::Full => log_error!(
                NGX_LOG_WARN,
                http.log(),
                0,
                "transform_lock_zone is full: this request runs its program unshared"
            ),
        }
    }
    Ok(Plan::Run(Some(Store {
        file,
        written: 0,
        target,
        access,
        ticket,
        stage: Stage::Ready,
        shared_whole: false,
        touch: !os::splice_notifies(),
    })))
}

/// A store path must be absolute and free of `.`/`..` components (a value from the request must
/// not lead elsewhere than where the configuration says) and of NUL bytes.
fn check_path(path: &[u8]) -> Result<CString, &'static str> {
    if !path.starts_with(b"/") {
        return Err("is not absolute");
    }
    if path
        .split(|&b| b == b'/')
        .any(|part| part == b"." || part == b"..")
    {
        return Err("has a \".\" or \"..\" component");
    }
    if path.ends_with(b"/") {
        return Err("names a directory");
    }
    CString::new(path).map_err(|_| "contains a NUL byte")
}

impl Store {
    /// The commit: `storable` (a 200 with a body) starts the file with what was read already
    /// (`prefix`) and says so; otherwise the file goes (waiters run their own program).
    pub fn begin(
        &mut self,
        http: Http,
        storable: bool,
        content_type: Option<&[u8]>,
        prefix: &[u8],
    ) -> bool {
        if !storable {
            self.drop_file(State::Refused);
            return false;
        }
        // The state first: the write that follows is what wakes the waiters to read it.
        if let Some(t) = &self.ticket {
            t.streaming(content_type);
        }
        self.stage = Stage::Writing;
        if let Err(e) = os::write_all_at(self.file.fd(), prefix, 0) {
            self.write_failed(http, &e);
            return false;
        }
        self.written = prefix.len() as u64;
        self.notify();
        true
    }

    pub fn file(&self) -> &PoolFile {
        &self.file
    }

    pub fn written(&self) -> u64 {
        self.written
    }

    /// Moves up to `len` bytes from the program's pipe to the file. `Ok(0)` is the pipe's end.
    pub fn append(&mut self, pipe: BorrowedFd<'_>, len: usize) -> io::Result<usize> {
        if self.stage != Stage::Writing {
            // (Handed over or dropped meanwhile: the file is not ours to write any more.)
            return Err(io::Error::other(
                "the stored file is no longer written here",
            ));
        }
        let n = os::splice_pipe_to_file(pipe, self.file.fd(), self.written, len)?;
        self.written += n as u64;
        Ok(n)
    }

    /// For the background (see `background`): what finishing the file needs, if it is to be
    /// published or waiters read it. The store is done with it then.
    #[allow(clippy::type_complexity)]
    pub fn hand_over(
        &mut self,
    ) -> Option<(
        OwnedFd,
        CString,
        Option<CString>,
        u32,
        Option<Ticket>,
        u64,
        bool,
    )> {
        if !self.can_hand_over() {
            return None;
        }
        let fd = self.file.hand_over().ok()?;
        self.stage = Stage::Done;
        Some((
            fd,
            self.file.name().to_owned(),
            self.target.take(),
            self.access,
            self.ticket.take(),
            self.written,
            self.touch,
        ))
    }

    /// Whether finishing the file without the request is worth it: it is being written and is
    /// to be published, or waiters read it.
    pub fn can_hand_over(&self) -> bool {
        self.stage == Stage::Writing && (self.target.is_some() || self.has_waiters())
    }

    /// Whether other requests read the file.
    pub fn has_waiters(&self) -> bool {
        self.ticket.as_ref().is_some_and(Ticket::has_waiters)
    }

    /// After writes: wakes the waiters where the kernel does not.
    pub fn notify(&self) {
        if self.touch && self.ticket.as_ref().is_some_and(Ticket::has_waiters) {
            os::touch(self.file.fd());
        }
    }

    /// Writing the file failed (ENOSPC, EIO...): the response goes on without it.
    pub fn write_failed(&mut self, http: Http, e: &io::Error) {
        log_error!(
            NGX_LOG_ERR,
            http.log(),
            os::errno(e),
            "transform_store: writing \"{}\" failed after {} bytes; the response goes on, the \
             output is not stored",
            self.file.name().to_string_lossy(),
            self.written
        );
        // Waiters that sent nothing yet run their own program; the others are cut.
        self.drop_file(State::Refused);
    }

    /// The response is whole (its Content-Length reached) while the program still runs: the
    /// waiters finish from the file; whether it is stored waits for the program's exit.
    pub fn output_complete(&mut self) {
        if self.stage == Stage::Writing && !self.shared_whole {
            self.shared_whole = true;
            if let Some(t) = &self.ticket {
                t.finish(State::Complete, self.written);
            }
        }
    }

    /// Whether a whole output would be published (not only shared).
    pub fn publishes(&self) -> bool {
        self.stage == Stage::Writing && self.target.is_some()
    }

    /// The output is whole: the waiters finish from the file; with `publish` (the program
    /// exited 0, nothing beyond its Content-Length) it is stored.
    pub fn complete(&mut self, http: Http, publish: bool) {
        if self.stage != Stage::Writing {
            return;
        }
        self.stage = Stage::Done;
        if let Some(t) = &self.ticket {
            t.finish(State::Complete, self.written);
        }
        match &self.target {
            Some(to) if publish => {
                if file::publish(http, &self.file, to, self.access) {
                    debug!(
                        http.log(),
                        "transform_store: stored {} bytes at \"{}\"",
                        self.written,
                        escape(to.as_bytes())
                    );
                }
            }
            _ => {
                os::unlink_quietly(self.file.name().to_bytes());
            }
        }
    }

    /// The program will not run: waiters run their own.
    pub fn give_up(mut self) {
        self.drop_file(State::Refused);
    }

    /// The program failed: the output will not be whole.
    pub fn abandon(&mut self) {
        self.drop_file(State::Failed);
    }

    /// The request ends before its output did (its client went away, or timed out): the
    /// program is stopped with it, and a waiter that sent nothing takes over.
    pub fn interrupt(&mut self) {
        self.drop_file(State::Interrupted);
    }

    fn drop_file(&mut self, state: State) {
        if matches!(self.stage, Stage::Dropped | Stage::Done) {
            return;
        }
        self.stage = Stage::Dropped;
        // (Waiters that were told the output is whole keep reading it to its end.)
        if let Some(t) = self.ticket.as_ref().filter(|_| !self.shared_whole) {
            t.finish(state, self.written);
        }
        // The descriptor stays open for what nginx still sends from it.
        os::unlink_quietly(self.file.name().to_bytes());
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.interrupt();
    }
}

/// The temp paths of the locations that store or lock, with their level count.
static TEMP_PATHS: Mutex<Vec<(PathBuf, usize)>> = Mutex::new(Vec::new());

/// Remembers a temp path to sweep (configuration time).
pub fn register_temp_path(path: *const ngx_path_t) {
    // SAFETY: a path nginx configured (ngx_conf_merge_path_value).
    let (name, depth) = unsafe {
        let levels = (*path).level.iter().filter(|&&l| l > 0).count();
        (
            std::ffi::OsStr::from_encoded_bytes_unchecked((*path).name.as_bytes()).to_owned(),
            levels,
        )
    };
    let entry = (PathBuf::from(name), depth);
    let mut paths = TEMP_PATHS.lock().unwrap_or_else(|e| e.into_inner());
    if !paths.contains(&entry) {
        paths.push(entry);
    }
}

/// Worker start: removes what killed workers left in the temp paths.
pub fn sweep(log: *mut nginx_sys::ngx_log_t) {
    let paths = TEMP_PATHS.lock().unwrap_or_else(|e| e.into_inner()).clone();
    for (dir, depth) in &paths {
        let n = os::sweep_temp_files(dir, *depth);
        if n > 0 {
            log_error!(
                nginx_sys::NGX_LOG_NOTICE,
                log,
                0,
                "transform: removed {n} temporary files of workers that are gone from \"{}\"",
                dir.display()
            );
        }
    }
}
