//! Plugin bundles end to end: `recast bundle pack` fills in kinds, digests and WIT
//! versions; `list` and `verify` read them back; one flipped bit anywhere in the `.tar`
//! is refused with a message naming the file it hit; signatures by untrusted keys are
//! refused by `verify` and by a run; a run trains from a trusted, signed bundle.

mod support;

use std::path::{Path, PathBuf};

use recast::plugins::bundle::Bundle;
use support::{plugin, run, text};

fn sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// A folder with a bundle.toml naming two plugins, packed into `policies.tar`.
fn packed(dir: &Path) -> PathBuf {
    let src = dir.join("src");
    std::fs::create_dir_all(src.join("router")).unwrap();
    std::fs::create_dir_all(src.join("aux")).unwrap();
    std::fs::copy(plugin("aux-free-bias"), src.join("router/aux-free-bias.wasm")).unwrap();
    std::fs::copy(plugin("constant"), src.join("aux/constant.wasm")).unwrap();
    std::fs::write(
        src.join("bundle.toml"),
        "name = \"alice-policies\"\nversion = \"0.2.0\"\ndescription = \"Balancing policies\"\n\n[[plugin]]\nfile = \"router/aux-free-bias.wasm\"\n\n[[plugin]]\nname = \"constant-aux\"\nfile = \"aux/constant.wasm\"\n",
    )
    .unwrap();
    let tar = dir.join("policies.tar");
    let out = run(&["bundle", "pack", src.to_str().unwrap(), "--out", tar.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    tar
}

#[test]
fn pack_list_and_verify_agree_with_the_components() {
    let dir = tempfile::tempdir().unwrap();
    let tar = packed(dir.path());
    let listed = run(&["bundle", "list", tar.to_str().unwrap(), "--json"]);
    assert!(listed.status.success(), "{}", text(&listed));
    let json: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(json["name"], "alice-policies");
    let plugins = json["plugins"].as_array().unwrap();
    assert_eq!(plugins[0]["name"], "aux-free-bias");
    assert_eq!(plugins[0]["kind"], "router");
    assert_eq!(plugins[0]["wit_version"], "0.1.0");
    assert_eq!(plugins[0]["sha256"], sha256(&std::fs::read(plugin("aux-free-bias")).unwrap()));
    assert_eq!(plugins[1]["name"], "constant-aux");
    assert_eq!(plugins[1]["kind"], "aux-schedule");
    let verified = run(&["bundle", "verify", tar.to_str().unwrap()]);
    assert!(verified.status.success(), "{}", text(&verified));
    assert!(text(&verified).contains("every sha256 matches") && text(&verified).contains("not signed"), "{}", text(&verified));
    // Packing is deterministic.
    let again = dir.path().join("again.tar");
    assert!(run(&["bundle", "pack", dir.path().join("src").to_str().unwrap(), "--out", again.to_str().unwrap()]).status.success());
    assert_eq!(std::fs::read(&tar).unwrap(), std::fs::read(&again).unwrap());

    // A manifest that states a wrong digest is not packed.
    let manifest = dir.path().join("src/bundle.toml");
    let text_before = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(&manifest, text_before.replace("file = \"aux/constant.wasm\"", &format!("file = \"aux/constant.wasm\"\nsha256 = \"{}\"", "ab".repeat(32)))).unwrap();
    let wrong = run(&["bundle", "pack", dir.path().join("src").to_str().unwrap(), "--out", dir.path().join("x.tar").to_str().unwrap()]);
    assert!(!wrong.status.success() && text(&wrong).contains("aux/constant.wasm"), "{}", text(&wrong));
}

#[test]
fn one_flipped_bit_anywhere_is_refused_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let tar = packed(dir.path());
    let keys = dir.path().join("alice.key");
    assert!(run(&["keygen", "--out", keys.to_str().unwrap()]).status.success());
    assert!(run(&["bundle", "sign", tar.to_str().unwrap(), "--key", keys.to_str().unwrap()]).status.success());
    let good = std::fs::read(&tar).unwrap();
    Bundle::open(&tar).expect("the signed bundle verifies");

    // Every byte of the first 4 KiB (headers, manifest, its checksum) and of the last
    // 3 KiB (signature, padding, end blocks), and every 251st byte in between, each
    // with a different bit flipped.
    let n = good.len();
    let positions: Vec<usize> = (0..4096).chain((4096..n - 3072).step_by(251)).chain(n - 3072..n).collect();
    let flipped = dir.path().join("flipped.tar");
    for &at in &positions {
        let mut bad = good.clone();
        bad[at] ^= 1 << (at % 8);
        std::fs::write(&flipped, &bad).unwrap();
        let err = match Bundle::open(&flipped) {
            Ok(_) => panic!("a bundle with byte {at} flipped was accepted"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains("flipped.tar"), "byte {at}: {err}");
    }

    // The message names the file a flip lands in.
    let data_at = good.windows(4).position(|w| w == b"\0asm").unwrap() + 200;
    let mut bad = good.clone();
    bad[data_at] ^= 0x04;
    std::fs::write(&flipped, &bad).unwrap();
    let out = run(&["bundle", "verify", flipped.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(text(&out).contains("router/aux-free-bias.wasm") && text(&out).contains("sha256"), "{}", text(&out));
    let manifest_at = good.windows(14).position(|w| w == b"alice-policies").unwrap();
    let mut bad = good.clone();
    bad[manifest_at] ^= 0x01;
    std::fs::write(&flipped, &bad).unwrap();
    let out = run(&["bundle", "verify", flipped.to_str().unwrap()]);
    assert!(!out.status.success() && text(&out).contains("bundle.toml"), "{}", text(&out));
}

#[test]
fn untrusted_signers_are_refused_and_trusted_bundles_run() {
    let dir = tempfile::tempdir().unwrap();
    let tar = packed(dir.path());
    let (alice, mallory) = (dir.path().join("alice.key"), dir.path().join("mallory.key"));
    for key in [&alice, &mallory] {
        let out = run(&["keygen", "--out", key.to_str().unwrap()]);
        assert!(out.status.success(), "{}", text(&out));
    }
    assert!(!run(&["keygen", "--out", alice.to_str().unwrap()]).status.success(), "keygen overwrote a key");
    let signed = run(&["bundle", "sign", tar.to_str().unwrap(), "--key", mallory.to_str().unwrap()]);
    assert!(signed.status.success(), "{}", text(&signed));
    let alice_pub = format!("{}.pub", alice.display());
    let mallory_pub = format!("{}.pub", mallory.display());

    let refused = run(&["bundle", "verify", tar.to_str().unwrap(), "--trusted-key", &alice_pub]);
    assert!(!refused.status.success());
    assert!(text(&refused).contains("not among the trusted keys"), "{}", text(&refused));
    let trusted = run(&["bundle", "verify", tar.to_str().unwrap(), "--trusted-key", &mallory_pub]);
    assert!(trusted.status.success() && text(&trusted).contains("signed by trusted key"), "{}", text(&trusted));

    let config = |trusted: &str| {
        let path = dir.path().join("run.toml");
        let body = format!(
            "seed = 1\ntrusted_keys = [\"{trusted}\"]\n\n[model.init]\narchitecture = \"mixtral\"\nhidden_size = 32\nnum_layers = 2\nnum_heads = 4\nintermediate_size = 48\nnum_experts = 4\n\n[[data.domains]]\nname = \"arithmetic\"\nbuiltin = \"arithmetic\"\n\n[plugins.router]\nbundle = \"policies.tar\"\nplugin = \"aux-free-bias\"\nparams = {{ top_k = 2 }}\n\n[plugins.aux_schedule]\nbundle = \"policies.tar\"\n\n[train]\nsteps = 3\nbatch_size = 2\nseq_len = 16\neval_tokens = 256\n"
        );
        std::fs::write(&path, body).unwrap();
        path
    };
    let cfg = config(&alice_pub);
    let out = run(&["train", cfg.to_str().unwrap(), "--out", dir.path().join("refused").to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(text(&out).contains("policies.tar") && text(&out).contains("not among the trusted keys"), "{}", text(&out));
    assert!(!dir.path().join("refused/metrics.jsonl").exists());

    let public_key = std::fs::read_to_string(&mallory_pub).unwrap();
    let cfg = config(public_key.trim());
    let out = run(&["train", cfg.to_str().unwrap(), "--out", dir.path().join("ran").to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    let state = std::fs::read_to_string(dir.path().join("ran/checkpoints/step-00000003/state.json")).unwrap();
    assert!(state.contains(&sha256(&std::fs::read(plugin("aux-free-bias")).unwrap())), "{state}");
}
