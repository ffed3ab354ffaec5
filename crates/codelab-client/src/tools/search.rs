//! `search_in_code`: a text or regular-expression search over the workspace's files.

use std::io;
use std::path::PathBuf;

use regex::RegexBuilder;
use serde_json::{Value, json};

use super::args::Args;
use super::files::{fs_error, glob_matches, read_capped};
use super::workspace::{Workspace, at, display};
use super::{Limits, SKIPPED_DIRS};

/// Matches returned when the call does not say.
pub const DEFAULT_MAX_RESULTS: u64 = 100;
/// The most matches a call may ask for.
pub const MAX_RESULTS: u64 = 1000;
/// Files larger than this are not searched (generated or data files).
const MAX_FILE_BYTES: u64 = 2 * 1024 * 1024;
/// A matching line longer than this is cut (minified code would flood the model).
const MAX_LINE_CHARS: usize = 500;
/// Counting stops here: `total_matches` is then a lower bound.
const MAX_COUNTED: usize = 100_000;

/// `search_in_code {query, path?, file_pattern?, case_sensitive?, regex?, max_results?,
/// include_hidden?}` → `{query, matches, total_matches, truncated}`; each match is `{file,
/// line, column, content}` (1-based line and column). Skips `.git`, `target`,
/// `node_modules`, hidden entries (unless `include_hidden`), symlinks leading outside, binary
/// files and files over 2 MiB.
pub fn search_in_code(ws: &Workspace, args: Args<'_>, _limits: &Limits) -> Result<Value, String> {
    let query = args.string("query")?;
    if query.is_empty() {
        return Err("the query is empty".to_owned());
    }
    let start = args.opt_string("path")?.unwrap_or(".");
    let case_sensitive = args.flag("case_sensitive", false)?;
    let is_regex = args.flag("regex", false)?;
    let include_hidden = args.flag("include_hidden", false)?;
    let max_results = args
        .opt_u64("max_results")?
        .unwrap_or(DEFAULT_MAX_RESULTS)
        .clamp(1, MAX_RESULTS);
    let max_results = usize::try_from(max_results).unwrap_or(usize::MAX);
    let file_pattern = args.opt_string("file_pattern")?;
    let matcher = file_pattern
        .map(|p| {
            globset::Glob::new(p)
                .map(|g| g.compile_matcher())
                .map_err(|e| format!("invalid file_pattern {p:?}: {e}"))
        })
        .transpose()?;
    let pattern_has_slash = file_pattern.is_some_and(|p| p.contains('/'));
    let source = if is_regex {
        query.to_owned()
    } else {
        regex::escape(query)
    };
    let regex = RegexBuilder::new(&source)
        .case_insensitive(!case_sensitive)
        .build()
        .map_err(|e| format!("invalid regular expression: {e}"))?;

    let top = ws.resolve(start).map_err(|e| e.to_string())?;
    let metadata = ws.dir().metadata(at(&top)).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => format!("cannot search {start:?}: no such file or directory"),
        _ => fs_error("cannot search", start, &e),
    })?;
    // Relative paths inside the workspace; every open below goes through its handle.
    let mut files: Vec<PathBuf> = Vec::new();
    if metadata.is_file() {
        files.push(top.clone());
    } else if metadata.is_dir() {
        let mut stack = vec![top.clone()];
        while let Some(dir) = stack.pop() {
            let Ok(entries) = ws.open_dir(&dir).and_then(|d| d.entries()) else {
                continue;
            };
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if !include_hidden && name.starts_with('.') {
                    continue;
                }
                let Ok(file_type) = entry.file_type() else {
                    continue;
                };
                let path = dir.join(entry.file_name());
                if file_type.is_symlink() {
                    // Followed only to files inside: the handle refuses a link leading out.
                    if ws.dir().metadata(&path).is_ok_and(|m| m.is_file()) {
                        files.push(path);
                    }
                } else if file_type.is_dir() {
                    if !SKIPPED_DIRS.contains(&name.as_str()) {
                        stack.push(path);
                    }
                } else if file_type.is_file() {
                    files.push(path);
                }
            }
        }
    } else {
        return Err(format!(
            "cannot search {start:?}: no such file or directory"
        ));
    }
    files.sort();

    let mut matches = Vec::new();
    let mut total = 0usize;
    'files: for path in files {
        let rel = display(&path);
        if let Some(matcher) = &matcher {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if !glob_matches(matcher, pattern_has_slash, &name, &rel) {
                continue;
            }
        }
        let Ok(mut file) = ws.dir().open(&path) else {
            continue;
        };
        if file.metadata().map_or(true, |m| m.len() > MAX_FILE_BYTES) {
            continue;
        }
        let Ok(Some(bytes)) = read_capped(&mut file, MAX_FILE_BYTES) else {
            continue;
        };
        // A NUL byte early on marks a binary file, as grep decides.
        if bytes.iter().take(8192).any(|b| *b == 0) {
            continue;
        }
        let text = String::from_utf8_lossy(&bytes);
        for (index, line) in text.lines().enumerate() {
            // One match per line is enough for the model to look there.
            if let Some(found) = regex.find(line) {
                total += 1;
                if matches.len() < max_results {
                    let column = line[..found.start()].chars().count() + 1;
                    let content: String = line.chars().take(MAX_LINE_CHARS).collect();
                    matches.push(json!({
                        "file": rel,
                        "line": index + 1,
                        "column": column,
                        "content": content,
                    }));
                }
                if total >= MAX_COUNTED {
                    break 'files;
                }
            }
        }
    }
    Ok(json!({
        "query": query,
        "matches": matches,
        "total_matches": total,
        "truncated": total > matches.len(),
    }))
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

    fn setup() -> (tempfile::TempDir, Workspace) {
        let (dir, ws) = crate::tools::workspace::tests::workspace();
        let root = ws.root();
        fs::create_dir_all(root.join("src")).unwrap();
        fs::write(
            root.join("src/lib.rs"),
            "fn parse() {}\n// TODO: Parse more\n",
        )
        .unwrap();
        fs::write(root.join("src/main.py"), "def parse():\n    pass\n").unwrap();
        fs::create_dir_all(root.join("target")).unwrap();
        fs::write(root.join("target/gen.rs"), "fn parse() {}\n").unwrap();
        fs::write(root.join(".env"), "parse=1\n").unwrap();
        fs::write(root.join("blob.bin"), b"parse\0\0").unwrap();
        (dir, ws)
    }

    fn search(ws: &Workspace, value: Value) -> Result<Value, String> {
        let empty = serde_json::Map::new();
        search_in_code(ws, Args::new(&value, &empty).unwrap(), &Limits::default())
    }

    fn files_of(result: &Value) -> Vec<String> {
        result["matches"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| format!("{}:{}", m["file"].as_str().unwrap(), m["line"]))
            .collect()
    }

    #[test]
    fn plain_search_is_case_insensitive_by_default() {
        let (_d, ws) = setup();
        let result = search(&ws, json!({"query": "parse"})).unwrap();
        assert_eq!(result["query"], "parse");
        assert_eq!(
            files_of(&result),
            ["src/lib.rs:1", "src/lib.rs:2", "src/main.py:1"]
        );
        assert_eq!(result["total_matches"], 3);
        assert_eq!(result["truncated"], false);
        assert_eq!(
            result["matches"][0],
            json!({"file": "src/lib.rs", "line": 1, "column": 4, "content": "fn parse() {}"})
        );
    }

    #[test]
    fn case_regex_and_glob_options_apply() {
        let (_d, ws) = setup();
        let exact = search(&ws, json!({"query": "Parse", "case_sensitive": true})).unwrap();
        assert_eq!(files_of(&exact), ["src/lib.rs:2"]);
        let regex = search(&ws, json!({"query": "^def \\w+", "regex": true})).unwrap();
        assert_eq!(files_of(&regex), ["src/main.py:1"]);
        // Without `regex`, metacharacters are literal.
        let literal = search(&ws, json!({"query": "parse()"})).unwrap();
        assert_eq!(literal["total_matches"], 2);
        let glob = search(&ws, json!({"query": "parse", "file_pattern": "*.py"})).unwrap();
        assert_eq!(files_of(&glob), ["src/main.py:1"]);
        let hidden = search(&ws, json!({"query": "parse=", "include_hidden": true})).unwrap();
        assert_eq!(files_of(&hidden), [".env:1"]);
        let err = search(&ws, json!({"query": "(", "regex": true})).unwrap_err();
        assert!(err.starts_with("invalid regular expression"), "{err}");
    }

    #[test]
    fn results_are_capped_and_marked_truncated() {
        let (_d, ws) = setup();
        let capped = search(&ws, json!({"query": "parse", "max_results": 1})).unwrap();
        assert_eq!(capped["matches"].as_array().unwrap().len(), 1);
        assert_eq!(capped["total_matches"], 3);
        assert_eq!(capped["truncated"], true);
    }

    #[test]
    fn searches_stay_inside_the_workspace() {
        let (dir, ws) = setup();
        fs::write(dir.path().join("outside.txt"), "parse me\n").unwrap();
        std::os::unix::fs::symlink(dir.path().join("outside.txt"), ws.root().join("link.txt"))
            .unwrap();
        let result = search(&ws, json!({"query": "parse me"})).unwrap();
        assert_eq!(result["total_matches"], 0);
        let err = search(&ws, json!({"query": "x", "path": ".."})).unwrap_err();
        assert!(err.contains("leaves the workspace"), "{err}");
    }
}
