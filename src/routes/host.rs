//! The `sni` patterns of routes: a DNS name (`mqtt.example.org`) or a wildcard for exactly one leftmost label
//! (`*.example.org`: `a.example.org`, not `example.org` nor `a.b.example.org`, as in certificates), compared ASCII
//! case-insensitively.

/// A checked server name pattern, lower-cased.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPattern {
    text: String,
}

impl HostPattern {
    /// Checks `text`: labels of letters, digits and `-` (not first or last), 1-63 characters each, at most 253 in
    /// all; `*` only as the whole first label, with at least two labels after it.
    pub fn parse(text: &str) -> Result<HostPattern, String> {
        let lower = text.to_ascii_lowercase();
        let name = lower.strip_prefix("*.").unwrap_or(&lower);
        let bad = |why: &str| Err(format!("invalid server name {text:?}: {why}"));
        if lower.is_empty() || lower.len() > 253 {
            return bad("expected a DNS name of 1 to 253 characters, like mqtt.example.org or *.example.org");
        }
        if lower.starts_with("*.") && name.split('.').count() < 2 {
            return bad("a wildcard needs at least two labels after it (*.example.org)");
        }
        for label in name.split('.') {
            if label.contains('*') {
                return bad("* may only be the whole first label (*.example.org)");
            }
            if label.is_empty() || label.len() > 63 {
                return bad("every label has 1 to 63 characters (no empty label, no trailing dot)");
            }
            if !label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                || label.starts_with('-')
                || label.ends_with('-')
            {
                return bad("labels have letters, digits and '-' (not first or last)");
            }
        }
        Ok(HostPattern { text: lower })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether the server name a client sent matches.
    pub fn matches(&self, server_name: &str) -> bool {
        match self.text.strip_prefix("*.") {
            Some(parent) => server_name
                .split_once('.')
                .is_some_and(|(first, rest)| !first.is_empty() && rest.eq_ignore_ascii_case(parent)),
            None => server_name.eq_ignore_ascii_case(&self.text),
        }
    }

    /// Whether every name `other` matches, this one matches too.
    pub fn covers(&self, other: &HostPattern) -> bool {
        self == other || (!other.text.starts_with("*.") && self.matches(&other.text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(text: &str) -> HostPattern {
        HostPattern::parse(text).unwrap()
    }

    #[test]
    fn exact_and_wildcard() {
        assert!(h("mqtt.example.org").matches("MQTT.example.org"));
        assert!(!h("mqtt.example.org").matches("mqtt.example.org.evil"));
        assert!(h("*.Example.org").matches("a.example.org"));
        assert!(!h("*.example.org").matches("example.org"));
        assert!(!h("*.example.org").matches("a.b.example.org"));
        assert!(!h("*.example.org").matches(".example.org"));
    }

    #[test]
    fn malformed_patterns_are_refused() {
        for bad in [
            "",
            "*",
            "*.",
            "*.org",
            "a.*.org",
            "a*.example.org",
            "**.example.org",
            "a..org",
            "a.org.",
            "-a.org",
            "a_b.org",
            "a b.org",
        ] {
            assert!(HostPattern::parse(bad).is_err(), "{bad:?}");
        }
        assert!(HostPattern::parse(&format!("{}.org", "a".repeat(64))).is_err());
    }

    #[test]
    fn covers() {
        assert!(h("*.example.org").covers(&h("a.example.org")));
        assert!(h("*.example.org").covers(&h("*.EXAMPLE.org")));
        assert!(!h("a.example.org").covers(&h("*.example.org")));
        assert!(!h("*.example.org").covers(&h("a.b.example.org")));
    }
}
