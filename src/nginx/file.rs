//! Files of a request: a temporary file under a `transform_temp_path` (as nginx's own temp
//! files, with its levels), its publication with nginx's `ngx_ext_rename_file` (as proxy_store),
//! and a file sent to the client in ranges, as in-file buffers through the output chain (sendfile
//! where the connection allows it; read into memory by nginx for TLS, HTTP/2 frames or gzip).

use core::ffi::CStr;
use core::ptr;
use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, IntoRawFd, OwnedFd, RawFd};

use nginx_sys::{
    ngx_alloc_chain_link, ngx_buf_t, ngx_create_hashed_filename, ngx_create_path,
    ngx_ext_rename_file, ngx_ext_rename_file_t, ngx_file_t, ngx_http_map_uri_to_path, ngx_int_t,
    ngx_next_temp_number, ngx_path_t, ngx_pcalloc, ngx_pool_cleanup_add, ngx_pool_cleanup_file,
    ngx_pool_cleanup_file_t, ngx_pool_delete_file, ngx_str_t, NGX_ERROR, NGX_OK,
};

use super::Http;
use crate::os;

/// An open file of the request: its descriptor is closed when the request's pool is destroyed
/// (after nginx sent every buffer that points into it), and, for a temporary file, its name
/// removed then if it is still there.
pub struct PoolFile {
    file: *mut ngx_file_t,
    /// The pool's cleanup of the descriptor (and name).
    cleanup: *mut nginx_sys::ngx_pool_cleanup_t,
}

impl PoolFile {
    /// Hands `fd` (named `name`) to the request pool.
    fn adopt(http: Http, fd: OwnedFd, name: &CStr, unlink: bool) -> io::Result<PoolFile> {
        let pool = http.pool();
        let oom = || io::Error::from(io::ErrorKind::OutOfMemory);
        let Some(name) = http.pool_copy(name.to_bytes_with_nul()) else {
            return Err(oom());
        };
        // SAFETY: the request pool is live; every allocation is checked; the cleanup owns fd
        // from here on.
        unsafe {
            let file = ngx_pcalloc(pool, size_of::<ngx_file_t>()).cast::<ngx_file_t>();
            let cln = ngx_pool_cleanup_add(pool, size_of::<ngx_pool_cleanup_file_t>());
            if file.is_null() || cln.is_null() {
                return Err(oom());
            }
            let fd = fd.into_raw_fd();
            (*file).fd = fd;
            (*file).name = ngx_str_t {
                len: name.len() - 1,
                data: name.as_ptr().cast_mut(),
            };
            (*file).log = http.log();
            let data = (*cln).data.cast::<ngx_pool_cleanup_file_t>();
            (*data).fd = fd;
            (*data).name = name.as_ptr().cast_mut();
            (*data).log = http.log();
            (*cln).handler = Some(if unlink {
                ngx_pool_delete_file
            } else {
                ngx_pool_cleanup_file
            });
            Ok(PoolFile { file, cleanup: cln })
        }
    }

    /// For the background (see `background`): a descriptor of its own for the file, whose name
    /// the pool then no longer removes.
    pub fn hand_over(&self) -> io::Result<OwnedFd> {
        let fd = self.fd().try_clone_to_owned()?;
        // SAFETY: the cleanup added in adopt(); only its handler changes (close, no unlink).
        unsafe { (*self.cleanup).handler = Some(ngx_pool_cleanup_file) };
        Ok(fd)
    }

    /// Opens an existing file to read (a leader's temporary file, for a waiter).
    pub fn open(http: Http, name: &CStr) -> io::Result<PoolFile> {
        let fd = os::open_read(name)?;
        PoolFile::adopt(http, fd, name, false)
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        // SAFETY: the descriptor stays open until the request's pool is destroyed, after every
        // user of this PoolFile (which lives in the same request).
        unsafe { BorrowedFd::borrow_raw(self.raw_fd()) }
    }

    fn raw_fd(&self) -> RawFd {
        // SAFETY: allocated and filled in adopt().
        unsafe { (*self.file).fd }
    }

    /// The file's name, as created (or opened).
    pub fn name(&self) -> &CStr {
        // SAFETY: a NUL-terminated copy in the request pool.
        unsafe { CStr::from_ptr((*self.file).name.data.cast()) }
    }

    /// Sends bytes `[from, to)` of the file to the client as an in-file buffer, flushed; `last`
    /// ends the response with it.
    pub fn send(&self, http: Http, from: u64, to: u64) -> ngx_int_t {
        if from >= to {
            return NGX_OK as ngx_int_t;
        }
        // SAFETY: the request pool is live; the buffer points at our file, which outlives it.
        unsafe {
            let b = ngx_pcalloc(http.pool(), size_of::<ngx_buf_t>()).cast::<ngx_buf_t>();
            let cl = ngx_alloc_chain_link(http.pool());
            if b.is_null() || cl.is_null() {
                return NGX_ERROR as ngx_int_t;
            }
            (*b).set_in_file(1);
            (*b).file = self.file;
            (*b).file_pos = from as i64;
            (*b).file_last = to as i64;
            (*b).set_flush(1);
            (*cl).buf = b;
            (*cl).next = ptr::null_mut();
            http.output_filter(cl)
        }
    }
}

/// Creates a temporary file `transform-<pid>-<number>` under `path` (and its level directories,
/// created as needed), with permissions `access`.
pub fn create_temp(http: Http, path: *mut ngx_path_t, access: u32) -> io::Result<PoolFile> {
    let pid = os::getpid();
    let mut collision = 0;
    loop {
        let cname = temp_name(path, pid, collision)?;
        let mut created_path = false;
        loop {
            match os::create_exclusive(&cname, access) {
                Ok(fd) => return PoolFile::adopt(http, fd, &cname, true),
                Err(e) if e.kind() == io::ErrorKind::NotFound && !created_path => {
                    // The level directories are made as nginx makes its own, then the same
                    // name is tried again (as ngx_create_temp_file does).
                    create_levels(http, path, &cname).map_err(|_| e)?;
                    created_path = true;
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && collision < 8 => break,
                Err(e) => return Err(e),
            }
        }
        collision += 1;
    }
}

/// A new name under `path`: "dir/" + the level directories + `transform-<pid>-<number>`.
fn temp_name(path: *mut ngx_path_t, pid: i32, collision: usize) -> io::Result<CString> {
    // SAFETY: path is the location's temp path, configured by nginx.
    let (dir, levels) = unsafe { ((*path).name.as_bytes(), (*path).len) };
    // SAFETY: nginx's counter, shared by the workers.
    let n = unsafe { ngx_next_temp_number(collision as _) };
    let base = format!("transform-{pid}-{n:010}");
    let mut name = Vec::with_capacity(dir.len() + 1 + levels + base.len() + 1);
    name.extend_from_slice(dir);
    name.push(b'/');
    name.resize(name.len() + levels, b'/');
    name.extend_from_slice(base.as_bytes());
    let len = name.len();
    name.push(0);
    // SAFETY: name holds the path's name, the level room and the file name, as
    // ngx_create_hashed_filename expects; it writes inside the level room.
    unsafe { ngx_create_hashed_filename(path, name.as_mut_ptr(), len) };
    name.pop();
    CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

/// Creates the level directories of a temporary file's name.
fn create_levels(http: Http, path: *mut ngx_path_t, name: &CStr) -> Result<(), ()> {
    // SAFETY: all-zero is a valid ngx_file_t; ngx_create_path only reads its name and log.
    let mut file: ngx_file_t = unsafe { core::mem::zeroed() };
    file.name = ngx_str_t {
        len: name.to_bytes().len(),
        data: name.as_ptr().cast_mut().cast(),
    };
    file.log = http.log();
    // SAFETY: file names a path under `path`.
    match unsafe { ngx_create_path(&mut file, path) } {
        r if r == NGX_ERROR as ngx_int_t => Err(()),
        _ => Ok(()),
    }
}

/// Publishes `file` at `to` as proxy_store does: ngx_ext_rename_file, with the directories on the
/// way created and `access` for the file and them; on failure the temporary file is removed and
/// nginx logs why.
pub fn publish(http: Http, file: &PoolFile, to: &CStr, access: u32) -> bool {
    publish_fd(http.log(), file.fd(), file.name(), to, access)
}

/// As [`publish`], for a file named `from` open at `fd`, logging to `log`.
pub fn publish_fd(
    log: *mut nginx_sys::ngx_log_t,
    fd: BorrowedFd<'_>,
    from: &CStr,
    to: &CStr,
    access: u32,
) -> bool {
    // SAFETY: all-zero is a valid ngx_ext_rename_file_t (as ngx_memzero in C).
    let mut ext: ngx_ext_rename_file_t = unsafe { core::mem::zeroed() };
    ext.access = access as _;
    ext.path_access = access as _;
    ext.time = -1;
    ext.fd = fd.as_raw_fd();
    ext.log = log;
    ext.set_create_path(1);
    ext.set_delete_file(1);
    let mut src = ngx_str_t {
        len: from.to_bytes().len(),
        data: from.as_ptr().cast_mut().cast(),
    };
    let mut dst = ngx_str_t {
        len: to.to_bytes().len(),
        data: to.as_ptr().cast_mut().cast(),
    };
    // SAFETY: both names are NUL-terminated (as nginx's rename needs) and live during the call.
    unsafe { ngx_ext_rename_file(&mut src, &mut dst, &mut ext) == NGX_OK as ngx_int_t }
}

/// The path nginx maps the request's URI to (root or alias + URI), as `proxy_store on`.
pub fn uri_path(http: Http) -> Option<Vec<u8>> {
    let mut path = ngx_str_t {
        len: 0,
        data: ptr::null_mut(),
    };
    let mut root = 0usize;
    // SAFETY: live request; nginx allocates the path (NUL-terminated) in the request pool.
    let p = unsafe { ngx_http_map_uri_to_path(http.as_ptr(), &mut path, &mut root, 0) };
    if p.is_null() {
        return None;
    }
    // path.len counts the NUL.
    let bytes = path.as_bytes();
    Some(bytes[..bytes.len().saturating_sub(1)].to_vec())
}
