//! Reading a file whose path a user or a plugin author controls without trusting what
//! it is: only regular files are read (a FIFO blocks forever in `open`, a device never
//! ends), opening never blocks, and a file over its size limit is refused from its
//! metadata before a byte is read.

use std::fs::OpenOptions;
use std::io::{Error, ErrorKind, Read};
use std::path::Path;

/// The bytes of the regular file `path`, refused when it is anything else or larger
/// than `limit` bytes.
pub fn read(path: &Path, limit: u64) -> std::io::Result<Vec<u8>> {
    let mut options = OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        // Opening a FIFO without a writer blocks unless non-blocking; regular files
        // ignore the flag for reads.
        options.custom_flags(libc::O_NONBLOCK);
    }
    let file = options.open(path)?;
    let metadata = file.metadata()?;
    if !metadata.file_type().is_file() {
        return Err(Error::new(ErrorKind::InvalidInput, format!("not a regular file ({})", describe(&metadata.file_type()))));
    }
    if metadata.len() > limit {
        return Err(Error::new(ErrorKind::FileTooLarge, format!("{} bytes, over the limit of {limit} bytes", metadata.len())));
    }
    let mut bytes = Vec::with_capacity(metadata.len() as usize);
    // The file may grow after the check; never read past the limit.
    file.take(limit + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(Error::new(ErrorKind::FileTooLarge, format!("grew past the limit of {limit} bytes while being read")));
    }
    Ok(bytes)
}

fn describe(kind: &std::fs::FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if kind.is_fifo() {
            return "a FIFO";
        }
        if kind.is_socket() {
            return "a socket";
        }
        if kind.is_block_device() || kind.is_char_device() {
            return "a device";
        }
    }
    if kind.is_dir() { "a folder" } else { "not a plain file" }
}

#[cfg(test)]
mod tests {
    use super::read;

    #[test]
    fn reads_files_and_refuses_fifos_folders_and_oversized_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("a");
        std::fs::write(&file, b"12345").expect("write");
        assert_eq!(read(&file, 5).expect("read"), b"12345");
        let big = read(&file, 4).expect_err("over the limit");
        assert!(big.to_string().contains("over the limit of 4 bytes"), "{big}");
        assert!(read(dir.path(), 100).expect_err("folder").to_string().contains("a folder"));
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().expect("utf-8")).expect("c string");
        // SAFETY: a plain mkfifo on a path inside the test's temporary folder.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
        // Returns at once (no writer is ever opened) with a clear refusal.
        assert!(read(&fifo, 100).expect_err("fifo").to_string().contains("a FIFO"));
    }
}
