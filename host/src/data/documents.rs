//! The documents of one input file, by format: JSONL (plain, `.gz` or `.zst`; one
//! field per line), Parquet (one text column, as Hugging Face datasets ship), or any
//! other file as one text document.

use std::io::Read;
use std::path::Path;

use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::Field;

use super::error::DataError;

/// How a file is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InputFormat {
    /// One document per line: a JSON object with the text in a field.
    Jsonl(Compression),
    /// A Parquet file: one document per row, from a string column.
    Parquet,
    /// The whole file is one UTF-8 document.
    Text,
}

/// How a JSONL file is compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl InputFormat {
    /// The format `path`'s name says: `.jsonl`, `.jsonl.gz`, `.jsonl.zst`, `.parquet`,
    /// else text.
    pub fn of(path: &Path) -> Self {
        let name = path.file_name().map(|n| n.to_string_lossy().to_ascii_lowercase()).unwrap_or_default();
        if name.ends_with(".jsonl") {
            InputFormat::Jsonl(Compression::None)
        } else if name.ends_with(".jsonl.gz") {
            InputFormat::Jsonl(Compression::Gzip)
        } else if name.ends_with(".jsonl.zst") || name.ends_with(".jsonl.zstd") {
            InputFormat::Jsonl(Compression::Zstd)
        } else if name.ends_with(".parquet") {
            InputFormat::Parquet
        } else {
            InputFormat::Text
        }
    }

    /// Whether a file of this format is read whatever its bytes look like (a binary
    /// container), rather than only when it is UTF-8 text.
    pub fn is_container(self) -> bool {
        matches!(self, InputFormat::Jsonl(Compression::Gzip | Compression::Zstd) | InputFormat::Parquet)
    }
}

/// The documents of `path`: each line's `field` for JSONL, each row's `field` column for
/// Parquet (null rows skipped), else the whole text.
pub fn read_documents(path: &Path, field: &str) -> Result<Vec<String>, DataError> {
    let invalid = |reason: String| DataError::Invalid { path: path.into(), reason };
    match InputFormat::of(path) {
        InputFormat::Text => std::fs::read_to_string(path).map(|t| vec![t]).map_err(|source| DataError::Io { path: path.into(), source }),
        InputFormat::Parquet => parquet_column(path, field),
        InputFormat::Jsonl(compression) => {
            let file = std::fs::File::open(path).map_err(|source| DataError::Io { path: path.into(), source })?;
            let mut text = String::new();
            let read = match compression {
                Compression::None => std::io::BufReader::new(file).read_to_string(&mut text),
                Compression::Gzip => flate2::read::GzDecoder::new(file).read_to_string(&mut text),
                Compression::Zstd => zstd::stream::read::Decoder::new(file).and_then(|mut d| d.read_to_string(&mut text)),
            };
            read.map_err(|e| invalid(format!("not {} UTF-8 JSONL: {e}", compression.describe())))?;
            jsonl_field(path, &text, field)
        }
    }
}

impl Compression {
    fn describe(self) -> &'static str {
        match self {
            Compression::None => "plain",
            Compression::Gzip => "gzipped",
            Compression::Zstd => "zstd-compressed",
        }
    }
}

fn jsonl_field(path: &Path, text: &str, field: &str) -> Result<Vec<String>, DataError> {
    let mut docs = Vec::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let value: serde_json::Value = serde_json::from_str(line).map_err(|e| DataError::Invalid { path: path.into(), reason: format!("line {}: not JSON: {e}", i + 1) })?;
        match value.get(field).and_then(|v| v.as_str()) {
            Some(s) => docs.push(s.to_string()),
            None => return Err(DataError::Invalid { path: path.into(), reason: format!("line {}: no string field {field:?}", i + 1) }),
        }
    }
    Ok(docs)
}

/// Every non-null value of the string column `column`, reading only that column.
fn parquet_column(path: &Path, column: &str) -> Result<Vec<String>, DataError> {
    let invalid = |reason: String| DataError::Invalid { path: path.into(), reason };
    let file = std::fs::File::open(path).map_err(|source| DataError::Io { path: path.into(), source })?;
    let reader = SerializedFileReader::new(file).map_err(|e| invalid(format!("not a Parquet file: {e}")))?;
    let schema = reader.metadata().file_metadata().schema();
    let fields = schema.get_fields();
    let Some(wanted) = fields.iter().find(|f| f.name() == column) else {
        let names: Vec<&str> = fields.iter().map(|f| f.name()).collect();
        return Err(invalid(format!("no column {column:?} (columns: {}); name the text column with --jsonl-field", names.join(", "))));
    };
    let projection = parquet::schema::types::Type::group_type_builder(schema.name()).with_fields(vec![wanted.clone()]).build().map_err(|e| invalid(e.to_string()))?;
    let rows = reader.get_row_iter(Some(projection)).map_err(|e| invalid(format!("cannot read column {column:?}: {e}")))?;
    let mut docs = Vec::new();
    for (i, row) in rows.enumerate() {
        let row = row.map_err(|e| invalid(format!("row {i}: {e}")))?;
        for (_, value) in row.get_column_iter() {
            match value {
                Field::Str(text) => docs.push(text.clone()),
                Field::Bytes(bytes) => docs.push(String::from_utf8(bytes.data().to_vec()).map_err(|_| invalid(format!("row {i}: column {column:?} is not UTF-8 text")))?),
                Field::Null => {}
                other => return Err(invalid(format!("row {i}: column {column:?} holds {other}, not text"))),
            }
        }
    }
    Ok(docs)
}

#[cfg(test)]
mod tests {
    use super::{Compression, InputFormat};
    use std::path::Path;

    #[test]
    fn the_name_says_the_format() {
        assert_eq!(InputFormat::of(Path::new("a/b.jsonl")), InputFormat::Jsonl(Compression::None));
        assert_eq!(InputFormat::of(Path::new("b.JSONL.GZ")), InputFormat::Jsonl(Compression::Gzip));
        assert_eq!(InputFormat::of(Path::new("b.jsonl.zst")), InputFormat::Jsonl(Compression::Zstd));
        assert_eq!(InputFormat::of(Path::new("train-00000-of-00001.parquet")), InputFormat::Parquet);
        assert_eq!(InputFormat::of(Path::new("x.py")), InputFormat::Text);
        assert!(InputFormat::Parquet.is_container() && !InputFormat::Text.is_container());
    }
}
