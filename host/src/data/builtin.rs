//! Built-in training data, generated so the main job needs no download. Three domains
//! that differ the way the papers' domains differ (math, code, general text):
//!
//! - `arithmetic`: exercises with worked answers (`37 + 45 = 82`, `12 * 7 = 84`, …);
//! - `code`: small Python functions built from templates (loops, conditions, calls);
//! - `prose`: English sentences from a small grammar about everyday scenes.
//!
//! Each is deterministic in its seed; the same seed gives the same text everywhere.

use crate::model::init::SplitMix64;

/// The built-in domains, by name.
pub const BUILTIN_DOMAINS: [&str; 3] = ["arithmetic", "code", "prose"];

/// About `bytes` bytes of the domain `name`, or `None` for an unknown name.
pub fn generate(name: &str, bytes: usize, seed: u64) -> Option<String> {
    let mut rng = SplitMix64(seed ^ fxhash(name));
    let piece: fn(&mut SplitMix64) -> String = match name {
        "arithmetic" => arithmetic,
        "code" => code,
        "prose" => prose,
        _ => return None,
    };
    let mut out = String::with_capacity(bytes + 256);
    while out.len() < bytes {
        out.push_str(&piece(&mut rng));
        out.push('\n');
    }
    Some(out)
}

fn fxhash(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3))
}

fn pick<'a>(rng: &mut SplitMix64, items: &[&'a str]) -> &'a str {
    items[rng.below(items.len() as u64) as usize]
}

fn arithmetic(rng: &mut SplitMix64) -> String {
    let a = rng.below(100) as i64;
    let b = rng.below(100) as i64;
    match rng.below(4) {
        0 => format!("{a} + {b} = {}", a + b),
        1 => format!("{a} - {b} = {}", a - b),
        2 => {
            let (a, b) = (a % 13, b % 13);
            format!("{a} * {b} = {}", a * b)
        }
        _ => {
            let b = b % 12 + 1;
            let q = a / b;
            format!("{} / {b} = {q} remainder {}", q * b + a % b, a % b)
        }
    }
}

fn code(rng: &mut SplitMix64) -> String {
    let name = pick(rng, &["total", "count_items", "largest", "scale", "clean", "average", "merge", "find"]);
    let arg = pick(rng, &["values", "items", "numbers", "data", "xs"]);
    let var = pick(rng, &["result", "acc", "best", "out", "n"]);
    let k = rng.below(9) + 1;
    let body = match rng.below(4) {
        0 => format!("    {var} = 0\n    for x in {arg}:\n        {var} += x * {k}\n    return {var}\n"),
        1 => format!("    {var} = []\n    for x in {arg}:\n        if x > {k}:\n            {var}.append(x)\n    return {var}\n"),
        2 => format!("    if not {arg}:\n        return None\n    {var} = {arg}[0]\n    for x in {arg}[1:]:\n        if x > {var}:\n            {var} = x\n    return {var}\n"),
        _ => format!("    {var} = len({arg})\n    while {var} > {k}:\n        {var} = {var} // 2\n    return {var}\n"),
    };
    format!("def {name}({arg}):\n{body}")
}

fn prose(rng: &mut SplitMix64) -> String {
    let subject = pick(rng, &["The old farmer", "A young girl", "My neighbour", "The teacher", "A tired traveller", "The baker", "Her brother", "The small dog"]);
    let verb = pick(rng, &["walked to", "looked at", "painted", "cleaned", "visited", "remembered", "carried water to", "sang near"]);
    let object = pick(rng, &["the river", "the market", "an empty house", "the garden", "the station", "a quiet library", "the hill", "the harbour"]);
    let time = pick(rng, &["in the morning", "after dinner", "before the rain", "on Sunday", "at noon", "late at night"]);
    let feeling = pick(rng, &["happy", "worried", "calm", "surprised", "hungry", "proud"]);
    match rng.below(3) {
        0 => format!("{subject} {verb} {object} {time}."),
        1 => format!("{subject} {verb} {object} {time}, and felt {feeling}."),
        _ => format!("{time_cap}, {subject_lc} {verb} {object} because everyone was {feeling}.", time_cap = capitalise(time), subject_lc = subject.to_lowercase()),
    }
}

fn capitalise(s: &str) -> String {
    let mut c = s.chars();
    c.next().map(|f| f.to_uppercase().collect::<String>() + c.as_str()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #[test]
    fn deterministic_and_distinct() {
        for name in super::BUILTIN_DOMAINS {
            let a = super::generate(name, 2000, 1).expect("known");
            assert_eq!(a, super::generate(name, 2000, 1).expect("known"));
            assert_ne!(a, super::generate(name, 2000, 2).expect("known"));
            assert!(a.len() >= 2000);
        }
        assert!(super::generate("poetry", 10, 0).is_none());
        let arith = super::generate("arithmetic", 500, 3).expect("known");
        for line in arith.lines() {
            if let Some((lhs, rhs)) = line.split_once(" + ") {
                let (b, sum) = rhs.split_once(" = ").expect("answer");
                assert_eq!(lhs.parse::<i64>().unwrap() + b.parse::<i64>().unwrap(), sum.parse::<i64>().unwrap());
            }
        }
    }
}
