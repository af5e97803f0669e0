//! `recast data prepare` on real formats and folders (text, JSONL plain, gzipped or
//! zstd, Parquet written by pyarrow, a Hugging Face tokenizer.json), the shards it
//! writes (u16 when the vocabulary fits) and training on them.

mod support;

use support::{config, repo, run, text, train};

#[test]
fn prepared_shards_train() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("docs");
    std::fs::create_dir_all(src.join("sub")).unwrap();
    std::fs::write(src.join("a.txt"), "The quick brown fox jumps over the lazy dog. ".repeat(80)).unwrap();
    std::fs::write(src.join("sub/b.rs"), "fn main() { println!(\"hello\"); }\n".repeat(60)).unwrap();
    let jsonl = dir.path().join("notes.jsonl");
    std::fs::write(&jsonl, (0..60).map(|i| format!("{{\"body\": \"note number {i} says hello\"}}\n")).collect::<String>()).unwrap();
    let shards = dir.path().join("shards");
    let o = run(&["data", "prepare", "--out", shards.to_str().unwrap(), "--domain", &format!("docs={}", src.display()), "--domain", &format!("notes={}", jsonl.display()), "--jsonl-field", "body"]);
    assert!(o.status.success(), "{}", text(&o));
    let meta: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(shards.join("docs/meta.json")).unwrap()).unwrap();
    assert_eq!(meta["sources"].as_array().unwrap().len(), 2);
    let total = meta["train_tokens"].as_u64().unwrap() + meta["valid_tokens"].as_u64().unwrap();
    assert_eq!(total as usize, 80 * 45 + 2 + 60 * 33 + 2, "byte tokens of both files plus separators");

    let cfg = config(dir.path(), "steps = 3");
    let body = std::fs::read_to_string(&cfg).unwrap().replace("steps = 20\n", "").replace("builtin = \"prose\"", &format!("shards = \"{}\"", shards.join("notes").display()));
    std::fs::write(&cfg, body).unwrap();
    let o = train(&[cfg.to_str().unwrap(), "--out", dir.path().join("r").to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
}

#[test]
fn a_tokenizer_json_prepares_and_trains() {
    let dir = tempfile::tempdir().unwrap();
    let words = ["[UNK]", "the", "cat", "sat", "on", "mat", "a", "dog", "ran"];
    let vocab: serde_json::Map<String, serde_json::Value> = words.iter().enumerate().map(|(i, w)| (w.to_string(), serde_json::json!(i))).collect();
    let tokenizer = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [], "normalizer": null,
        "pre_tokenizer": { "type": "Whitespace" }, "post_processor": null, "decoder": null,
        "model": { "type": "WordLevel", "vocab": vocab, "unk_token": "[UNK]" }
    });
    let tok = dir.path().join("tokenizer.json");
    std::fs::write(&tok, tokenizer.to_string()).unwrap();
    let story = dir.path().join("story.txt");
    std::fs::write(&story, "the cat sat on the mat a dog ran zebra ".repeat(40)).unwrap();
    let shards = dir.path().join("shards");
    let o = run(&["data", "prepare", "--out", shards.to_str().unwrap(), "--domain", &format!("story={}", story.display()), "--tokenizer", tok.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let meta: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(shards.join("story/meta.json")).unwrap()).unwrap();
    assert_eq!(meta["vocab_size"], 9);
    assert_eq!(meta["train_tokens"].as_u64().unwrap() + meta["valid_tokens"].as_u64().unwrap(), 400, "one token per word, unknown words as [UNK]");
    // Nine token ids fit in u16: half the bytes of u32.
    assert_eq!(meta["token_bytes"], 2);
    let ids: Vec<u32> = std::fs::read(shards.join("story/train.bin")).unwrap().chunks_exact(2).take(10).map(|b| u32::from(u16::from_le_bytes([b[0], b[1]]))).collect();
    assert_eq!(ids, vec![1, 2, 3, 4, 1, 5, 6, 7, 8, 0]);

    let cfg = config(dir.path(), "steps = 2");
    let body = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("steps = 20\n", "")
        .replace("seed = 7", &format!("seed = 7\ntokenizer = \"{}\"", tok.display()))
        .replace("builtin = \"arithmetic\"", &format!("shards = \"{}\"", shards.join("story").display()))
        .replace("name = \"prose\"\nbuiltin = \"prose\"", &format!("name = \"story2\"\nshards = \"{}\"", shards.join("story").display()))
        .replace("seq_len = 32", "seq_len = 8");
    std::fs::write(&cfg, &body).unwrap();
    let o = train(&[cfg.to_str().unwrap(), "--out", dir.path().join("r").to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));

    // The tokenizer is its content: a copy of the same file under another path is the
    // same tokenizer; a file with other content is not.
    let copy = dir.path().join("elsewhere").join("tokenizer.json");
    std::fs::create_dir_all(copy.parent().unwrap()).unwrap();
    std::fs::copy(&tok, &copy).unwrap();
    std::fs::write(&cfg, body.replace(&format!("tokenizer = \"{}\"", tok.display()), &format!("tokenizer = \"{}\"", copy.display()))).unwrap();
    let o = train(&[cfg.to_str().unwrap(), "--out", dir.path().join("r2").to_str().unwrap()]);
    assert!(o.status.success(), "the same tokenizer by another path was refused\n{}", text(&o));
    // The run records the tokenizer by content, in its config and its checkpoints.
    let sha = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(std::fs::read(&tok).unwrap()))
    };
    let run_config = std::fs::read_to_string(dir.path().join("r2/config.toml")).unwrap();
    assert!(run_config.contains(&format!("tokenizer_sha256 = \"{sha}\"")), "{run_config}");
    let checkpoint = std::fs::read_dir(dir.path().join("r2/checkpoints")).unwrap().filter_map(|e| e.ok()).map(|e| e.path()).max().unwrap();
    let state: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(checkpoint.join("state.json")).unwrap()).unwrap();
    assert_eq!(state["tokenizer_sha256"], sha.as_str());
    let mut other = tokenizer.clone();
    other["model"]["vocab"]["zebra"] = serde_json::json!(9);
    std::fs::write(&copy, other.to_string()).unwrap();
    let o = train(&[cfg.to_str().unwrap(), "--out", dir.path().join("r3").to_str().unwrap()]);
    assert!(!o.status.success() && text(&o).contains("prepared with tokenizer"), "{}", text(&o));
    // A run whose tokenizer file changed since it started does not resume on it.
    let o = train(&["--resume", dir.path().join("r2").to_str().unwrap(), "--max-steps", "3"]);
    assert!(!o.status.success() && text(&o).contains(&sha) && text(&o).contains("different tokenizer"), "{}", text(&o));
}

/// `recast data prepare` reads gzipped JSONL, takes only `--include` matches inside
/// folders, reports the files it skipped, and holds out whole documents sampled with the
/// seed.
#[test]
fn prepare_reads_gzipped_jsonl_filters_folders_and_reports_skipped_files() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    for i in 0..12 {
        std::fs::write(src.join(format!("m{i:02}.py")), format!("def f{i}(x):\n    return x * {i}\n").repeat(20)).unwrap();
    }
    std::fs::write(src.join("notes.md"), "# notes\n".repeat(50)).unwrap();
    std::fs::write(src.join("blob.bin"), [0xffu8, 0xfe, 0x00, 0x80]).unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    for i in 0..30 {
        writeln!(gz, "{}", serde_json::json!({ "text": format!("line {i} of a compressed corpus, repeated. ").repeat(8) })).unwrap();
    }
    std::fs::write(src.join("corpus.jsonl.gz"), gz.finish().unwrap()).unwrap();

    let out = dir.path().join("all");
    let o = run(&["data", "prepare", "--out", out.to_str().unwrap(), "--domain", &format!("mixed={}", src.display()), "--valid-fraction", "0.1"]);
    assert!(o.status.success(), "{}", text(&o));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("skipped 1 files that are not UTF-8 text") && stdout.contains("blob.bin"), "{stdout}");
    // 12 modules + 1 page + 30 JSONL lines = 43 documents, some held out whole.
    assert!(stdout.contains("of 43 documents"), "{stdout}");
    let meta: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("mixed/meta.json")).unwrap()).unwrap();
    assert!(meta["sources"].as_array().unwrap().iter().any(|s| s.as_str().unwrap().ends_with("corpus.jsonl.gz")), "{meta}");

    let only_py = dir.path().join("py");
    let o = run(&["data", "prepare", "--out", only_py.to_str().unwrap(), "--domain", &format!("py={}", src.display()), "--include", "*.py", "--seed", "3"]);
    assert!(o.status.success(), "{}", text(&o));
    let meta: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(only_py.join("py/meta.json")).unwrap()).unwrap();
    let sources = meta["sources"].as_array().unwrap();
    assert!(sources.len() == 12 && sources.iter().all(|s| s.as_str().unwrap().ends_with(".py")), "{meta}");
    assert!(String::from_utf8_lossy(&o.stdout).contains("of 12 documents"), "{}", text(&o));
}

/// `recast data prepare` reads Parquet written by `pyarrow` (snappy and zstd; the text
/// column only, nulls skipped) and zstd-compressed JSONL, and stores the byte
/// tokenizer's ids as u16: every document's bytes, each followed by the separator.
#[test]
fn prepare_reads_parquet_from_pyarrow_and_zstd_jsonl() {
    use std::io::Write;
    let python = repo().join(".venv/bin/python");
    assert!(python.exists(), "{} is missing: run scripts/python-env.sh (scripts/test.sh does it before the tests)", python.display());
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("hub");
    std::fs::create_dir_all(&src).unwrap();
    let script = r#"
import sys, pyarrow as pa, pyarrow.parquet as pq
out = sys.argv[1]
texts = [f"row {i}: " + "parquet text " * (i % 7 + 1) for i in range(40)]
texts[5] = None
table = pa.table({"id": list(range(40)), "text": texts, "lang": ["en"] * 40})
pq.write_table(table, out + "/train-00000-of-00002.parquet", row_group_size=16)
pq.write_table(table.slice(0, 10), out + "/train-00001-of-00002.parquet", compression="zstd")
"#;
    let o = std::process::Command::new(&python).args(["-c", script, src.to_str().unwrap()]).output().unwrap();
    assert!(o.status.success(), "pyarrow: {}", text(&o));
    let mut zst = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
    for i in 0..20 {
        writeln!(zst, "{}", serde_json::json!({ "text": format!("zstd line {i}"), "meta": i })).unwrap();
    }
    std::fs::write(src.join("extra.jsonl.zst"), zst.finish().unwrap()).unwrap();

    let out = dir.path().join("data");
    let o = run(&["data", "prepare", "--out", out.to_str().unwrap(), "--domain", &format!("hub={}", src.display()), "--valid-fraction", "0.1"]);
    assert!(o.status.success(), "{}", text(&o));
    // 39 + 9 non-null rows, 20 lines.
    assert!(String::from_utf8_lossy(&o.stdout).contains("of 68 documents"), "{}", text(&o));
    let meta: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("hub/meta.json")).unwrap()).unwrap();
    assert_eq!(meta["token_bytes"], 2);
    let row = |i: usize| format!("row {i}: {}", "parquet text ".repeat(i % 7 + 1)).len() + 2;
    let expected: usize =
        (0..40).filter(|&i| i != 5).map(row).sum::<usize>() + (0..10).filter(|&i| i != 5).map(row).sum::<usize>() + (0..20).map(|i| format!("zstd line {i}").len() + 2).sum::<usize>();
    assert_eq!((meta["train_tokens"].as_u64().unwrap() + meta["valid_tokens"].as_u64().unwrap()) as usize, expected);
    let bytes = std::fs::metadata(out.join("hub/train.bin")).unwrap().len() + std::fs::metadata(out.join("hub/valid.bin")).unwrap().len();
    assert_eq!(bytes as usize, expected * 2, "u16 ids");
    // Every text appears in the shards (decoded from u16 byte ids).
    let decoded: String = [std::fs::read(out.join("hub/train.bin")).unwrap(), std::fs::read(out.join("hub/valid.bin")).unwrap()]
        .concat()
        .chunks_exact(2)
        .map(|b| char::from(u16::from_le_bytes([b[0], b[1]]) as u8))
        .collect();
    for needle in ["row 39: parquet text parquet text parquet text parquet text parquet text ", "zstd line 19", "row 9: "] {
        assert!(decoded.contains(needle), "{needle:?} missing");
    }
    assert!(!decoded.contains("row 5:"), "the null row was read");

    // A missing column is named with the columns there are.
    let o =
        run(&["data", "prepare", "--out", dir.path().join("bad").to_str().unwrap(), "--domain", &format!("hub={}", src.join("train-00000-of-00002.parquet").display()), "--text-column", "content"]);
    assert!(!o.status.success() && text(&o).contains("no column \"content\"") && text(&o).contains("id, text, lang"), "{}", text(&o));
    // Training reads the u16 shards.
    let cfg = config(dir.path(), "steps = 2");
    let body = std::fs::read_to_string(&cfg).unwrap().replace("steps = 20\n", "").replace("builtin = \"prose\"", &format!("shards = \"{}\"", out.join("hub").display()));
    std::fs::write(&cfg, body).unwrap();
    let o = train(&[cfg.to_str().unwrap(), "--out", dir.path().join("r").to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
}
