//! The JSON Lines contract of `audit` and `watch`: every line's `data`
//! deserializes into these, with no unknown field (see the README's JSON
//! section and the rustdoc of report/audit.rs and report/watch.rs).

#![allow(dead_code)]

use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Owner {
    pid: u32,
    command: String,
    fd: i32,
    container: Option<Container>,
}
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Container {
    runtime: String,
    id: String,
    name: Option<String>,
    pod_uid: Option<String>,
    pod: Option<String>,
    namespace: Option<String>,
}
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Listener {
    addr: String,
    inode: u32,
    uid: u32,
    owners: Vec<Owner>,
}
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WhenDown {
    verdict: String,
    reasons: Vec<String>,
    expected_tries: Option<f64>,
}
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Port {
    port: u16,
    status: String,
    configured: bool,
    listening: Vec<Listener>,
    host: String,
    when_down: WhenDown,
    advice: Vec<String>,
}
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Loop {
    local: String,
    state: String,
    inode: u32,
    owners: Vec<Owner>,
}
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Fix {
    key: String,
    current: String,
    add: String,
    value: String,
    needed: bool,
    command: String,
    sysctl_d: String,
}
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Applied {
    value: String,
    previous: String,
    written: bool,
    lock: Option<String>,
    file: Option<String>,
    file_written: bool,
    file_value: Option<String>,
}
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PersistFailed {
    file: String,
    error: String,
}
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Summary {
    kernel: String,
    range: String,
    reserved: String,
    exposed: u64,
    loops: u64,
    owners_unknown: u64,
    processes_unreadable: u64,
}
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Started {
    time: String,
    interval_s: f64,
    prometheus: Option<String>,
    textfile: Option<String>,
    kill_after_s: Option<f64>,
    source: String,
    source_reason: String,
}
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Lost {
    time: String,
    loops: u64,
    ends: u64,
}
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LoopEvent {
    time: String,
    local: String,
    state: String,
    inode: u32,
    cookie: u64,
    owners: Vec<Owner>,
    #[serde(default)]
    netns: Option<Netns>,
    #[serde(default)]
    seen_s: Option<f64>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    kills_on_port: Option<u64>,
    #[serde(default)]
    advice: Option<String>,
}
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Netns {
    inode: u64,
    pid: Option<u32>,
    comm: Option<String>,
    name: Option<String>,
    container: Option<Container>,
}
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NetnsEvent {
    time: String,
    netns: Netns,
    #[serde(default)]
    error: Option<String>,
}
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ErrorEvent {
    time: String,
    error: String,
    #[serde(default)]
    errors_total: Option<u64>,
}
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Stopped {
    time: String,
    scans: u64,
    scan_errors: u64,
    loops_seen: u64,
    kills: u64,
}

use crate::common::conforms as parse;

/// Checks one `{"type", "data"}` line.
pub fn check(line: &serde_json::Value) {
    let d = &line["data"];
    match line["type"].as_str().expect("a type") {
        t @ "port" => parse::<Port>(t, d),
        t @ "loop" => parse::<Loop>(t, d),
        t @ "fix" => parse::<Fix>(t, d),
        t @ "applied" => parse::<Applied>(t, d),
        t @ "persist_failed" => parse::<PersistFailed>(t, d),
        t @ "summary" => parse::<Summary>(t, d),
        t @ "watch_started" => parse::<Started>(t, d),
        t @ ("loop_appeared" | "loop_gone" | "loop_killed" | "kill_failed") => {
            parse::<LoopEvent>(t, d)
        }
        t @ ("scan_error" | "owner_error" | "output_error") => parse::<ErrorEvent>(t, d),
        t @ "watch_stopped" => parse::<Stopped>(t, d),
        t @ ("netns_appeared" | "netns_gone" | "netns_skipped") => parse::<NetnsEvent>(t, d),
        t @ "events_lost" => parse::<Lost>(t, d),
        other => panic!("unknown line type {other}: {line}"),
    }
}
