//! A small line diff for the approval prompt of `write_file` (what the file becomes), in the
//! unified format with three lines of context. The name and the lines come from the model and
//! the workspace: they are escaped for the terminal ([`crate::sanitize`]), so a `\r` or an escape
//! sequence in a file shows instead of acting.

use crate::sanitize::{Shape, for_terminal};

/// Above this many lines on either side the LCS table would be too large: a summary is shown.
const MAX_DIFF_LINES: usize = 4000;
/// Lines of context around each change.
const CONTEXT: usize = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Keep,
    Remove,
    Add,
}

/// A unified diff from `old` to `new` for a file called `name` (`--- a/name`, `+++ b/name`,
/// `@@` hunks). Identical texts give a one-line note.
pub fn unified(old: &str, new: &str, name: &str) -> String {
    let name = for_terminal(name, Shape::Line);
    if old == new {
        return format!("(no change to {name})\n");
    }
    let a: Vec<&str> = old.split_inclusive('\n').collect();
    let b: Vec<&str> = new.split_inclusive('\n').collect();
    let mut out = format!(
        "--- {}\n+++ b/{name}\n",
        if old.is_empty() {
            "/dev/null".to_owned()
        } else {
            format!("a/{name}")
        }
    );
    if a.len() > MAX_DIFF_LINES || b.len() > MAX_DIFF_LINES {
        out.push_str(&format!(
            "(too large to diff: {} lines become {} lines)\n",
            a.len(),
            b.len()
        ));
        return out;
    }
    let ops = script(&a, &b);
    // Positions of each op in a and b, to write hunk headers.
    let mut rows = Vec::with_capacity(ops.len());
    let (mut i, mut j) = (0usize, 0usize);
    for op in &ops {
        rows.push((*op, i, j));
        match op {
            Op::Keep => {
                i += 1;
                j += 1;
            }
            Op::Remove => i += 1,
            Op::Add => j += 1,
        }
    }
    let changed: Vec<usize> = rows
        .iter()
        .enumerate()
        .filter(|(_, (op, _, _))| *op != Op::Keep)
        .map(|(k, _)| k)
        .collect();
    let mut k = 0;
    while k < changed.len() {
        let start = changed[k].saturating_sub(CONTEXT);
        let mut end = changed[k];
        while k < changed.len() && changed[k] <= end + 2 * CONTEXT + 1 {
            end = changed[k];
            k += 1;
        }
        let end = (end + CONTEXT + 1).min(rows.len());
        let hunk = &rows[start..end];
        let old_len = hunk.iter().filter(|r| r.0 != Op::Add).count();
        let new_len = hunk.iter().filter(|r| r.0 != Op::Remove).count();
        let (_, a0, b0) = hunk[0];
        out.push_str(&format!(
            "@@ -{},{old_len} +{},{new_len} @@\n",
            if old_len == 0 { a0 } else { a0 + 1 },
            if new_len == 0 { b0 } else { b0 + 1 },
        ));
        for (op, ai, bj) in hunk {
            let (sign, line) = match op {
                Op::Keep => (' ', a[*ai]),
                Op::Remove => ('-', a[*ai]),
                Op::Add => ('+', b[*bj]),
            };
            out.push(sign);
            out.push_str(&for_terminal(line, Shape::Block));
            if !line.ends_with('\n') {
                out.push_str("\n\\ No newline at end of file\n");
            }
        }
    }
    out
}

/// The edit script of a longest common subsequence.
fn script(a: &[&str], b: &[&str]) -> Vec<Op> {
    let (n, m) = (a.len(), b.len());
    // lcs[i][j]: LCS length of a[i..] and b[j..].
    let mut lcs = vec![0u32; (n + 1) * (m + 1)];
    let at = |i: usize, j: usize| i * (m + 1) + j;
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[at(i, j)] = if a[i] == b[j] {
                lcs[at(i + 1, j + 1)] + 1
            } else {
                lcs[at(i + 1, j)].max(lcs[at(i, j + 1)])
            };
        }
    }
    let mut ops = Vec::with_capacity(n + m);
    let (mut i, mut j) = (0, 0);
    while i < n && j < m {
        if a[i] == b[j] {
            ops.push(Op::Keep);
            i += 1;
            j += 1;
        } else if lcs[at(i + 1, j)] >= lcs[at(i, j + 1)] {
            ops.push(Op::Remove);
            i += 1;
        } else {
            ops.push(Op::Add);
            j += 1;
        }
    }
    ops.extend(std::iter::repeat_n(Op::Remove, n - i));
    ops.extend(std::iter::repeat_n(Op::Add, m - j));
    ops
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_file_is_all_additions() {
        assert_eq!(
            unified("", "a\nb\n", "f.txt"),
            "--- /dev/null\n+++ b/f.txt\n@@ -0,0 +1,2 @@\n+a\n+b\n"
        );
    }

    #[test]
    fn changes_get_context_and_hunk_headers() {
        let old = "1\n2\n3\n4\n5\n6\n7\n8\n9\n10\n";
        let new = "1\n2\n3\n4\nfive\n6\n7\n8\n9\n10\n";
        assert_eq!(
            unified(old, new, "n"),
            "--- a/n\n+++ b/n\n@@ -2,7 +2,7 @@\n 2\n 3\n 4\n-5\n+five\n 6\n 7\n 8\n"
        );
        assert_eq!(unified("x", "x", "n"), "(no change to n)\n");
        let tail = unified("a\n", "a\nb", "n");
        assert!(
            tail.ends_with("+b\n\\ No newline at end of file\n"),
            "{tail}"
        );
    }

    #[test]
    fn control_characters_in_lines_and_names_are_shown_escaped() {
        let diff = unified(
            "safe\n",
            "safe\nrm -rf ~\x1b[2K\recho ok\n",
            "a\u{202e}txt.sh\n",
        );
        assert!(
            diff.starts_with("--- a/a\\u{202e}txt.sh\\n\n+++ b/a\\u{202e}txt.sh\\n\n"),
            "{diff}"
        );
        assert!(diff.contains("+rm -rf ~\\x1b[2K\\recho ok\n"), "{diff}");
        assert!(!diff.contains(['\x1b', '\r', '\u{202e}']), "{diff}");
    }
}
