//! Every experiment in `experiments/` runs end to end with `--smoke` (seconds-long
//! settings): all arms and seeds train, steps identical across arms run once, the
//! results page, table and plot are written with one verdict per criterion, and a rerun
//! skips everything already done.

mod support;

use support::{recast, repo, run, text};

#[test]
fn every_experiment_runs_with_smoke() {
    let dir = tempfile::tempdir().unwrap();
    let mut files: Vec<_> = std::fs::read_dir(repo().join("experiments")).unwrap().map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|e| e == "toml")).collect();
    files.sort();
    assert!(files.len() >= 3, "{files:?}");
    for file in files {
        let spec: toml::Table = std::fs::read_to_string(&file).unwrap().parse().unwrap();
        let arms: Vec<String> = spec["arms"].as_array().unwrap().iter().map(|a| a["name"].as_str().unwrap().to_string()).collect();
        // The smoke version runs the file's first two seeds (three when it names none).
        let seeds = spec.get("seeds").and_then(|s| s.as_array()).map_or(3, Vec::len).min(2);
        let criteria = spec.get("criteria").and_then(|c| c.as_array()).map_or(0, Vec::len);
        let out = dir.path().join(file.file_stem().unwrap());
        let args = ["experiment", file.to_str().unwrap(), "--out", out.to_str().unwrap(), "--smoke", "--threads", "1"];
        let first = run(&args);
        assert!(first.status.success(), "{}\n{}", file.display(), text(&first));
        let stdout = String::from_utf8_lossy(&first.stdout);
        let verdicts = stdout.lines().filter(|l| l.starts_with("holds: ") || l.starts_with("does not hold: ") || l.starts_with("inconclusive: ")).count();
        assert_eq!(verdicts, criteria, "{}\n{stdout}", file.display());

        let md = std::fs::read_to_string(out.join("results.md")).unwrap();
        for arm in &arms {
            assert!(md.contains(&format!("| {arm} |")), "{}: no row for {arm}\n{md}", file.display());
        }
        assert!(md.contains("Smoke run"), "{md}");
        let csv = std::fs::read_to_string(out.join("results.csv")).unwrap();
        let evaluated = csv.lines().filter(|l| l.split(',').nth(3) == Some("true")).count();
        assert_eq!(evaluated, arms.len() * seeds, "{csv}");
        // Every row names its run folder, which exists; the page lists them and the data.
        assert!(csv.lines().next().is_some_and(|h| h.ends_with(",run_dir")), "{csv}");
        for row in csv.lines().skip(1) {
            let folder = row.rsplit(',').next().unwrap_or_default();
            assert!(std::path::Path::new(folder).join("metrics.jsonl").exists(), "{}: {row}", file.display());
        }
        assert!(md.contains("## Runs") && md.contains("## Data") && md.contains("built-in `"), "{md}");
        assert!(std::fs::metadata(out.join("loss.png")).unwrap().len() > 1000);
        // Routing plots whenever the compared step routes, and the page shows them.
        if md.contains("![drop rate") {
            for png in ["drop-rate.png", "gate-sharpness.png", "expert-load.png"] {
                assert!(std::fs::metadata(out.join(png)).unwrap().len() > 1000, "{}: {png}", file.display());
            }
        }

        // Steps no arm changes run once per seed, not once per arm.
        let first_step = spec["steps"].as_array().unwrap()[0]["name"].as_str().unwrap().to_string();
        let changed_by_an_arm = spec["arms"].as_array().unwrap().iter().any(|a| a.get("set").and_then(|s| s.as_table()).is_some_and(|s| s.keys().any(|k| k.starts_with(&format!("{first_step}.")))));
        if !changed_by_an_arm && spec["steps"].as_array().unwrap().len() > 1 {
            let runs = std::fs::read_dir(out.join("smoke-runs")).unwrap().filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().starts_with(&format!("{first_step}-"))).count();
            assert_eq!(runs, seeds, "{}: step {first_step} ran {runs} times", file.display());
        }

        let again = run(&args);
        assert!(again.status.success(), "{}", text(&again));
        assert!(!String::from_utf8_lossy(&again.stdout).contains("step 1/"), "a rerun trained again:\n{}", text(&again));
    }
}

/// `--data NAME=DIR` trains every step on prepared text for that domain: the runs'
/// configs name the shards, and a domain the experiment lacks is refused by name.
#[test]
fn experiments_run_on_prepared_domains() {
    let dir = tempfile::tempdir().unwrap();
    let shards = dir.path().join("data");
    let sources = repo().join("host").join("src").join("experiment");
    let prepared = run(&["data", "prepare", "--out", shards.to_str().unwrap(), "--domain", &format!("code={}", sources.display())]);
    assert!(prepared.status.success(), "{}", text(&prepared));
    let code = shards.join("code");
    let file = repo().join("experiments").join("sparse-upcycling.toml");
    let out = dir.path().join("out");
    // A relative --out (from the working folder, here the temporary one) works too.
    let args = ["experiment", file.to_str().unwrap(), "--out", "out", "--smoke", "--threads", "1", "--data", &format!("code={}", code.display())];
    let ran = recast().current_dir(dir.path()).args(args).output().unwrap();
    assert!(ran.status.success(), "{}", text(&ran));
    let mut configs = 0;
    for entry in std::fs::read_dir(out.join("smoke-runs")).unwrap() {
        let config = entry.unwrap().path().join("config.toml");
        if let Ok(text) = std::fs::read_to_string(&config) {
            assert!(text.contains(&code.display().to_string()), "{}: {text}", config.display());
            configs += 1;
        }
    }
    assert!(configs >= 2, "{configs} training runs");
    // The page records the data: the prepared folder and its content digest.
    let md = std::fs::read_to_string(out.join("results.md")).unwrap();
    assert!(md.contains(&format!("| code | `{}` (sha256 ", code.display())), "{md}");

    let wrong = run(&["experiment", file.to_str().unwrap(), "--out", out.to_str().unwrap(), "--smoke", "--data", &format!("math={}", code.display())]);
    assert!(!wrong.status.success());
    assert!(text(&wrong).contains("no step has a domain named \"math\""), "{}", text(&wrong));
}
