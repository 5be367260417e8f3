//! bpf(2) for what aya does not offer (link detach and info, batch map reads, the bench's raw
//! loads and test runs).
use std::{
    io,
    os::fd::{AsRawFd as _, BorrowedFd},
};

/// bpf(2) with `attr` as its `union bpf_attr` prefix; the syscall's non-negative return value.
///
/// # Safety
/// `attr` is the layout `cmd` expects, and every pointer in it is valid for the call.
pub unsafe fn sys_bpf<A>(cmd: libc::c_long, attr: &mut A) -> io::Result<libc::c_long> {
    // SAFETY: as the caller promises.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut A, std::mem::size_of::<A>()) };
    if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(rc) }
}

const BPF_PROG_TEST_RUN: libc::c_long = 10;

/// `BPF_PROG_TEST_RUN` of `prog` on `data` with context `ctx` (none when empty: the kernel makes
/// its own), `repeat` times; the program's return value and the kernel's mean time per repeat
/// in nanoseconds. No output is copied back.
pub fn test_run(
    prog: BorrowedFd<'_>,
    data: &[u8],
    ctx: &[u8],
    repeat: u32,
) -> io::Result<(u32, u32)> {
    // union bpf_attr, test: prog_fd, retval, data_size_in, data_size_out, data_in, data_out,
    // repeat, duration, ctx_size_in, ctx_size_out, ctx_in, ctx_out.
    let mut attr = [0u64; 10];
    attr[0] = prog.as_raw_fd() as u64;
    attr[1] = data.len() as u64;
    attr[2] = data.as_ptr() as u64;
    attr[4] = u64::from(repeat);
    attr[5] = ctx.len() as u64;
    attr[6] = if ctx.is_empty() { 0 } else { ctx.as_ptr() as u64 };
    // SAFETY: the test layout; the kernel reads `data` and `ctx` (their sizes given), writes no
    // output (no buffers given), and writes the return value and duration into `attr`.
    unsafe { sys_bpf(BPF_PROG_TEST_RUN, &mut attr) }?;
    Ok(((attr[0] >> 32) as u32, (attr[4] >> 32) as u32))
}
