//! Hosts made of Linux network namespaces: one namespace per host, each with one veth pair
//! whose other end is enslaved to a bridge living in a namespace of its own (the switch), and
//! one more veth from the test's own namespace to that bridge (the clients' machine). Every
//! packet between two hosts leaves one namespace through its veth, crosses the bridge and
//! enters the other: nothing is on loopback.
//!
//! A link between two hosts is cut with nftables in one host's namespace (`drop` of every
//! packet to and from the other host's address): a silent drop, as a pulled cable or a
//! firewall change looks from both ends (no RST, no ICMP), so each side only learns it from
//! its own timeouts. Healing deletes the table; connections whose packets were dropped carry
//! on when TCP retransmits.
//!
//! Every name carries the creating process's id (`ch<pid><letter>`), so a namespace left by a
//! test process that was killed before its guards ran is recognised and removed by the next
//! run ([`Network::create`]). Everything is removed when the [`Network`] drops, also when the
//! test fails.

use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU8, Ordering};

/// Why hosts cannot be made here; the test is skipped with this message.
#[derive(Debug)]
pub struct Unsupported(pub String);

/// The `ip` and `nft` programs (Debian: iproute2, nftables; scripts/test installs nftables).
const IP: &str = "ip";
const NFT: &str = "nft";

/// The nftables table a cut lives in (one per host namespace).
const CUT_TABLE: &str = "codelab_cut";

/// Runs `program args`; its stderr when it fails.
fn run(program: &str, args: &[&str]) -> Result<(), String> {
    let output = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{program} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// `ip args`, failing the test when it fails.
fn ip(args: &[&str]) {
    run(IP, args).unwrap_or_else(|e| panic!("{e}"));
}

/// Runs `program` with stdin `input`; its stderr when it fails.
fn run_with_input(program: &str, args: &[&str], input: &str) -> Result<(), String> {
    use std::io::Write as _;
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{program} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// Removes namespaces named `ch<pid><letter>-...` whose process is gone (a test killed before
/// its guards ran). Their veths go with them.
fn remove_stale_namespaces() {
    let Ok(output) = Command::new(IP).args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        let Some(rest) = name.strip_prefix("ch") else {
            continue;
        };
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        let Ok(pid) = digits.parse::<u32>() else {
            continue;
        };
        let after = &rest[digits.len()..];
        let ours = after.len() > 2
            && after.as_bytes()[0].is_ascii_lowercase()
            && after.as_bytes()[1] == b'-';
        if ours && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = run(IP, &["netns", "del", name]);
        }
    }
}

/// A `10.x.y.0/24` no interface of this machine's namespace uses yet.
fn free_subnet() -> [u8; 3] {
    let output = Command::new(IP)
        .args(["-o", "-4", "addr", "show"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let seed = u16::from_str_radix(&codelab_core::random_hex(2), 16).unwrap();
    for attempt in 0..512u16 {
        let n = seed.wrapping_add(attempt.wrapping_mul(97));
        let subnet = [10, 200 + (n % 50) as u8, (n / 50 % 256) as u8];
        let prefix = format!(" {}.{}.{}.", subnet[0], subnet[1], subnet[2]);
        if !output.contains(&prefix) {
            return subnet;
        }
    }
    panic!("no free 10.x.y.0/24 subnet")
}

/// One host: a network namespace with one interface on the bridge.
#[derive(Debug, Clone)]
pub struct Host {
    pub name: &'static str,
    pub namespace: String,
    pub address: Ipv4Addr,
}

impl Host {
    /// `ip netns exec <namespace>` followed by `command` (its program, arguments, environment
    /// changes and working directory): the program runs on this host. `ip netns exec` execs
    /// it, so the child's pid is the program's and killing it kills the program.
    pub fn command(&self, command: &Command) -> Command {
        let mut wrapped = Command::new(IP);
        wrapped
            .args(["netns", "exec", &self.namespace])
            .arg(command.get_program())
            .args(command.get_args());
        for (name, value) in command.get_envs() {
            match value {
                Some(value) => wrapped.env(name, value),
                None => wrapped.env_remove(name),
            };
        }
        if let Some(dir) = command.get_current_dir() {
            wrapped.current_dir(dir);
        }
        wrapped
    }

    /// The prefix that runs a program on this host (for helpers that take one).
    pub fn prefix(&self) -> [&str; 4] {
        [IP, "netns", "exec", &self.namespace]
    }
}

/// The hosts, the switch between them and the test's own interface on it.
pub struct Network {
    tag: String,
    switch: String,
    /// The test's own address on the bridge (where the clients run).
    pub client_address: Ipv4Addr,
    client_interface: String,
    hosts: Vec<Host>,
}

impl Network {
    /// Creates a namespace and a link to the switch for each of `names`, and the clients' link
    /// from this namespace. [`Unsupported`] when namespaces cannot be made here (not root, no
    /// `ip`, no `nft`, no veth or bridge support): the caller skips its test.
    pub fn create(names: &[&'static str]) -> Result<Network, Unsupported> {
        static NEXT: AtomicU8 = AtomicU8::new(0);
        for (program, args) in [(IP, ["-V"]), (NFT, ["-v"])] {
            run(program, &args).map_err(|e| {
                Unsupported(format!(
                    "{e} (install iproute2 and nftables; scripts/test installs nftables)"
                ))
            })?;
        }
        remove_stale_namespaces();
        let letter = char::from(b'a' + NEXT.fetch_add(1, Ordering::Relaxed) % 26);
        let tag = format!("ch{}{letter}", std::process::id());
        let subnet = free_subnet();
        let address = |n: u8| Ipv4Addr::new(subnet[0], subnet[1], subnet[2], n);
        let switch = format!("{tag}-switch");
        run(IP, &["netns", "add", &switch])
            .map_err(|e| Unsupported(format!("cannot create a network namespace: {e}")))?;
        let mut network = Network {
            client_address: address(1),
            client_interface: format!("{tag}c"),
            tag,
            switch,
            hosts: Vec::new(),
        };
        // From here on, the Drop guard removes whatever was made.
        run(
            IP,
            &[
                "-n",
                &network.switch,
                "link",
                "add",
                "br0",
                "type",
                "bridge",
            ],
        )
        .map_err(Unsupported)?;
        ip(&["-n", &network.switch, "link", "set", "br0", "up"]);
        // The clients' link: this namespace to the switch.
        let client = network.client_interface.clone();
        let client_port = format!("{}cp", network.tag);
        network.plug(&client, &client_port)?;
        ip(&[
            "addr",
            "add",
            &format!("{}/24", network.client_address),
            "dev",
            &client,
        ]);
        ip(&["link", "set", &client, "up"]);
        for (i, name) in names.iter().enumerate() {
            let host = Host {
                name,
                namespace: format!("{}-{name}", network.tag),
                address: address(u8::try_from(i + 2).unwrap()),
            };
            ip(&["netns", "add", &host.namespace]);
            let interface = format!("{}{i}", network.tag);
            let port = format!("{}{i}p", network.tag);
            network.hosts.push(host.clone());
            network.plug(&interface, &port)?;
            ip(&["link", "set", &interface, "netns", &host.namespace]);
            let n = ["-n", host.namespace.as_str()];
            ip(&[&n[..], &["link", "set", "lo", "up"]].concat());
            ip(&[
                &n[..],
                &[
                    "addr",
                    "add",
                    &format!("{}/24", host.address),
                    "dev",
                    &interface,
                ],
            ]
            .concat());
            ip(&[&n[..], &["link", "set", &interface, "up"]].concat());
        }
        Ok(network)
    }

    /// A veth pair `inside`/`port` in this namespace, `port` moved to the switch and
    /// enslaved to its bridge.
    fn plug(&self, inside: &str, port: &str) -> Result<(), Unsupported> {
        run(
            IP,
            &["link", "add", inside, "type", "veth", "peer", "name", port],
        )
        .map_err(|e| Unsupported(format!("cannot create a veth pair: {e}")))?;
        ip(&["link", "set", port, "netns", &self.switch]);
        ip(&["-n", &self.switch, "link", "set", port, "master", "br0"]);
        ip(&["-n", &self.switch, "link", "set", port, "up"]);
        Ok(())
    }

    pub fn host(&self, name: &str) -> &Host {
        self.hosts
            .iter()
            .find(|h| h.name == name)
            .unwrap_or_else(|| panic!("no host {name}"))
    }

    /// Cuts the link between `a` and `b`: `a`'s namespace drops every packet to and from `b`
    /// (silently). One cut per host at a time.
    pub fn cut(&self, a: &str, b: &str) {
        let (a, b) = (self.host(a), self.host(b));
        let rules = format!(
            "table inet {CUT_TABLE} {{\n\
             chain out {{ type filter hook output priority 0; policy accept; ip daddr {peer} drop; }}\n\
             chain in {{ type filter hook input priority 0; policy accept; ip saddr {peer} drop; }}\n\
             }}\n",
            peer = b.address
        );
        let mut args: Vec<&str> = a.prefix().to_vec();
        args.extend([NFT, "-f", "-"]);
        run_with_input(args[0], &args[1..], &rules).unwrap_or_else(|e| panic!("{e}"));
    }

    /// Heals the cut made on `a` by [`Self::cut`].
    pub fn heal(&self, a: &str) {
        let a = self.host(a);
        let mut args: Vec<&str> = a.prefix().to_vec();
        args.extend([NFT, "delete", "table", "inet", CUT_TABLE]);
        run(args[0], &args[1..]).unwrap_or_else(|e| panic!("{e}"));
    }

    /// The namespaces, interfaces and addresses, for the test's log.
    pub fn describe(&self) -> String {
        let hosts: Vec<String> = self
            .hosts
            .iter()
            .map(|h| format!("{}={}", h.name, h.address))
            .collect();
        format!(
            "switch {} (bridge br0), clients={} via {}, {}",
            self.switch,
            self.client_address,
            self.client_interface,
            hosts.join(" ")
        )
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        // Deleting a namespace destroys the veth ends in it, and with them their peers.
        for host in &self.hosts {
            let _ = run(IP, &["netns", "del", &host.namespace]);
        }
        let _ = run(IP, &["link", "del", &self.client_interface]);
        let _ = run(IP, &["netns", "del", &self.switch]);
    }
}
