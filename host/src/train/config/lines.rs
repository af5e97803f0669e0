//! Where a key stands in a run config's text, so that an out-of-range value is reported
//! with its line as a misspelt key is.

use toml::Spanned;
use toml::de::{DeTable, DeValue};

/// One step of a key path such as `data.domains[1].name`.
enum Segment<'k> {
    Key(&'k str),
    Index(usize),
}

fn segments(key: &str) -> Vec<Segment<'_>> {
    let mut out = Vec::new();
    for part in key.split('.') {
        let (name, rest) = part.split_once('[').map_or((part, ""), |(n, r)| (n, r));
        if !name.is_empty() {
            out.push(Segment::Key(name));
        }
        for index in rest.split('[') {
            if let Some(i) = index.trim_end_matches(']').parse().ok().filter(|_| !index.is_empty()) {
                out.push(Segment::Index(i));
            }
        }
    }
    out
}

/// The 1-based line of `key` (a dotted path with `[i]` for array entries) in `text`; a
/// key the text leaves to its default gives the line of its closest enclosing table.
/// `None` when the text does not parse or the key's first table is absent.
pub fn line_of(text: &str, key: &str) -> Option<usize> {
    let root: Spanned<DeTable> = DeTable::parse(text).ok()?;
    let mut segments = segments(key).into_iter();
    let Some(Segment::Key(first)) = segments.next() else { return None };
    let mut found: &Spanned<DeValue> = root.get_ref().iter().find(|(k, _)| k.get_ref() == first)?.1;
    for segment in segments {
        let next = match segment {
            Segment::Key(k) => found.get_ref().get(k),
            Segment::Index(i) => found.get_ref().get(i),
        };
        match next {
            Some(value) => found = value,
            None => break,
        }
    }
    let at = found.span().start.min(text.len());
    Some(text[..at].matches('\n').count() + 1)
}

#[cfg(test)]
mod tests {
    use super::line_of;

    const TEXT: &str = "seed = 1\n\n[optimizer]\nlr = 0.1\nbeta1 = 1.5\n\n[[data.domains]]\nname = \"a\"\n\n[[data.domains]]\nname = \"b\"\n";

    #[test]
    fn finds_keys_tables_and_array_entries() {
        assert_eq!(line_of(TEXT, "seed"), Some(1));
        assert_eq!(line_of(TEXT, "optimizer.beta1"), Some(5));
        assert_eq!(line_of(TEXT, "data.domains[1].name"), Some(11));
        // A key left to its default points at its table.
        assert!(line_of(TEXT, "optimizer.eps").is_some_and(|l| (3..=5).contains(&l)), "{:?}", line_of(TEXT, "optimizer.eps"));
        assert_eq!(line_of(TEXT, "train.steps"), None);
    }
}
