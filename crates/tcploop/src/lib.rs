//! tcploop: make the TCP loop connect visible, predictable and impossible.
//!
//! A TCP client that `connect()`s to a port of its own host where nothing
//! listens can end up connected to itself: if the port lies in the ephemeral
//! range, the kernel may pick that very port as the client's source port,
//! the SYN arrives at the sending socket, and TCP's simultaneous open makes
//! the connection ESTABLISHED with local address == peer address. The client
//! reads its own bytes and the port is held, so the real server cannot bind
//! it. This library is the engine of the `tcploop` tool:
//!
//! - [`model`]: the domain's model: a socket, its TCP state, its owner, and the one
//!   definition of a loop socket and of an exposed listener;
//! - [`ports`]: the ephemeral-port facts of a network namespace;
//! - [`freeport`]: ports a test server can listen on with no risk of a loop;
//! - [`host`]: whether a destination is an address of this namespace;
//! - [`inventory`]: who holds which port (bind, listen, connect), from sock_diag;
//! - [`preload`]: `tcploop run`: finding the preload guard, and which programs it can protect;
//! - [`predict`]: can a `connect()` to host:port loop here, and after how many tries;
//! - [`repro`]: the reproducer (the article's program, done right);
//! - [`survey`]: one look at a namespace, gathered for the predictor;
//! - [`demo`]: the loop drawn packet by packet (capture, ladder, pcap, SVG);
//! - [`scan`]: find the loops on a live host, and destroy them (`scan`, `kill`);
//! - [`shield`]: make the loop impossible in a namespace (`shield`): BPF on `lo`, or iptables;
//!   [`shield_daemon`]: keeping it on in every namespace, new ones included;
//! - [`owners`]: which processes hold a socket (inode to pid, command, fd);
//! - [`container`]: the container, Kubernetes pod or systemd service of a process, from its cgroup;
//! - [`audit`]: exposed services and the reserved-ports fix;
//! - [`holders`]: who holds one port now, and what each does to a server's `bind()`;
//! - [`doctor`]: "my server cannot bind its port": the cause, the holder, the fix in order;
//! - [`trace`]: loops reported by the kernel (BPF) the instant they form, and their end;
//! - [`watch`]: scanning again and again, events; [`metrics`]: Prometheus metrics;
//! - [`sandbox`]: throwaway user+net namespaces for safe experiments;
//! - [`report`]: the JSON Lines envelope shared by every command;
//! - [`safefile`]: creating or replacing a file as root without following a symlink;
//! - [`sys`]: the only module that talks to the kernel.
//!
//! The library never reads argv, prints to the terminal or exits: the binary
//! does that.

pub mod audit;
pub mod container;
pub mod demo;
pub mod doctor;
pub mod freeport;
pub mod holders;
pub mod host;
pub mod inventory;
pub mod metrics;
pub mod model;
pub mod owners;
pub mod ports;
pub mod predict;
pub mod preload;
pub mod report;
pub mod repro;
pub mod safefile;
pub mod sandbox;
pub mod scan;
pub mod shield;
pub mod shield_daemon;
pub mod survey;
pub mod sys;
pub mod trace;
pub mod watch;

pub use tcploop_guard::is_loop;
