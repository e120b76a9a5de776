//! Text from outside tracer: process and thread names, namespace names, paths — bytes that any
//! local user chooses. Two steps, each in one place:
//!
//! - [`decode`] turns those bytes into a `String` when they enter the agent, losslessly: valid
//!   UTF-8 stays as it is, every byte of an invalid sequence becomes `\xNN` and a backslash
//!   becomes `\\`, so the text can still be told apart from any other.
//! - [`escape`] is the one sanitiser every terminal sink uses (tables, `ports`, `nat`, the
//!   story, the TUI, status and log lines): control characters (C0, DEL, C1), bidirectional
//!   overrides and line/paragraph separators come out as visible escapes (`\x1b`, `\u{202e}`),
//!   the way `ls -b` keeps a terminal safe. [`json`] does the same for JSON strings with JSON's
//!   own `\u` escapes, so `cat`ing a JSON file is safe too.
//!
//! Together the output is unambiguous: a backslash in it is always `\\`, `\xNN` (an invalid
//! byte, 0x80 and up, or a control character, below 0x20 or 0x7f) or `\u{…}`.
//! Column widths count display cells ([`fit`], [`pad`]), never bytes: nothing here slices a
//! string on a byte index.
use std::borrow::Cow;
use std::fmt::Write as _;

use compact_str::CompactString;

use unicode_width::UnicodeWidthChar;

/// Bytes from outside as text: valid UTF-8 as it is, each invalid byte as `\xNN`, each
/// backslash doubled.
pub fn decode(bytes: &[u8]) -> String {
    decode_as(bytes)
}

/// [`decode`] into an inline string: a name of up to 24 bytes (every kernel `comm`, unless it
/// needs escaping) takes no allocation — the hot path of `watch --json` makes two per event.
pub fn decode_inline(bytes: &[u8]) -> CompactString {
    decode_as(bytes)
}

fn decode_as<T: for<'a> From<&'a str> + std::fmt::Write>(bytes: &[u8]) -> T {
    // The common case (valid UTF-8 without a backslash: nothing to rewrite) in one copy.
    if let Ok(text) = std::str::from_utf8(bytes) {
        if !text.contains('\\') {
            return T::from(text);
        }
    }
    let mut out = T::from("");
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            let _ = if c == '\\' {
                out.write_str("\\\\")
            } else {
                out.write_char(c)
            };
        }
        for b in chunk.invalid() {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
    out
}

/// A kernel `comm` (NUL-padded, at most 16 bytes) as text, through [`decode`].
pub fn comm(comm: &[u8]) -> String {
    decode(until_nul(comm))
}

/// [`comm`] without an allocation ([`decode_inline`]).
pub fn comm_inline(comm: &[u8]) -> CompactString {
    decode_inline(until_nul(comm))
}

fn until_nul(bytes: &[u8]) -> &[u8] {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    &bytes[..end]
}

/// A character a terminal must not receive as it is.
fn unsafe_char(c: char) -> bool {
    matches!(c,
        '\u{0}'..='\u{1f}' | '\u{7f}'..='\u{9f}'
        // Bidirectional marks, embeddings, overrides and isolates (Trojan Source).
        | '\u{61c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
        // Line and paragraph separators end a line for some terminals and viewers.
        | '\u{2028}' | '\u{2029}'
        // Invisible format characters: `ss\u{200b}hd` must not pass for `sshd` (soft hyphen,
        // combining grapheme joiner, zero-width space/joiners, word joiner and invisible
        // operators, deprecated format controls, byte-order mark, interlinear annotation,
        // tag characters).
        | '\u{ad}' | '\u{34f}' | '\u{180e}' | '\u{200b}'..='\u{200d}' | '\u{2060}'..='\u{2064}'
        | '\u{206a}'..='\u{206f}' | '\u{feff}' | '\u{fff9}'..='\u{fffb}' | '\u{e0000}'..='\u{e007f}')
}

/// One character as the terminal sees it: itself, or its escape.
fn push_escaped(out: &mut String, c: char) {
    if !unsafe_char(c) {
        out.push(c);
    } else if (c as u32) < 0x20 || c == '\u{7f}' {
        let _ = write!(out, "\\x{:02x}", c as u32);
    } else {
        let _ = write!(out, "\\u{{{:x}}}", c as u32);
    }
}

/// `s` with every character a terminal must not see escaped (`\x1b`, `\u{202e}`); borrowed when
/// there is nothing to escape.
pub fn escape(s: &str) -> Cow<'_, str> {
    let Some(first) = s.find(unsafe_char) else {
        return Cow::Borrowed(s);
    };
    let mut out = String::with_capacity(s.len() + 8);
    out.push_str(&s[..first]);
    for c in s[first..].chars() {
        push_escaped(&mut out, c);
    }
    Cow::Owned(out)
}

/// The display width of `s` in terminal cells (escaped text: every character is printable).
pub fn width(s: &str) -> usize {
    s.chars().map(|c| c.width().unwrap_or(0)).sum()
}

/// [`escape`]d `s` in at most `cells` display cells. When it does not fit it is cut between
/// whole characters and whole escapes (never inside `\\x1b`, never inside a `\\\\` or
/// `\\xNN` that [`decode`] wrote) and ends with `…`, so a cut name cannot pass for a whole one.
pub fn fit(s: &str, cells: usize) -> Cow<'_, str> {
    let escaped = escape(s);
    if width(&escaped) <= cells {
        return escaped;
    }
    let room = cells.saturating_sub(1);
    let mut out = String::with_capacity(cells + 4);
    let mut used = 0;
    let mut piece = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        piece.clear();
        push_escaped(&mut piece, c);
        // decode's escapes (`\\\\`, `\\xNN`) are one unit too.
        if c == '\\' {
            match chars.peek() {
                Some('\\') => piece.push(chars.next().expect("peeked")),
                Some('x') => {
                    for _ in 0..3 {
                        if let Some(next) = chars.next() {
                            push_escaped(&mut piece, next);
                        }
                    }
                }
                _ => {}
            }
        }
        let w = width(&piece);
        if used + w > room {
            break;
        }
        used += w;
        out.push_str(&piece);
    }
    if cells > 0 {
        out.push('…');
    }
    Cow::Owned(out)
}

/// [`fit`] to `cells`, then padded with spaces to exactly `cells` cells (a table column).
pub fn pad(s: &str, cells: usize) -> String {
    let fitted = fit(s, cells);
    let mut out = String::with_capacity(cells + fitted.len());
    out.push_str(&fitted);
    out.extend(std::iter::repeat_n(
        ' ',
        cells.saturating_sub(width(&fitted)),
    ));
    out
}

/// [`escape`] for one log line or message: everything but a final line end, so a name with a
/// newline in it cannot forge a line of its own.
pub fn escape_log(s: &str) -> Cow<'_, str> {
    match s.strip_suffix('\n') {
        Some(line) => match escape(line) {
            Cow::Borrowed(_) => Cow::Borrowed(s),
            Cow::Owned(mut escaped) => {
                escaped.push('\n');
                Cow::Owned(escaped)
            }
        },
        None => escape(s),
    }
}

/// JSON writing that keeps a terminal safe: serde_json escapes C0, quotes and backslashes; this
/// formatter escapes DEL, C1, bidirectional controls and separators as `\uXXXX` too.
pub mod json {
    use std::io::{self, Write};

    use serde::Serialize;
    use serde_json::ser::Formatter;

    #[derive(Clone, Copy, Default)]
    pub struct SafeFormatter;

    impl Formatter for SafeFormatter {
        fn write_string_fragment<W: ?Sized + Write>(
            &mut self,
            writer: &mut W,
            fragment: &str,
        ) -> io::Result<()> {
            let mut rest = fragment;
            while let Some(at) = rest.find(super::unsafe_char) {
                writer.write_all(&rest.as_bytes()[..at])?;
                let c = rest[at..].chars().next().expect("found a char there");
                // Above U+FFFF (tag characters) JSON needs a surrogate pair.
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    write!(writer, "\\u{:04x}", unit)?;
                }
                rest = &rest[at + c.len_utf8()..];
            }
            writer.write_all(rest.as_bytes())
        }
    }

    /// `value` as one JSON text, safe to print.
    pub fn to_writer<W: Write, T: ?Sized + Serialize>(out: W, value: &T) -> io::Result<()> {
        let mut ser = serde_json::Serializer::with_formatter(out, SafeFormatter);
        value.serialize(&mut ser).map_err(io::Error::from)
    }

    /// `value` as a JSON string, safe to print.
    pub fn to_string<T: ?Sized + Serialize>(value: &T) -> String {
        let mut out = Vec::with_capacity(128);
        to_writer(&mut out, value).expect("serialising to memory");
        String::from_utf8(out).expect("serde_json writes UTF-8")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn names_are_decoded_losslessly() {
        assert_eq!(decode(b"nginx"), "nginx");
        assert_eq!(decode(b"a\xff\xfeb"), "a\\xff\\xfeb");
        assert_eq!(decode(b"back\\slash"), "back\\\\slash");
        assert_eq!(decode("日本".as_bytes()), "日本");
        // A multi-byte character cut short by the kernel's 15-byte limit.
        assert_eq!(decode(b"ab\xe6\x97"), "ab\\xe6\\x97");
        assert_eq!(comm(b"curl\0\0\0\0\0\0\0\0\0\0\0\0"), "curl");
    }

    #[test]
    fn terminal_controls_are_escaped() {
        assert_eq!(escape("\x1b[2J\x1b[31mEVIL"), "\\x1b[2J\\x1b[31mEVIL");
        assert_eq!(escape("a\u{202e}b"), "a\\u{202e}b");
        assert_eq!(escape("c1\u{9b}2J"), "c1\\u{9b}2J");
        assert_eq!(escape("del\x7f"), "del\\x7f");
        assert!(matches!(escape("plain"), Cow::Borrowed("plain")));
    }

    #[test]
    fn columns_count_cells_not_bytes() {
        assert_eq!(fit("日本語のプロセス", 5), "日本…");
        assert_eq!(pad("日本", 6), "日本  ");
        assert_eq!(pad("abcdefghijklmnopq", 15), "abcdefghijklmn…");
        assert_eq!(pad("\x1b", 6), "\\x1b  ");
        // Never cut inside an escape: a dangling `\x1` would look like something else.
        assert_eq!(pad("aaaaaaaaaaaaa\x1b", 15), "aaaaaaaaaaaaa… ");
        assert_eq!(pad(&decode(b"abcdefghijk\xff\xff"), 15), "abcdefghijk…   ");
        assert_eq!(pad(&decode(b"abcdefghijkl\\zz"), 15), "abcdefghijkl\\\\…");
        assert_eq!(escape_log("one\x1b\ntwo\n"), "one\\x1b\\x0atwo\n");
        assert_eq!(escape("ss\u{200b}hd"), "ss\\u{200b}hd");
    }

    #[test]
    fn json_escapes_above_the_bmp_as_surrogate_pairs() {
        let s = json::to_string(&"a\u{e0041}b");
        assert_eq!(s, r#""a\udb40\udc41b""#);
        let back: String = serde_json::from_str(&s).unwrap();
        assert_eq!(back, "a\u{e0041}b");
    }

    #[test]
    fn json_strings_are_terminal_safe() {
        let s = json::to_string(&"a\u{1b}\u{7f}\u{85}\u{202e}\"");
        assert_eq!(s, r#""a\u001b\u007f\u0085\u202e\"""#);
        let back: String = serde_json::from_str(&s).unwrap();
        assert_eq!(back, "a\u{1b}\u{7f}\u{85}\u{202e}\"");
    }

    /// What a terminal may receive: valid UTF-8 (a `&str`), no control character, no bidi
    /// control.
    pub fn terminal_safe(s: &str) -> bool {
        !s.chars().any(unsafe_char)
    }

    proptest! {
        #[test]
        fn anything_decoded_and_escaped_is_safe(bytes in proptest::collection::vec(any::<u8>(), 0..64), cells in 0usize..20) {
            let text = decode(&bytes);
            prop_assert!(terminal_safe(&escape(&text)));
            prop_assert!(terminal_safe(&pad(&text, cells)));
            prop_assert_eq!(width(&pad(&text, cells)), cells);
            let json = json::to_string(&text);
            prop_assert!(terminal_safe(&json));
            let back: String = serde_json::from_str(&json).unwrap();
            prop_assert_eq!(back, text);
        }

        #[test]
        fn decoding_is_lossless(a in proptest::collection::vec(any::<u8>(), 0..32), b in proptest::collection::vec(any::<u8>(), 0..32)) {
            prop_assert_eq!(a == b, decode(&a) == decode(&b));
        }
    }
}
