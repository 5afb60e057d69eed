//! An error and its causes, each printed once.
//!
//! weir's error variants say what was being done and mark what went wrong
//! beneath as their `#[source]`, without repeating it in their message, as
//! kube-runtime's errors do: a chain printer (this, anyhow's `{:#}`,
//! tracing-subscriber's `error.sources`) then shows every cause once.
//! [`Report`] is that printer where a string is needed: logs, CNI results,
//! API replies.
use std::error::Error;
use std::fmt;

/// Displays an error and its sources, joined by `": "`: `pinning
/// /sys/fs/bpf/x: Permission denied (os error 13)`. A cause whose text
/// ends what is already printed is skipped: some other crates' errors
/// still repeat their source in their message.
pub struct Report<'a, E: Error + ?Sized>(pub &'a E);

impl<E: Error + ?Sized> fmt::Display for Report<'_, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = self.0.to_string();
        let mut cause = self.0.source();
        while let Some(e) = cause {
            let text = e.to_string();
            if !out.ends_with(&text) {
                out.push_str(": ");
                out.push_str(&text);
            }
            cause = e.source();
        }
        f.write_str(&out)
    }
}

impl<E: Error + ?Sized> fmt::Debug for Report<'_, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// [`Report`] as a `String`.
pub fn report(e: &(dyn Error + '_)) -> String {
    Report(e).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Outer(std::io::Error);
    impl fmt::Display for Outer {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("pinning /sys/fs/bpf/x")
        }
    }
    impl Error for Outer {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn every_cause_is_printed_once_in_order() {
        let e = Outer(std::io::Error::new(std::io::ErrorKind::PermissionDenied, "denied"));
        assert_eq!(report(&e), "pinning /sys/fs/bpf/x: denied");
        let repeated = Outer(std::io::Error::other("pinning /sys/fs/bpf/x"));
        assert_eq!(
            report(&repeated),
            "pinning /sys/fs/bpf/x",
            "a repeated cause is printed once"
        );
        let plain = std::io::Error::other("alone");
        assert_eq!(Report(&plain).to_string(), "alone");
    }
}
