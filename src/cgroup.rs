//! `transform_cgroup`: one cgroup per program with its limits (memory.max, pids.max, cpu.max).
//!
//! STUB: the interface the rest of the module uses; built by the cgroup work of issue 13.
#![allow(dead_code)]

use core::ffi::{c_char, c_void};
use std::io;
use std::os::fd::RawFd;

use nginx_sys::{ngx_command_t, ngx_conf_t};
use ngx::core::NGX_CONF_ERROR;

/// One `transform_cgroup` directive: the limits and where it was written.
#[derive(Debug)]
pub struct Limits {
    pub memory_max: Option<u64>,
    pub pids_max: Option<u64>,
    /// Percent of one CPU (cpu.max quota over a 100 ms period).
    pub cpu_max: Option<u32>,
    pub file: String,
    pub line: usize,
}

/// `transform_cgroup off | [memory.max=size] [pids.max=N] [cpu.max=P%]`: sets
/// `TransformConf::cgroup` (`Some(None)` for off).
pub extern "C" fn set_cgroup(
    _cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    _conf: *mut c_void,
) -> *mut c_char {
    NGX_CONF_ERROR
}

/// A program's cgroup, from its creation before the spawn to its removal after the reaping.
pub struct Group {
    procs: Vec<RawFd>,
}

impl Group {
    /// Creates the cgroup(s) of one program with `limits`.
    pub fn create(_limits: &Limits) -> io::Result<Group> {
        Err(io::Error::from_raw_os_error(libc::ENOSYS))
    }

    /// Descriptors of the `cgroup.procs` files the child writes "0" to before exec.
    pub fn procs(&self) -> &[RawFd] {
        &self.procs
    }
}
