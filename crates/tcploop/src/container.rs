//! What a user calls the owner of a socket: the container (and Kubernetes
//! pod) or the systemd service a process runs in, from its cgroup.
//!
//! Every container runtime puts each container's processes in a cgroup of
//! their own and names that cgroup after the container; systemd does the
//! same for each service. So `/proc/PID/cgroup`, which anyone can read for
//! any process, names the runtime and the container id:
//!
//! | runtime | cgroup path (systemd driver; cgroupfs driver) |
//! | --- | --- |
//! | Docker | `/system.slice/docker-ID.scope`; `/docker/ID` |
//! | containerd (Kubernetes CRI) | `/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-podUID.slice/cri-containerd-ID.scope`; `/kubepods/burstable/podUID/ID` |
//! | CRI-O | `.../kubepods-podUID.slice/crio-ID.scope` |
//! | Podman | `/machine.slice/libpod-ID.scope` (rootful), `/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-ID.scope` (rootless); `/libpod_parent/libpod-ID` |
//! | systemd-nspawn | `/machine.slice/systemd-nspawn@NAME.service/payload`, `/machine.slice/machine-NAME.scope` |
//! | LXC | `/lxc.payload.NAME`; `/lxc/NAME` |
//! | a systemd service | `/system.slice/NAME.service` |
//!
//! `/proc/PID/cgroup` has one line a hierarchy, `ID:CONTROLLERS:PATH`. On
//! cgroup v2 there is one, `0::PATH`; on v1 one a controller
//! (`4:memory:PATH`, `1:name=systemd:PATH`); a *hybrid* host has both (the v2
//! hierarchy mounted at `/sys/fs/cgroup/unified`, usually holding nothing
//! but the root). [`from_proc_cgroup`] looks at the v2 path first, then the
//! `name=systemd` one, then the others, and takes the first that names a
//! container; a systemd service only when no line names a container.
//!
//! A Kubernetes pod's UID is in the path (`podUID`, with `_` for `-` in
//! systemd slice names). The pod's name and namespace, and the container's
//! name, are not; the runtimes write them, with no network call needed, in
//! their state files: containerd and CRI-O in the container's OCI
//! `config.json` annotations, Docker in `config.v2.json`. [`of_pid`] reads
//! those where they exist (on the host, or mounted at the same paths into
//! the container tcploop runs in) and leaves the names absent otherwise.
//!
//! Everything but [`of_pid`] is pure and tested on fixture paths of each
//! runtime, in cgroup v1, v2 and hybrid layouts.

use std::path::PathBuf;

use serde::Deserialize;

/// Who made the cgroup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Runtime {
    /// Docker (moby), outside Kubernetes or through cri-dockerd.
    Docker,
    /// containerd, through Kubernetes' CRI plugin or nerdctl.
    Containerd,
    /// CRI-O.
    CriO,
    /// Podman (libpod), rootful or rootless.
    Podman,
    /// systemd-nspawn, or another machine registered with systemd-machined.
    Nspawn,
    /// LXC / LXD / Incus.
    Lxc,
    /// A Kubernetes pod's container whose runtime the path does not name
    /// (the kubelet's cgroupfs driver: `/kubepods/QOS/podUID/ID`) and whose
    /// state file was not found ([`of_pid`] names the runtime when it is).
    Kubernetes,
    /// A systemd service (no container).
    SystemdService,
}

impl Runtime {
    /// The name used in output and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Runtime::Docker => "docker",
            Runtime::Containerd => "containerd",
            Runtime::CriO => "cri-o",
            Runtime::Podman => "podman",
            Runtime::Nspawn => "nspawn",
            Runtime::Lxc => "lxc",
            Runtime::Kubernetes => "kubernetes",
            Runtime::SystemdService => "systemd-service",
        }
    }
}

impl std::fmt::Display for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A process's container (or service), as far as it is known.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Container {
    /// Who made it.
    pub runtime: Runtime,
    /// The container id (64 hex digits for the OCI runtimes), or the
    /// machine or unit name (nspawn, LXC, systemd services).
    pub id: String,
    /// The container's name, where the runtime's state files give it.
    pub name: Option<String>,
    /// The Kubernetes pod's UID, when the container belongs to a pod.
    pub pod_uid: Option<String>,
    /// The pod's name, where the runtime's state files give it.
    pub pod: Option<String>,
    /// The pod's Kubernetes namespace, where the state files give it.
    pub namespace: Option<String>,
}

impl Container {
    /// The id as people show it: the first 12 hex digits of a container id
    /// (as `docker ps` does), the full name otherwise.
    pub fn short_id(&self) -> &str {
        if is_container_id(&self.id) {
            &self.id[..12]
        } else {
            &self.id
        }
    }

    /// `runtime/name`, or `runtime/short-id` when the name is unknown:
    /// the value of the `container` metric label, and of human output.
    pub fn label(&self) -> String {
        format!(
            "{}/{}",
            self.runtime,
            self.name.as_deref().unwrap_or(self.short_id())
        )
    }

    /// `namespace/pod` when both are known, else the pod UID, else `None`
    /// (not in a pod): the value of the `pod` metric label.
    pub fn pod_label(&self) -> Option<String> {
        match (&self.namespace, &self.pod, &self.pod_uid) {
            (Some(ns), Some(p), _) => Some(format!("{ns}/{p}")),
            (None, Some(p), _) => Some(p.clone()),
            (_, None, Some(uid)) => Some(uid.clone()),
            _ => None,
        }
    }
}

/// A container id: 64 lower-case hex digits (Docker, containerd, CRI-O and
/// Podman all use them).
pub fn is_container_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The container (or systemd service) named by the text of
/// `/proc/PID/cgroup`, if any line names one. See the module docs for the
/// order in which the lines are looked at.
pub fn from_proc_cgroup(text: &str) -> Option<Container> {
    let mut lines: Vec<(u8, &str)> = text
        .lines()
        .filter_map(|l| {
            let mut it = l.splitn(3, ':');
            let (_, controllers, path) = (it.next()?, it.next()?, it.next()?);
            let rank = match controllers {
                "" => 0,
                "name=systemd" => 1,
                _ => 2,
            };
            Some((rank, path))
        })
        .collect();
    lines.sort_by_key(|&(rank, _)| rank);
    let mut service = None;
    for (_, path) in lines {
        match from_cgroup_path(path) {
            Some(c) if c.runtime == Runtime::SystemdService => {
                service.get_or_insert(c);
            }
            Some(c) => return Some(c),
            None => {}
        }
    }
    service
}

/// The container (or systemd service) one cgroup path names, if any.
pub fn from_cgroup_path(path: &str) -> Option<Container> {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let pod_uid = segs.iter().find_map(|s| pod_uid_of(s));
    let in_kubepods = segs
        .first()
        .is_some_and(|s| *s == "kubepods" || s.starts_with("kubepods."));
    for (i, seg) in segs.iter().enumerate().rev() {
        let parent = i.checked_sub(1).map(|p| segs[p]);
        if let Some((runtime, id)) = container_segment(seg, parent, in_kubepods) {
            return Some(Container {
                runtime,
                id,
                name: None,
                pod_uid: pod_uid.clone(),
                pod: None,
                namespace: None,
            });
        }
    }
    // No container: the innermost systemd service, if any (not the user
    // manager `user@UID.service`, which holds a user's whole session).
    segs.iter()
        .rev()
        .find(|s| s.ends_with(".service") && !s.starts_with("user@"))
        .map(|s| Container {
            runtime: Runtime::SystemdService,
            id: unescape_unit(s),
            name: None,
            pod_uid: None,
            pod: None,
            namespace: None,
        })
}

/// A path segment that names a container: the runtime and the id.
fn container_segment(
    seg: &str,
    parent: Option<&str>,
    in_kubepods: bool,
) -> Option<(Runtime, String)> {
    let stem = seg.strip_suffix(".scope").unwrap_or(seg);
    // Longest prefixes first: `crio-conmon-` is CRI-O's monitor process for
    // the container, `libpod-conmon-` Podman's; both are that container's.
    const PREFIXES: [(&str, Runtime); 7] = [
        ("cri-containerd-", Runtime::Containerd),
        ("crio-conmon-", Runtime::CriO),
        ("crio-", Runtime::CriO),
        ("libpod-conmon-", Runtime::Podman),
        ("libpod-", Runtime::Podman),
        ("docker-", Runtime::Docker),
        ("nerdctl-", Runtime::Containerd),
    ];
    for (prefix, runtime) in PREFIXES {
        if let Some(id) = stem.strip_prefix(prefix) {
            if is_container_id(id) {
                return Some((runtime, id.to_string()));
            }
        }
    }
    if is_container_id(seg) {
        let runtime = match parent {
            Some("docker") => Runtime::Docker,
            _ if in_kubepods => Runtime::Kubernetes,
            _ => return None,
        };
        return Some((runtime, seg.to_string()));
    }
    if let Some(name) = seg
        .strip_prefix("systemd-nspawn@")
        .and_then(|s| s.strip_suffix(".service"))
    {
        return Some((Runtime::Nspawn, unescape_unit(name)));
    }
    if let Some(name) = seg
        .strip_prefix("machine-")
        .and_then(|s| s.strip_suffix(".scope"))
    {
        // machined scopes of libpod containers are handled above.
        return Some((Runtime::Nspawn, unescape_unit(name)));
    }
    if let Some(name) = seg.strip_prefix("lxc.payload.") {
        return Some((Runtime::Lxc, name.to_string()));
    }
    if parent == Some("lxc") && !seg.starts_with("lxc.") {
        return Some((Runtime::Lxc, seg.to_string()));
    }
    None
}

/// The pod UID a kubelet path segment names: `pod<UID>` (cgroupfs driver)
/// or `kubepods-<qos>-pod<UID>.slice` with `_` for `-` (systemd driver).
fn pod_uid_of(seg: &str) -> Option<String> {
    let rest = match seg.strip_suffix(".slice") {
        Some(slice) => &slice[slice.rfind("-pod")? + 4..],
        None => seg.strip_prefix("pod")?,
    };
    let uid = rest.replace('_', "-");
    let ok = uid.len() == 36
        && uid.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_hexdigit(),
        });
    ok.then_some(uid)
}

/// systemd's escaping of unit names: `\x2d` for `-` and so on.
fn unescape_unit(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if let (b'\\', Some(b'x'), Some(&h), Some(&l)) =
            (b[i], b.get(i + 1), b.get(i + 2), b.get(i + 3))
        {
            if let (Some(h), Some(l)) = (hex(h), hex(l)) {
                out.push((h * 16 + l) as u8);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Names a runtime's state file gives.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Names {
    /// The container's name.
    pub name: Option<String>,
    /// The pod's name.
    pub pod: Option<String>,
    /// The pod's namespace.
    pub namespace: Option<String>,
    /// The pod's UID.
    pub pod_uid: Option<String>,
}

#[derive(Deserialize)]
struct OciConfig {
    #[serde(default)]
    annotations: std::collections::HashMap<String, String>,
}

/// The names in an OCI runtime `config.json`'s annotations, as containerd's
/// CRI plugin (`io.kubernetes.cri.*`) and CRI-O (`io.kubernetes.pod.*`,
/// `io.kubernetes.container.name`) write them. `None`: not such a file.
pub fn names_from_oci_config(json: &[u8]) -> Option<Names> {
    let c: OciConfig = serde_json::from_slice(json).ok()?;
    let get = |keys: &[&str]| {
        keys.iter()
            .find_map(|k| c.annotations.get(*k))
            .filter(|v| !v.is_empty())
            .cloned()
    };
    Some(Names {
        name: get(&[
            "io.kubernetes.cri.container-name",
            "io.kubernetes.container.name",
        ]),
        pod: get(&["io.kubernetes.cri.sandbox-name", "io.kubernetes.pod.name"]),
        namespace: get(&[
            "io.kubernetes.cri.sandbox-namespace",
            "io.kubernetes.pod.namespace",
        ]),
        pod_uid: get(&["io.kubernetes.cri.sandbox-uid", "io.kubernetes.pod.uid"]),
    })
}

#[derive(Deserialize)]
struct DockerConfig {
    #[serde(rename = "Name", default)]
    name: String,
    #[serde(rename = "Config", default)]
    config: Option<DockerInner>,
}

#[derive(Deserialize)]
struct DockerInner {
    #[serde(rename = "Labels", default)]
    labels: Option<std::collections::HashMap<String, String>>,
}

/// The names in Docker's `/var/lib/docker/containers/ID/config.v2.json`:
/// the container's name, and the pod's from the labels cri-dockerd sets.
pub fn names_from_docker_config(json: &[u8]) -> Option<Names> {
    let c: DockerConfig = serde_json::from_slice(json).ok()?;
    let labels = c.config.and_then(|c| c.labels).unwrap_or_default();
    let label = |k: &str| labels.get(k).filter(|v| !v.is_empty()).cloned();
    let name = label("io.kubernetes.container.name").or_else(|| {
        let n = c.name.trim_start_matches('/');
        (!n.is_empty()).then(|| n.to_string())
    });
    Some(Names {
        name,
        pod: label("io.kubernetes.pod.name"),
        namespace: label("io.kubernetes.pod.namespace"),
        pod_uid: label("io.kubernetes.pod.uid"),
    })
}

/// Where each runtime keeps the state file that names a container, in the
/// order they are tried.
pub fn state_files(c: &Container) -> Vec<(PathBuf, StateKind)> {
    let id = &c.id;
    match c.runtime {
        Runtime::Docker => vec![(
            PathBuf::from(format!("/var/lib/docker/containers/{id}/config.v2.json")),
            StateKind::Docker,
        )],
        Runtime::Containerd | Runtime::Kubernetes => {
            let mut v: Vec<(PathBuf, StateKind)> = ["k8s.io", "default"]
                .iter()
                .map(|ns| {
                    (
                        PathBuf::from(format!(
                            "/run/containerd/io.containerd.runtime.v2.task/{ns}/{id}/config.json"
                        )),
                        StateKind::Containerd,
                    )
                })
                .collect();
            if c.runtime == Runtime::Kubernetes {
                v.push((
                    PathBuf::from(format!(
                        "/run/containers/storage/overlay-containers/{id}/userdata/config.json"
                    )),
                    StateKind::Storage,
                ));
                v.push((
                    PathBuf::from(format!("/var/lib/docker/containers/{id}/config.v2.json")),
                    StateKind::Docker,
                ));
            }
            v
        }
        Runtime::CriO | Runtime::Podman => vec![(
            PathBuf::from(format!(
                "/run/containers/storage/overlay-containers/{id}/userdata/config.json"
            )),
            StateKind::Storage,
        )],
        Runtime::Nspawn | Runtime::Lxc | Runtime::SystemdService => vec![],
    }
}

/// The format of a state file, and the runtime that writes it there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateKind {
    /// An OCI runtime `config.json`, under containerd's state directory.
    Containerd,
    /// An OCI runtime `config.json`, under containers/storage (CRI-O, Podman).
    Storage,
    /// Docker's `config.v2.json`.
    Docker,
}

impl StateKind {
    /// The runtime a [`Runtime::Kubernetes`] container turns out to use
    /// when its state file is found here.
    pub fn runtime(self) -> Runtime {
        match self {
            StateKind::Containerd => Runtime::Containerd,
            StateKind::Storage => Runtime::CriO,
            StateKind::Docker => Runtime::Docker,
        }
    }
}

/// Fills in the names a state file gives (names already known are kept).
pub fn apply_names(c: &mut Container, n: Names) {
    c.name = c.name.take().or(n.name);
    c.pod = c.pod.take().or(n.pod);
    c.namespace = c.namespace.take().or(n.namespace);
    c.pod_uid = c.pod_uid.take().or(n.pod_uid);
}

/// The container (or systemd service) of a running process, with the
/// names its runtime's state files give; `None` when the process runs in
/// none (or has exited). Unreadable state files leave the names absent.
pub fn of_pid(pid: u32) -> Option<Container> {
    of_pid_in(pid, std::path::Path::new("/"))
}

/// [`of_pid`] with the runtimes' state files looked for under `root`
/// instead of `/` (where a host's directories are mounted elsewhere, and
/// for tests).
pub fn of_pid_in(pid: u32, root: &std::path::Path) -> Option<Container> {
    let text = crate::sys::cgroup::proc_cgroup(pid).ok()?;
    let mut c = from_proc_cgroup(&text)?;
    for (path, kind) in state_files(&c) {
        let path = root.join(path.strip_prefix("/").unwrap_or(&path));
        let Ok(Some(bytes)) = crate::sys::cgroup::state_file(&path) else {
            continue;
        };
        let names = match kind {
            StateKind::Containerd | StateKind::Storage => names_from_oci_config(&bytes),
            StateKind::Docker => names_from_docker_config(&bytes),
        };
        if let Some(n) = names {
            apply_names(&mut c, n);
            if c.runtime == Runtime::Kubernetes {
                c.runtime = kind.runtime();
            }
            break;
        }
    }
    Some(c)
}

/// [`of_pid`] for several processes, each looked up once.
pub fn of_pids(pids: impl IntoIterator<Item = u32>) -> std::collections::BTreeMap<u32, Container> {
    let mut out = std::collections::BTreeMap::new();
    for pid in pids {
        if let std::collections::btree_map::Entry::Vacant(e) = out.entry(pid) {
            if let Some(c) = of_pid(pid) {
                e.insert(c);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f4b9e6c1a2d4e5f60718293a4b5c6d7e8f90123456789abcdef0123456789ab";
    const UID: &str = "8d1c2f3a-4b5e-4c6d-9e0f-1a2b3c4d5e6f";
    const UID_: &str = "8d1c2f3a_4b5e_4c6d_9e0f_1a2b3c4d5e6f";

    fn one(text: &str) -> Container {
        from_proc_cgroup(text).unwrap_or_else(|| panic!("nothing found in {text:?}"))
    }

    /// A cgroup v1 file: every controller at `path`, `name=systemd` too.
    fn v1(path: &str) -> String {
        [
            "12:cpuset",
            "11:memory",
            "10:pids",
            "9:devices",
            "8:blkio",
            "7:cpu,cpuacct",
            "6:freezer",
            "5:net_cls,net_prio",
            "4:perf_event",
            "3:hugetlb",
            "2:rdma",
            "1:name=systemd",
        ]
        .iter()
        .map(|h| format!("{h}:{path}\n"))
        .collect()
    }

    /// A cgroup v2 file.
    fn v2(path: &str) -> String {
        format!("0::{path}\n")
    }

    /// A hybrid file: v1 controllers at `path`, the v2 hierarchy at `v2`.
    fn hybrid(path: &str, v2_path: &str) -> String {
        format!("{}0::{v2_path}\n", v1(path))
    }

    fn check(c: &Container, runtime: Runtime, id: &str, pod_uid: Option<&str>) {
        assert_eq!(c.runtime, runtime, "{c:?}");
        assert_eq!(c.id, id, "{c:?}");
        assert_eq!(c.pod_uid.as_deref(), pod_uid, "{c:?}");
    }

    #[test]
    fn docker_in_every_layout() {
        let systemd = format!("/system.slice/docker-{ID}.scope");
        let cgroupfs = format!("/docker/{ID}");
        for text in [
            v2(&systemd),
            v1(&systemd),
            v1(&cgroupfs),
            hybrid(&systemd, &systemd),
            // hybrid as systemd 239+ sets it up: v2 holds only the root
            hybrid(&cgroupfs, "/"),
        ] {
            check(&one(&text), Runtime::Docker, ID, None);
        }
        let c = one(&v2(&systemd));
        assert_eq!(c.short_id(), &ID[..12]);
        assert_eq!(c.label(), format!("docker/{}", &ID[..12]));
        assert_eq!(c.pod_label(), None);
    }

    #[test]
    fn kubernetes_containerd_cri_o_and_cgroupfs_pods() {
        let containerd = format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/cri-containerd-{ID}.scope"
        );
        let crio = format!("/kubepods.slice/kubepods-pod{UID_}.slice/crio-{ID}.scope");
        let crio_conmon =
            format!("/kubepods.slice/kubepods-pod{UID_}.slice/crio-conmon-{ID}.scope");
        let cgroupfs = format!("/kubepods/besteffort/pod{UID}/{ID}");
        let dockershim = format!(
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/docker-{ID}.scope"
        );
        for (path, rt) in [
            (&containerd, Runtime::Containerd),
            (&crio, Runtime::CriO),
            (&crio_conmon, Runtime::CriO),
            (&cgroupfs, Runtime::Kubernetes),
            (&dockershim, Runtime::Docker),
        ] {
            for text in [v2(path), v1(path), hybrid(path, "/")] {
                check(&one(&text), rt, ID, Some(UID));
            }
        }
        assert_eq!(one(&v2(&containerd)).pod_label().as_deref(), Some(UID));
    }

    #[test]
    fn podman_rootful_rootless_and_nested() {
        let rootful = format!("/machine.slice/libpod-{ID}.scope");
        let rootless =
            format!("/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope");
        // cgroup v2 with the container's processes one level down
        let nested = format!("/machine.slice/libpod-{ID}.scope/container");
        let conmon = format!("/machine.slice/libpod-conmon-{ID}.scope");
        let cgroupfs = format!("/libpod_parent/libpod-{ID}");
        for path in [&rootful, &rootless, &nested, &conmon] {
            check(&one(&v2(path)), Runtime::Podman, ID, None);
        }
        check(&one(&v1(&cgroupfs)), Runtime::Podman, ID, None);
        check(&one(&hybrid(&rootful, &rootful)), Runtime::Podman, ID, None);
    }

    #[test]
    fn nspawn_lxc_and_machines() {
        let c = one(&v2(
            "/machine.slice/systemd-nspawn@build\\x2dbox.service/payload",
        ));
        check(&c, Runtime::Nspawn, "build-box", None);
        assert_eq!(c.label(), "nspawn/build-box");
        check(
            &one(&v1("/machine.slice/machine-web.scope")),
            Runtime::Nspawn,
            "web",
            None,
        );
        check(
            &one(&v2("/lxc.payload.ci-runner")),
            Runtime::Lxc,
            "ci-runner",
            None,
        );
        check(&one(&v1("/lxc/ci-runner")), Runtime::Lxc, "ci-runner", None);
        // LXC's monitor process is not in the container
        assert_eq!(from_cgroup_path("/lxc.monitor.ci-runner"), None);
    }

    #[test]
    fn systemd_services_when_no_container() {
        for text in [
            v2("/system.slice/redis-server.service"),
            v1("/system.slice/redis-server.service"),
            hybrid(
                "/system.slice/redis-server.service",
                "/system.slice/redis-server.service",
            ),
        ] {
            check(
                &one(&text),
                Runtime::SystemdService,
                "redis-server.service",
                None,
            );
        }
        // a user's service, inside the user manager
        check(
            &one(&v2(
                "/user.slice/user-1000.slice/user@1000.service/app.slice/syncthing.service",
            )),
            Runtime::SystemdService,
            "syncthing.service",
            None,
        );
        // a container beats the service on another line (v1 docker, v2 unit)
        let mixed = format!(
            "{}0::/system.slice/docker.service\n",
            v1(&format!("/docker/{ID}"))
        );
        check(&one(&mixed), Runtime::Docker, ID, None);
    }

    #[test]
    fn nothing_for_host_processes_and_sessions() {
        for text in [
            v2("/"),
            v2("/init.scope"),
            v2("/user.slice/user-1000.slice/session-3.scope"),
            v2("/user.slice/user-1000.slice/user@1000.service/init.scope"),
            v1("/"),
            hybrid("/user.slice/user-0.slice/session-1.scope", "/"),
            // this project's CI machine: hybrid, one v1 controller moved
            "9:name=systemd:/\n4:memory:/process_api/bfca55c249fa253cef1f0ac5dc159a4d\n0::/\n"
                .into(),
            String::new(),
            "garbage\n".into(),
        ] {
            assert_eq!(from_proc_cgroup(&text), None, "{text:?}");
        }
        // a hex id that is too short, or under an unknown parent
        assert_eq!(from_cgroup_path("/docker/3f4b9e6c1a2d"), None);
        assert_eq!(from_cgroup_path(&format!("/somewhere/{ID}")), None);
    }

    #[test]
    fn odd_paths_never_panic() {
        for path in [
            "/machine.slice/systemd-nspawn@a\\x1é.service",
            "/machine.slice/machine-\\x.scope",
            "/machine.slice/machine-\\xzz\\x2d.scope",
            "/system.slice/\\x.service",
            "/kubepods/pod/é",
            "/kubepods.slice/kubepods-podé.slice/cri-containerd-é.scope",
            "////",
            ":::",
        ] {
            let _ = from_cgroup_path(path);
            let _ = from_proc_cgroup(&format!("0::{path}\n1:name=systemd:{path}\n"));
        }
        assert_eq!(unescape_unit("a\\x2db\\x"), "a-b\\x");
        assert_eq!(unescape_unit("\\x1é"), "\\x1é");
    }

    #[test]
    fn names_from_containerd_and_cri_o_configs() {
        let containerd = br#"{"ociVersion":"1.1.0","process":{},"annotations":{
            "io.kubernetes.cri.container-type":"container",
            "io.kubernetes.cri.container-name":"api",
            "io.kubernetes.cri.sandbox-name":"api-7d9f8b6c5-x2x9z",
            "io.kubernetes.cri.sandbox-namespace":"shop",
            "io.kubernetes.cri.sandbox-uid":"8d1c2f3a-4b5e-4c6d-9e0f-1a2b3c4d5e6f"}}"#;
        let n = names_from_oci_config(containerd).unwrap();
        assert_eq!(n.name.as_deref(), Some("api"));
        assert_eq!(n.pod.as_deref(), Some("api-7d9f8b6c5-x2x9z"));
        assert_eq!(n.namespace.as_deref(), Some("shop"));
        let crio = br#"{"annotations":{"io.kubernetes.container.name":"sidecar",
            "io.kubernetes.pod.name":"api-0","io.kubernetes.pod.namespace":"shop",
            "io.kubernetes.pod.uid":"8d1c2f3a-4b5e-4c6d-9e0f-1a2b3c4d5e6f"}}"#;
        let n = names_from_oci_config(crio).unwrap();
        assert_eq!(
            (n.name.as_deref(), n.pod.as_deref()),
            (Some("sidecar"), Some("api-0"))
        );
        // a plain OCI config (Docker's own, under containerd's moby namespace)
        assert_eq!(
            names_from_oci_config(br#"{"ociVersion":"1.1.0"}"#),
            Some(Names::default())
        );
        assert_eq!(names_from_oci_config(b"not json"), None);

        let mut c = from_cgroup_path(&format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/cri-containerd-{ID}.scope"
        ))
        .unwrap();
        apply_names(&mut c, names_from_oci_config(containerd).unwrap());
        assert_eq!(c.label(), "containerd/api");
        assert_eq!(c.pod_label().as_deref(), Some("shop/api-7d9f8b6c5-x2x9z"));
        assert_eq!(c.pod_uid.as_deref(), Some(UID));
    }

    #[test]
    fn names_from_docker_config() {
        let plain = br#"{"ID":"x","Name":"/redis-cache","Config":{"Labels":{}}}"#;
        let n = super::names_from_docker_config(plain).unwrap();
        assert_eq!(n.name.as_deref(), Some("redis-cache"));
        assert_eq!(n.pod, None);
        let k8s = br#"{"Name":"/k8s_api_api-0_shop_8d1c_0","Config":{"Labels":{
            "io.kubernetes.container.name":"api","io.kubernetes.pod.name":"api-0",
            "io.kubernetes.pod.namespace":"shop"}}}"#;
        let n = super::names_from_docker_config(k8s).unwrap();
        assert_eq!(n.name.as_deref(), Some("api"));
        assert_eq!(n.namespace.as_deref(), Some("shop"));
    }

    #[test]
    fn state_file_paths() {
        let c = from_cgroup_path(&format!("/system.slice/docker-{ID}.scope")).unwrap();
        assert_eq!(
            state_files(&c)[0].0,
            PathBuf::from(format!("/var/lib/docker/containers/{ID}/config.v2.json"))
        );
        let c = from_cgroup_path(&format!("/kubepods/burstable/pod{UID}/{ID}")).unwrap();
        assert_eq!(
            state_files(&c).len(),
            4,
            "the runtime is unknown: all are tried"
        );
        let c = from_cgroup_path("/system.slice/cron.service").unwrap();
        assert!(state_files(&c).is_empty());
    }
}
