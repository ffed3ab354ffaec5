//! The private PostgreSQL itself: started, reached, stopped as a crash, started again with its
//! data intact.

use crate::common::private_postgres::PrivatePostgres;
use crate::common::processes::free_port;

#[tokio::test]
async fn a_private_cluster_survives_a_crash_and_a_restart() {
    let mut postgres = PrivatePostgres::start("127.0.0.1", free_port()).await;
    let url = postgres.create_database("kept");
    assert!(url.ends_with("/kept"), "{url}");
    postgres.psql("kept", "CREATE TABLE t (v int); INSERT INTO t VALUES (42)");
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&url)
        .await
        .unwrap();
    postgres.stop();
    assert!(sqlx::query("SELECT 1").execute(&mut conn).await.is_err());
    postgres.start_again().await;
    assert_eq!(postgres.psql("kept", "SELECT v FROM t"), "42");
    assert!(
        postgres.log().contains("not properly shut down"),
        "{}",
        postgres.log()
    );
}
