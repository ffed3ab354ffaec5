//! Attacks on the workspace confinement of the IDE tools (docs/security.md, "a malicious
//! repository"): symlinks planted where `write_file` puts its backup and its temporary file, a
//! symlinked parent directory, `..` and absolute paths, and a directory swapped for a symlink
//! while writes run. Each test asserts on the filesystem outside the workspace (a sibling folder)
//! staying exactly as it was.
#![allow(
    clippy::unwrap_used,
    reason = "a test that cannot unwrap has failed: the panic is the report"
)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use codelab_client::tools::{Limits, ToolExecutor, ToolOutcome};
use serde_json::{Value, json};

/// A workspace and, beside it, a folder that must never change.
struct Fixture {
    _dir: tempfile::TempDir,
    workspace: PathBuf,
    outside: PathBuf,
    executor: ToolExecutor,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let workspace = dir.path().join("workspace");
        let outside = dir.path().join("outside");
        std::fs::create_dir(&workspace).unwrap();
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("victim.txt"), "keep me").unwrap();
        let executor = ToolExecutor::new(&workspace, Limits::default()).unwrap();
        Fixture {
            _dir: dir,
            workspace,
            outside,
            executor,
        }
    }

    /// Every file, directory and symlink under the outside folder, with file contents.
    fn outside_state(&self) -> BTreeMap<PathBuf, String> {
        snapshot(&self.outside)
    }

    /// The text of the file at `path` in the workspace.
    fn read(&self, path: impl AsRef<Path>) -> String {
        std::fs::read_to_string(self.workspace.join(path)).unwrap()
    }

    async fn run(&self, tool: &str, arguments: Value) -> ToolOutcome {
        self.executor.execute(tool, &arguments).await
    }

    /// Runs each `(tool, arguments)`, every one of which must be refused as an escape.
    async fn refuse_all(&self, attempts: impl IntoIterator<Item = (&str, Value)>) {
        for (tool, arguments) in attempts {
            let outcome = self.run(tool, arguments.clone()).await;
            let error = error_of(&outcome);
            assert!(
                error.contains("leaves the workspace"),
                "{tool} {arguments}: {error}"
            );
        }
    }
}

fn snapshot(root: &Path) -> BTreeMap<PathBuf, String> {
    let mut state = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let path = entry.path();
            let kind = entry.file_type().unwrap();
            let value = if kind.is_symlink() {
                format!("-> {}", std::fs::read_link(&path).unwrap().display())
            } else if kind.is_dir() {
                stack.push(path.clone());
                "dir".to_owned()
            } else {
                std::fs::read_to_string(&path).unwrap_or_else(|_| "<binary>".to_owned())
            };
            state.insert(path.strip_prefix(root).unwrap().to_path_buf(), value);
        }
    }
    state
}

fn error_of(outcome: &ToolOutcome) -> &str {
    match outcome {
        ToolOutcome::Error(error) => error,
        ToolOutcome::Result(result) => panic!("expected a refusal, got {result}"),
    }
}

fn result_of(outcome: &ToolOutcome) -> &Value {
    match outcome {
        ToolOutcome::Result(result) => result,
        ToolOutcome::Error(error) => panic!("expected a result, got the error {error}"),
    }
}

#[tokio::test]
async fn a_symlinked_backup_folder_cannot_carry_a_write_outside() {
    let f = Fixture::new();
    std::fs::write(f.workspace.join("a.txt"), "old").unwrap();
    // The repository ships `.codelab-backup` as a link to a folder of the victim's.
    std::os::unix::fs::symlink(&f.outside, f.workspace.join(".codelab-backup")).unwrap();
    let before = f.outside_state();

    let outcome = f
        .run("write_file", json!({"path": "a.txt", "content": "new"}))
        .await;
    let error = error_of(&outcome);
    assert!(error.contains("leaves the workspace"), "{error}");
    assert_eq!(f.outside_state(), before);
    // Nothing was written: the user decides again, knowing the backup could not be made.
    assert_eq!(f.read("a.txt"), "old");

    // Without a backup the legitimate write goes through, still touching nothing outside.
    let outcome = f
        .run(
            "write_file",
            json!({"path": "a.txt", "content": "new", "backup": false}),
        )
        .await;
    assert_eq!(result_of(&outcome)["bytes_written"], 3);
    assert_eq!(f.read("a.txt"), "new");
    assert_eq!(f.outside_state(), before);
}

#[tokio::test]
async fn a_symlink_planted_at_the_temporary_file_name_is_not_followed() {
    let f = Fixture::new();
    std::fs::write(f.workspace.join("a.txt"), "old").unwrap();
    // The name `write_file` first tries for its temporary file, planted by the repository (or
    // by a process racing the write), pointing at a file of the victim's and at a missing one.
    let temp = format!(".a.txt.codelab-tmp-{}", std::process::id());
    std::os::unix::fs::symlink(f.outside.join("victim.txt"), f.workspace.join(&temp)).unwrap();
    let temp_b = format!(".b.txt.codelab-tmp-{}", std::process::id());
    std::os::unix::fs::symlink(f.outside.join("created.txt"), f.workspace.join(&temp_b)).unwrap();
    let before = f.outside_state();

    for (path, content) in [("a.txt", "new a"), ("b.txt", "new b")] {
        let outcome = f
            .run("write_file", json!({"path": path, "content": content}))
            .await;
        result_of(&outcome);
        assert_eq!(f.read(path), content);
        // The written file is a regular file, not the planted link moved into place.
        assert!(
            std::fs::symlink_metadata(f.workspace.join(path))
                .unwrap()
                .is_file()
        );
    }
    assert_eq!(f.outside_state(), before);
    assert!(!f.outside.join("created.txt").exists());
}

#[tokio::test]
async fn a_symlinked_parent_directory_is_refused_by_every_tool() {
    let f = Fixture::new();
    std::os::unix::fs::symlink(&f.outside, f.workspace.join("sub")).unwrap();
    let before = f.outside_state();

    let attempts = [
        (
            "write_file",
            json!({"path": "sub/x.txt", "content": "pwned"}),
        ),
        (
            "write_file",
            json!({"path": "sub/new/deep/x.txt", "content": "pwned", "create_dirs": true}),
        ),
        (
            "write_file",
            json!({"path": "sub/victim.txt", "content": "pwned"}),
        ),
        ("create_directory", json!({"path": "sub/newdir"})),
        ("read_file", json!({"path": "sub/victim.txt"})),
        ("list_files", json!({"path": "sub"})),
        ("search_in_code", json!({"query": "keep", "path": "sub"})),
        (
            "execute_command",
            json!({"command": "touch made-here", "cwd": "sub"}),
        ),
    ];
    f.refuse_all(attempts).await;
    assert_eq!(f.outside_state(), before);
    // A whole-workspace search does not follow the link either.
    let outcome = f.run("search_in_code", json!({"query": "keep me"})).await;
    assert_eq!(result_of(&outcome)["total_matches"], 0);
}

#[tokio::test]
async fn parent_and_absolute_paths_are_refused_by_every_tool() {
    let f = Fixture::new();
    std::fs::create_dir(f.workspace.join("src")).unwrap();
    let before = f.outside_state();
    let absolute = f.outside.join("abs.txt");
    let absolute = absolute.to_str().unwrap();
    for path in [
        "../outside/x.txt",
        "src/../../outside/x.txt",
        "..",
        absolute,
        "/",
    ] {
        let attempts = [
            (
                "write_file",
                json!({"path": path, "content": "pwned", "create_dirs": true}),
            ),
            ("create_directory", json!({"path": path})),
            ("read_file", json!({"path": path})),
            ("list_files", json!({"path": path})),
            ("search_in_code", json!({"query": "keep", "path": path})),
            ("execute_command", json!({"command": "pwd", "cwd": path})),
        ];
        f.refuse_all(attempts).await;
    }
    assert_eq!(f.outside_state(), before);
}

/// Swaps `a` and `b` atomically (renameat2 RENAME_EXCHANGE), so the name is always there and
/// is, by turns, a directory and a symlink.
fn exchange(a: &Path, b: &Path) {
    rustix::fs::renameat_with(
        rustix::fs::CWD,
        a,
        rustix::fs::CWD,
        b,
        rustix::fs::RenameFlags::EXCHANGE,
    )
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_swapped_for_a_symlink_during_writes_never_leaks_outside() {
    let f = Fixture::new();
    let sub = f.workspace.join("sub");
    std::fs::create_dir(&sub).unwrap();
    std::fs::write(sub.join("existing.txt"), "old").unwrap();
    std::fs::create_dir(f.workspace.join(".codelab-backup")).unwrap();
    // The other half of each swap lives outside the workspace, so nothing inside names it.
    let parked = f.outside.join("..").join("parked");
    std::os::unix::fs::symlink(&f.outside, &parked).unwrap();
    let backups = f.workspace.join(".codelab-backup");
    let parked_backups = f.outside.join("..").join("parked-backups");
    std::os::unix::fs::symlink(&f.outside, &parked_backups).unwrap();
    let before = f.outside_state();

    let stop = Arc::new(AtomicBool::new(false));
    let flipper = {
        let stop = Arc::clone(&stop);
        let (sub, parked) = (sub.clone(), parked.clone());
        let (backups, parked_backups) = (backups.clone(), parked_backups.clone());
        std::thread::spawn(move || {
            let mut flips = 0u64;
            while !stop.load(Ordering::Relaxed) {
                exchange(&sub, &parked);
                exchange(&backups, &parked_backups);
                flips += 1;
            }
            flips
        })
    };
    let mut written = 0u32;
    for i in 0..1500 {
        let outcome = f
            .run(
                "write_file",
                json!({"path": format!("sub/deep{}/f{i}.txt", i % 7), "content": "pwned",
                       "create_dirs": true}),
            )
            .await;
        if matches!(outcome, ToolOutcome::Result(_)) {
            written += 1;
        }
        let outcome = f
            .run(
                "write_file",
                json!({"path": "sub/existing.txt", "content": format!("v{i}")}),
            )
            .await;
        if matches!(outcome, ToolOutcome::Result(_)) {
            written += 1;
        }
        let _ = f
            .run("create_directory", json!({"path": format!("sub/made{i}")}))
            .await;
    }
    stop.store(true, Ordering::Relaxed);
    let flips = flipper.join().unwrap();
    assert!(flips > 0);
    // Some writes land (inside) and some are refused; none ever reaches outside.
    assert!(written > 0);
    assert_eq!(f.outside_state(), before);
}

#[tokio::test]
async fn legitimate_symlinks_and_paths_inside_keep_working() {
    let f = Fixture::new();
    std::fs::create_dir_all(f.workspace.join("real/nested")).unwrap();
    std::fs::write(f.workspace.join("real/nested/f.txt"), "inside\n").unwrap();
    std::os::unix::fs::symlink("real", f.workspace.join("alias")).unwrap();
    std::os::unix::fs::symlink("nested/f.txt", f.workspace.join("real/f-link")).unwrap();

    let read = f
        .run("read_file", json!({"path": "alias/nested/f.txt"}))
        .await;
    assert_eq!(result_of(&read)["content"], "inside\n");
    let read = f.run("read_file", json!({"path": "real/f-link"})).await;
    assert_eq!(result_of(&read)["content"], "inside\n");
    let absolute = f.workspace.join("real/nested/f.txt");
    let read = f
        .run("read_file", json!({"path": absolute.to_str().unwrap()}))
        .await;
    assert_eq!(result_of(&read)["content"], "inside\n");

    let written = f
        .run(
            "write_file",
            json!({"path": "alias/nested/f.txt", "content": "changed\n"}),
        )
        .await;
    let backup = result_of(&written)["backup_path"].as_str().unwrap();
    assert!(backup.ends_with("real/nested/f.txt"), "{backup}");
    assert_eq!(f.read(backup), "inside\n");
    assert_eq!(f.read("real/nested/f.txt"), "changed\n");
    let listed = f.run("list_files", json!({"path": "alias"})).await;
    assert_eq!(result_of(&listed)["path"], "real");

    let run = f
        .run("execute_command", json!({"command": "pwd", "cwd": "alias"}))
        .await;
    let stdout = result_of(&run)["stdout"]
        .as_str()
        .unwrap()
        .trim()
        .to_owned();
    assert!(stdout.ends_with("/workspace/real"), "{stdout}");
}
