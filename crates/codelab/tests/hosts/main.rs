//! Several hosts (docs/reliability.md, "Several hosts"): every service on a host of its own —
//! a Linux network namespace the test creates, linked to the others through veth pairs and a
//! bridge ([`network`]) — so each request really crosses interfaces: nginx (this repository's
//! deploy/nginx/nginx.conf), auth, two gateways, two agent runtimes, the LLM proxy, a private
//! PostgreSQL cluster (initdb + postgres as the `postgres` user) and Redis. The clients run in
//! the test's own namespace, on the same bridge.
//!
//! Then links are cut (silently: nftables drops every packet between two hosts) and healed:
//! one gateway and Redis, one runtime and PostgreSQL. What the user sees during each cut is
//! asserted and timed, and afterwards what the clients saw is compared with the stored
//! history: nothing acknowledged is lost, duplicated or reordered.
//!
//! Needs root, `ip` and `nft` (scripts/test installs nftables); skipped with a message where
//! namespaces cannot be created. Every namespace, veth and bridge is removed when the test
//! ends, also on failure (guards), and one left by a killed run is removed by the next.
#![allow(
    clippy::unwrap_used,
    clippy::disallowed_methods,
    reason = "a failed unwrap is the test's report; tests own their clock, ids and tasks"
)]

mod shared;
use shared::common;

mod network;
mod several_hosts;
