//! Path confinement of `codelab chat`'s workspace tools (`codelab_client::tools::Workspace`,
//! a cap-std directory handle): a model-chosen path resolved and opened inside the workspace.
//!
//! The workspace (made once per process in `$TMPDIR`) holds files, a directory, a symlink
//! inside, symlinks leading out (relative and absolute), a dangling one and a loop; next to it
//! lies a directory with a secret. Input: a path as a tool argument; `$ROOT` stands for the
//! workspace's absolute path and `$OUT` for the outside directory's.
//!
//! Invariants: no panic; a resolved path is relative, without `..`, and where it exists it
//! really lies inside the workspace; whatever the handle opens, from the resolved path or the
//! raw one, is inside the workspace (checked with the kernel's name of the open descriptor).
#![no_main]

use std::os::fd::AsRawFd;
use std::path::{Component, Path, PathBuf};
use std::sync::LazyLock;

use codelab_client::tools::Workspace;
use codelab_client::tools::workspace::{at, display};
use libfuzzer_sys::fuzz_target;

struct Fixture {
    workspace: Workspace,
    root: PathBuf,
    outside: PathBuf,
}

static FIXTURE: LazyLock<Fixture> = LazyLock::new(|| {
    let base = std::env::temp_dir().join(format!("codelab-fuzz-paths-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let ws = base.join("ws");
    let outside = base.join("outside");
    std::fs::create_dir_all(ws.join("sub/deeper")).expect("fixture");
    std::fs::create_dir_all(&outside).expect("fixture");
    std::fs::write(outside.join("secret.txt"), "secret").expect("fixture");
    std::fs::write(ws.join("a.txt"), "a").expect("fixture");
    std::fs::write(ws.join("sub/b.txt"), "b").expect("fixture");
    let link = |target: &Path, name: &str| {
        std::os::unix::fs::symlink(target, ws.join(name)).expect("fixture symlink");
    };
    link(Path::new("sub"), "link_in");
    link(Path::new("../outside"), "link_out");
    link(&outside, "abs_out");
    link(Path::new("nope"), "dangling");
    link(Path::new("loop"), "loop");
    link(Path::new("../outside/secret.txt"), "sub/secret_link");
    let workspace = Workspace::open(&ws).expect("the workspace opens");
    let root = workspace.root().to_path_buf();
    let outside = outside.canonicalize().expect("fixture");
    Fixture {
        workspace,
        root,
        outside,
    }
});

/// Where an open descriptor really is, as the kernel names it.
fn opened_at(file: &std::fs::File) -> PathBuf {
    std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd())).expect("/proc/self/fd")
}

/// The real location of the longest existing ancestor of `path`.
fn existing_part(path: &Path) -> Option<PathBuf> {
    let mut probe = path.to_path_buf();
    loop {
        if let Ok(real) = probe.canonicalize() {
            return Some(real);
        }
        if !probe.pop() {
            return None;
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let fixture = &*FIXTURE;
    let requested = text
        .replace("$ROOT", &fixture.root.to_string_lossy())
        .replace("$OUT", &fixture.outside.to_string_lossy());
    let root = &fixture.root;

    if let Ok(rel) = fixture.workspace.resolve(&requested) {
        assert!(
            rel.components().all(|c| matches!(c, Component::Normal(_))),
            "{requested:?} resolved to {rel:?}"
        );
        assert!(!display(&rel).split('/').any(|part| part == ".."));
        if let Some(real) = existing_part(&root.join(&rel)) {
            assert!(real.starts_with(root), "{requested:?} resolved to {real:?}");
        }
        if let Ok(file) = fixture.workspace.dir().open(at(&rel)) {
            let file = file.into_std();
            let real = opened_at(&file);
            assert!(real.starts_with(root), "{requested:?} opened {real:?}");
        }
    }
    // The handle itself, given the raw path: it opens nothing outside either.
    if !requested.is_empty()
        && !requested.contains('\0')
        && let Ok(file) = fixture.workspace.dir().open(&requested)
    {
        let file = file.into_std();
        let real = opened_at(&file);
        assert!(
            real.starts_with(root),
            "the handle opened {real:?} for {requested:?}"
        );
    }
});
