//! Tests of what a fleet deploys: the man pages the package ships, the
//! systemd units, the Kubernetes manifests, the Prometheus rules and the
//! Grafana dashboard under `deploy/`, each checked with the tool that
//! reads it (promtool, systemd-analyze, a YAML parser) and against the
//! built binary (every command line in them is accepted by it).

use std::path::{Path, PathBuf};

use crate::common;

/// The repository's `deploy/` directory.
fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy")
}

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tcploop-deploy-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// `name(1)` references in a roff page, with roff's `\-` unescaped.
fn man_references(roff: &str) -> Vec<String> {
    let text = roff.replace("\\-", "-");
    let mut refs = vec![];
    for (i, _) in text.match_indices("(1)") {
        let name: String = text[..i]
            .chars()
            .rev()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        if !name.is_empty() {
            refs.push(name);
        }
    }
    refs
}

#[test]
fn man_pages_name_only_pages_that_exist() {
    let dir = temp_dir("man");
    let o = common::output(&mut common::tcploop(&[
        "completions",
        "man",
        "--out-dir",
        dir.to_str().unwrap(),
    ]));
    assert!(o.status.success(), "{}", common::stderr(&o));
    let pages: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(pages.contains(&"tcploop.1".to_string()), "{pages:?}");
    assert!(pages.contains(&"tcploop-watch.1".to_string()), "{pages:?}");
    assert!(
        !pages.iter().any(|p| p.starts_with("tcploop-help")),
        "{pages:?}"
    );
    let mut referenced = 0;
    for p in &pages {
        let roff = std::fs::read_to_string(dir.join(p)).unwrap();
        assert!(roff.starts_with(".ie") || roff.starts_with(".TH"), "{p}");
        for r in man_references(&roff) {
            referenced += 1;
            assert!(
                pages.contains(&format!("{r}.1")),
                "{p} names {r}(1), which is not among {pages:?}"
            );
        }
    }
    // The control: the main page does name the command pages.
    assert!(referenced >= pages.len() - 1, "{referenced} references");
    // Pages are created new, never overwritten.
    let o = common::output(&mut common::tcploop(&[
        "completions",
        "man",
        "--out-dir",
        dir.to_str().unwrap(),
    ]));
    assert_eq!(o.status.code(), Some(2), "{}", common::stderr(&o));
    assert!(
        common::stderr(&o).contains("File exists"),
        "{}",
        common::stderr(&o)
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Whether the built binary accepts this command line: clap parses every
/// argument (names and values) before it acts on a trailing `--help`, so
/// an unknown flag or a bad value fails and a good line prints help.
fn assert_accepted(line: &[String], source: &str) {
    assert_eq!(line.first().map(String::as_str), Some("tcploop"), "{source}: {line:?}");
    if line.get(1).map(String::as_str) == Some("shield") && !has_command("shield") {
        // `shield` comes with its own change; until it is in this build its
        // lines cannot be checked (they are once it is).
        eprintln!("note: {source}: `tcploop shield` is not in this build; not checked: {line:?}");
        return;
    }
    let mut c = common::tcploop(&[]);
    c.args(&line[1..]).arg("--help");
    let o = common::output(&mut c);
    assert!(
        o.status.success(),
        "{source}: the binary refuses {line:?}: {}",
        common::stderr(&o)
    );
}

fn has_command(name: &str) -> bool {
    common::output(&mut common::tcploop(&[name, "--help"]))
        .status
        .success()
}

/// The words of a systemd `ExecStart=` (no quoting used in ours).
fn exec_start(unit: &str) -> Vec<String> {
    let line = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("an ExecStart= line");
    line.split_whitespace().map(String::from).collect()
}

#[test]
fn systemd_units_verify_and_their_command_lines_are_accepted() {
    let dir = temp_dir("units");
    for name in ["tcploop-watch.service", "tcploop-shield.service"] {
        let text = std::fs::read_to_string(deploy().join("systemd").join(name)).unwrap();
        let mut line = exec_start(&text);
        assert_eq!(line[0], "/usr/bin/tcploop", "{name}");
        line[0] = "tcploop".into();
        assert_accepted(&line, name);
        for key in ["CapabilityBoundingSet=", "NoNewPrivileges=yes", "ProtectSystem=strict"] {
            assert!(text.contains(key), "{name} lacks {key}");
        }
        // systemd-analyze checks the unit as installed, with the binary at
        // its packaged path and its man page present; here the binary is the
        // built one and the man pages are checked by .ci/package.
        let local: String = text
            .replace("/usr/bin/tcploop", common::bin().to_str().unwrap())
            .lines()
            .filter(|l| !l.starts_with("Documentation="))
            .map(|l| format!("{l}\n"))
            .collect();
        let path = dir.join(name);
        std::fs::write(&path, local).unwrap();
        let o = common::output(std::process::Command::new("systemd-analyze").arg("verify").arg(&path));
        let said = format!("{}{}", common::stdout(&o), common::stderr(&o));
        assert!(o.status.success() && said.trim().is_empty(), "{name}: {said}");
    }
    // The control: a unit with a misspelt option is not clean.
    let bad = dir.join("tcploop-bad.service");
    std::fs::write(
        &bad,
        format!(
            "[Service]\nExecStart={}\nProtectSystm=strict\n",
            common::bin().display()
        ),
    )
    .unwrap();
    let o = common::output(std::process::Command::new("systemd-analyze").arg("verify").arg(&bad));
    assert!(
        !common::stderr(&o).trim().is_empty(),
        "systemd-analyze saw nothing wrong in a bad unit"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
