//! The README's claims that a new user meets first.

use std::process::Command;

fn readme() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md")).unwrap()
}

/// After the README's first set-up command, `tcploop run` works: that
/// command builds the workspace's default members, which include the
/// preload library (it used to build the binary alone, and `run` then
/// failed for want of the library).
#[test]
fn the_quick_start_builds_the_preload_library_too() {
    let text = readme();
    let quick = text
        .split("<!-- section:quickstart -->")
        .nth(1)
        .and_then(|s| s.split("```").nth(1))
        .expect("a code block in the quick start");
    let first = quick
        .lines()
        .map(|l| l.split('#').next().unwrap().trim())
        .find(|l| !l.is_empty())
        .unwrap();
    assert_eq!(first, "cargo build --release", "{quick}");
    let o = Command::new(env!("CARGO"))
        .args(["metadata", "--format-version", "1", "--no-deps"])
        // from the workspace root, as the README's command runs
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
        .output()
        .unwrap();
    let meta: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let members: Vec<String> = meta["workspace_default_members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap().to_string())
        .collect();
    for want in ["/crates/tcploop#", "/crates/tcploop-preload#"] {
        assert!(
            members.iter().any(|m| m.contains(want)),
            "`cargo build` does not build {want}: {members:?}"
        );
    }
    // and cargo install users are told how to get the library
    assert!(
        text.contains("cargo build --release -p tcploop-preload"),
        "no instructions for cargo install users"
    );
}

/// Every command the man page lists has its page when written with --dir,
/// and the single page refers to none that does not exist.
#[test]
fn man_pages_exist_for_every_reference() {
    let dir = crate::common::temp_dir("man");
    let o = crate::common::output(&mut crate::common::tcploop(&[
        "completions",
        "man",
        "--dir",
        dir.to_str().unwrap(),
    ]));
    assert!(o.status.success(), "{}", crate::common::stderr(&o));
    let main = std::fs::read_to_string(dir.join("tcploop.1")).unwrap();
    let refs: Vec<&str> = main
        .split("tcploop\\-")
        .skip(1)
        .filter_map(|r| r.split_once("(1)").map(|(n, _)| n))
        .collect();
    assert!(refs.len() >= 10, "{main}");
    for r in refs {
        let name = r.replace("\\-", "-");
        assert!(
            dir.join(format!("tcploop-{name}.1")).is_file(),
            "tcploop.1 refers to tcploop-{name}(1), which was not written"
        );
    }
    // the page on stdout refers to no other page
    let o = crate::common::output(&mut crate::common::tcploop(&["completions", "man"]));
    let page = crate::common::stdout(&o);
    assert!(
        !page.contains("(1)") || !page.contains("tcploop\\-connect(1)"),
        "{page}"
    );
    assert!(
        page.contains(".SH \"EXIT STATUS\"\n.nf\n"),
        "the exit codes as a table"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
