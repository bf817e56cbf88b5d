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
