//! Text from the model or the workspace made safe to print on a terminal.
//!
//! A terminal obeys control characters: `\r` and ESC sequences (erase line, cursor moves) can
//! overwrite what an approval prompt shows, OSC sequences can set the clipboard (OSC 52) or
//! disguise links (OSC 8), and Unicode bidi overrides or invisible format characters can make a
//! path read differently from what it is (docs/security.md, "a compromised model output").
//! Every such character is replaced by a visible escape (`\r`, `\x1b`, `\u{202e}`), one at a
//! time, so a sequence split across streamed pieces is neutralized as well; escaping is
//! idempotent, so text may pass through here more than once. Our own colouring is added after.

use std::borrow::Cow;
use std::fmt::Write;

/// How much of a text's layout is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// One line (a tool name, a path, a command): every control character is escaped, `\n`
    /// and `\t` included.
    Line,
    /// Several lines shown for a decision (a diff, arguments, command output): `\n` and `\t`
    /// are kept, every `\r` is shown.
    Block,
    /// Conversation text (the assistant's replies, history): `\n` and `\t` are kept, a `\r`
    /// right before `\n` (a CRLF line end, which cannot overwrite anything) is dropped, and the
    /// joiners that emoji and some scripts need (U+200C, U+200D) are kept.
    Prose,
}

/// Unicode format characters (general category Cf) and other invisible or layout-changing
/// characters: bidi embeddings, overrides, isolates and marks, zero-width characters, the
/// invisible tag characters, line and paragraph separators, and the Hangul fillers that render
/// as blank.
fn is_invisible_or_bidi(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}'
            | '\u{034F}'
            | '\u{0600}'..='\u{0605}'
            | '\u{061C}'
            | '\u{06DD}'
            | '\u{070F}'
            | '\u{0890}'..='\u{0891}'
            | '\u{08E2}'
            | '\u{115F}'..='\u{1160}'
            | '\u{17B4}'..='\u{17B5}'
            | '\u{180B}'..='\u{180F}'
            | '\u{200B}'..='\u{200F}'
            | '\u{2028}'..='\u{202E}'
            | '\u{2060}'..='\u{206F}'
            | '\u{3164}'
            | '\u{FE00}'..='\u{FE0F}'
            | '\u{FEFF}'
            | '\u{FFA0}'
            | '\u{FFF9}'..='\u{FFFB}'
            | '\u{110BD}'
            | '\u{110CD}'
            | '\u{13430}'..='\u{1343F}'
            | '\u{1BCA0}'..='\u{1BCA3}'
            | '\u{1D173}'..='\u{1D17A}'
            | '\u{E0000}'..='\u{E0FFF}'
    )
}

/// Whether `c` is escaped in `shape` (the character that follows matters only for a `\r`).
fn needs_escape(c: char, next: Option<char>, shape: Shape) -> bool {
    match c {
        '\n' | '\t' => shape == Shape::Line,
        '\r' => !(shape == Shape::Prose && next == Some('\n')),
        // Joiners and variation selectors (the emoji or text form of the character before)
        // shape what is shown without hiding or moving it: harmless in prose.
        '\u{200C}' | '\u{200D}' | '\u{FE00}'..='\u{FE0F}' => shape != Shape::Prose,
        c if c.is_control() => true,
        c => is_invisible_or_bidi(c),
    }
}

fn push_escaped(out: &mut String, c: char) {
    let _ = match c {
        '\r' => write!(out, "\\r"),
        '\n' => write!(out, "\\n"),
        '\t' => write!(out, "\\t"),
        c if (c as u32) < 0x80 => write!(out, "\\x{:02x}", c as u32),
        c => write!(out, "\\u{{{:x}}}", c as u32),
    };
}

/// `text` with every character a terminal would act on, or that hides or reorders text,
/// replaced by a visible escape (borrowed when nothing needs escaping).
pub fn for_terminal(text: &str, shape: Shape) -> Cow<'_, str> {
    let mut chars = text.char_indices().peekable();
    while let Some((index, c)) = chars.next() {
        let next = chars.peek().map(|(_, n)| *n);
        let dropped_crlf = c == '\r' && shape == Shape::Prose;
        if !needs_escape(c, next, shape) && !dropped_crlf {
            continue;
        }
        let mut out = String::with_capacity(text.len() + 16);
        out.push_str(&text[..index]);
        let mut current = Some(c);
        let mut rest = text[index + c.len_utf8()..].chars().peekable();
        while let Some(c) = current {
            let next = rest.peek().copied();
            if needs_escape(c, next, shape) {
                // Prose drops the `\r` of a CRLF (needs_escape said no) and escapes the rest.
                push_escaped(&mut out, c);
            } else if !(c == '\r' && shape == Shape::Prose) {
                out.push(c);
            }
            current = rest.next();
        }
        return Cow::Owned(out);
    }
    Cow::Borrowed(text)
}

/// Whether `text` holds anything [`for_terminal`] escapes in a [`Shape::Block`] (so a prompt
/// can say that something was hidden in it).
pub fn has_hidden_characters(text: &str) -> bool {
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if needs_escape(c, chars.peek().copied(), Shape::Block) {
            return true;
        }
    }
    false
}

/// A serialized JSON document with every control, bidi or invisible character written as a
/// `\uXXXX` escape: the same JSON value, safe to show on a terminal (serde_json escapes only
/// C0 controls, not DEL, C1 controls or bidi overrides).
pub fn json_for_terminal(json: &str) -> Cow<'_, str> {
    if !json
        .chars()
        .any(|c| c.is_control() || is_invisible_or_bidi(c) || matches!(c, '\u{200C}' | '\u{200D}'))
    {
        return Cow::Borrowed(json);
    }
    let mut out = String::with_capacity(json.len() + 16);
    for c in json.chars() {
        // Outside strings a serialized document has only ASCII punctuation, digits, letters
        // and spaces, none of which is escaped here; inside strings a `\uXXXX` is the same
        // character.
        if (c.is_control() && !matches!(c, '\n' | '\r' | '\t' | ' '))
            || is_invisible_or_bidi(c)
            || matches!(c, '\u{200C}' | '\u{200D}')
        {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                let _ = write!(out, "\\u{unit:04x}");
            }
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn carriage_returns_and_escape_sequences_become_visible() {
        assert_eq!(
            for_terminal("rm -rf ~\x1b[2K\rls -la", Shape::Line),
            r"rm -rf ~\x1b[2K\rls -la"
        );
        assert_eq!(
            for_terminal("rm -rf ~ \r ls", Shape::Line),
            r"rm -rf ~ \r ls"
        );
        assert_eq!(
            for_terminal("a\nb\tc\x07\x08\x7f", Shape::Line),
            r"a\nb\tc\x07\x08\x7f"
        );
        assert_eq!(for_terminal("a\nb\tc", Shape::Block), "a\nb\tc");
        assert_eq!(for_terminal("a\r\nb", Shape::Block), "a\\r\nb");
        assert_eq!(for_terminal("a\r\nb\rc", Shape::Prose), "a\nb\\rc");
        // A C1 CSI (U+009B) works like ESC [ on some terminals.
        assert_eq!(for_terminal("x\u{9b}2Ky", Shape::Prose), r"x\u{9b}2Ky");
    }

    #[test]
    fn osc_sequences_are_neutralized_even_when_split() {
        let clipboard = "copy \x1b]52;c;cm0gLXJmIH4=\x07 done";
        assert_eq!(
            for_terminal(clipboard, Shape::Prose),
            r"copy \x1b]52;c;cm0gLXJmIH4=\x07 done"
        );
        let link = "\x1b]8;;https://evil.example\x1b\\docs\x1b]8;;\x1b\\";
        let shown = for_terminal(link, Shape::Prose);
        assert!(!shown.contains('\x1b'), "{shown}");
        // Streamed in pieces, each piece is escaped on its own.
        for piece in ["\x1b", "]52;c;", "eA==\x07"] {
            assert!(!for_terminal(piece, Shape::Prose).contains(['\x1b', '\x07']));
        }
    }

    #[test]
    fn bidi_overrides_and_invisible_characters_are_escaped() {
        assert_eq!(
            for_terminal("invoice\u{202e}fdp.exe", Shape::Line),
            r"invoice\u{202e}fdp.exe"
        );
        for c in [
            '\u{202a}',
            '\u{2066}',
            '\u{2069}',
            '\u{200b}',
            '\u{feff}',
            '\u{e0041}',
        ] {
            let text = format!("a{c}b");
            assert!(
                !for_terminal(&text, Shape::Prose).contains(c),
                "{:x}",
                c as u32
            );
        }
        // Joiners stay in prose (emoji sequences, scripts) but not in a path or a command.
        let family = "👨\u{200d}👩\u{200d}👧";
        assert_eq!(for_terminal(family, Shape::Prose), family);
        assert!(!for_terminal(family, Shape::Line).contains('\u{200d}'));
        // Ordinary text, accents and right-to-left scripts are untouched (and not copied).
        let plain = "naïve — שלום — 中文 ✓";
        assert!(matches!(for_terminal(plain, Shape::Line), Cow::Borrowed(_)));
    }

    #[test]
    fn escaping_is_idempotent() {
        let once = for_terminal("a\x1b[31m\u{202e}\rb", Shape::Block).into_owned();
        assert_eq!(for_terminal(&once, Shape::Block), once);
        assert!(has_hidden_characters("a\rb"));
        assert!(!has_hidden_characters("a\nb"));
    }

    #[test]
    fn json_keeps_its_value_and_loses_its_controls() {
        let value = serde_json::json!({"content": "a\u{9b}b\u{202e}c\u{7f}\u{e0041}"});
        let serialized = value.to_string();
        let safe = json_for_terminal(&serialized);
        assert!(
            !safe.contains(['\u{9b}', '\u{202e}', '\u{7f}', '\u{e0041}']),
            "{safe}"
        );
        let back: serde_json::Value = serde_json::from_str(&safe).unwrap();
        assert_eq!(back, value);
    }
}
