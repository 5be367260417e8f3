//! bpf(2) for what aya does not offer (link detach and info, batch map reads, the bench's raw
//! loads and test runs).
use std::io;

/// bpf(2) with `attr` as its `union bpf_attr` prefix; the syscall's non-negative return value.
///
/// # Safety
/// `attr` is the layout `cmd` expects, and every pointer in it is valid for the call.
pub unsafe fn sys_bpf<A>(cmd: libc::c_long, attr: &mut A) -> io::Result<libc::c_long> {
    // SAFETY: as the caller promises.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut A, std::mem::size_of::<A>()) };
    if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(rc) }
}
