//! A real nginx from deploy/nginx/nginx.conf, unprivileged: a copy of the config in a temp
//! prefix, its `listen 80` moved to a free loopback port, an `upstreams.conf` written by the
//! test, one process in the foreground (no master, no daemon), killed when dropped.
//!
//! Needs nginx (`CODELAB_TEST_NGINX`, else /usr/sbin/nginx; scripts/test installs it from Debian
//! packages) and, for the TLS variant, the openssl command.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::processes::free_port;

/// The nginx binary the tests run.
pub fn nginx_binary() -> PathBuf {
    let path = std::env::var_os("CODELAB_TEST_NGINX")
        .map_or_else(|| PathBuf::from("/usr/sbin/nginx"), PathBuf::from);
    assert!(
        path.exists(),
        "nginx not found at {}: install it (Debian: apt-get install -y nginx; scripts/test does \
         when run as root) or set CODELAB_TEST_NGINX",
        path.display()
    );
    path
}

/// `upstreams.conf` naming the three upstreams of nginx.conf; several addresses in one list
/// are balanced round robin, as in a deployment with replicas.
pub fn upstreams_conf(
    auth: &[SocketAddr],
    gateway: &[SocketAddr],
    website: &[SocketAddr],
) -> String {
    let block = |name: &str, servers: &[SocketAddr], keepalive: bool| {
        let servers: String = servers.iter().map(|s| format!(" server {s};")).collect();
        let keepalive = if keepalive { " keepalive 4;" } else { "" };
        format!("upstream {name} {{{servers}{keepalive} }}\n")
    };
    format!(
        "{}{}{}",
        block("codelab_auth", auth, true),
        block("codelab_gateway", gateway, true),
        block("codelab_website", website, false)
    )
}

/// The public address a TLS prefix is configured with (its HTTP->HTTPS redirects go there).
pub fn public_https_url(tls_port: u16) -> String {
    format!("https://localhost:{tls_port}")
}

/// A copy of deploy/nginx in a temp prefix, listening on loopback ports.
pub struct Prefix {
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub tls_port: Option<u16>,
}

impl Prefix {
    /// nginx.conf (only its `listen 80` moved to a free loopback port), mime.types,
    /// `upstreams`, and with `tls` the example tls.conf (port and certificate paths moved) and
    /// a fresh self-signed certificate.
    pub fn new(upstreams: &str, tls: bool) -> Prefix {
        let dir = tempfile::tempdir().unwrap();
        let source = super::repo_root().join("deploy/nginx");
        let port = free_port();
        let conf = std::fs::read_to_string(source.join("nginx.conf")).unwrap();
        assert_eq!(conf.matches("listen 80 default_server;").count(), 1);
        let conf = conf.replace(
            "listen 80 default_server;",
            &format!("listen 127.0.0.1:{port} default_server;"),
        );
        std::fs::write(dir.path().join("nginx.conf"), conf).unwrap();
        let mime = std::fs::read_to_string("/etc/nginx/mime.types").unwrap_or_else(|_| {
            "types { text/html html; text/plain txt; application/json json; }\n".to_owned()
        });
        std::fs::write(dir.path().join("mime.types"), mime).unwrap();
        std::fs::write(dir.path().join("upstreams.conf"), upstreams).unwrap();
        let tls_port = tls.then(|| {
            let tls_port = free_port();
            let certs = dir.path().join("certs");
            std::fs::create_dir(&certs).unwrap();
            let example = std::fs::read_to_string(source.join("tls.conf.example")).unwrap();
            assert_eq!(example.matches("listen 443 ssl;").count(), 1);
            // The configured public address, as Compose's envsubst template writes it.
            assert_eq!(example.matches("\"${CODELAB_PUBLIC_URL}\"").count(), 1);
            let tls_conf = example
                .replace(
                    "listen 443 ssl;",
                    &format!("listen 127.0.0.1:{tls_port} ssl;"),
                )
                .replace("${CODELAB_PUBLIC_URL}", &public_https_url(tls_port))
                .replace("/etc/nginx/certs", certs.to_str().unwrap());
            std::fs::write(dir.path().join("tls.conf"), tls_conf).unwrap();
            let status = Command::new("openssl")
                .args([
                    "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                ])
                .args(["-subj", "/CN=localhost", "-keyout"])
                .arg(certs.join("tls.key"))
                .arg("-out")
                .arg(certs.join("tls.crt"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .expect("the openssl command is needed to make a test certificate");
            assert!(status.success());
            tls_port
        });
        Prefix {
            dir,
            port,
            tls_port,
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// nginx with this prefix: single process in the foreground, errors on stderr.
    pub fn command(&self) -> Command {
        let mut command = Command::new(nginx_binary());
        command
            .arg("-e")
            .arg("stderr")
            .arg("-p")
            .arg(self.path())
            .arg("-c")
            .arg(self.path().join("nginx.conf"))
            .arg("-g")
            .arg(format!(
                "pid {}; daemon off; master_process off;",
                self.path().join("nginx.pid").display()
            ));
        command
    }

    /// `nginx -t`: the output when the configuration is valid.
    pub fn test_config(&self) -> String {
        let output = self.command().arg("-t").output().unwrap();
        let text = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(output.status.success(), "nginx -t failed:\n{text}");
        text
    }

    /// nginx's access log (its stdout): one line per request with `upstream=<address>`.
    pub fn access_log(&self) -> String {
        std::fs::read_to_string(self.path().join("access.log")).unwrap_or_default()
    }

    /// Starts nginx and waits (bounded) until it answers `/nginx-health`.
    pub async fn start(&self) -> Nginx {
        self.test_config();
        // nginx's own logs (expected errors included) stay in the prefix.
        let log = std::fs::File::create(self.path().join("error.log")).unwrap();
        let access = std::fs::File::create(self.path().join("access.log")).unwrap();
        let child = self.command().stdout(access).stderr(log).spawn().unwrap();
        let nginx = Nginx(child);
        let url = format!("{}/nginx-health", self.url());
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if reqwest::get(&url).await.is_ok_and(|r| r.status() == 200) {
                return nginx;
            }
            assert!(Instant::now() < deadline, "nginx did not come up");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The nginx process, stopped when the test ends.
pub struct Nginx(Child);

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
