//! `transform_lock`: one program for all the requests of one key, in every worker.
//!
//! The first request for a key (the leader) runs the program and writes its output to a named
//! temporary file; the requests for the same key that come meanwhile (the waiters) read that
//! file as it grows (see `follow`). What they share lives in a shared memory zone
//! (`transform_lock_zone`), a table of fixed slots under the zone's slab mutex (which nginx's
//! master releases if a worker dies holding it): the key's hash, the leader's pid and a
//! generation, the state of its output, its temporary file's name and the Content-Type.
//!
//! Every change of state is followed by an event on the temporary file (bytes written, its
//! rename or unlink, its close), which is what wakes the waiters: they never poll. A leader
//! whose worker died is noticed by its pid and replaced by the next request for the key.

use core::ffi::{c_char, c_void};
use core::ptr;
use std::ffi::CString;

use nginx_sys::{
    ngx_command_t, ngx_conf_t, ngx_int_t, ngx_parse_size, ngx_shared_memory_add, ngx_shm_zone_t,
    ngx_shmtx_lock, ngx_shmtx_unlock, ngx_slab_alloc_locked, ngx_slab_pool_t, ngx_str_t, ngx_time,
    NGX_ERROR, NGX_LOG_EMERG, NGX_OK,
};
use ngx::core::{NGX_CONF_ERROR, NGX_CONF_OK};
use ngx::http::HttpModule;
use sha2::{Digest, Sha256};

use crate::os;

/// The longest temporary file name a slot holds (the temp path is the operator's).
pub const MAX_TEMP_NAME: usize = 512;
/// The longest Content-Type a slot holds.
pub const MAX_TYPE: usize = 256;

/// What became of a leader's output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum State {
    Free = 0,
    /// The program runs; nothing is decided yet.
    Starting = 1,
    /// The response is a 200 whose body grows in the temporary file.
    Streaming = 2,
    /// The output is complete, `size` bytes (and published, when stored).
    Complete = 3,
    /// The program failed: what the file holds is not the whole output.
    Failed = 4,
    /// The response is not one to share (a CGI status other than 200, a cookie...), or its file
    /// could not be written: waiters run their own program, unshared.
    Refused = 5,
    /// The leader's request ended before its output (its client went away): a waiter that sent
    /// nothing claims the key again, so one of them runs the program for the others.
    Interrupted = 6,
}

/// One key's entry.
#[repr(C)]
struct Slot {
    key: [u8; 32],
    state: State,
    type_len: u16,
    name_len: u16,
    pid: i32,
    generation: u64,
    /// Seconds (wall clock, comparable between workers) of the last change.
    changed: i64,
    /// Bytes of the complete output.
    size: u64,
    /// Waiters that announced themselves (the leader makes writes visible for them).
    waiters: u32,
    name: [u8; MAX_TEMP_NAME],
    content_type: [u8; MAX_TYPE],
}

/// The zone's content: a generation counter and the slots.
#[repr(C)]
struct Table {
    generation: u64,
    slots: usize,
    // followed by `slots` Slot
}

impl Table {
    /// # Safety
    /// `self` is a table initialized by `init_zone`, under the zone's mutex.
    unsafe fn slots(&mut self) -> &mut [Slot] {
        let n = self.slots;
        // SAFETY: init_zone allocated n slots right after the header.
        unsafe { core::slice::from_raw_parts_mut(ptr::from_mut(self).add(1).cast::<Slot>(), n) }
    }
}

/// What a request is to the lock.
pub enum Claim {
    /// Run the program; the ticket says which slot is ours.
    Leader(Ticket),
    /// Another request runs it: read its output.
    Follow(Watch),
    /// The zone has no room: run the program alone (logged by the caller).
    Full,
}

/// A leader's hold on its slot.
pub struct Ticket {
    zone: *mut ngx_shm_zone_t,
    index: usize,
    generation: u64,
}

/// A waiter's view of a leader's slot.
pub struct Watch {
    zone: *mut ngx_shm_zone_t,
    index: usize,
    generation: u64,
    /// The leader's temporary file.
    pub name: CString,
}

/// A leader's state as a waiter sees it.
#[derive(Clone)]
pub struct Seen {
    pub state: State,
    pub size: u64,
    pub content_type: Option<Vec<u8>>,
    /// The leader's process is gone (its state will not change any more).
    pub leader_gone: bool,
}

/// The key as the slots hold it.
pub fn hash(key: &[u8]) -> [u8; 32] {
    Sha256::digest(key).into()
}

/// Runs `f` on the table under the zone's mutex.
fn locked<R>(zone: *mut ngx_shm_zone_t, f: impl FnOnce(&mut Table) -> R) -> R {
    // SAFETY: the zone was initialized by init_zone: its memory is a slab pool whose data is
    // the table; the mutex serializes the workers.
    unsafe {
        let pool = (*zone).shm.addr.cast::<ngx_slab_pool_t>();
        let table = &mut *(*zone).data.cast::<Table>();
        ngx_shmtx_lock(&mut (*pool).mutex);
        let r = f(table);
        ngx_shmtx_unlock(&mut (*pool).mutex);
        r
    }
}

fn now() -> i64 {
    ngx_time()
}

/// Whether a leader's worker still runs (a pid taken by another process of the same user passes
/// for alive: its slot then ends with the waiters' timeout).
fn alive(pid: i32) -> bool {
    os::process_exists(pid)
}

/// Claims `key` for this request: leader (its temporary file is `name`), waiter, or neither.
///
/// A slot whose waiters are still reading a finished output is not given to a new leader (they
/// read its end there) while another slot is free or finished without waiters: a key may then
/// have a finished slot and a running one, and the running one is what counts.
pub fn claim(zone: *mut ngx_shm_zone_t, key: &[u8; 32], name: &[u8]) -> Claim {
    let me = os::getpid();
    let now = now();
    let mut stale = None;
    let claim = locked(zone, |table| {
        table.generation += 1;
        let generation = table.generation;
        // SAFETY: under the mutex.
        let slots = unsafe { table.slots() };
        let mut running = None;
        // Candidates for a new leader, best first: this key's slot without waiters, a free
        // slot, the oldest finished one without waiters, the oldest finished one at all.
        let (mut own, mut free, mut idle, mut oldest) = (None, None, None, None);
        let older = |best: Option<(usize, i64)>, i: usize, t: i64| match best {
            Some((_, bt)) if bt <= t => best,
            _ => Some((i, t)),
        };
        for (i, slot) in slots.iter().enumerate() {
            let is_running = matches!(slot.state, State::Starting | State::Streaming);
            if slot.state == State::Free {
                free = free.or(Some(i));
                continue;
            }
            if &slot.key == key && is_running {
                if slot.pid == me || alive(slot.pid) {
                    running = Some(i);
                    break;
                }
                // Its worker died: this request takes over (the waiters of the dead leader
                // learn it from the pid).
                own = Some(i);
                continue;
            }
            if is_running {
                continue;
            }
            if &slot.key == key && slot.waiters == 0 {
                own = own.or(Some(i));
            }
            if slot.waiters == 0 {
                idle = older(idle, i, slot.changed);
            }
            oldest = older(oldest, i, slot.changed);
        }
        if let Some(i) = running {
            let slot = &mut slots[i];
            slot.waiters += 1;
            let name = CString::new(&slot.name[..slot.name_len as usize]).unwrap_or_default();
            return Claim::Follow(Watch {
                zone,
                index: i,
                generation: slot.generation,
                name,
            });
        }
        let pick = own
            .or(free)
            .or(idle.map(|(i, _)| i))
            .or(oldest.map(|(i, _)| i))
            // Last: a slot of another key whose leader's worker died.
            .or_else(|| {
                slots.iter().position(|slot| {
                    matches!(slot.state, State::Starting | State::Streaming)
                        && slot.pid != me
                        && !alive(slot.pid)
                })
            });
        let Some(i) = pick else {
            return Claim::Full;
        };
        let slot = &mut slots[i];
        if matches!(slot.state, State::Starting | State::Streaming) {
            // What the dead leader left is removed, after the mutex.
            stale = Some(slot.name[..slot.name_len as usize].to_vec());
        }
        Claim::Leader(take(zone, slot, i, key, name, me, generation, now))
    });
    if let Some(name) = stale {
        os::unlink_quietly(&name);
    }
    claim
}

#[allow(clippy::too_many_arguments)]
fn take(
    zone: *mut ngx_shm_zone_t,
    slot: &mut Slot,
    index: usize,
    key: &[u8; 32],
    name: &[u8],
    pid: i32,
    generation: u64,
    now: i64,
) -> Ticket {
    slot.key = *key;
    slot.state = State::Starting;
    slot.pid = pid;
    slot.generation = generation;
    slot.changed = now;
    slot.size = 0;
    slot.waiters = 0;
    slot.type_len = 0;
    let n = name.len().min(MAX_TEMP_NAME);
    slot.name[..n].copy_from_slice(&name[..n]);
    slot.name_len = n as u16;
    Ticket {
        zone,
        index,
        generation,
    }
}

impl Ticket {
    /// Runs `f` on our slot, if it is still ours.
    fn with_slot<R>(&self, f: impl FnOnce(&mut Slot) -> R) -> Option<R> {
        locked(self.zone, |table| {
            // SAFETY: under the mutex.
            let slot = &mut unsafe { table.slots() }[self.index];
            (slot.generation == self.generation).then(|| f(slot))
        })
    }

    /// The response is a 200 whose body goes to the temporary file.
    pub fn streaming(&self, content_type: Option<&[u8]>) {
        let now = now();
        self.with_slot(|slot| {
            let t = content_type.unwrap_or_default();
            let n = if t.len() <= MAX_TYPE { t.len() } else { 0 };
            slot.content_type[..n].copy_from_slice(&t[..n]);
            slot.type_len = n as u16;
            slot.state = State::Streaming;
            slot.changed = now;
        });
    }

    /// The leader is done: `state` is Complete (with `size`), Failed or Refused.
    pub fn finish(&self, state: State, size: u64) {
        let now = now();
        self.with_slot(|slot| {
            slot.state = state;
            slot.size = size;
            slot.changed = now;
        });
    }

    /// Whether waiters announced themselves.
    pub fn has_waiters(&self) -> bool {
        self.with_slot(|slot| slot.waiters > 0).unwrap_or(false)
    }
}

impl Watch {
    /// The leader's state, or None if its slot went to another key.
    pub fn seen(&self) -> Option<Seen> {
        let seen = locked(self.zone, |table| {
            // SAFETY: under the mutex.
            let slot = &unsafe { table.slots() }[self.index];
            (slot.generation == self.generation).then(|| {
                let content_type = (slot.type_len > 0)
                    .then(|| slot.content_type[..slot.type_len as usize].to_vec());
                (slot.state, slot.size, content_type, slot.pid)
            })
        })?;
        let (state, size, content_type, pid) = seen;
        let running = matches!(state, State::Starting | State::Streaming);
        Some(Seen {
            state,
            size,
            content_type,
            leader_gone: running && !alive(pid),
        })
    }
}

impl Seen {
    /// Whether it will not change any more.
    pub fn is_final(&self) -> bool {
        self.leader_gone || !matches!(self.state, State::Starting | State::Streaming)
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let generation = self.generation;
        let index = self.index;
        locked(self.zone, |table| {
            // SAFETY: under the mutex.
            let slot = &mut unsafe { table.slots() }[index];
            if slot.generation == generation {
                slot.waiters = slot.waiters.saturating_sub(1);
            }
        });
    }
}

impl Drop for Ticket {
    /// A leader that did not say how it ended failed.
    fn drop(&mut self) {
        let now = now();
        self.with_slot(|slot| {
            if matches!(slot.state, State::Starting | State::Streaming) {
                slot.state = State::Failed;
                slot.changed = now;
            }
        });
    }
}

/// `transform_lock_zone name:size` (http level).
pub extern "C" fn set_zone(
    cf: *mut ngx_conf_t,
    cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: nginx calls directive handlers with a valid cf, its command and this module's
    // loc conf; the field at cmd->offset is the zone pointer.
    unsafe {
        let slot = conf
            .cast::<u8>()
            .add((*cmd).offset)
            .cast::<*mut ngx_shm_zone_t>();
        if !(*slot).is_null() {
            return c"is duplicate".as_ptr().cast_mut();
        }
        let args: &mut [ngx_str_t] = (*(*cf).args).as_slice_mut();
        let value = args[1];
        let bytes = value.as_bytes();
        let Some(colon) = bytes.iter().position(|&b| b == b':') else {
            return conf_error(
                cf,
                format_args!("invalid zone \"{value}\": name:size expected"),
            );
        };
        if colon == 0 {
            return conf_error(cf, format_args!("invalid zone name \"{value}\""));
        }
        let mut size = ngx_str_t {
            len: bytes.len() - colon - 1,
            data: value.data.add(colon + 1),
        };
        let n = ngx_parse_size(&mut size);
        let min = 8 * 4096;
        if n == NGX_ERROR as isize {
            return conf_error(cf, format_args!("invalid zone size \"{value}\""));
        }
        if (n as usize) < min {
            return conf_error(
                cf,
                format_args!("zone \"{value}\" is too small (32k at least)"),
            );
        }
        let mut name = ngx_str_t {
            len: colon,
            data: value.data,
        };
        let module = ptr::from_ref(crate::Module::module()).cast_mut().cast();
        let zone = ngx_shared_memory_add(cf, &mut name, n as usize, module);
        if zone.is_null() {
            return NGX_CONF_ERROR;
        }
        if !(*zone).data.is_null() {
            return conf_error(cf, format_args!("duplicate zone \"{name}\""));
        }
        (*zone).init = Some(init_zone);
        // Marks the zone as ours until init_zone puts the table there.
        (*zone).data = ptr::NonNull::<Table>::dangling().as_ptr().cast();
        *slot = zone;
    }
    NGX_CONF_OK
}

fn conf_error(cf: *mut ngx_conf_t, msg: core::fmt::Arguments<'_>) -> *mut c_char {
    let text = format!("{msg}");
    // SAFETY: cf is valid; the format takes a length and a pointer.
    unsafe {
        nginx_sys::ngx_conf_log_error(
            NGX_LOG_EMERG as _,
            cf,
            0,
            c"%*s".as_ptr(),
            text.len(),
            text.as_ptr(),
        )
    };
    NGX_CONF_ERROR
}

/// Puts the table in a new zone, or takes over the previous configuration's (reload).
extern "C" fn init_zone(zone: *mut ngx_shm_zone_t, data: *mut c_void) -> ngx_int_t {
    // SAFETY: nginx calls init with the zone (a slab pool) and the old zone's data or null.
    unsafe {
        if !data.is_null() {
            (*zone).data = data;
            return NGX_OK as ngx_int_t;
        }
        let pool = (*zone).shm.addr.cast::<ngx_slab_pool_t>();
        if (*zone).shm.exists != 0 {
            (*zone).data = (*pool).data;
            return NGX_OK as ngx_int_t;
        }
        // The slab pool's bookkeeping takes a few pages; the slots the rest.
        let room = (*zone).shm.size.saturating_sub(6 * 4096);
        let mut slots = room.saturating_sub(size_of::<Table>()) / size_of::<Slot>();
        let mut table = ptr::null_mut::<Table>();
        while slots > 0 {
            let bytes = size_of::<Table>() + slots * size_of::<Slot>();
            table = ngx_slab_alloc_locked(pool, bytes).cast();
            if !table.is_null() {
                break;
            }
            slots = slots * 7 / 8;
        }
        if table.is_null() {
            return NGX_ERROR as ngx_int_t;
        }
        ptr::write_bytes(
            table.cast::<u8>(),
            0,
            size_of::<Table>() + slots * size_of::<Slot>(),
        );
        (*table).slots = slots;
        (*pool).data = table.cast();
        (*zone).data = table.cast();
    }
    NGX_OK as ngx_int_t
}

/// Worker start (also after a worker crashed): the slots whose leader's worker is gone are
/// freed, and the temporary files they name removed, in every zone of this module.
pub fn sweep_dead(cycle: *mut nginx_sys::ngx_cycle_t) {
    let module = ptr::from_ref(crate::Module::module()).cast::<c_void>();
    let mut names = Vec::new();
    // SAFETY: the cycle's list of shared memory zones, as nginx built it; our zones' data is
    // the table put there by init_zone.
    unsafe {
        let mut part: *mut nginx_sys::ngx_list_part_t = &mut (*cycle).shared_memory.part;
        while !part.is_null() {
            let zones = (*part).elts.cast::<ngx_shm_zone_t>();
            for i in 0..(*part).nelts {
                let zone = zones.add(i);
                if (*zone).tag.cast_const() != module || (*zone).data.is_null() {
                    continue;
                }
                locked(zone, |table| {
                    for slot in table.slots() {
                        let running = matches!(slot.state, State::Starting | State::Streaming);
                        if running && !alive(slot.pid) {
                            slot.state = State::Failed;
                            slot.changed = now();
                            names.push(slot.name[..slot.name_len as usize].to_vec());
                        }
                    }
                });
            }
            part = (*part).next;
        }
    }
    for name in names {
        os::unlink_quietly(&name);
    }
}
