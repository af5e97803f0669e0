//! The bundle's `.tar`: written in one canonical layout (ustar headers, mode 0644,
//! mtime 0, no owner names, files in manifest order), and read back strictly: every
//! header checksum is checked and the whole archive must be byte-for-byte the layout
//! `pack` would write for the same files, so a flipped bit in a header, in padding or
//! in the end-of-archive blocks is caught as surely as one in a file.

use std::io::Read;
use std::path::Path;

use super::error::BundleError;

const BLOCK: usize = 512;

/// One file of an archive, in archive order.
pub struct ArchivedFile {
    pub name: String,
    pub bytes: Vec<u8>,
}

/// The canonical archive of `files`, in the order given.
pub fn write(files: &[ArchivedFile]) -> std::io::Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    for file in files {
        let mut header = tar::Header::new_ustar();
        header.set_path(&file.name)?;
        header.set_size(file.bytes.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        header.set_entry_type(tar::EntryType::Regular);
        header.set_cksum();
        builder.append(&header, file.bytes.as_slice())?;
    }
    builder.into_inner()
}

/// The files of the archive `bytes` (read from `path`), refusing any archive that is
/// not exactly what [`write`] makes of them.
pub fn read(path: &Path, bytes: &[u8]) -> Result<Vec<ArchivedFile>, BundleError> {
    let corrupt = |place: String, reason: String| BundleError::Corrupt { bundle: path.to_path_buf(), place, reason };
    let mut files: Vec<ArchivedFile> = Vec::new();
    let mut regions: Vec<(usize, usize, String)> = Vec::new();
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
        if entry.header().entry_type() != tar::EntryType::Regular {
            return Err(corrupt(format!("the header of `{name}` at byte {header_at}"), "not a regular file".into()));
        }
        let mut content = Vec::new();
        entry.read_to_end(&mut content).map_err(|e| corrupt(format!("`{name}`"), e.to_string()))?;
        let end = data_at + content.len();
        regions.push((header_at, data_at, name.clone()));
        next_header = end.div_ceil(BLOCK) * BLOCK;
        if files.iter().any(|f| f.name == name) {
            return Err(corrupt(format!("`{name}`"), "the archive holds this file twice".into()));
        }
        files.push(ArchivedFile { name, bytes: content });
    }
    let canonical = write(&files).map_err(|e| corrupt("the archive".into(), e.to_string()))?;
    if canonical != bytes {
        let at = canonical.iter().zip(bytes).position(|(a, b)| a != b).unwrap_or(canonical.len().min(bytes.len()));
        let reason = if at == canonical.len() {
            format!("{} bytes follow the end of the archive", bytes.len() - at)
        } else if at == bytes.len() {
            "the archive is truncated".into()
        } else {
            format!("byte {at} differs from the layout `recast bundle pack` writes")
        };
        return Err(corrupt(place_of(at, &regions, &files), reason));
    }
    Ok(files)
}

/// Where byte `at` lies: in which file's header, data or padding, or past the files.
fn place_of(at: usize, regions: &[(usize, usize, String)], files: &[ArchivedFile]) -> String {
    for ((header, data, name), file) in regions.iter().zip(files) {
        let end = data + file.bytes.len();
        if at >= *header && at < *data {
            return format!("the header of `{name}` (byte {at})");
        }
        if at >= *data && at < end {
            return format!("`{name}` (byte {at})");
        }
        if at >= end && at < end.div_ceil(BLOCK) * BLOCK {
            return format!("the padding after `{name}` (byte {at})");
        }
    }
    format!("the end-of-archive blocks (byte {at})")
}

/// A header that failed to parse: its position and the name it (probably) carries.
fn header_place(bytes: &[u8], at: usize, previous: Option<&str>) -> String {
    let name = bytes.get(at..at + 100).map(|raw| String::from_utf8_lossy(raw.split(|&b| b == 0).next().unwrap_or_default()).into_owned()).unwrap_or_default();
    let after = previous.map(|p| format!(", after `{p}`")).unwrap_or_default();
    if name.is_empty() {
        format!("the header at byte {at}{after}")
    } else {
        format!("the header of `{name}` at byte {at}{after}")
    }
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
        let back = read(Path::new("b.tar"), &a).expect("read");
        assert_eq!(back.len(), 2);
        assert_eq!(back[1].bytes, vec![7; 700]);
    }

    #[test]
    fn every_flipped_bit_outside_file_contents_is_refused() {
        let a = write(&files()).expect("write");
        for at in 0..a.len() {
            let mut bad = a.clone();
            bad[at] ^= 0x10;
            let result = read(Path::new("b.tar"), &bad);
            // A flip inside a file's data survives the tar layer; the manifest's digests
            // catch it (see the bundle tests).
            let in_data = (512..512 + 11).contains(&at) || (1536..1536 + 700).contains(&at);
            if !in_data {
                assert!(result.is_err(), "flip at byte {at} accepted");
            }
        }
    }
}
