//! JSON-lines logs of a run, appended and flushed as the run goes and cut back to the
//! checkpoint's step on resume: `RUN_DIR/metrics.jsonl` (one object per step and per
//! evaluation, also written as TensorBoard scalars under `RUN_DIR/tb/`) and
//! `RUN_DIR/journal.jsonl` (events: stage changes, plugin swaps).

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use super::tensorboard::{EventWriter, scalars_of};

/// Appends metric lines.
pub struct MetricsLog {
    path: PathBuf,
    /// `None` on the ranks of a multi-process run that do not write (rank 0 writes).
    file: Option<File>,
    /// Where the records also go as TensorBoard scalars.
    tensorboard: Option<EventWriter>,
}

impl MetricsLog {
    /// Open `path` for appending, first dropping every line whose `step` is above
    /// `keep_through` (work a resumed run will redo).
    pub fn open(path: &Path, keep_through: Option<u64>) -> std::io::Result<Self> {
        let kept: Vec<String> = match (keep_through, File::open(path)) {
            (Some(limit), Ok(f)) => BufReader::new(f)
                .lines()
                .map_while(Result::ok)
                .filter(|line| serde_json::from_str::<serde_json::Value>(line).ok().and_then(|v| v.get("step").and_then(|s| s.as_u64())).is_some_and(|s| s <= limit))
                .collect(),
            _ => vec![],
        };
        let mut text = kept.join("\n");
        if !text.is_empty() {
            text.push('\n');
        }
        crate::atomic_file::write(path, text.as_bytes())?;
        let file = OpenOptions::new().append(true).open(path)?;
        Ok(Self { path: path.to_path_buf(), file: Some(file), tensorboard: None })
    }

    /// Also write every record with a `step` as TensorBoard scalars, into a new event
    /// file in `dir`.
    pub fn with_tensorboard(mut self, dir: &Path) -> std::io::Result<Self> {
        self.tensorboard = Some(EventWriter::create(dir)?);
        Ok(self)
    }

    /// A log that writes nothing: the other ranks' view of the log rank 0 writes at `path`.
    pub fn discard(path: &Path) -> Self {
        Self { path: path.to_path_buf(), file: None, tensorboard: None }
    }

    /// Append one record.
    pub fn write(&mut self, record: &serde_json::Value) -> std::io::Result<()> {
        let Some(file) = self.file.as_mut() else { return Ok(()) };
        let mut line = record.to_string();
        line.push('\n');
        file.write_all(line.as_bytes())?;
        file.flush()?;
        if let (Some(tb), Some(step)) = (self.tensorboard.as_mut(), record.get("step").and_then(serde_json::Value::as_u64)) {
            tb.scalars(step, &scalars_of(record))?;
        }
        Ok(())
    }

    /// Whether records reach a file (a log from [`MetricsLog::discard`] writes none).
    pub fn writes(&self) -> bool {
        self.file.is_some()
    }

    /// The file the records go to.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Every record of a metrics file.
pub fn read_all(path: &Path) -> std::io::Result<Vec<serde_json::Value>> {
    let f = File::open(path)?;
    Ok(BufReader::new(f).lines().map_while(Result::ok).filter_map(|l| serde_json::from_str(&l).ok()).collect())
}
