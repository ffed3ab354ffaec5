//! Tests whose subject is process-wide (the metrics recorder, a once-per-process cap) and so
//! must not share their process with other tests.

/// Set in the child process that runs one test alone.
const ALONE: &str = "CODELAB_TEST_ALONE";

/// Whether the calling test may run here because it is alone in its process: under nextest (a
/// process per test) or in the child this starts. Otherwise (`cargo test` runs a binary's tests
/// as threads of one process, each thread named after its test) runs the test alone in a child
/// process, checks that it passed and answers `false`: the caller then returns.
pub fn alone_in_process() -> bool {
    let nextest = std::env::var_os("NEXTEST_EXECUTION_MODE");
    if nextest.is_some_and(|mode| mode == "process-per-test") || std::env::var_os(ALONE).is_some() {
        return true;
    }
    let name = std::thread::current()
        .name()
        .expect("a test thread is named after its test")
        .to_owned();
    let status = std::process::Command::new(std::env::current_exe().expect("the test binary"))
        .args([name.as_str(), "--exact", "--nocapture"])
        .env(ALONE, "1")
        .status()
        .expect("the test binary runs again");
    assert!(status.success(), "{name} failed in a process of its own");
    false
}
