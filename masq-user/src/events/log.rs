//! `[events] log`: JSON lines, rotated by size (`<log>.1` the newest of `log_keep`).
use std::{
    fs::{self, File, OpenOptions},
    io::{self, BufWriter, Write as _},
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
};

use anyhow::Context as _;

pub struct EventLog {
    path: PathBuf,
    file: BufWriter<File>,
    size: u64,
    max_bytes: u64,
    keep: u32,
}

fn open(path: &Path) -> anyhow::Result<(BufWriter<File>, u64)> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    // Who held which public port when: readable by root and its group only.
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(path)
        .with_context(|| format!("opening the event log {}", path.display()))?;
    let size = file.metadata()?.len();
    Ok((BufWriter::new(file), size))
}

fn numbered(path: &Path, n: u32) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

impl EventLog {
    pub fn open(path: &Path, max_bytes: u64, keep: u32) -> anyhow::Result<Self> {
        let (file, size) = open(path)?;
        Ok(Self { path: path.to_path_buf(), file, size, max_bytes, keep })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Append one line (without its newline), rotating first when it would not fit. A
    /// rotation that fails leaves the line in the current file (and is tried again a full
    /// size later); the error is returned after the line is written.
    pub fn write_line(&mut self, line: &str) -> anyhow::Result<()> {
        let len = line.len() as u64 + 1;
        let mut rotation = Ok(());
        if self.size > 0 && self.size + len > self.max_bytes {
            rotation = self.rotate();
            if rotation.is_err() {
                self.size = 0;
            }
        }
        self.file.write_all(line.as_bytes())?;
        self.file.write_all(b"\n")?;
        self.size += len;
        rotation
    }

    pub fn flush(&mut self) -> anyhow::Result<()> {
        self.file.flush().with_context(|| format!("writing {}", self.path.display()))
    }

    fn rotate(&mut self) -> anyhow::Result<()> {
        self.flush()?;
        // Moved or removed by someone else (logrotate): as good as rotated.
        let gone = |r: io::Result<()>| match r {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other,
        };
        if self.keep == 0 {
            gone(fs::remove_file(&self.path))?;
        } else {
            let _ = fs::remove_file(numbered(&self.path, self.keep));
            for n in (1..self.keep).rev() {
                let _ = fs::rename(numbered(&self.path, n), numbered(&self.path, n + 1));
            }
            gone(fs::rename(&self.path, numbered(&self.path, 1)))
                .with_context(|| format!("rotating {}", self.path.display()))?;
        }
        (self.file, self.size) = open(&self.path)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_by_size_keeping_the_newest() {
        let dir = std::env::temp_dir().join(format!("masq-eventlog-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let path = dir.join("conns.log");
        let mut log = EventLog::open(&path, 100, 2).unwrap();
        for i in 0..10 {
            log.write_line(&format!("{i:039}")).unwrap();
        }
        log.flush().unwrap();
        // 40 bytes a line, 2 per file: 8 and 9 now, 6 and 7 in .1, 4 and 5 in .2, older gone.
        let read = |p: PathBuf| fs::read_to_string(p).unwrap();
        assert_eq!(read(path.clone()), format!("{:039}\n{:039}\n", 8, 9));
        assert_eq!(read(numbered(&path, 1)), format!("{:039}\n{:039}\n", 6, 7));
        assert_eq!(read(numbered(&path, 2)), format!("{:039}\n{:039}\n", 4, 5));
        assert!(!numbered(&path, 3).exists());
        // Reopened, it appends and keeps counting the size it found.
        drop(log);
        let mut log = EventLog::open(&path, 100, 2).unwrap();
        log.write_line(&format!("{:039}", 10)).unwrap();
        log.flush().unwrap();
        assert_eq!(read(path.clone()), format!("{:039}\n", 10));
        // Moved away behind its back (logrotate): lines go on into the moved file until the
        // next rotation, which opens the path again instead of failing.
        fs::rename(&path, dir.join("moved")).unwrap();
        for i in 11..14 {
            log.write_line(&format!("{i:039}")).unwrap();
        }
        log.flush().unwrap();
        assert_eq!(read(dir.join("moved")), format!("{:039}\n{:039}\n", 10, 11));
        assert_eq!(read(path.clone()), format!("{:039}\n{:039}\n", 12, 13));
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o640);
        fs::remove_dir_all(&dir).unwrap();
    }
}
