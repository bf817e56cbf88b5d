//! `audit --apply` and `--persist` as root on a production host: the
//! reservation only ever grows, concurrent runs keep each other's ports, and
//! the sysctl.d file is merged into, never replaced, and never followed.

use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use crate::common::audit_json;
use crate::common::{
    self, json_lines, of_type, output, reserved_now, stderr, stdout, Sandbox, RESERVED_FILE,
};

/// Every port of a kernel-notation list ("1,3-5").
fn ports_of(list: &str) -> std::collections::BTreeSet<u16> {
    let mut s = std::collections::BTreeSet::new();
    for item in list.split(',').filter(|i| !i.is_empty()) {
        match item.split_once('-') {
            Some((a, b)) => s.extend(a.parse::<u16>().unwrap()..=b.parse::<u16>().unwrap()),
            None => {
                s.insert(item.parse().unwrap());
            }
        }
    }
    s
}

/// The reproduction: 30000,30002,...,30012 reserved, then
/// `audit --ports 30016 --apply` left `30,30000,...,30008,30016`.
#[test]
fn apply_keeps_every_reservation_of_a_long_list_and_invents_none() {
    let reserve = "30000,30002,30004,30006,30008,30010,30012";
    scenario_long_list_kept::run_ok(&Sandbox::range("30000-30999").reserve(reserve));
}

scenario! {
    fn scenario_long_list_kept(out) {
        let (lines, code, err) = audit_json(&["audit", "--json", "--ports", "30016", "--apply"]);
        assert_eq!(code, Some(0), "{lines:?} {err}");
        let applied = &of_type(&lines, "applied")[0];
        let want = "30000,30002,30004,30006,30008,30010,30012,30016";
        assert_eq!(
            applied["previous"],
            "30000,30002,30004,30006,30008,30010,30012"
        );
        assert_eq!(applied["value"], want);
        assert_eq!(applied["written"], true);
        assert_eq!(reserved_now(), want);
        std::fs::write(out, "ok").unwrap();
    }
}

/// 6 `audit --apply` runs at once, for different ports, 20 rounds, over a
/// reservation several hundred bytes long: every port that a run reported
/// (exit 0, `applied`) is reserved at the end, and so is every port that was
/// reserved at the start.
#[test]
fn concurrent_applies_never_lose_each_others_ports() {
    if common::skip_unless(
        common::is_root(),
        "concurrent_applies_never_lose_each_others_ports",
        "root (the lock file lives in /run)",
    ) {
        return;
    }
    let start: Vec<String> = (41000..41200).step_by(2).map(|p| p.to_string()).collect();
    scenario_concurrent::run_ok(&Sandbox::range("40000-41999").reserve(&start.join(",")));
}

scenario! {
    fn scenario_concurrent(out) {
        let start = ports_of(&reserved_now());
        assert_eq!(start.len(), 100);
        let mut reported = vec![];
        for round in 0..20u16 {
            let children: Vec<_> = (0..6u16)
                .map(|i| {
                    let port = 40000 + round * 12 + i * 2;
                    let child =
                        common::tcploop(&["audit", "--json", "--ports", &port.to_string(), "--apply"])
                            .stdout(Stdio::piped())
                            .stderr(Stdio::piped())
                            .spawn()
                            .unwrap();
                    (port, child)
                })
                .collect();
            for (port, child) in children {
                let o = child.wait_with_output().unwrap();
                let lines = json_lines(&o);
                assert_eq!(o.status.code(), Some(0), "port {port}: {}", stderr(&o));
                let applied = &of_type(&lines, "applied")[0];
                assert_eq!(
                    applied["lock"], "/run/tcploop-reserved-ports.lock",
                    "{applied}"
                );
                assert!(
                    ports_of(applied["value"].as_str().unwrap()).contains(&port),
                    "{applied}"
                );
                reported.push(port);
            }
        }
        let end = ports_of(&reserved_now());
        let lost: Vec<_> = reported
            .iter()
            .chain(start.iter())
            .filter(|p| !end.contains(p))
            .collect();
        assert!(lost.is_empty(), "ports lost: {lost:?}");
        assert_eq!(reported.len(), 120);
        std::fs::write(out, "ok").unwrap();
    }
}

/// While another run holds the lock, `audit --apply` waits for it (seen
/// blocked in /proc/locks) and writes nothing; once released, it applies.
#[test]
fn apply_waits_for_the_lock_before_reading_the_reservation() {
    if common::skip_unless(
        common::is_root(),
        "apply_waits_for_the_lock_before_reading_the_reservation",
        "root (the lock file lives in /run)",
    ) {
        return;
    }
    let lock = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open("/run/tcploop-reserved-ports.lock")
        .unwrap();
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive).unwrap();
    let dir = common::temp_dir("apply-wait");
    let result = dir.join("reserved");
    let script = format!(
        "{bin} audit --ports 40004 --apply >/dev/null; echo $? $(cat {RESERVED_FILE}) > {r}",
        bin = common::bin().display(),
        r = result.display()
    );
    let mut child = Sandbox::range("40000-40009").sh(&script).spawn().unwrap();
    // wait (bounded) until some process is blocked on our lock
    let ino = rustix::fs::fstat(&lock).unwrap().st_ino;
    let blocked = (0..200).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(50));
        std::fs::read_to_string("/proc/locks")
            .unwrap()
            .lines()
            .any(|l| l.contains("->") && l.contains(&format!(":{ino} ")))
    });
    let done_early = result.exists();
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::Unlock).unwrap();
    let status = child.wait().unwrap();
    assert!(status.success());
    assert!(blocked, "no process waited for the lock");
    assert!(!done_early, "applied while another run held the lock");
    let text = std::fs::read_to_string(&result).unwrap();
    assert_eq!(text.trim(), "0 40004", "{text}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `--persist` into an existing file: every other line kept byte for byte,
/// the file's own value merged with the live one and the new port, mode
/// 0644 whatever the umask, no temporary file left.
#[test]
fn persist_merges_into_an_existing_file_and_keeps_its_other_lines() {
    if crate::common::no_sandboxes() {
        return;
    }
    let dir = common::temp_dir("apply-merge");
    let file = dir.join("60-tcploop.conf");
    let before = "# local settings\nnet.core.somaxconn = 4096\n\
                  net.ipv4.ip_local_reserved_ports = 8080,9000-9010\nvm.swappiness = 10\n";
    std::fs::write(&file, before).unwrap();
    let script = format!(
        "umask 077; exec {bin} audit --json --ports 40004 --apply --persist --sysctl-file {f}",
        bin = common::bin().display(),
        f = file.display()
    );
    let o = output(&mut Sandbox::range("40000-40009").reserve("50000").sh(&script));
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    let lines = json_lines(&o);
    lines.iter().for_each(crate::schema::check);
    let applied = &of_type(&lines, "applied")[0];
    assert_eq!(applied["value"], "40004,50000");
    assert_eq!(applied["file_written"], true);
    assert_eq!(applied["file_value"], "8080,9000-9010,40004,50000");
    let text = std::fs::read_to_string(&file).unwrap();
    assert_eq!(
        text,
        "# local settings\nnet.core.somaxconn = 4096\n\
         net.ipv4.ip_local_reserved_ports = 8080,9000-9010,40004,50000\nvm.swappiness = 10\n"
    );
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o644, "mode {mode:o}");
    let names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 1, "a temporary file was left: {names:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Runs `audit --apply --persist --sysctl-file PATH` in a sandbox and
/// returns (exit code, JSON lines, stderr, reserved ports afterwards).
fn persist_into(path: &Path) -> (Option<i32>, Vec<serde_json::Value>, String, String) {
    let script = format!(
        "{bin} audit --json --ports 40004 --apply --persist --sysctl-file '{f}'; c=$?; \
         echo \"reserved=$(cat {RESERVED_FILE})\" >&2; exit $c",
        bin = common::bin().display(),
        f = path.display()
    );
    let o = output(&mut Sandbox::range("40000-40009").sh(&script));
    let lines = json_lines(&o);
    lines.iter().for_each(crate::schema::check);
    let err = stderr(&o);
    let reserved = err
        .lines()
        .find_map(|l| l.strip_prefix("reserved="))
        .unwrap_or("")
        .to_string();
    (o.status.code(), lines, err, reserved)
}

/// A sysctl file that is a symlink, a directory, a FIFO, a device or a huge
/// file is refused and left untouched; the live fix was applied, and both
/// are said: an `applied` line, a `persist_failed` line, one error line,
/// exit 2.
#[test]
fn persist_refuses_a_symlink_a_directory_a_fifo_a_device_and_a_huge_file() {
    if crate::common::no_sandboxes() {
        return;
    }
    let dir = common::temp_dir("apply-refuse");
    let victim = dir.join("victim");
    std::fs::write(&victim, "precious\n").unwrap();
    let link = dir.join("link.conf");
    symlink(&victim, &link).unwrap();
    let sub = dir.join("sub.conf");
    std::fs::create_dir(&sub).unwrap();
    let fifo = dir.join("fifo.conf");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &fifo,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();
    let huge = dir.join("huge.conf");
    std::fs::write(&huge, vec![b'#'; 2 << 20]).unwrap();
    let mut cases: Vec<(PathBuf, &str)> = vec![
        (link.clone(), "symlink"),
        (sub.clone(), "directory"),
        (fifo.clone(), "FIFO"),
        (huge.clone(), "2097152 bytes"),
    ];
    // a character device (the same numbers as /dev/null), made as root only
    let dev = dir.join("dev.conf");
    if common::is_root() {
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &dev,
            rustix::fs::FileType::CharacterDevice,
            rustix::fs::Mode::from_raw_mode(0o600),
            rustix::fs::makedev(1, 3),
        )
        .unwrap();
        cases.push((dev.clone(), "character device"));
    }
    for (path, what) in &cases {
        let meta_before = std::fs::symlink_metadata(path).unwrap();
        let (code, lines, err, reserved) = persist_into(path);
        assert_eq!(code, Some(2), "{what}: {lines:?} {err}");
        let applied = of_type(&lines, "applied");
        assert_eq!(
            applied.len(),
            1,
            "{what}: the live fix is reported: {lines:?}"
        );
        assert_eq!(applied[0]["value"], "40004");
        assert_eq!(applied[0]["file_written"], false);
        let failed = &of_type(&lines, "persist_failed")[0];
        assert!(
            failed["error"].as_str().unwrap().contains(what),
            "{what}: {failed}"
        );
        assert_eq!(reserved, "40004", "{what}: the live fix stays applied");
        let errors: Vec<_> = err.lines().filter(|l| l.starts_with("tcploop:")).collect();
        assert_eq!(errors.len(), 1, "{what}: one error line: {err}");
        assert!(
            errors[0].contains("the fix was applied") && errors[0].contains("persisting"),
            "{what}: {err}"
        );
        let meta_after = std::fs::symlink_metadata(path).unwrap();
        assert_eq!(meta_before.file_type(), meta_after.file_type(), "{what}");
        assert_eq!(meta_before.len(), meta_after.len(), "{what}");
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            cases.len() + 1,
            "{what}: no file created beside it"
        );
    }
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n");
    assert!(std::fs::read_dir(&sub).unwrap().next().is_none());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The text output says plainly that the fix is live and was not persisted.
#[test]
fn applied_then_persisting_failed_is_said_in_text_too() {
    if crate::common::no_sandboxes() {
        return;
    }
    let dir = common::temp_dir("apply-text");
    let sub = dir.join("sub.conf");
    std::fs::create_dir(&sub).unwrap();
    let o = output(&mut common::sandboxed(
        "40000-40009",
        &[
            "audit",
            "--ports",
            "40004",
            "--apply",
            "--persist",
            "--sysctl-file",
            sub.to_str().unwrap(),
        ],
    ));
    assert_eq!(o.status.code(), Some(2));
    let text = stdout(&o);
    assert!(
        text.contains("Applied: net.ipv4.ip_local_reserved_ports = 40004"),
        "{text}"
    );
    assert!(text.contains("NOT persisted"), "{text}");
    assert!(stderr(&o).contains("the fix was applied"), "{}", stderr(&o));
    std::fs::remove_dir_all(&dir).unwrap();
}
