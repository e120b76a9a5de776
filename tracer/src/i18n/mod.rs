//! tracer's words in the learners' languages (`tracer lesson`, `trace --explain`): one
//! catalogue per language (`en.rs`, `ko.rs`: key → text, `{name}` placeholders). Adding a
//! language is adding a file and a [`Lang`]; a unit test fails when a key or a placeholder is
//! missing from any catalogue.
#[cfg(test)]
use std::collections::BTreeMap;

mod en;
mod ko;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lang {
    En,
    Ko,
}

impl Lang {
    pub const ALL: [Lang; 2] = [Lang::En, Lang::Ko];

    /// `ko`, `ko_KR.UTF-8`, `en` … (None: not a language tracer speaks).
    pub fn parse(s: &str) -> Option<Lang> {
        let code = s.split(['_', '.', '-', '@']).next()?.to_ascii_lowercase();
        match code.as_str() {
            "ko" => Some(Lang::Ko),
            "en" | "c" | "posix" => Some(Lang::En),
            _ => None,
        }
    }

    /// From the environment as gettext reads it (`LC_ALL`, `LC_MESSAGES`, `LANG`); English
    /// for anything else.
    pub fn from_env() -> Lang {
        ["LC_ALL", "LC_MESSAGES", "LANG"]
            .iter()
            .filter_map(|v| std::env::var(v).ok())
            .find(|v| !v.is_empty())
            .and_then(|v| Lang::parse(&v))
            .unwrap_or(Lang::En)
    }

    pub fn code(self) -> &'static str {
        match self {
            Lang::En => "en",
            Lang::Ko => "ko",
        }
    }

    fn texts(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Lang::En => en::TEXTS,
            Lang::Ko => ko::TEXTS,
        }
    }

    /// The text of `key`: this language's, else English's, else empty (a test forbids a
    /// key missing from any catalogue; a key made from a recording's value may name none).
    pub fn t(self, key: &str) -> &'static str {
        self.texts()
            .iter()
            .find(|(k, _)| *k == key)
            .or_else(|| en::TEXTS.iter().find(|(k, _)| *k == key))
            .map_or("", |(_, v)| *v)
    }

    /// `key`'s text with its `{name}` placeholders filled, in one pass (a value that itself
    /// contains `{name}` stays as it is).
    pub fn f(self, key: &str, args: &[(&str, &dyn std::fmt::Display)]) -> String {
        let text = self.t(key);
        let mut out = String::with_capacity(text.len() + 32);
        let mut rest = text;
        while let Some(open) = rest.find('{') {
            out.push_str(&rest[..open]);
            let after = &rest[open + 1..];
            match after.find('}').map(|close| (&after[..close], close)) {
                Some((name, close)) if args.iter().any(|(n, _)| *n == name) => {
                    if let Some((_, value)) = args.iter().find(|(n, _)| *n == name) {
                        out.push_str(&value.to_string());
                    }
                    rest = &after[close + 1..];
                }
                _ => {
                    out.push('{');
                    rest = after;
                }
            }
        }
        out.push_str(rest);
        out
    }
}

/// Every `{name}` in a text.
#[cfg(test)]
fn placeholders(text: &str) -> Vec<&str> {
    let mut out: Vec<&str> = text
        .split('{')
        .skip(1)
        .filter_map(|rest| rest.split_once('}').map(|(name, _)| name))
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// Each catalogue's keys and their placeholders.
#[cfg(test)]
fn catalogue(lang: Lang) -> BTreeMap<&'static str, Vec<&'static str>> {
    lang.texts()
        .iter()
        .map(|(k, v)| (*k, placeholders(v)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_language_has_every_key_with_the_same_placeholders() {
        let english = catalogue(Lang::En);
        assert_eq!(english.len(), en::TEXTS.len(), "a key twice in en.rs");
        for lang in Lang::ALL {
            let other = catalogue(lang);
            assert_eq!(other.len(), lang.texts().len(), "a key twice in {lang:?}");
            for (key, names) in &english {
                let found = other
                    .get(key)
                    .unwrap_or_else(|| panic!("{lang:?} lacks {key}"));
                assert_eq!(found, names, "{lang:?} {key}: placeholders differ");
            }
            for key in other.keys() {
                assert!(
                    english.contains_key(key),
                    "{lang:?} has {key}, English does not"
                );
            }
            for (key, text) in lang.texts() {
                assert!(!text.trim().is_empty(), "{lang:?} {key} is empty");
            }
        }
    }

    #[test]
    fn the_language_comes_from_the_locale() {
        assert_eq!(Lang::parse("ko_KR.UTF-8"), Some(Lang::Ko));
        assert_eq!(Lang::parse("ko"), Some(Lang::Ko));
        assert_eq!(Lang::parse("en_US.UTF-8"), Some(Lang::En));
        assert_eq!(Lang::parse("C.UTF-8"), Some(Lang::En));
        assert_eq!(Lang::parse("de_DE"), None);
    }

    #[test]
    fn a_value_is_never_filled_in_again() {
        let s = Lang::En.f("live.side", &[("side", &"{states}"), ("states", &"A → B")]);
        assert_eq!(s, "{states}: A → B");
    }

    #[test]
    fn placeholders_are_filled() {
        let s = Lang::En.f(
            "live.socket",
            &[("fd", &3), ("proto", &"TCP"), ("family", &"IPv4")],
        );
        assert_eq!(s, "fd 3 (TCP, IPv4)");
    }
}
