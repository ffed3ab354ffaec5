//! The process-wide cap on concurrent password hashing (issue 14, finding 1): with one slot,
//! a burst of password grants is answered 503 with `Retry-After` beyond the slot and its
//! bounded queue, never with a 500 or an unbounded wait, and the service recovers at once.
//!
//! Alone in its process ([`alone_in_process`]): the cap is fixed once per process, before the
//! first login.

use crate::support::{ADMIN_PASSWORD, Auth, Backend, FLUTTER, alone_in_process, password_form};
use reqwest::StatusCode;

#[tokio::test]
async fn a_full_hashing_cap_answers_503_with_retry_after() {
    let true = alone_in_process() else { return };
    assert!(
        codelab_auth::passwords::set_password_hashing_concurrency(1),
        "the cap must be set before anything hashes a password"
    );
    let auth = Auth::start(Backend::Sqlite).await;
    // Distinct unknown logins: no lockout interferes, and each costs a full verification.
    let burst: Vec<_> = (0..100)
        .map(|i| {
            let username = format!("nobody-{i}");
            let form = password_form(FLUTTER, &username, "some-password");
            let request = auth.spawn_form("/oauth/token", &form);
            tokio::spawn(async move {
                let response = request.await.unwrap();
                let status = response.status();
                let retry_after = response
                    .headers()
                    .get("retry-after")
                    .map(|v| v.to_str().unwrap().to_owned());
                let body: serde_json::Value = response.json().await.unwrap();
                (status, retry_after, body)
            })
        })
        .collect();
    let mut busy = 0;
    for request in burst {
        let (status, retry_after, body) = request.await.unwrap();
        match status {
            StatusCode::SERVICE_UNAVAILABLE => {
                busy += 1;
                assert_eq!(retry_after.as_deref(), Some("1"), "{body}");
                assert_eq!(body["error"], "temporarily_unavailable");
            }
            // Checked and refused, or refused by the per-IP failure counter.
            StatusCode::UNAUTHORIZED | StatusCode::TOO_MANY_REQUESTS => {}
            other => panic!("a request was answered {other}: {body}"),
        }
    }
    assert!(
        busy > 0,
        "100 concurrent logins never filled one slot and its queue"
    );
    assert_eq!(codelab_auth::passwords::password_hashing_concurrency(), 1);
    // Nothing stays taken: the next login gets a slot (after the failures of the burst have
    // expired from the per-IP counter).
    auth.clock.advance(std::time::Duration::from_secs(901));
    let (status, _, body) = auth.password_grant("admin", ADMIN_PASSWORD, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}
