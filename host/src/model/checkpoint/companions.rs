//! The files a Hugging Face model folder carries besides its weights and `config.json`:
//! the tokenizer, its settings, the special tokens, generation settings and chat
//! templates. An upcycled model and a run's `final/` export copy them from their source,
//! so `AutoTokenizer.from_pretrained` and `generate` work on the result as on the source.

use std::path::Path;

/// The companion files copied when present.
pub const COMPANIONS: &[&str] = &[
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "generation_config.json",
    "chat_template.jinja",
    "chat_template.json",
];

/// Copy every companion file `from` has into `to` (atomically, each); returns the
/// names copied.
pub fn copy_companions(from: &Path, to: &Path) -> std::io::Result<Vec<&'static str>> {
    let mut copied = Vec::new();
    for name in COMPANIONS {
        let source = from.join(name);
        if source.is_file() {
            let bytes = std::fs::read(&source)?;
            crate::atomic_file::write(&to.join(name), &bytes)?;
            copied.push(*name);
        }
    }
    Ok(copied)
}
