//! Server-side code highlighting for the docs: a small lexer that wraps comments, strings,
//! numbers, keywords and keys in `<span class="hl-…">` for the languages our docs use.
//! Unknown languages are escaped and left plain. No script runs in the browser for this.

/// How one language is lexed.
struct Lang {
    line_comments: &'static [&'static str],
    block_comment: Option<(&'static str, &'static str)>,
    quotes: &'static [char],
    keywords: &'static [&'static str],
    /// `key:` / `key =` at the start of a line (YAML, TOML, INI), or `"key":` (JSON).
    keys: bool,
    /// `$NAME` and `${NAME}` are variables (shells).
    dollar_vars: bool,
}

const RUST_KEYWORDS: &[&str] = &[
    "as", "async", "await", "break", "const", "continue", "crate", "dyn", "else", "enum", "false",
    "fn", "for", "if", "impl", "in", "let", "loop", "match", "mod", "move", "mut", "pub", "ref",
    "return", "self", "Self", "static", "struct", "super", "trait", "true", "type", "unsafe",
    "use", "where", "while",
];
const SHELL_KEYWORDS: &[&str] = &[
    "if", "then", "else", "elif", "fi", "for", "in", "do", "done", "while", "case", "esac",
    "export", "function", "return", "local", "set", "echo", "cd", "sudo",
];
const PYTHON_KEYWORDS: &[&str] = &[
    "and", "as", "async", "await", "class", "def", "elif", "else", "except", "False", "for",
    "from", "if", "import", "in", "is", "lambda", "None", "not", "or", "pass", "raise", "return",
    "True", "try", "while", "with", "yield",
];
const JS_KEYWORDS: &[&str] = &[
    "async",
    "await",
    "break",
    "case",
    "class",
    "const",
    "else",
    "export",
    "false",
    "for",
    "function",
    "if",
    "import",
    "let",
    "new",
    "null",
    "return",
    "switch",
    "this",
    "throw",
    "true",
    "try",
    "typeof",
    "undefined",
    "var",
    "while",
    "final",
    "void",
];
const LITERALS: &[&str] = &["true", "false", "null", "yes", "no", "on", "off"];
const SQL_KEYWORDS: &[&str] = &[
    "select", "from", "where", "insert", "into", "values", "update", "set", "delete", "create",
    "table", "index", "and", "or", "not", "null", "order", "by", "limit", "join", "on",
];

fn lang(name: &str) -> Option<Lang> {
    let plain = Lang {
        line_comments: &[],
        block_comment: None,
        quotes: &['"', '\''],
        keywords: &[],
        keys: false,
        dollar_vars: false,
    };
    let lang = match name.trim().to_ascii_lowercase().as_str() {
        "rust" | "rs" => Lang {
            line_comments: &["//"],
            block_comment: Some(("/*", "*/")),
            // A `'` is a lifetime as often as a char literal: only double quotes.
            quotes: &['"'],
            keywords: RUST_KEYWORDS,
            ..plain
        },
        "sh" | "bash" | "shell" | "console" | "zsh" | "dockerfile" => Lang {
            line_comments: &["#"],
            keywords: SHELL_KEYWORDS,
            dollar_vars: true,
            ..plain
        },
        "python" | "py" => Lang {
            line_comments: &["#"],
            keywords: PYTHON_KEYWORDS,
            ..plain
        },
        "js" | "javascript" | "ts" | "typescript" | "mjs" | "dart" => Lang {
            line_comments: &["//"],
            block_comment: Some(("/*", "*/")),
            quotes: &['"', '\'', '`'],
            keywords: JS_KEYWORDS,
            ..plain
        },
        "json" | "jsonc" => Lang {
            quotes: &['"'],
            keywords: LITERALS,
            keys: true,
            ..plain
        },
        "toml" | "ini" | "yaml" | "yml" | "env" => Lang {
            line_comments: &["#"],
            keywords: LITERALS,
            keys: true,
            dollar_vars: true,
            ..plain
        },
        "sql" => Lang {
            line_comments: &["--"],
            keywords: SQL_KEYWORDS,
            ..plain
        },
        _ => return None,
    };
    Some(lang)
}

/// Escapes text for HTML element content and quoted attributes.
pub use codelab_core::html::escape_html;

fn span(out: &mut String, class: &str, text: &str) {
    out.push_str("<span class=\"hl-");
    out.push_str(class);
    out.push_str("\">");
    out.push_str(&escape_html(text));
    out.push_str("</span>");
}

/// The byte length of a quoted string starting at `rest[0]` (the quote), escapes honoured;
/// an unterminated string runs to the end of the line.
fn string_len(rest: &str, quote: char) -> usize {
    let mut escaped = false;
    for (i, c) in rest.char_indices().skip(1) {
        if escaped {
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == quote {
            return i + c.len_utf8();
        } else if c == '\n' && quote != '`' {
            return i;
        }
    }
    rest.len()
}

fn word_len(rest: &str) -> usize {
    rest.char_indices()
        .find(|(_, c)| !(c.is_alphanumeric() || *c == '_'))
        .map_or(rest.len(), |(i, _)| i)
}

/// The key at the start of a line (`name:`, `name =`, `- name:`), as a byte length.
fn line_key_len(rest: &str) -> Option<usize> {
    let end = rest
        .char_indices()
        .find(|(_, c)| !(c.is_alphanumeric() || matches!(c, '_' | '-' | '.')))
        .map_or(rest.len(), |(i, _)| i);
    if end == 0 {
        return None;
    }
    let after = rest[end..].trim_start_matches([' ', '\t']);
    (after.starts_with(':') || after.starts_with('=')).then_some(end)
}

/// `code` as HTML with highlight spans for `language`; plain escaped text when the language
/// is unknown or empty.
pub fn highlight(language: &str, code: &str) -> String {
    let Some(lang) = lang(language) else {
        return escape_html(code);
    };
    let mut out = String::with_capacity(code.len() * 2);
    let mut i = 0;
    let mut line_start = true;
    while i < code.len() {
        let rest = &code[i..];
        let Some(c) = rest.chars().next() else { break };
        if c == '\n' {
            out.push('\n');
            i += 1;
            line_start = true;
            continue;
        }
        if line_start && (c == ' ' || c == '\t') {
            out.push(c);
            i += 1;
            continue;
        }
        let at_line_start = std::mem::replace(&mut line_start, false);
        // Comments: `#` only at a word boundary, so `a#b` and `#!` stay text in shells.
        let boundary = i == 0 || code[..i].ends_with([' ', '\t', '\n']);
        if lang
            .line_comments
            .iter()
            .any(|m| rest.starts_with(*m) && (boundary || *m != "#"))
        {
            let end = rest.find('\n').unwrap_or(rest.len());
            span(&mut out, "comment", &rest[..end]);
            i += end;
            continue;
        }
        if let Some((open, close)) = lang.block_comment
            && rest.starts_with(open)
        {
            let end = rest[open.len()..]
                .find(close)
                .map_or(rest.len(), |j| open.len() + j + close.len());
            span(&mut out, "comment", &rest[..end]);
            i += end;
            continue;
        }
        if lang.keys && at_line_start {
            let (dash, body) = match rest.strip_prefix("- ") {
                Some(body) => (2, body),
                None => (0, rest),
            };
            if let Some(len) = line_key_len(body) {
                out.push_str(&escape_html(&rest[..dash]));
                span(&mut out, "key", &body[..len]);
                i += dash + len;
                continue;
            }
            if rest.starts_with('[') {
                let end = rest.find('\n').unwrap_or(rest.len());
                span(&mut out, "keyword", &rest[..end]);
                i += end;
                continue;
            }
        }
        if lang.quotes.contains(&c) {
            let len = string_len(rest, c);
            let after = rest[len..].trim_start_matches([' ', '\t']);
            let class = if lang.keys && c == '"' && after.starts_with(':') {
                "key"
            } else {
                "string"
            };
            span(&mut out, class, &rest[..len]);
            i += len;
            continue;
        }
        if lang.dollar_vars && c == '$' {
            let body = &rest[1..];
            let len = if body.starts_with('{') {
                body.find('}').map_or(body.len(), |j| j + 1)
            } else {
                word_len(body)
            };
            if len > 0 {
                span(&mut out, "variable", &rest[..=len]);
                i += 1 + len;
                continue;
            }
        }
        if c.is_ascii_digit() {
            let previous_is_word = code[..i]
                .chars()
                .next_back()
                .is_some_and(|p| p.is_alphanumeric() || p == '_');
            let len = rest
                .char_indices()
                .find(|(_, d)| !(d.is_ascii_alphanumeric() || *d == '.' || *d == '_'))
                .map_or(rest.len(), |(j, _)| j);
            if previous_is_word {
                out.push_str(&escape_html(&rest[..len]));
            } else {
                span(&mut out, "number", &rest[..len]);
            }
            i += len;
            continue;
        }
        if c.is_alphabetic() || c == '_' {
            let len = word_len(rest);
            let word = &rest[..len];
            let is_keyword = if language.eq_ignore_ascii_case("sql") {
                lang.keywords.contains(&word.to_ascii_lowercase().as_str())
            } else {
                lang.keywords.contains(&word)
            };
            if is_keyword {
                span(&mut out, "keyword", word);
            } else {
                out.push_str(&escape_html(word));
            }
            i += len;
            continue;
        }
        out.push_str(&escape_html(&rest[..c.len_utf8()]));
        i += c.len_utf8();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_languages_are_only_escaped() {
        assert_eq!(
            highlight("", "<a href=\"x\">"),
            "&lt;a href=&quot;x&quot;&gt;"
        );
        assert_eq!(highlight("brainfuck", "a & b"), "a &amp; b");
    }

    #[test]
    fn shell_comments_strings_and_variables_are_marked() {
        let html = highlight("sh", "# start\ncurl -d 'a=b' \"$URL\" # end\nx#y");
        assert!(html.starts_with("<span class=\"hl-comment\"># start</span>\n"));
        assert!(html.contains("<span class=\"hl-string\">&#x27;a=b&#x27;</span>"));
        assert!(html.contains("<span class=\"hl-string\">&quot;$URL&quot;</span>"));
        assert!(html.contains("<span class=\"hl-comment\"># end</span>"));
        assert!(html.ends_with("x#y"), "{html}");
    }

    #[test]
    fn json_keys_differ_from_string_values() {
        let html = highlight("json", r#"{"type": "hello", "n": 2, "ok": true}"#);
        assert!(html.contains("<span class=\"hl-key\">&quot;type&quot;</span>"));
        assert!(html.contains("<span class=\"hl-string\">&quot;hello&quot;</span>"));
        assert!(html.contains("<span class=\"hl-number\">2</span>"));
        assert!(html.contains("<span class=\"hl-keyword\">true</span>"));
    }

    #[test]
    fn rust_and_yaml_and_multibyte_text_survive() {
        let html = highlight("rust", "fn main() { let s = \"é\"; } // ok\n/* a\nb */");
        assert!(html.contains("<span class=\"hl-keyword\">fn</span>"));
        assert!(html.contains("<span class=\"hl-string\">&quot;é&quot;</span>"));
        assert!(html.contains("<span class=\"hl-comment\">/* a\nb */</span>"));
        let yaml = highlight("yaml", "services:\n  - name: auth # x\nport: 8003");
        assert!(yaml.contains("<span class=\"hl-key\">services</span>:"));
        assert!(yaml.contains("- <span class=\"hl-key\">name</span>"));
        assert!(yaml.contains("<span class=\"hl-number\">8003</span>"));
        assert_eq!(highlight("toml", "Операция"), "Операция");
    }
}
