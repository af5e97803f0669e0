//! The bundle's `.tar`: written in one canonical layout (ustar headers, mode 0644,
//! mtime 0, no owner names, files in manifest order), and read back strictly: every
//! header checksum is checked and the whole archive must be byte-for-byte the layout
//! `pack` would write for the same files, so a flipped bit in a header, in padding or
//! in the end-of-archive blocks is caught as surely as one in a file.

use std::collections::HashSet;
use std::io::Read;
use std::path::Path;

use super::error::BundleError;
use super::limits::BundleLimits;

const BLOCK: usize = 512;

/// One file of an archive, in archive order.
pub struct ArchivedFile {
    pub name: String,
    pub bytes: Vec<u8>,
}

/// The canonical ustar header of a file named `name` with `size` bytes.
fn header(name: &str, size: u64) -> std::io::Result<tar::Header> {
    let mut header = tar::Header::new_ustar();
    header.set_path(name)?;
    header.set_size(size);
    header.set_mode(0o644);
    header.set_mtime(0);
    header.set_uid(0);
    header.set_gid(0);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_cksum();
    Ok(header)
}

/// The canonical archive of `files`, in the order given.
pub fn write(files: &[ArchivedFile]) -> std::io::Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    for file in files {
        builder.append(&header(&file.name, file.bytes.len() as u64)?, file.bytes.as_slice())?;
    }
    builder.into_inner()
}

/// The files of the archive `bytes` (read from `path`), refusing any archive that is
/// not exactly what [`write`] makes of them or that breaks `limits`. Each entry's size
/// is checked from its header before its bytes are copied, names are checked as they
/// come, and the layout is compared entry by entry: time and memory grow linearly with
/// the archive, never beyond the limits.
pub fn read(path: &Path, bytes: &[u8], limits: &BundleLimits) -> Result<Vec<ArchivedFile>, BundleError> {
    let corrupt = |place: String, reason: String| BundleError::Corrupt { bundle: path.to_path_buf(), place, reason };
    let mut files: Vec<ArchivedFile> = Vec::new();
    let mut names: HashSet<String> = HashSet::new();
    let mut archive = tar::Archive::new(bytes);
    let entries = archive.entries().map_err(|e| corrupt("the archive".into(), e.to_string()))?;
    let mut next_header = 0usize;
    for entry in entries {
        let here = |files: &[ArchivedFile]| header_place(bytes, next_header, files.last().map(|f| f.name.as_str()));
        let mut entry = entry.map_err(|e| corrupt(here(&files), e.to_string()))?;
        let header_at = entry.raw_header_position() as usize;
        let data_at = entry.raw_file_position() as usize;
        if header_at != next_header || data_at != header_at + BLOCK {
            return Err(corrupt(here(&files), "extension headers are not part of a Recast bundle".into()));
        }
        let name = String::from_utf8(entry.path_bytes().into_owned()).map_err(|_| corrupt(here(&files), "the file name is not UTF-8".into()))?;
        let at = || format!("the header of `{name}` at byte {header_at}");
        if files.len() >= limits.max_entries {
            return Err(BundleError::TooLarge { bundle: path.to_path_buf(), what: format!("{} entries or more", files.len() + 1), limit: format!("{} entries (`max_entries`)", limits.max_entries) });
        }
        if entry.header().entry_type() != tar::EntryType::Regular {
            return Err(corrupt(at(), "not a regular file".into()));
        }
        check_entry_name(&name).map_err(|reason| corrupt(at(), reason))?;
        let size = entry.header().size().map_err(|e| corrupt(at(), e.to_string()))?;
        if size > limits.entry_bytes() {
            return Err(BundleError::TooLarge { bundle: path.to_path_buf(), what: format!("`{name}` ({size} bytes)"), limit: limits.describe_entry_limit() });
        }
        if !names.insert(name.clone()) {
            return Err(corrupt(format!("`{name}`"), "the archive holds this file twice".into()));
        }
        let mut content = Vec::with_capacity(size as usize);
        entry.read_to_end(&mut content).map_err(|e| corrupt(format!("`{name}`"), e.to_string()))?;
        let canonical = header(&name, size).map_err(|e| corrupt(at(), e.to_string()))?;
        if let Some(i) = canonical.as_bytes().iter().zip(&bytes[header_at..data_at]).position(|(a, b)| a != b) {
            return Err(corrupt(format!("the header of `{name}` (byte {})", header_at + i), format!("byte {} differs from the layout `recast bundle pack` writes", header_at + i)));
        }
        let end = data_at + content.len();
        next_header = end.div_ceil(BLOCK) * BLOCK;
        if let Some(i) = bytes.get(end..next_header.min(bytes.len())).and_then(|pad| pad.iter().position(|&b| b != 0)) {
            return Err(corrupt(format!("the padding after `{name}` (byte {})", end + i), format!("byte {} differs from the layout `recast bundle pack` writes", end + i)));
        }
        files.push(ArchivedFile { name, bytes: content });
    }
    // Exactly two zero blocks end the archive.
    let tail = bytes.get(next_header..).unwrap_or_default();
    if let Some(i) = tail.iter().take(2 * BLOCK).position(|&b| b != 0) {
        return Err(corrupt(format!("the end-of-archive blocks (byte {})", next_header + i), format!("byte {} differs from the layout `recast bundle pack` writes", next_header + i)));
    }
    match tail.len().cmp(&(2 * BLOCK)) {
        std::cmp::Ordering::Less => Err(corrupt(format!("the end-of-archive blocks (byte {})", bytes.len()), "the archive is truncated".into())),
        std::cmp::Ordering::Greater => Err(corrupt(format!("the end-of-archive blocks (byte {})", next_header + 2 * BLOCK), format!("{} bytes follow the end of the archive", tail.len() - 2 * BLOCK))),
        std::cmp::Ordering::Equal => Ok(files),
    }
}

/// A name a bundle may hold: relative, `/`-separated, no empty, `.` or `..` parts.
fn check_entry_name(name: &str) -> Result<(), String> {
    if name.starts_with('/') || name.contains('\\') {
        return Err("an absolute path or `\\` separators; a bundle holds relative `/`-separated paths".into());
    }
    if name.split('/').any(|part| part.is_empty() || part == "." || part == "..") {
        return Err("an empty, `.` or `..` path part; a bundle's files stay inside it".into());
    }
    Ok(())
}

/// A header that failed to parse: its position and the name it (probably) carries.
fn header_place(bytes: &[u8], at: usize, previous: Option<&str>) -> String {
    let name = bytes.get(at..at + 100).map(|raw| String::from_utf8_lossy(raw.split(|&b| b == 0).next().unwrap_or_default()).into_owned()).unwrap_or_default();
    let after = previous.map(|p| format!(", after `{p}`")).unwrap_or_default();
    if name.is_empty() { format!("the header at byte {at}{after}") } else { format!("the header of `{name}` at byte {at}{after}") }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files() -> Vec<ArchivedFile> {
        vec![ArchivedFile { name: "bundle.toml".into(), bytes: b"name = \"x\"\n".to_vec() }, ArchivedFile { name: "router/a.wasm".into(), bytes: vec![7; 700] }]
    }

    #[test]
    fn round_trips_and_is_deterministic() {
        let a = write(&files()).expect("write");
        assert_eq!(a, write(&files()).expect("write again"));
        let back = read(Path::new("b.tar"), &a, &BundleLimits::default()).expect("read");
        assert_eq!(back.len(), 2);
        assert_eq!(back[1].bytes, vec![7; 700]);
    }

    #[test]
    fn every_flipped_bit_outside_file_contents_is_refused() {
        let a = write(&files()).expect("write");
        for at in 0..a.len() {
            let mut bad = a.clone();
            bad[at] ^= 0x10;
            let result = read(Path::new("b.tar"), &bad, &BundleLimits::default());
            // A flip inside a file's data survives the tar layer; the manifest's digests
            // catch it (see the bundle tests).
            let in_data = (512..512 + 11).contains(&at) || (1536..1536 + 700).contains(&at);
            if !in_data {
                assert!(result.is_err(), "flip at byte {at} accepted");
            }
        }
    }
}
