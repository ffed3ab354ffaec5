//! The workspace folder and the confinement of every path a tool names to it.
//!
//! A requested path is joined to the workspace root, its `.` and `..` components are resolved
//! lexically (a `..` that would climb above the root is refused outright), and then every
//! component that exists on disk is resolved through symlinks: the real location must still be
//! inside the (canonical) root. Components that do not exist yet (a file about to be written)
//! cannot be symlinks, so the longest existing ancestor decides.

use std::io;
use std::path::{Component, Path, PathBuf};

/// Why a path was refused or could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum PathError {
    /// The path leaves the workspace (after `..` or through a symlink).
    #[error("path {path:?} is outside the workspace")]
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

/// The workspace root all file tools are confined to.
#[derive(Debug, Clone)]
pub struct Workspace {
    root: PathBuf,
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
        Ok(Workspace { root })
    }

    /// The canonical root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Resolves `requested` (relative to the root, or absolute) to a real path inside the
    /// workspace. The path need not exist; its existing part is resolved through symlinks.
    pub fn resolve(&self, requested: &str) -> Result<PathBuf, PathError> {
        if requested.contains('\0') {
            return Err(PathError::Invalid(requested.to_owned()));
        }
        let requested_path = Path::new(requested.trim());
        let joined = if requested_path.is_absolute() {
            requested_path.to_path_buf()
        } else {
            self.root.join(requested_path)
        };
        let lexical = normalize(&joined).ok_or_else(|| outside(requested))?;
        // An absolute path may name the workspace itself through another spelling (a
        // symlinked home, say): it is checked after symlinks are resolved, like any other.
        let real = resolve_existing(&lexical, requested)?;
        if real.starts_with(&self.root) {
            Ok(real)
        } else {
            Err(outside(requested))
        }
    }

    /// `path` (inside the workspace) relative to the root, with `/` separators; `.` for the
    /// root itself.
    pub fn relative(&self, path: &Path) -> String {
        match path.strip_prefix(&self.root) {
            Ok(rest) if rest.as_os_str().is_empty() => ".".to_owned(),
            Ok(rest) => rest
                .components()
                .map(|c| c.as_os_str().to_string_lossy())
                .collect::<Vec<_>>()
                .join("/"),
            Err(_) => path.display().to_string(),
        }
    }

    /// Whether a path found while walking the workspace (a directory entry, maybe a symlink)
    /// really lies inside it.
    pub fn contains_real(&self, path: &Path) -> bool {
        path.canonicalize()
            .map(|real| real.starts_with(&self.root))
            .unwrap_or(false)
    }
}

fn outside(requested: &str) -> PathError {
    PathError::Outside {
        path: requested.to_owned(),
    }
}

/// Resolves `.` and `..` lexically; `None` when a `..` climbs above the file system root.
fn normalize(path: &Path) -> Option<PathBuf> {
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

/// Canonicalizes the longest existing ancestor of `path` and appends the rest (which does not
/// exist, so holds no symlink).
fn resolve_existing(path: &Path, requested: &str) -> Result<PathBuf, PathError> {
    let mut existing = path.to_path_buf();
    let mut rest: Vec<std::ffi::OsString> = Vec::new();
    loop {
        match existing.symlink_metadata() {
            Ok(metadata) => {
                let real = match existing.canonicalize() {
                    Ok(real) => real,
                    Err(_) if metadata.file_type().is_symlink() => {
                        return Err(PathError::Dangling(requested.to_owned()));
                    }
                    Err(source) => {
                        return Err(PathError::Io {
                            path: requested.to_owned(),
                            source,
                        });
                    }
                };
                let mut full = real;
                for name in rest.iter().rev() {
                    full.push(name);
                }
                return Ok(full);
            }
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                let Some(name) = existing.file_name().map(ToOwned::to_owned) else {
                    return Err(PathError::Io {
                        path: requested.to_owned(),
                        source: error,
                    });
                };
                rest.push(name);
                if !existing.pop() {
                    return Err(PathError::Io {
                        path: requested.to_owned(),
                        source: error,
                    });
                }
            }
            Err(source) => {
                return Err(PathError::Io {
                    path: requested.to_owned(),
                    source,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workspace() -> (tempfile::TempDir, Workspace) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("ws")).unwrap();
        let ws = Workspace::open(&dir.path().join("ws")).unwrap();
        (dir, ws)
    }

    #[test]
    fn relative_paths_inside_resolve_even_when_missing() {
        let (_dir, ws) = workspace();
        std::fs::write(ws.root().join("a.txt"), "x").unwrap();
        assert_eq!(ws.resolve("a.txt").unwrap(), ws.root().join("a.txt"));
        assert_eq!(ws.resolve("./a.txt").unwrap(), ws.root().join("a.txt"));
        assert_eq!(ws.resolve(".").unwrap(), ws.root());
        assert_eq!(
            ws.resolve("new/dir/b.txt").unwrap(),
            ws.root().join("new/dir/b.txt")
        );
        assert_eq!(ws.resolve("sub/../a.txt").unwrap(), ws.root().join("a.txt"));
        assert_eq!(ws.relative(&ws.root().join("new/dir")), "new/dir");
        assert_eq!(ws.relative(ws.root()), ".");
    }

    #[test]
    fn parent_escapes_are_refused() {
        let (dir, ws) = workspace();
        std::fs::write(dir.path().join("secret"), "s").unwrap();
        for path in ["../secret", "..", "a/../../secret", "../ws/../secret"] {
            assert!(
                matches!(ws.resolve(path), Err(PathError::Outside { .. })),
                "{path}"
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
        assert_eq!(ws.resolve(inside.to_str().unwrap()).unwrap(), inside);
    }

    #[test]
    fn symlinks_pointing_out_are_refused() {
        let (dir, ws) = workspace();
        std::fs::write(dir.path().join("secret"), "s").unwrap();
        std::fs::create_dir(dir.path().join("outdir")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("secret"), ws.root().join("link")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("outdir"), ws.root().join("dirlink")).unwrap();
        assert!(matches!(ws.resolve("link"), Err(PathError::Outside { .. })));
        // A file that does not exist yet under a symlinked directory is outside too.
        assert!(matches!(
            ws.resolve("dirlink/new.txt"),
            Err(PathError::Outside { .. })
        ));
        std::os::unix::fs::symlink(dir.path().join("nowhere"), ws.root().join("dangling")).unwrap();
        assert!(matches!(
            ws.resolve("dangling"),
            Err(PathError::Dangling(_))
        ));
    }

    #[test]
    fn symlinks_inside_are_followed() {
        let (_dir, ws) = workspace();
        std::fs::create_dir(ws.root().join("real")).unwrap();
        std::fs::write(ws.root().join("real/f"), "x").unwrap();
        std::os::unix::fs::symlink(ws.root().join("real"), ws.root().join("alias")).unwrap();
        assert_eq!(ws.resolve("alias/f").unwrap(), ws.root().join("real/f"));
    }

    #[test]
    fn nul_bytes_are_invalid() {
        let (_dir, ws) = workspace();
        assert!(matches!(ws.resolve("a\0b"), Err(PathError::Invalid(_))));
    }
}
