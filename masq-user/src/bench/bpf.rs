//! Just enough of bpf(2) and of BPF assembly for the benchmark's own small programs: the
//! test-run harness that restores a packet before each repeat, a trivial program to measure the
//! harness alone, and a counting sink for the lab.
//!
//! Why a harness: `BPF_PROG_TEST_RUN` runs the program `repeat` times on the *same* buffer, so
//! after the first repeat a translating program sees its own output (translated tuple, TTL one
//! lower) and takes another path. The harness copies a fresh frame into the packet on every
//! repeat, then tail-calls the program under test; running it once more with a trivial program in
//! the tail-call slot measures the harness itself, which is subtracted.
use std::{
    ffi::CString,
    io,
    os::fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd, RawFd},
};

use anyhow::{Context as _, Result, bail, ensure};

// bpf(2) commands.
const BPF_MAP_CREATE: u32 = 0;
const BPF_MAP_LOOKUP_ELEM: u32 = 1;
const BPF_MAP_UPDATE_ELEM: u32 = 2;
const BPF_PROG_LOAD: u32 = 5;
const BPF_LINK_CREATE: u32 = 28;
const BPF_ENABLE_STATS: u32 = 32;
const BPF_OBJ_GET_INFO_BY_FD: u32 = 15;
const BPF_BTF_GET_FD_BY_ID: u32 = 19;

pub const BPF_MAP_TYPE_ARRAY: u32 = 2;
pub const BPF_MAP_TYPE_PROG_ARRAY: u32 = 3;

/// Program type and expected attach type, as the kernel's prog-array compatibility check wants
/// them to match between the harness and the program it tail-calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    /// `BPF_PROG_TYPE_XDP`, expected attach type `BPF_XDP` (what aya loads XDP programs with).
    Xdp,
    /// `BPF_PROG_TYPE_SCHED_CLS`, no expected attach type.
    Tc,
}

impl Hook {
    fn prog_type(self) -> u32 {
        match self {
            Hook::Xdp => 6,
            Hook::Tc => 3,
        }
    }

    fn expected_attach_type(self) -> u32 {
        match self {
            Hook::Xdp => 37,
            Hook::Tc => 0,
        }
    }

    /// Offsets of `data` and `data_end` in the context (`struct xdp_md`, `struct __sk_buff`).
    fn data_offsets(self) -> (i16, i16) {
        match self {
            Hook::Xdp => (0, 4),
            Hook::Tc => (76, 80),
        }
    }

    /// What the harness returns when it could not run the program under test: XDP_ABORTED,
    /// TC_ACT_UNSPEC (-1). masq returns neither.
    pub fn harness_failed(self) -> u32 {
        match self {
            Hook::Xdp => 0,
            Hook::Tc => u32::MAX,
        }
    }
}

/// `union bpf_attr`, as far as the commands used here reach.
#[repr(C, align(8))]
struct Attr([u8; 128]);

impl Attr {
    fn new() -> Self {
        Attr([0; 128])
    }
    fn u32(mut self, off: usize, v: u32) -> Self {
        self.0[off..off + 4].copy_from_slice(&v.to_ne_bytes());
        self
    }
    fn u64(mut self, off: usize, v: u64) -> Self {
        self.0[off..off + 8].copy_from_slice(&v.to_ne_bytes());
        self
    }
    fn bytes(mut self, off: usize, v: &[u8]) -> Self {
        self.0[off..off + v.len()].copy_from_slice(v);
        self
    }
}

fn sys_bpf(cmd: u32, attr: &mut Attr) -> io::Result<i64> {
    // SAFETY: `attr` is a valid, zero-padded `union bpf_attr` prefix, and the callers' pointers
    // in it are valid for the call.
    unsafe { crate::bpf_sys::sys_bpf(libc::c_long::from(cmd), attr) }
}

fn sys_bpf_fd(cmd: u32, attr: &mut Attr) -> io::Result<OwnedFd> {
    let fd = sys_bpf(cmd, attr)? as RawFd;
    // SAFETY: the kernel returned a new file descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn name16(name: &str) -> [u8; 16] {
    let mut out = [0u8; 16];
    for (o, b) in out.iter_mut().zip(name.bytes().take(15)) {
        *o = b;
    }
    out
}

pub fn create_map(
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    name: &str,
) -> Result<OwnedFd> {
    let mut attr = Attr::new()
        .u32(0, map_type)
        .u32(4, key_size)
        .u32(8, value_size)
        .u32(12, max_entries)
        .bytes(28, &name16(name));
    sys_bpf_fd(BPF_MAP_CREATE, &mut attr).with_context(|| format!("creating map {name}"))
}

pub fn map_update(map: &OwnedFd, key: &[u8], value: &[u8]) -> Result<()> {
    let mut attr = Attr::new()
        .u32(0, map.as_raw_fd() as u32)
        .u64(8, key.as_ptr() as u64)
        .u64(16, value.as_ptr() as u64);
    sys_bpf(BPF_MAP_UPDATE_ELEM, &mut attr).context("bpf map update")?;
    Ok(())
}

pub fn map_lookup(map: &OwnedFd, key: &[u8], value: &mut [u8]) -> Result<()> {
    let mut attr = Attr::new()
        .u32(0, map.as_raw_fd() as u32)
        .u64(8, key.as_ptr() as u64)
        .u64(16, value.as_mut_ptr() as u64);
    sys_bpf(BPF_MAP_LOOKUP_ELEM, &mut attr).context("bpf map lookup")?;
    Ok(())
}

/// Loads `insns` (GPL, so that every helper is available); the verifier log on failure.
pub fn load_program(hook: Hook, insns: &[Insn], name: &str) -> Result<OwnedFd> {
    let license = CString::new("GPL").expect("no NUL");
    let mut log = vec![0u8; 1 << 16];
    let mut attr = Attr::new()
        .u32(0, hook.prog_type())
        .u32(4, insns.len() as u32)
        .u64(8, insns.as_ptr() as u64)
        .u64(16, license.as_ptr() as u64)
        .u32(24, 1)
        .u32(28, log.len() as u32)
        .u64(32, log.as_mut_ptr() as u64)
        .bytes(48, &name16(name))
        .u32(68, hook.expected_attach_type());
    match sys_bpf_fd(BPF_PROG_LOAD, &mut attr) {
        Ok(fd) => Ok(fd),
        Err(err) => {
            let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
            bail!("loading {name}: {err}\n{}", String::from_utf8_lossy(&log[..end]))
        }
    }
}

/// What one `BPF_PROG_TEST_RUN` reported.
#[derive(Clone, Copy, Debug)]
pub struct RunResult {
    pub retval: u32,
    /// The kernel's mean time per repeat, in nanoseconds.
    pub duration_ns: u32,
}

/// `BPF_PROG_TEST_RUN` of `prog` on `data` with context `ctx`, `repeat` times.
pub fn test_run(prog: BorrowedFd<'_>, data: &[u8], ctx: &[u8], repeat: u32) -> Result<RunResult> {
    let (retval, duration_ns) =
        crate::bpf_sys::test_run(prog, data, ctx, repeat).context("BPF_PROG_TEST_RUN")?;
    Ok(RunResult { retval, duration_ns })
}

/// Attaches an XDP program in driver mode to `ifindex` of the calling thread's namespace; it
/// stays attached while the returned link is open.
pub fn attach_xdp(prog: &OwnedFd, ifindex: u32) -> Result<OwnedFd> {
    const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;
    let mut attr = Attr::new()
        .u32(0, prog.as_raw_fd() as u32)
        .u32(4, ifindex)
        .u32(8, Hook::Xdp.expected_attach_type())
        .u32(12, XDP_FLAGS_DRV_MODE);
    sys_bpf_fd(BPF_LINK_CREATE, &mut attr).context("attaching XDP")
}

/// Turns on `run_time_ns`/`run_cnt` accounting of every BPF program until the fd is closed
/// (`BPF_ENABLE_STATS`, the per-process form of `kernel.bpf_stats_enabled=1`).
pub fn enable_run_time_stats() -> Result<OwnedFd> {
    let mut attr = Attr::new().u32(0, 0);
    sys_bpf_fd(BPF_ENABLE_STATS, &mut attr).context("BPF_ENABLE_STATS")
}

/// One source line of a loaded program and where its machine code starts: the function's index
/// among the program's JITed functions (`bpf_prog_<tag>_<name>` symbols, the main one first) and
/// the offset in it, as `perf script -F sym,symoff` reports samples.
#[derive(Clone, Debug)]
pub struct JitedLine {
    pub func: usize,
    pub offset: u64,
    pub file: String,
    pub line: u32,
    pub text: String,
}

/// The JITed line table of `prog` (its BTF line info as the kernel placed it), and the length
/// of each of its JITed functions.
pub fn jited_lines(prog: BorrowedFd<'_>) -> Result<(Vec<JitedLine>, Vec<u32>)> {
    #[repr(C, align(8))]
    struct Info([u8; 232]);
    let get_info = |fd: RawFd, info: &mut [u8]| -> Result<()> {
        let mut attr = Attr::new()
            .u32(0, fd as u32)
            .u32(4, info.len() as u32)
            .u64(8, info.as_mut_ptr() as u64);
        sys_bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr).context("BPF_OBJ_GET_INFO_BY_FD")?;
        Ok(())
    };
    let mut info = Info([0; 232]);
    get_info(prog.as_raw_fd(), &mut info.0)?;
    let u32_at = |b: &[u8], off: usize| u32::from_ne_bytes(b[off..off + 4].try_into().expect("4"));
    let (nr_ksyms, nr_lens) = (u32_at(&info.0, 104), u32_at(&info.0, 108));
    let btf_id = u32_at(&info.0, 128);
    let (nr_lines, nr_jited) = (u32_at(&info.0, 148), u32_at(&info.0, 168));
    let line_rec = u32_at(&info.0, 172);
    ensure!(btf_id != 0 && nr_lines == nr_jited && nr_lines > 0, "no JITed line info");
    let mut ksyms = vec![0u64; nr_ksyms as usize];
    let mut lens = vec![0u32; nr_lens as usize];
    let mut lines = vec![0u8; (nr_lines * line_rec) as usize];
    let mut jited = vec![0u64; nr_jited as usize];
    let mut info = Info([0; 232]);
    let put = |info: &mut Info, off: usize, v: u64| {
        info.0[off..off + 8].copy_from_slice(&v.to_ne_bytes())
    };
    let put4 = |info: &mut Info, off: usize, v: u32| {
        info.0[off..off + 4].copy_from_slice(&v.to_ne_bytes())
    };
    put4(&mut info, 104, nr_ksyms);
    put4(&mut info, 108, nr_lens);
    put(&mut info, 112, ksyms.as_mut_ptr() as u64);
    put(&mut info, 120, lens.as_mut_ptr() as u64);
    put4(&mut info, 148, nr_lines);
    put(&mut info, 152, lines.as_mut_ptr() as u64);
    put(&mut info, 160, jited.as_mut_ptr() as u64);
    put4(&mut info, 168, nr_jited);
    put4(&mut info, 172, line_rec);
    put4(&mut info, 176, 8);
    get_info(prog.as_raw_fd(), &mut info.0)?;
    // The program's BTF, for the file names and source lines the line info points at.
    let mut attr = Attr::new().u32(0, btf_id);
    let btf = sys_bpf_fd(BPF_BTF_GET_FD_BY_ID, &mut attr).context("BPF_BTF_GET_FD_BY_ID")?;
    let mut btf_info = [0u8; 32];
    get_info(btf.as_raw_fd(), &mut btf_info)?;
    let mut raw = vec![0u8; u32_at(&btf_info, 8) as usize];
    let mut btf_info = [0u8; 32];
    btf_info[0..8].copy_from_slice(&(raw.as_mut_ptr() as u64).to_ne_bytes());
    btf_info[8..12].copy_from_slice(&(raw.len() as u32).to_ne_bytes());
    get_info(btf.as_raw_fd(), &mut btf_info)?;
    ensure!(raw.len() >= 24 && raw[0..2] == 0xeb9f_u16.to_ne_bytes(), "not BTF");
    let strings = u32_at(&raw, 4) as usize + u32_at(&raw, 16) as usize;
    let string = |off: u32| -> String {
        let start = strings + off as usize;
        let end = raw[start..].iter().position(|&b| b == 0).map_or(raw.len(), |n| start + n);
        String::from_utf8_lossy(&raw[start..end]).into_owned()
    };
    let func_of = |addr: u64| {
        ksyms
            .iter()
            .zip(&lens)
            .position(|(&start, &len)| addr >= start && addr < start + u64::from(len))
    };
    let lines = (0..nr_lines as usize)
        .filter_map(|i| {
            let rec = &lines[i * line_rec as usize..];
            let func = func_of(jited[i])?;
            Some(JitedLine {
                func,
                offset: jited[i] - ksyms[func],
                file: string(u32_at(rec, 4)),
                line: u32_at(rec, 12) >> 10,
                text: string(u32_at(rec, 8)).trim().to_string(),
            })
        })
        .collect();
    Ok((lines, lens))
}

// ---------------------------------------------------------------------------------------------
// Assembly

/// One BPF instruction.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Insn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

const R0: u8 = 0;
const R1: u8 = 1;
const R2: u8 = 2;
const R3: u8 = 3;
const R4: u8 = 4;
const R5: u8 = 5;
const R6: u8 = 6;
const R7: u8 = 7;
const R8: u8 = 8;
const R9: u8 = 9;
const R10: u8 = 10;

const HELPER_MAP_LOOKUP_ELEM: i32 = 1;
const HELPER_TAIL_CALL: i32 = 12;

#[derive(Clone, Copy)]
enum Size {
    B,
    H,
    W,
    Dw,
}

impl Size {
    fn bits(self) -> u8 {
        match self {
            Size::W => 0x00,
            Size::H => 0x08,
            Size::B => 0x10,
            Size::Dw => 0x18,
        }
    }
}

#[derive(Clone, Copy)]
struct Label(usize);

/// A straight-line assembler with forward jumps to labels.
#[derive(Default)]
struct Asm {
    insns: Vec<Insn>,
    labels: Vec<Option<usize>>,
    fixups: Vec<(usize, Label)>,
}

impl Asm {
    fn emit(&mut self, code: u8, dst: u8, src: u8, off: i16, imm: i32) {
        self.insns.push(Insn { code, regs: (src << 4) | dst, off, imm });
    }
    fn label(&mut self) -> Label {
        self.labels.push(None);
        Label(self.labels.len() - 1)
    }
    fn bind(&mut self, label: Label) {
        self.labels[label.0] = Some(self.insns.len());
    }
    fn mov_reg(&mut self, dst: u8, src: u8) {
        self.emit(0xbf, dst, src, 0, 0);
    }
    fn mov_imm(&mut self, dst: u8, imm: i32) {
        self.emit(0xb7, dst, 0, 0, imm);
    }
    fn add_imm(&mut self, dst: u8, imm: i32) {
        self.emit(0x07, dst, 0, 0, imm);
    }
    fn and_reg(&mut self, dst: u8, src: u8) {
        self.emit(0x5f, dst, src, 0, 0);
    }
    fn or_imm(&mut self, dst: u8, imm: i32) {
        self.emit(0x47, dst, 0, 0, imm);
    }
    fn lsh_imm(&mut self, dst: u8, imm: i32) {
        self.emit(0x67, dst, 0, 0, imm);
    }
    fn load(&mut self, size: Size, dst: u8, src: u8, off: i16) {
        self.emit(0x61 | size.bits(), dst, src, off, 0);
    }
    fn store(&mut self, size: Size, dst: u8, off: i16, src: u8) {
        self.emit(0x63 | size.bits(), dst, src, off, 0);
    }
    /// `lock *(u64 *)(dst + off) += src`
    fn atomic_add64(&mut self, dst: u8, off: i16, src: u8) {
        self.emit(0xdb, dst, src, off, 0);
    }
    fn jump(&mut self, code: u8, dst: u8, src: u8, imm: i32, to: Label) {
        self.fixups.push((self.insns.len(), to));
        self.emit(code, dst, src, 0, imm);
    }
    fn jeq_imm(&mut self, dst: u8, imm: i32, to: Label) {
        self.jump(0x15, dst, 0, imm, to);
    }
    fn jne_imm(&mut self, dst: u8, imm: i32, to: Label) {
        self.jump(0x55, dst, 0, imm, to);
    }
    fn jgt_reg(&mut self, dst: u8, src: u8, to: Label) {
        self.jump(0x2d, dst, src, 0, to);
    }
    fn call(&mut self, helper: i32) {
        self.emit(0x85, 0, 0, 0, helper);
    }
    fn exit(&mut self) {
        self.emit(0x95, 0, 0, 0, 0);
    }
    /// `dst = map` (a map reference for helpers).
    fn ld_map_fd(&mut self, dst: u8, map: &OwnedFd) {
        self.emit(0x18, dst, 1, 0, map.as_raw_fd());
        self.emit(0, 0, 0, 0, 0);
    }
    /// `dst = &map[0] + off` (direct value access of a single-entry array).
    fn ld_map_value(&mut self, dst: u8, map: &OwnedFd, off: i32) {
        self.emit(0x18, dst, 2, 0, map.as_raw_fd());
        self.emit(0, 0, 0, 0, off);
    }
    fn finish(mut self) -> Vec<Insn> {
        for (at, label) in std::mem::take(&mut self.fixups) {
            let target = self.labels[label.0].expect("every jump target is bound");
            self.insns[at].off = (target as isize - at as isize - 1) as i16;
        }
        self.insns
    }
}

/// Bytes of every frame the harness writes.
pub const FRAME_LEN: usize = 64;

/// The harness state, `STATE[0]`: `{ counter, slot_mask, fresh_source }`, all `u64`.
///
/// Repeat `n` copies frame `counter & slot_mask` from the frames array into the packet; with
/// `fresh_source` set it then writes `11.x.y.z` (x.y.z = the counter's low 24 bits) into the IPv4
/// source, so that every repeat is a new connection.
pub const STATE_LEN: usize = 24;

/// The harness program for `hook`: restore a frame, tail-call slot 0 of `prog_array`.
pub fn harness(hook: Hook, state: &OwnedFd, frames: &OwnedFd, prog_array: &OwnedFd) -> Vec<Insn> {
    let (data, data_end) = hook.data_offsets();
    let mut a = Asm::default();
    let fail = a.label();
    let skip_fresh = a.label();
    a.mov_reg(R6, R1);
    a.ld_map_value(R7, state, 0);
    a.load(Size::Dw, R8, R7, 0);
    a.mov_reg(R1, R8);
    a.add_imm(R1, 1);
    a.store(Size::Dw, R7, 0, R1);
    a.mov_reg(R9, R8);
    a.load(Size::Dw, R1, R7, 8);
    a.and_reg(R8, R1);
    a.store(Size::W, R10, -4, R8);
    a.mov_reg(R2, R10);
    a.add_imm(R2, -4);
    a.ld_map_fd(R1, frames);
    a.call(HELPER_MAP_LOOKUP_ELEM);
    a.jeq_imm(R0, 0, fail);
    a.load(Size::W, R2, R6, data);
    a.load(Size::W, R3, R6, data_end);
    a.mov_reg(R4, R2);
    a.add_imm(R4, FRAME_LEN as i32);
    a.jgt_reg(R4, R3, fail);
    for off in (0..FRAME_LEN as i16).step_by(8) {
        a.load(Size::Dw, R1, R0, off);
        a.store(Size::Dw, R2, off, R1);
    }
    a.load(Size::Dw, R1, R7, 16);
    a.jeq_imm(R1, 0, skip_fresh);
    a.mov_reg(R1, R9);
    a.lsh_imm(R1, 8);
    a.or_imm(R1, 11);
    a.store(Size::W, R2, 14 + 12, R1);
    a.bind(skip_fresh);
    a.mov_reg(R1, R6);
    a.ld_map_fd(R2, prog_array);
    a.mov_imm(R3, 0);
    a.call(HELPER_TAIL_CALL);
    a.bind(fail);
    a.mov_imm(R0, hook.harness_failed() as i32);
    a.exit();
    a.finish()
}

/// `return ret;`
pub fn trivial(ret: i32) -> Vec<Insn> {
    let mut a = Asm::default();
    a.mov_imm(R0, ret);
    a.exit();
    a.finish()
}

/// XDP: count and drop IPv4 UDP datagrams to `port` (IHL 5) in `counter[0]`; pass the rest.
pub fn udp_sink(counter: &OwnedFd, port: u16) -> Vec<Insn> {
    let mut a = Asm::default();
    let pass = a.label();
    a.load(Size::W, R2, R1, 0);
    a.load(Size::W, R3, R1, 4);
    a.mov_reg(R4, R2);
    a.add_imm(R4, 38);
    a.jgt_reg(R4, R3, pass);
    a.load(Size::H, R5, R2, 12);
    a.jne_imm(R5, i32::from(u16::from_ne_bytes(0x0800u16.to_be_bytes())), pass);
    a.load(Size::B, R5, R2, 14 + 9);
    a.jne_imm(R5, 17, pass);
    a.load(Size::H, R5, R2, 14 + 20 + 2);
    a.jne_imm(R5, i32::from(u16::from_ne_bytes(port.to_be_bytes())), pass);
    a.ld_map_value(R1, counter, 0);
    a.mov_imm(R2, 1);
    a.atomic_add64(R1, 0, R2);
    a.mov_imm(R0, 1);
    a.exit();
    a.bind(pass);
    a.mov_imm(R0, 2);
    a.exit();
    a.finish()
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd as _;

    use super::*;
    use crate::netns::require_root;

    fn udp_frame(port: u16) -> Vec<u8> {
        let mut f = vec![0u8; FRAME_LEN];
        f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        f[14] = 0x45;
        f[14 + 9] = 17;
        f[14 + 20 + 2..14 + 20 + 4].copy_from_slice(&port.to_be_bytes());
        f
    }

    #[test]
    fn harness_copies_a_fresh_frame_and_tail_calls_its_slot() {
        require_root();
        for (hook, ret) in [(Hook::Xdp, 2), (Hook::Tc, 0)] {
            let state = create_map(BPF_MAP_TYPE_ARRAY, 4, STATE_LEN as u32, 1, "t_state").unwrap();
            let frames =
                create_map(BPF_MAP_TYPE_ARRAY, 4, FRAME_LEN as u32, 2, "t_frames").unwrap();
            let slots = create_map(BPF_MAP_TYPE_PROG_ARRAY, 4, 4, 1, "t_tail").unwrap();
            let harness =
                load_program(hook, &harness(hook, &state, &frames, &slots), "t_harness").unwrap();
            let target = load_program(hook, &trivial(ret), "t_trivial").unwrap();
            let data = [0u8; FRAME_LEN];
            // Empty slot: the harness reports that it could not run the program.
            let run = test_run(harness.as_fd(), &data, &[], 1).unwrap();
            assert_eq!(run.retval, hook.harness_failed());
            map_update(&frames, &0u32.to_ne_bytes(), &udp_frame(9)).unwrap();
            map_update(&frames, &1u32.to_ne_bytes(), &udp_frame(10)).unwrap();
            let mut st = [0u8; STATE_LEN];
            st[8..16].copy_from_slice(&1u64.to_ne_bytes());
            map_update(&state, &0u32.to_ne_bytes(), &st).unwrap();
            map_update(&slots, &0u32.to_ne_bytes(), &(target.as_raw_fd() as u32).to_ne_bytes())
                .unwrap();
            let run = test_run(harness.as_fd(), &data, &[], 5).unwrap();
            assert_eq!(run.retval, ret as u32, "{hook:?}");
            let mut after = [0u8; STATE_LEN];
            map_lookup(&state, &0u32.to_ne_bytes(), &mut after).unwrap();
            assert_eq!(u64::from_ne_bytes(after[..8].try_into().unwrap()), 5, "{hook:?}");
        }
    }

    #[test]
    fn sink_counts_and_drops_udp_to_its_port_only() {
        require_root();
        let counter = create_map(BPF_MAP_TYPE_ARRAY, 4, 8, 1, "t_sink").unwrap();
        let sink = load_program(Hook::Xdp, &udp_sink(&counter, 9), "t_sink").unwrap();
        assert_eq!(test_run(sink.as_fd(), &udp_frame(9), &[], 3).unwrap().retval, 1);
        assert_eq!(test_run(sink.as_fd(), &udp_frame(53), &[], 1).unwrap().retval, 2);
        let mut value = [0u8; 8];
        map_lookup(&counter, &0u32.to_ne_bytes(), &mut value).unwrap();
        assert_eq!(u64::from_ne_bytes(value), 3);
    }
}
