//! No file outside the one named is ever written: symlinks planted by
//! another user in a shared directory, at the temporary name or at the
//! output path, are never followed by tcploop running as root.

use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::common::{self, output, stderr};

const PRECIOUS: &str = "precious: must never change\n";

/// A world-writable directory (0777, not sticky: the kernel's
/// protected_symlinks does not guard it) with a root-owned victim file.
fn shared_dir(name: &str) -> (PathBuf, PathBuf) {
    let base = std::env::temp_dir().join(format!("tcploop-clobber-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let shared = base.join("shared");
    std::fs::create_dir_all(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();
    let victim = base.join("victim");
    std::fs::write(&victim, PRECIOUS).unwrap();
    (shared, victim)
}

/// A symlink made by "another user" (nobody).
fn plant(link: &Path, target: &Path) {
    symlink(target, link).unwrap();
    rustix::fs::chownat(
        rustix::fs::CWD,
        link,
        Some(rustix::fs::Uid::from_raw(65534)),
        Some(rustix::fs::Gid::from_raw(65534)),
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )
    .unwrap();
}

fn root_only(test: &str) -> bool {
    common::skip_unless(
        common::is_root(),
        test,
        "root (the attack is on root's writes; the symlinks belong to nobody)",
    )
}

/// The textfile writer used `.NAME.tmpPID`: a user who plants a symlink at
/// that name made root overwrite any file. Here the writer runs in this
/// process, so the old name is known exactly.
#[test]
fn a_symlink_at_the_textfile_temporary_name_is_not_followed() {
    if root_only("a_symlink_at_the_textfile_temporary_name_is_not_followed") {
        return;
    }
    let (shared, victim) = shared_dir("lib");
    let file = shared.join("tcploop.prom");
    plant(
        &shared.join(format!(".tcploop.prom.tmp{}", std::process::id())),
        &victim,
    );
    tcploop::metrics::write_textfile(&file, "tcploop_scans_total 1\n").unwrap();
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), PRECIOUS);
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        "tcploop_scans_total 1\n"
    );
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o644);
    std::fs::remove_dir_all(shared.parent().unwrap()).unwrap();
}

/// The same attack on the binary, as an attacker would run it: symlinks at
/// the temporary names of the next few thousand process ids.
#[test]
fn watch_textfile_never_follows_symlinks_planted_for_the_next_pids() {
    if root_only("watch_textfile_never_follows_symlinks_planted_for_the_next_pids") {
        return;
    }
    let (shared, victim) = shared_dir("watch");
    let file = shared.join("tcploop.prom");
    let last: u32 = std::fs::read_to_string("/proc/sys/kernel/ns_last_pid")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    for pid in last + 1..last + 3000 {
        plant(&shared.join(format!(".tcploop.prom.tmp{pid}")), &victim);
    }
    let o = output(&mut common::tcploop(&[
        "watch",
        "--count",
        "2",
        "--interval",
        "10ms",
        "--textfile",
        file.to_str().unwrap(),
    ]));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), PRECIOUS);
    assert!(std::fs::read_to_string(&file)
        .unwrap()
        .contains("tcploop_scans_total 2"));
    std::fs::remove_dir_all(shared.parent().unwrap()).unwrap();
}

/// Output files named by the user (demo --pcap, --svg; audit --persist's
/// --sysctl-file): a symlink at that path is refused, the victim untouched.
#[test]
fn a_symlink_at_a_named_output_file_is_refused() {
    if crate::common::no_sandboxes() {
        return;
    }
    if root_only("a_symlink_at_a_named_output_file_is_refused") {
        return;
    }
    let (shared, victim) = shared_dir("named");
    for (name, args) in [
        ("loop.pcap", &["demo", "--pcap"][..]),
        ("loop.svg", &["demo", "--svg"]),
        (
            "60-tcploop.conf",
            &[
                "audit",
                "--ports",
                "40004",
                "--apply",
                "--persist",
                "--sysctl-file",
            ],
        ),
    ] {
        let link = shared.join(name);
        plant(&link, &victim);
        let mut a: Vec<&str> = args.to_vec();
        a.push(link.to_str().unwrap());
        let o = output(&mut common::sandboxed("40000-40009", &a));
        assert_eq!(o.status.code(), Some(2), "{a:?}: {}", stderr(&o));
        assert!(stderr(&o).contains("symlink"), "{a:?}: {}", stderr(&o));
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), PRECIOUS, "{a:?}");
        assert!(std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
    }
    // the control: the same commands with a plain path write their files
    let pcap = shared.join("ok.pcap");
    let o = output(&mut common::sandboxed(
        "40000-40009",
        &["demo", "--pcap", pcap.to_str().unwrap()],
    ));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        std::fs::metadata(&pcap).unwrap().len() > 24,
        "a pcap header and frames"
    );
    std::fs::remove_dir_all(shared.parent().unwrap()).unwrap();
}
