//! `read_file`, `write_file`, `list_files` and `create_directory`, with the result shapes the
//! Flutter IDE returns. Every path goes through [`Workspace::resolve`] first, and every file
//! operation through the workspace's directory handle (see [`super::workspace`]).

use std::ffi::OsStr;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use cap_std::fs::{Dir, File, Metadata, OpenOptions};
use globset::{GlobBuilder, GlobMatcher};
use serde_json::{Value, json};

use super::args::Args;
use super::workspace::{Workspace, at, display, is_escape};
use super::{Limits, SKIPPED_DIRS};

/// Where `write_file` keeps the previous content of a file it replaces (inside the workspace,
/// hidden, so listings and searches skip it unless asked).
pub const BACKUP_DIR: &str = ".codelab-backup";

/// Names tried for a backup folder or a temporary file before giving up (each taken name means
/// someone else created it meanwhile, or planted it).
const MAX_NAME_ATTEMPTS: u32 = 100;

/// The text the model gets for a failed file operation; an escape the directory handle refused
/// is named as such.
pub(crate) fn fs_error(what: &str, path: &str, error: &io::Error) -> String {
    if is_escape(error) {
        return format!("path {path:?} leaves the workspace");
    }
    match error.kind() {
        io::ErrorKind::NotFound => format!("{what} {path:?}: no such file or directory"),
        io::ErrorKind::PermissionDenied => format!("{what} {path:?}: permission denied"),
        _ => format!("{what} {path:?}: {error}"),
    }
}

fn check_encoding(args: &Args<'_>) -> Result<(), String> {
    match args.opt_string("encoding")? {
        None => Ok(()),
        Some(e) if matches!(e.to_ascii_lowercase().as_str(), "utf-8" | "utf8") => Ok(()),
        Some(other) => Err(format!(
            "unsupported encoding {other:?}: this IDE reads and writes utf-8 only"
        )),
    }
}

/// Reads an open file to its end, refusing more than `max` bytes (the file may have grown
/// since its size was checked).
pub(crate) fn read_capped(file: &mut File, max: u64) -> io::Result<Option<Vec<u8>>> {
    let mut bytes = Vec::new();
    file.take(max.saturating_add(1)).read_to_end(&mut bytes)?;
    Ok((bytes.len() as u64 <= max).then_some(bytes))
}

/// `read_file {path, start_line?, end_line?}` → `{success, content, lines_read}`.
pub fn read_file(ws: &Workspace, args: Args<'_>, limits: &Limits) -> Result<Value, String> {
    let requested = args.string("path")?;
    check_encoding(&args)?;
    let start = args.opt_u64("start_line")?;
    let end = args.opt_u64("end_line")?;
    if start == Some(0) || end == Some(0) {
        return Err("start_line and end_line count from 1".to_owned());
    }
    if let (Some(s), Some(e)) = (start, end)
        && e < s
    {
        return Err(format!("end_line {e} is before start_line {s}"));
    }
    let rel = ws.resolve(requested).map_err(|e| e.to_string())?;
    let mut file = ws
        .dir()
        .open(at(&rel))
        .map_err(|e| fs_error("cannot read", requested, &e))?;
    let metadata = file
        .metadata()
        .map_err(|e| fs_error("cannot read", requested, &e))?;
    if metadata.is_dir() {
        return Err(format!(
            "cannot read {requested:?}: it is a directory (use list_files)"
        ));
    }
    let too_large = |size: u64| {
        format!(
            "cannot read {requested:?}: {size} bytes is more than the {} bytes this IDE reads",
            limits.max_read_file_bytes
        )
    };
    if metadata.len() > limits.max_read_file_bytes {
        return Err(too_large(metadata.len()));
    }
    let bytes = read_capped(&mut file, limits.max_read_file_bytes)
        .map_err(|e| fs_error("cannot read", requested, &e))?
        .ok_or_else(|| too_large(limits.max_read_file_bytes.saturating_add(1)))?;
    let text = String::from_utf8(bytes)
        .map_err(|_| format!("cannot read {requested:?}: it is not utf-8 text"))?;
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let first = start.map_or(0, |s| usize::try_from(s - 1).unwrap_or(usize::MAX));
    if first > 0 && first >= lines.len() {
        return Err(format!(
            "start_line {} is past the end of {requested:?} ({} lines)",
            first + 1,
            lines.len()
        ));
    }
    let last = end.map_or(lines.len(), |e| {
        usize::try_from(e).unwrap_or(usize::MAX).min(lines.len())
    });
    let selected = &lines[first..last.max(first)];
    let content: String = selected.concat();
    if content.len() > limits.max_read_content_bytes {
        return Err(format!(
            "{requested:?} has {} bytes in the requested lines, more than {}: read a range \
             with start_line and end_line",
            content.len(),
            limits.max_read_content_bytes
        ));
    }
    Ok(json!({"success": true, "content": content, "lines_read": selected.len()}))
}

/// `write_file {path, content, create_dirs?, backup?}` → `{success, bytes_written,
/// backup_path}`; `backup_path` is `null` when there was nothing to back up.
pub fn write_file(ws: &Workspace, args: Args<'_>) -> Result<Value, String> {
    let requested = args.string("path")?;
    let content = args.string("content")?;
    check_encoding(&args)?;
    let create_dirs = args.flag("create_dirs", false)?;
    let backup = args.flag("backup", true)?;
    let rel = ws.resolve(requested).map_err(|e| e.to_string())?;
    let is_a_directory = || format!("cannot write {requested:?}: it is a directory");
    let Some(name) = rel.file_name() else {
        return Err(is_a_directory());
    };
    let parent_rel = rel.parent().unwrap_or(Path::new(""));
    // The parent is opened once; everything below happens relative to that handle, so a
    // directory swapped for a symlink afterwards changes nothing.
    let parent = match ws.open_dir(parent_rel) {
        Ok(parent) => parent,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if !create_dirs {
                return Err(format!(
                    "cannot write {requested:?}: the directory {:?} does not exist (set \
                     create_dirs)",
                    display(parent_rel)
                ));
            }
            ws.create_dir_all(parent_rel)
                .map_err(|e| fs_error("cannot create", requested, &e))?;
            ws.open_dir(parent_rel)
                .map_err(|e| fs_error("cannot write", requested, &e))?
        }
        Err(e) => return Err(fs_error("cannot write", requested, &e)),
    };
    let existing = match parent.symlink_metadata(name) {
        Ok(metadata) => Some(metadata),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(fs_error("cannot write", requested, &e)),
    };
    if existing.as_ref().is_some_and(Metadata::is_dir) {
        return Err(is_a_directory());
    }
    let backup_path = match (&existing, backup) {
        (Some(_), true) => Some(
            make_backup(ws, &rel, &parent, name)
                .map_err(|e| fs_error("cannot back up", requested, &e))?,
        ),
        _ => None,
    };
    write_atomically(&parent, name, content.as_bytes(), existing.as_ref())
        .map_err(|e| fs_error("cannot write", requested, &e))?;
    Ok(json!({
        "success": true,
        "bytes_written": content.len(),
        "backup_path": backup_path.map(|p| display(&p)),
    }))
}

fn create_new() -> OpenOptions {
    let mut options = OpenOptions::new();
    // `create_new` (O_EXCL) never follows a symlink at the name: a planted link is "taken".
    options.write(true).create_new(true);
    options
}

/// Copies the file `name` in `parent` (which is `rel` in the workspace) to
/// `.codelab-backup/<UTC time>/<rel>`, never over an existing file.
fn make_backup(ws: &Workspace, rel: &Path, parent: &Dir, name: &OsStr) -> io::Result<PathBuf> {
    let mut source = parent.open(name)?;
    let stamp = crate::now().format("%Y%m%dT%H%M%S%.3fZ").to_string();
    for attempt in 1..=MAX_NAME_ATTEMPTS {
        let folder = if attempt == 1 {
            stamp.clone()
        } else {
            format!("{stamp}-{attempt}")
        };
        let target = Path::new(BACKUP_DIR).join(folder).join(rel);
        let target_parent = target.parent().unwrap_or(Path::new(BACKUP_DIR));
        ws.create_dir_all(target_parent)?;
        let folder = ws.open_dir(target_parent)?;
        match folder.open_with(name, &create_new()) {
            Ok(mut copy) => {
                io::copy(&mut source, &mut copy)?;
                return Ok(target);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AlreadyExists,
        "every backup name for this second is taken",
    ))
}

/// Writes through a new temporary file in the same directory and renames it over the target,
/// so a crash never leaves half a file; the old file's permissions are kept.
fn write_atomically(
    parent: &Dir,
    name: &OsStr,
    bytes: &[u8],
    existing: Option<&Metadata>,
) -> io::Result<()> {
    let base = format!(
        ".{}.codelab-tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    );
    let mut created = None;
    for attempt in 1..=MAX_NAME_ATTEMPTS {
        let temp = if attempt == 1 {
            base.clone()
        } else {
            format!("{base}-{attempt}")
        };
        match parent.open_with(&temp, &create_new()) {
            Ok(file) => {
                created = Some((temp, file));
                break;
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    let Some((temp, mut file)) = created else {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "every temporary file name is taken",
        ));
    };
    let result = (|| {
        file.write_all(bytes)?;
        if let Some(metadata) = existing.filter(|m| m.is_file()) {
            file.set_permissions(metadata.permissions())?;
        }
        drop(file);
        parent.rename(&temp, parent, name)
    })();
    if result.is_err() {
        // Only the name this call created (with O_EXCL) is removed.
        let _ = parent.remove_file(&temp);
    }
    result
}

fn pattern_matcher(pattern: Option<&str>, what: &str) -> Result<Option<GlobMatcher>, String> {
    pattern
        .map(|p| {
            GlobBuilder::new(p)
                .literal_separator(false)
                .build()
                .map(|g| g.compile_matcher())
                .map_err(|e| format!("invalid {what} {p:?}: {e}"))
        })
        .transpose()
}

/// Whether a glob matches an entry: against the name, or the relative path when the
/// pattern names directories (`src/*.rs`).
pub fn glob_matches(matcher: &GlobMatcher, pattern_has_slash: bool, name: &str, rel: &str) -> bool {
    if pattern_has_slash {
        matcher.is_match(rel)
    } else {
        matcher.is_match(name)
    }
}

/// `list_files {path, recursive?, include_hidden?, pattern?}` → `{success, path, items,
/// total_count}`; each item is `{name, path, type, size}` (`type` is `file`, `directory` or
/// `symlink`; `size` in bytes for files). A recursive listing does not descend into `.git`,
/// `target`, `node_modules` or symlinked directories; at most `max_list_items` are returned
/// (`total_count` counts them all).
pub fn list_files(ws: &Workspace, args: Args<'_>, limits: &Limits) -> Result<Value, String> {
    let requested = args.string("path")?;
    let recursive = args.flag("recursive", false)?;
    let include_hidden = args.flag("include_hidden", false)?;
    let pattern = args.opt_string("pattern")?;
    let matcher = pattern_matcher(pattern, "pattern")?;
    let has_slash = pattern.is_some_and(|p| p.contains('/'));
    let top = ws.resolve(requested).map_err(|e| e.to_string())?;
    let mut items = Vec::new();
    let mut total = 0usize;
    // Relative paths, each opened through the workspace handle when its turn comes (holding a
    // handle per pending directory could run out of file descriptors).
    let mut stack = vec![top.clone()];
    while let Some(current) = stack.pop() {
        let entries = match ws.open_dir(&current).and_then(|dir| dir.entries()) {
            Ok(entries) => entries,
            // The top directory must be readable; a subdirectory that is not is skipped.
            Err(e) if current == top => {
                return Err(match e.kind() {
                    io::ErrorKind::NotADirectory => {
                        format!("cannot list {requested:?}: it is not a directory")
                    }
                    _ => fs_error("cannot list", requested, &e),
                });
            }
            Err(_) => continue,
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !include_hidden && name.starts_with('.') {
                continue;
            }
            let Ok(file_type) = entry.file_type() else {
                continue;
            };
            let path = current.join(entry.file_name());
            let rel = display(&path);
            let kind = if file_type.is_symlink() {
                "symlink"
            } else if file_type.is_dir() {
                "directory"
            } else {
                "file"
            };
            if recursive && file_type.is_dir() && !SKIPPED_DIRS.contains(&name.as_str()) {
                stack.push(path);
            }
            if let Some(matcher) = &matcher
                && !glob_matches(matcher, has_slash, &name, &rel)
            {
                continue;
            }
            total += 1;
            if items.len() < limits.max_list_items {
                let size = if file_type.is_file() {
                    entry.metadata().map(|m| m.len()).ok()
                } else {
                    None
                };
                items.push(json!({"name": name, "path": rel, "type": kind, "size": size}));
            }
        }
    }
    items.sort_by(|a, b| a["path"].as_str().cmp(&b["path"].as_str()));
    Ok(json!({
        "success": true,
        "path": display(&top),
        "items": items,
        "total_count": total,
    }))
}

/// `create_directory {path, recursive?}` → `{success, path, created, already_exists}`.
pub fn create_directory(ws: &Workspace, args: Args<'_>) -> Result<Value, String> {
    let requested = args.string("path")?;
    let recursive = args.flag("recursive", true)?;
    let rel = ws.resolve(requested).map_err(|e| e.to_string())?;
    let shown = display(&rel);
    match ws.dir().metadata(at(&rel)) {
        Ok(m) if m.is_dir() => {
            return Ok(
                json!({"success": true, "path": shown, "created": false, "already_exists": true}),
            );
        }
        Ok(_) => return Err(format!("cannot create {requested:?}: a file has that name")),
        Err(e) if is_escape(&e) => return Err(fs_error("cannot create", requested, &e)),
        Err(_) => {}
    }
    let created = if recursive {
        ws.create_dir_all(&rel)
    } else {
        ws.dir().create_dir(at(&rel))
    };
    created.map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => {
            format!("cannot create {requested:?}: its parent does not exist (set recursive)")
        }
        _ => fs_error("cannot create", requested, &e),
    })?;
    Ok(json!({"success": true, "path": shown, "created": true, "already_exists": false}))
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;
    use crate::tools::workspace::tests::workspace as setup;

    fn call<T>(f: impl Fn(Args<'_>) -> T, value: Value) -> T {
        let empty = serde_json::Map::new();
        f(Args::new(&value, &empty).unwrap())
    }

    #[test]
    fn read_file_returns_content_and_lines_read() {
        let (_d, ws) = setup();
        let limits = Limits::default();
        let read = |value| call(|a| read_file(&ws, a, &limits), value);
        fs::write(ws.root().join("a.txt"), "one\ntwo\nthree\n").unwrap();
        let whole = read(json!({"path": "a.txt"})).unwrap();
        assert_eq!(
            whole,
            json!({"success": true, "content": "one\ntwo\nthree\n", "lines_read": 3})
        );
        let range = read(json!({"path": "a.txt", "start_line": 2, "end_line": 9})).unwrap();
        assert_eq!(range["content"], "two\nthree\n");
        assert_eq!(range["lines_read"], 2);
        let err = read(json!({"path": "nope"})).unwrap_err();
        assert!(err.contains("no such file"), "{err}");
        let err = read(json!({"path": "../x"})).unwrap_err();
        assert!(err.contains("leaves the workspace"), "{err}");
        let err = read(json!({})).unwrap_err();
        assert_eq!(err, "missing required argument \"path\"");
        fs::write(ws.root().join("bin"), [0xff, 0xfe]).unwrap();
        let err = read(json!({"path": "bin"})).unwrap_err();
        assert!(err.contains("not utf-8"), "{err}");
    }

    #[test]
    fn read_file_refuses_oversized_content() {
        let (_d, ws) = setup();
        let limits = Limits {
            max_read_content_bytes: 4,
            ..Limits::default()
        };
        fs::write(ws.root().join("a.txt"), "123456\n").unwrap();
        let err = call(|a| read_file(&ws, a, &limits), json!({"path": "a.txt"})).unwrap_err();
        assert!(err.contains("read a range"), "{err}");
    }

    #[test]
    fn write_file_backs_up_the_old_content() {
        let (_d, ws) = setup();
        let write = |value| call(|a| write_file(&ws, a), value);
        let first = write(json!({"path": "b.txt", "content": "old"})).unwrap();
        assert_eq!(
            first,
            json!({"success": true, "bytes_written": 3, "backup_path": null})
        );
        let second = write(json!({"path": "b.txt", "content": "new!"})).unwrap();
        assert_eq!(second["bytes_written"], 4);
        let backup = second["backup_path"].as_str().unwrap();
        assert!(backup.starts_with(".codelab-backup/"), "{backup}");
        assert!(backup.ends_with("/b.txt"), "{backup}");
        assert_eq!(fs::read_to_string(ws.root().join(backup)).unwrap(), "old");
        assert_eq!(fs::read_to_string(ws.root().join("b.txt")).unwrap(), "new!");
        let no_backup = write(json!({"path": "b.txt", "content": "x", "backup": false})).unwrap();
        assert_eq!(no_backup["backup_path"], Value::Null);
    }

    #[test]
    fn write_file_needs_create_dirs_for_missing_parents() {
        let (_d, ws) = setup();
        let write = |value| call(|a| write_file(&ws, a), value);
        let err = write(json!({"path": "d/e/f.txt", "content": "x"})).unwrap_err();
        assert!(err.contains("set create_dirs"), "{err}");
        write(json!({"path": "d/e/f.txt", "content": "x", "create_dirs": true})).unwrap();
        assert!(ws.root().join("d/e/f.txt").is_file());
    }

    #[test]
    fn write_file_never_touches_outside() {
        let (dir, ws) = setup();
        let write = |value| call(|a| write_file(&ws, a), value);
        fs::write(dir.path().join("outside.txt"), "keep").unwrap();
        std::os::unix::fs::symlink(dir.path().join("outside.txt"), ws.root().join("link")).unwrap();
        for path in ["../outside.txt", "link", "/tmp/codelab-never-written"] {
            let err = write(json!({"path": path, "content": "pwned"})).unwrap_err();
            assert!(err.contains("leaves the workspace"), "{path}: {err}");
        }
        assert_eq!(
            fs::read_to_string(dir.path().join("outside.txt")).unwrap(),
            "keep"
        );
        assert!(!Path::new("/tmp/codelab-never-written").exists());
    }

    #[test]
    fn list_files_has_the_flutter_shape() {
        let (_d, ws) = setup();
        let limits = Limits::default();
        let list = |value| call(|a| list_files(&ws, a, &limits), value);
        fs::write(ws.root().join("a.py"), "x").unwrap();
        fs::write(ws.root().join(".hidden"), "x").unwrap();
        fs::create_dir_all(ws.root().join("src/deep")).unwrap();
        fs::write(ws.root().join("src/deep/b.py"), "xy").unwrap();
        fs::create_dir_all(ws.root().join("target/debug")).unwrap();
        fs::write(ws.root().join("target/debug/c.py"), "x").unwrap();
        let flat = list(json!({"path": "."})).unwrap();
        assert_eq!(flat["success"], true);
        assert_eq!(flat["path"], ".");
        assert_eq!(flat["total_count"], 3);
        assert_eq!(
            flat["items"][0],
            json!({"name": "a.py", "path": "a.py", "type": "file", "size": 1})
        );
        assert_eq!(flat["items"][1]["type"], "directory");
        let deep = list(json!({"path": ".", "recursive": true, "pattern": "*.py"})).unwrap();
        let paths: Vec<&str> = deep["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["path"].as_str().unwrap())
            .collect();
        assert_eq!(paths, ["a.py", "src/deep/b.py"]);
        let hidden = list(json!({"path": ".", "include_hidden": true})).unwrap();
        assert_eq!(hidden["total_count"], 4);
        let one = Limits {
            max_list_items: 1,
            ..Limits::default()
        };
        let capped = call(|a| list_files(&ws, a, &one), json!({"path": "."})).unwrap();
        assert_eq!(capped["items"].as_array().unwrap().len(), 1);
        assert_eq!(capped["total_count"], 3);
        let err = list(json!({"path": "a.py"})).unwrap_err();
        assert!(err.contains("not a directory"), "{err}");
    }

    #[test]
    fn create_directory_reports_what_it_did() {
        let (_d, ws) = setup();
        let create = |value| call(|a| create_directory(&ws, a), value);
        let made = create(json!({"path": "x/y"})).unwrap();
        assert_eq!(
            made,
            json!({"success": true, "path": "x/y", "created": true, "already_exists": false})
        );
        let again = create(json!({"path": "x/y"})).unwrap();
        assert_eq!(again["created"], false);
        assert_eq!(again["already_exists"], true);
        let err = create(json!({"path": "p/q", "recursive": false})).unwrap_err();
        assert!(err.contains("parent does not exist"), "{err}");
        let err = create(json!({"path": "../up"})).unwrap_err();
        assert!(err.contains("leaves the workspace"), "{err}");
    }
}
