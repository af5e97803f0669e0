//! How the command line prints an error: the message and its causes on one line.

/// The error and its causes on one line, each cause once: many errors already quote
/// their source in their own message (`path: cause`), and printing it again after them
/// said "No such file or directory" twice.
pub(super) fn error_chain(error: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in error.chain() {
        let part = cause.to_string();
        if !text.contains(&part) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&part);
        }
    }
    text
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_cause_quoted_by_its_error_is_printed_once_and_others_are_appended() {
        #[derive(Debug, thiserror::Error)]
        #[error("meta.json: {source}")]
        struct Quoting {
            source: std::io::Error,
        }
        let io = || std::io::Error::new(std::io::ErrorKind::IsADirectory, "Is a directory");
        let quoted = anyhow::Error::new(Quoting { source: io() }).context("cannot start the run");
        assert_eq!(super::error_chain(&quoted), "cannot start the run: meta.json: Is a directory");
        let plain = anyhow::Error::new(io()).context("cannot read x");
        assert_eq!(super::error_chain(&plain), "cannot read x: Is a directory");
    }
}
