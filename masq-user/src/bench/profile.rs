//! `masq-lab bench --profile PATH`: where a program's time goes, by source line. The program
//! runs hot under `perf record` of this process; each sample in its JIT image is attributed to
//! the source line whose machine code it falls in (the kernel's JITed line info,
//! [`bpf::jited_lines`]), every other sample to its kernel symbol (helpers, map code).
use std::{
    collections::HashMap,
    fmt::Write as _,
    os::fd::BorrowedFd,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, ensure};

use super::bpf::{self, JitedLine};

/// `perf record`'s sampling frequency, Hz.
const FREQUENCY: u32 = 4999;

/// One program's profile.
pub struct Profile {
    pub program: String,
    pub packets: u64,
    /// Samples in the program's own machine code, by source location (most first).
    pub lines: Vec<(String, String, u64)>,
    /// The same by file.
    pub files: Vec<(String, u64)>,
    /// Samples elsewhere in the kernel during the run, by symbol (most first).
    pub symbols: Vec<(String, u64)>,
}

impl Profile {
    fn own_samples(&self) -> u64 {
        self.files.iter().map(|(_, n)| n).sum()
    }

    /// Time per packet the samples stand for.
    fn ns(&self, samples: u64) -> f64 {
        samples as f64 / f64::from(FREQUENCY) * 1e9 / self.packets.max(1) as f64
    }

    /// Markdown: the program's own time per packet by file and by line, and (`kernel`) the
    /// symbols its run spent the rest in.
    pub fn markdown(&self, top: usize, kernel: bool) -> String {
        let own = self.own_samples();
        let mut s = format!(
            "#### {}: {:.0} ns per packet in its own code ({own} samples, {} packets)\n\n\
             | file | share | ns/packet |\n|---|---:|---:|\n",
            self.program,
            self.ns(own),
            self.packets
        );
        let share = |n: u64| 100.0 * n as f64 / own.max(1) as f64;
        for (file, n) in self.files.iter().take(top) {
            let _ = writeln!(s, "| {file} | {:.1}% | {:.1} |", share(*n), self.ns(*n));
        }
        let _ = writeln!(s, "\n| line | share | source |\n|---|---:|---|");
        for (loc, text, n) in self.lines.iter().take(top) {
            let text = text.replace('|', "\\|");
            let _ = writeln!(
                s,
                "| {loc} | {:.1}% | `{}` |",
                share(*n),
                text.chars().take(80).collect::<String>()
            );
        }
        if !kernel {
            return s + "\n";
        }
        let _ = writeln!(s, "\n| elsewhere (kernel symbol) | ns/packet |\n|---|---:|");
        for (sym, n) in self.symbols.iter().take(top) {
            let _ = writeln!(s, "| {sym} | {:.1} |", self.ns(*n));
        }
        s + "\n"
    }
}

/// Run `work` (it returns the packets it ran) for `seconds` under `perf record -p <self>` and
/// attribute the samples of `program` (loaded as `fd`) to its source lines.
pub fn record(
    program: &str,
    fd: BorrowedFd<'_>,
    seconds: f64,
    mut work: impl FnMut() -> Result<u64>,
) -> Result<Profile> {
    let (lines, lens) = bpf::jited_lines(fd)?;
    let data =
        std::env::temp_dir().join(format!("masq-profile-{}-{program}.data", std::process::id()));
    let mut perf = Command::new("perf")
        .args(["record", "-q", "-F", &FREQUENCY.to_string(), "-p"])
        .arg(std::process::id().to_string())
        .arg("-o")
        .arg(&data)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("running perf record (install linux-perf)")?;
    // perf attaches to every thread of this process before the run starts.
    thread::sleep(Duration::from_millis(500));
    let started = Instant::now();
    let mut packets = 0;
    let result = (|| -> Result<()> {
        while started.elapsed().as_secs_f64() < seconds {
            packets += work()?;
        }
        Ok(())
    })();
    // SAFETY: plain kill(2) of our own child: perf writes its file out on SIGINT.
    unsafe { libc::kill(perf.id() as i32, libc::SIGINT) };
    let status = perf.wait()?;
    result?;
    ensure!(status.success() || data.exists(), "perf record failed: {status}");
    let script = Command::new("perf")
        .args(["script", "-F", "ip,sym,symoff", "-i"])
        .arg(&data)
        .output()
        .context("running perf script")?;
    let _ = std::fs::remove_file(&data);
    ensure!(script.status.success(), "perf script: {}", String::from_utf8_lossy(&script.stderr));
    let mut by_line: HashMap<(String, String), u64> = HashMap::new();
    let mut by_file: HashMap<String, u64> = HashMap::new();
    let mut by_symbol: HashMap<String, u64> = HashMap::new();
    let suffix = format!("_{program}");
    for line in String::from_utf8_lossy(&script.stdout).lines() {
        let Some(sym) = line.split_whitespace().nth(1) else { continue };
        let (name, offset) = match sym.rsplit_once("+0x") {
            Some((name, off)) => (name, u64::from_str_radix(off, 16).ok()),
            None => (sym, None),
        };
        let own = name.starts_with("bpf_prog_") && name.ends_with(&suffix);
        match (own, offset) {
            (true, Some(offset)) => {
                if let Some(l) = line_at(&lines, &lens, offset) {
                    let loc = format!("{}:{}", short_path(&l.file), l.line);
                    *by_file.entry(short_path(&l.file)).or_default() += 1;
                    *by_line.entry((loc, l.text.clone())).or_default() += 1;
                }
            }
            _ => *by_symbol.entry(name.to_string()).or_default() += 1,
        }
    }
    let sorted = |m: HashMap<String, u64>| {
        let mut v: Vec<(String, u64)> = m.into_iter().collect();
        v.sort_by_key(|e| std::cmp::Reverse(e.1));
        v
    };
    let mut lines: Vec<(String, String, u64)> =
        by_line.into_iter().map(|((loc, text), n)| (loc, text, n)).collect();
    lines.sort_by_key(|e| std::cmp::Reverse(e.2));
    Ok(Profile {
        program: program.to_string(),
        packets,
        lines,
        files: sorted(by_file),
        symbols: sorted(by_symbol),
    })
}

/// The line whose code holds `offset` in the program's largest function longer than it (the
/// entry stub and the body share the program's name).
fn line_at<'a>(lines: &'a [JitedLine], lens: &[u32], offset: u64) -> Option<&'a JitedLine> {
    let func = (0..lens.len()).filter(|&f| u64::from(lens[f]) > offset).max_by_key(|&f| lens[f])?;
    lines.iter().filter(|l| l.func == func && l.offset <= offset).max_by_key(|l| l.offset)
}

/// `masq-ebpf/src/x.rs`, `core/…`, `aya-ebpf/…`: enough of a path to know it.
fn short_path(file: &str) -> String {
    if let Some((_, rest)) = file.split_once("/masq-ebpf/src/") {
        return rest.to_string();
    }
    if let Some((_, rest)) = file.split_once("/library/") {
        return rest.replacen("/src/", "/", 1);
    }
    let parts: Vec<&str> = file.rsplit('/').take(3).collect();
    parts.into_iter().rev().collect::<Vec<_>>().join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(func: usize, offset: u64, line: u32) -> JitedLine {
        JitedLine { func, offset, file: "/w/masq-ebpf/src/a.rs".into(), line, text: String::new() }
    }

    #[test]
    fn samples_fall_on_the_line_whose_code_holds_them() {
        let lines = [line(0, 0, 1), line(1, 0, 10), line(1, 0x40, 11), line(1, 0x80, 12)];
        let lens = [0x20, 0x100];
        assert_eq!(line_at(&lines, &lens, 0x10).unwrap().line, 10, "the body, not the stub");
        assert_eq!(line_at(&lines, &lens, 0x40).unwrap().line, 11);
        assert_eq!(line_at(&lines, &lens, 0x7f).unwrap().line, 11);
        assert_eq!(line_at(&lines, &lens, 0xff).unwrap().line, 12);
        assert!(line_at(&lines, &lens, 0x100).is_none());
    }

    #[test]
    fn paths_are_shortened_to_what_names_them() {
        assert_eq!(short_path("/work/main/masq-ebpf/src/packet.rs"), "packet.rs");
        assert_eq!(
            short_path(
                "/root/.rustup/toolchains/n/lib/rustlib/src/rust/library/core/src/ptr/mod.rs"
            ),
            "core/ptr/mod.rs"
        );
        assert_eq!(short_path("/r/aya-ebpf-0.2.1/src/helpers.rs"), "aya-ebpf-0.2.1/src/helpers.rs");
    }
}
