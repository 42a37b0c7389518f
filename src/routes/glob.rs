//! The glob patterns of routes' `client_id`, `username` and `identity`: `*` matches any run of characters (`/`
//! included, and none), `?` exactly one character, every other character itself (case-sensitive: client ids and
//! user names are). Our own small matcher rather than a glob crate: those give `/`, `[...]`, `{a,b}` and `**` a
//! meaning for file paths that MQTT identifiers do not have, and this one takes at most pattern x value steps
//! (backtracking to the last `*` only) and can tell whether one pattern covers another ([`Glob::covers`]), which
//! `check` needs to find routes that can never match.

/// A checked pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob {
    text: String,
    tokens: Vec<Token>,
}

/// One element of a pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token {
    Any,
    One,
    Char(char),
}

fn tokens(text: &str) -> Vec<Token> {
    text.chars()
        .map(|c| match c {
            '*' => Token::Any,
            '?' => Token::One,
            c => Token::Char(c),
        })
        .collect()
}

impl Glob {
    /// Checks `text`: not empty, no control characters, and none of `[`, `]`, `{`, `}`, `\` (other glob syntaxes'
    /// specials: refused rather than taken literally, so that a pattern never means less than it seems to).
    pub fn parse(text: &str) -> Result<Glob, String> {
        if text.is_empty() {
            return Err("must not be empty (use \"*\" to match anything)".into());
        }
        if let Some(c) = text.chars().find(|c| c.is_control() || matches!(c, '[' | ']' | '{' | '}' | '\\')) {
            return Err(format!(
                "invalid pattern {text:?}: {c:?} is not allowed (only * and ? are special; use ? for one character)"
            ));
        }
        Ok(Glob { text: text.to_owned(), tokens: tokens(text) })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether the pattern matches every value (`*`, `**`, ...).
    pub fn matches_all(&self) -> bool {
        self.text.chars().all(|c| c == '*')
    }

    /// Whether `value` matches the pattern.
    pub fn matches(&self, value: &str) -> bool {
        let value: Vec<char> = value.chars().collect();
        walk(&self.tokens, &value, |p, v| match p {
            Token::One => true,
            Token::Char(c) => c == v,
            Token::Any => false,
        })
    }

    /// Whether every value `other` matches, this pattern matches too (sound, not complete: `false` can be wrong
    /// for some equivalent pairs such as `??*` and `?*?`). Read `other` as text where its `*` is a run of anything
    /// and its `?` one character: this pattern's `*` takes any run of it, `?` one character or `?`, and other
    /// characters only themselves.
    pub fn covers(&self, other: &Glob) -> bool {
        walk(&self.tokens, &other.tokens, |p, o| match (p, o) {
            (Token::One, Token::One | Token::Char(_)) => true,
            (Token::Char(a), Token::Char(b)) => a == b,
            _ => false,
        })
    }
}

/// Wildcard matching of `pattern` over `items` (characters, or another pattern's tokens): `Token::Any` takes any
/// run of items; `single` says whether a pattern token takes one item. The usual backtracking to the last `*`
/// only, so at most O(pattern x items) steps.
fn walk<T>(pattern: &[Token], items: &[T], single: impl Fn(&Token, &T) -> bool) -> bool {
    let (mut p, mut i) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while i < items.len() {
        match (pattern.get(p), items.get(i)) {
            (Some(Token::Any), _) => {
                star = Some((p, i));
                p += 1;
            }
            (Some(t), Some(item)) if single(t, item) => {
                p += 1;
                i += 1;
            }
            _ => match star {
                Some((sp, si)) => {
                    p = sp + 1;
                    i = si + 1;
                    star = Some((sp, si + 1));
                }
                None => return false,
            },
        }
    }
    pattern.get(p..).unwrap_or_default().iter().all(|t| *t == Token::Any)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(text: &str) -> Glob {
        Glob::parse(text).unwrap()
    }

    #[test]
    fn star_and_question_mark() {
        assert!(g("tenant-a/*").matches("tenant-a/sensor/1"));
        assert!(g("tenant-a/*").matches("tenant-a/"));
        assert!(!g("tenant-a/*").matches("tenant-b/x"));
        assert!(g("gb-*").matches("gb-"));
        assert!(g("*-gb").matches("sensor-gb"));
        assert!(g("a*b*c").matches("aXXbYYbc"));
        assert!(!g("a*b*c").matches("aXXbYY"));
        assert!(g("dev-??").matches("dev-42"));
        assert!(!g("dev-??").matches("dev-4"));
        assert!(g("dév-?").matches("dév-é"), "one character, not one byte");
        assert!(g("*").matches(""));
        assert!(!g("Gb-*").matches("gb-1"), "case-sensitive");
        assert!(g("exact").matches("exact") && !g("exact").matches("exact2"));
    }

    #[test]
    fn malformed_patterns_are_refused() {
        for bad in ["", "a[bc]", "{a,b}", "a\\*", "a\u{7}"] {
            assert!(Glob::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn covers() {
        assert!(g("*").covers(&g("tenant-a/*")));
        assert!(g("tenant-*").covers(&g("tenant-a/*")));
        assert!(g("tenant-?/*").covers(&g("tenant-a/x*")));
        assert!(g("a*").covers(&g("a*")));
        assert!(g("*a*").covers(&g("*a*a*")));
        assert!(!g("tenant-a/*").covers(&g("*")));
        assert!(!g("tenant-a/*").covers(&g("tenant-b/*")));
        assert!(!g("a?").covers(&g("a*")));
        assert!(!g("ab").covers(&g("a?")));
        assert!(g("*").matches_all() && g("**").matches_all() && !g("*a").matches_all());
    }
}
