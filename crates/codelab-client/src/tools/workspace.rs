//! The workspace folder, opened once as a directory handle (`cap_std::fs::Dir`) through which
//! every file operation of the tools goes.
//!
//! A requested path is first made relative to the root: an absolute path must name something
//! inside the workspace, and `.` and `..` are resolved lexically (a `..` above the root is
//! refused). Its existing part is then canonicalized *through the handle*, so symlinks inside
//! are followed and results and backups name real locations. The operations themselves (open,
//! create, rename, ...) go through the handle too, and the handle refuses to leave the directory
//! by `..`, an absolute path or a symlink, even one swapped in after the checks here: a check can
//! be raced, the handle cannot (docs/codelab-chat.md, "Security model: the workspace").

use std::io;
use std::path::{Component, Path, PathBuf};

use cap_std::fs::{Dir, MetadataExt};

/// Why a path was refused or could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum PathError {
    /// The path leaves the workspace (by `..`, as an absolute path, or through a symlink).
    #[error("path {path:?} leaves the workspace")]
    Outside {
        /// The path as requested.
        path: String,
    },
    /// An empty path, or one with a NUL byte.
    #[error("invalid path {0:?}")]
    Invalid(String),
    /// A symlink whose target does not exist: where it points cannot be checked.
    #[error("path {0:?} is a dangling symlink")]
    Dangling(String),
    /// The file system refused to tell where the path leads.
    #[error("cannot resolve {path:?}: {source}")]
    Io {
        /// The path as requested.
        path: String,
        /// The underlying error.
        source: io::Error,
    },
}

/// Whether an error of a `cap_std` operation is its refusal to leave the directory (a `..`, an
/// absolute path or a symlink leading out), rather than an error of the file system.
pub fn is_escape(error: &io::Error) -> bool {
    // cap-std reports an escape as `PermissionDenied` without an OS error code; a real EACCES
    // always carries one.
    error.kind() == io::ErrorKind::PermissionDenied && error.raw_os_error().is_none()
}

/// The workspace root all file tools are confined to.
#[derive(Debug)]
pub struct Workspace {
    /// The canonical root (shown to the user, the working directory of commands).
    root: PathBuf,
    /// The root as it was named when opened (an absolute path through it is inside too).
    named: PathBuf,
    /// The handle every file operation goes through.
    dir: Dir,
}

/// `rel` as a `cap_std` path: the root itself is `.` (an empty path is an error there).
pub fn at(rel: &Path) -> &Path {
    if rel.as_os_str().is_empty() {
        Path::new(".")
    } else {
        rel
    }
}

/// A relative path inside the workspace as the tools show it: `/` separators, `.` for the
/// root.
pub fn display(rel: &Path) -> String {
    let parts: Vec<_> = rel
        .components()
        .filter(|c| !matches!(c, Component::CurDir))
        .map(|c| c.as_os_str().to_string_lossy())
        .collect();
    if parts.is_empty() {
        ".".to_owned()
    } else {
        parts.join("/")
    }
}

impl Workspace {
    /// Opens a workspace at `dir`, which must be an existing directory.
    pub fn open(dir: &Path) -> io::Result<Workspace> {
        let root = dir.canonicalize()?;
        if !root.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::NotADirectory,
                format!("{} is not a directory", root.display()),
            ));
        }
        let named = std::path::absolute(dir)?;
        let handle = Dir::open_ambient_dir(&root, cap_std::ambient_authority())?;
        Ok(Workspace {
            root,
            named,
            dir: handle,
        })
    }

    /// The canonical root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The directory handle every file operation goes through.
    pub fn dir(&self) -> &Dir {
        &self.dir
    }

    /// Resolves `requested` (relative to the root, or absolute) to a path relative to the root,
    /// empty for the root itself. The path need not exist; its existing part is canonicalized
    /// through the handle (symlinks inside followed, one leading out refused).
    pub fn resolve(&self, requested: &str) -> Result<PathBuf, PathError> {
        if requested.contains('\0') {
            return Err(PathError::Invalid(requested.to_owned()));
        }
        let requested_path = Path::new(requested.trim());
        let relative = if requested_path.is_absolute() {
            self.strip_root(requested_path)
                .ok_or_else(|| outside(requested))?
        } else {
            requested_path.to_path_buf()
        };
        let lexical = normalize_relative(&relative).ok_or_else(|| outside(requested))?;
        self.canonical_inside(&lexical, requested)
    }

    /// An absolute path as a path relative to the root, if it names something inside.
    fn strip_root(&self, absolute: &Path) -> Option<PathBuf> {
        let lexical = normalize_absolute(absolute)?;
        for base in [&self.root, &self.named] {
            if let Ok(rest) = lexical.strip_prefix(base) {
                return Some(rest.to_path_buf());
            }
        }
        // Another spelling of the workspace (a symlinked home, say): the real location of
        // its longest existing ancestor decides. Only looked up, never opened.
        let mut existing = lexical.clone();
        let mut rest: Vec<std::ffi::OsString> = Vec::new();
        loop {
            if let Ok(real) = existing.canonicalize() {
                let mut inside = real.strip_prefix(&self.root).ok()?.to_path_buf();
                inside.extend(rest.iter().rev());
                return Some(inside);
            }
            rest.push(existing.file_name()?.to_owned());
            if !existing.pop() {
                return None;
            }
        }
    }

    /// Canonicalizes the longest existing ancestor of `rel` through the handle and appends the
    /// rest (which does not exist, so holds no symlink).
    fn canonical_inside(&self, rel: &Path, requested: &str) -> Result<PathBuf, PathError> {
        let io_error = |source| PathError::Io {
            path: requested.to_owned(),
            source,
        };
        let mut existing = rel.to_path_buf();
        let mut rest: Vec<std::ffi::OsString> = Vec::new();
        loop {
            match self.dir.canonicalize(at(&existing)) {
                Ok(real) => {
                    let mut full: PathBuf = real
                        .components()
                        .filter(|c| !matches!(c, Component::CurDir))
                        .collect();
                    full.extend(rest.iter().rev());
                    return Ok(full);
                }
                Err(error) if is_escape(&error) => return Err(outside(requested)),
                Err(error) if error.kind() == io::ErrorKind::NotFound => {
                    let Some(name) = existing.file_name().map(ToOwned::to_owned) else {
                        // The root itself is gone.
                        return Err(io_error(error));
                    };
                    if self
                        .dir
                        .symlink_metadata(&existing)
                        .is_ok_and(|m| m.is_symlink())
                    {
                        return Err(PathError::Dangling(requested.to_owned()));
                    }
                    rest.push(name);
                    existing.pop();
                }
                Err(error) => return Err(io_error(error)),
            }
        }
    }

    /// Opens the directory at `rel` (empty for the root) through the handle.
    pub fn open_dir(&self, rel: &Path) -> io::Result<Dir> {
        self.dir.open_dir(at(rel))
    }

    /// Creates `rel` and its missing parents through the handle. An existing part that leads
    /// out of the workspace is reported as the escape it is, not as "file exists".
    pub fn create_dir_all(&self, rel: &Path) -> io::Result<()> {
        match self.dir.create_dir_all(at(rel)) {
            Ok(()) => Ok(()),
            Err(error) => match self.dir.metadata(at(rel)) {
                Err(escape) if is_escape(&escape) => Err(escape),
                _ => Err(error),
            },
        }
    }

    /// The absolute path of the directory `rel` for a child process's working directory
    /// (which can only be given as a path), after checking through the handle that it is a
    /// directory inside the workspace and that the path still names that same directory.
    pub fn command_dir(&self, rel: &Path) -> io::Result<PathBuf> {
        let checked = self.dir.open_dir(at(rel))?.dir_metadata()?;
        let path = if rel.as_os_str().is_empty() {
            self.root.clone()
        } else {
            self.root.join(rel)
        };
        let named = std::fs::metadata(&path)?;
        if std::os::unix::fs::MetadataExt::dev(&named) != checked.dev()
            || std::os::unix::fs::MetadataExt::ino(&named) != checked.ino()
        {
            // Swapped since it was checked: the path would lead somewhere else.
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "a path led outside of the filesystem",
            ));
        }
        Ok(path)
    }
}

fn outside(requested: &str) -> PathError {
    PathError::Outside {
        path: requested.to_owned(),
    }
}

/// Resolves `.` and `..` of a relative path lexically; `None` when a `..` climbs above it.
fn normalize_relative(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    return None;
                }
            }
            Component::Normal(name) => out.push(name),
            Component::Prefix(_) | Component::RootDir => return None,
        }
    }
    Some(out)
}

/// Resolves `.` and `..` of an absolute path lexically; `None` when a `..` climbs above `/`.
fn normalize_absolute(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Prefix(prefix) => out.push(prefix.as_os_str()),
            Component::RootDir => out.push(Component::RootDir.as_os_str()),
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() || out.as_os_str().is_empty() {
                    return None;
                }
            }
            Component::Normal(name) => out.push(name),
        }
    }
    Some(out)
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// An empty workspace, `ws` in a temporary directory that lives as long as the guard.
    pub(in crate::tools) fn workspace() -> (tempfile::TempDir, Workspace) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("ws")).unwrap();
        let ws = Workspace::open(&dir.path().join("ws")).unwrap();
        (dir, ws)
    }

    #[test]
    fn relative_paths_inside_resolve_even_when_missing() {
        let (_dir, ws) = workspace();
        std::fs::write(ws.root().join("a.txt"), "x").unwrap();
        assert_eq!(ws.resolve("a.txt").unwrap(), Path::new("a.txt"));
        assert_eq!(ws.resolve("./a.txt").unwrap(), Path::new("a.txt"));
        assert_eq!(ws.resolve(".").unwrap(), Path::new(""));
        assert_eq!(
            ws.resolve("new/dir/b.txt").unwrap(),
            Path::new("new/dir/b.txt")
        );
        assert_eq!(ws.resolve("sub/../a.txt").unwrap(), Path::new("a.txt"));
        assert_eq!(display(Path::new("new/dir")), "new/dir");
        assert_eq!(display(Path::new("")), ".");
    }

    #[test]
    fn parent_escapes_are_refused() {
        let (dir, ws) = workspace();
        std::fs::write(dir.path().join("secret"), "s").unwrap();
        for path in ["../secret", "..", "a/../../secret", "../ws/../secret"] {
            let error = ws.resolve(path).unwrap_err();
            assert!(matches!(error, PathError::Outside { .. }), "{path}");
            assert_eq!(
                error.to_string(),
                format!("path {path:?} leaves the workspace")
            );
        }
    }

    #[test]
    fn absolute_paths_must_lie_inside() {
        let (_dir, ws) = workspace();
        assert!(matches!(
            ws.resolve("/etc/passwd"),
            Err(PathError::Outside { .. })
        ));
        let inside = ws.root().join("x.txt");
        assert_eq!(
            ws.resolve(inside.to_str().unwrap()).unwrap(),
            Path::new("x.txt")
        );
        assert_eq!(
            ws.resolve(ws.root().to_str().unwrap()).unwrap(),
            Path::new("")
        );
    }

    #[test]
    fn symlinks_pointing_out_are_refused() {
        let (dir, ws) = workspace();
        std::fs::write(dir.path().join("secret"), "s").unwrap();
        std::fs::create_dir(dir.path().join("outdir")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("secret"), ws.root().join("link")).unwrap();
        std::os::unix::fs::symlink("../outdir", ws.root().join("dirlink")).unwrap();
        assert!(matches!(ws.resolve("link"), Err(PathError::Outside { .. })));
        // A file that does not exist yet under a symlinked directory is outside too.
        assert!(matches!(
            ws.resolve("dirlink/new.txt"),
            Err(PathError::Outside { .. })
        ));
        std::os::unix::fs::symlink("nowhere", ws.root().join("dangling")).unwrap();
        assert!(matches!(
            ws.resolve("dangling"),
            Err(PathError::Dangling(_))
        ));
    }

    #[test]
    fn relative_symlinks_inside_are_followed() {
        let (_dir, ws) = workspace();
        std::fs::create_dir(ws.root().join("real")).unwrap();
        std::fs::write(ws.root().join("real/f"), "x").unwrap();
        std::os::unix::fs::symlink("real", ws.root().join("alias")).unwrap();
        assert_eq!(ws.resolve("alias/f").unwrap(), Path::new("real/f"));
        // An absolute target is refused even when it points inside: the handle cannot tell
        // where an absolute path leads without leaving the directory (and a repository's
        // absolute links point into its author's machine, not into this checkout).
        std::os::unix::fs::symlink(ws.root().join("real"), ws.root().join("absolute")).unwrap();
        assert!(matches!(
            ws.resolve("absolute/f"),
            Err(PathError::Outside { .. })
        ));
    }

    #[test]
    fn nul_bytes_are_invalid() {
        let (_dir, ws) = workspace();
        assert!(matches!(ws.resolve("a\0b"), Err(PathError::Invalid(_))));
    }
}
