//! Tests of what a fleet deploys: the man pages the package ships, the
//! systemd units, the Kubernetes manifests, the Prometheus rules and the
//! Grafana dashboard under `deploy/`, each checked with the tool that
//! reads it (promtool, systemd-analyze, a YAML parser) and against the
//! built binary (every command line in them is accepted by it).

use std::path::{Path, PathBuf};

use crate::common::Reaped;
use crate::common::{self, curl, prom_api, until, Sandbox};

/// The repository's `deploy/` directory.
fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy")
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
    let dir = common::temp_dir("deploy-man");
    let o = common::output(&mut common::tcploop(&[
        "completions",
        "man",
        "--dir",
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
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Whether the built binary accepts this command line: clap parses every
/// argument (names and values) before it acts on a trailing `--help`, so
/// an unknown flag or a bad value fails and a good line prints help.
fn assert_accepted(line: &[String], source: &str) {
    assert_eq!(
        line.first().map(String::as_str),
        Some("tcploop"),
        "{source}: {line:?}"
    );
    let mut c = common::tcploop(&[]);
    c.args(&line[1..]).arg("--help");
    let o = common::output(&mut c);
    assert!(
        o.status.success(),
        "{source}: the binary refuses {line:?}: {}",
        common::stderr(&o)
    );
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
    let dir = common::temp_dir("deploy-units");
    for name in ["tcploop-watch.service", "tcploop-shield.service"] {
        let text = std::fs::read_to_string(deploy().join("systemd").join(name)).unwrap();
        let mut line = exec_start(&text);
        assert_eq!(line[0], "/usr/bin/tcploop", "{name}");
        line[0] = "tcploop".into();
        assert_accepted(&line, name);
        for key in [
            "CapabilityBoundingSet=",
            "NoNewPrivileges=yes",
            "ProtectSystem=strict",
        ] {
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
        let o = common::output(
            std::process::Command::new("systemd-analyze")
                .arg("verify")
                .arg(&path),
        );
        let said = format!("{}{}", common::stdout(&o), common::stderr(&o));
        assert!(
            o.status.success() && said.trim().is_empty(),
            "{name}: {said}"
        );
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
    let o = common::output(
        std::process::Command::new("systemd-analyze")
            .arg("verify")
            .arg(&bad),
    );
    assert!(
        !common::stderr(&o).trim().is_empty(),
        "systemd-analyze saw nothing wrong in a bad unit"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn alert_rules_check_and_pass_their_unit_tests() {
    let dir = deploy().join("prometheus");
    let o = common::output(
        std::process::Command::new("promtool")
            .args(["check", "rules", "tcploop-alerts.yml"])
            .current_dir(&dir),
    );
    assert!(
        o.status.success(),
        "{}{}",
        common::stdout(&o),
        common::stderr(&o)
    );
    let o = common::output(
        std::process::Command::new("promtool")
            .args(["test", "rules", "tcploop-alerts.test.yml"])
            .current_dir(&dir),
    );
    assert!(
        o.status.success(),
        "{}{}",
        common::stdout(&o),
        common::stderr(&o)
    );
    // The control: the same tests fail against a rule that never fires.
    let tmp = common::temp_dir("deploy-rules");
    let rules = std::fs::read_to_string(dir.join("tcploop-alerts.yml")).unwrap();
    let broken = rules.replace(
        "max by (instance) (tcploop_loops_present) > 0",
        "max by (instance) (tcploop_loops_present) > 1",
    );
    assert_ne!(broken, rules);
    std::fs::write(tmp.join("tcploop-alerts.yml"), broken).unwrap();
    std::fs::copy(
        dir.join("tcploop-alerts.test.yml"),
        tmp.join("tcploop-alerts.test.yml"),
    )
    .unwrap();
    let o = common::output(
        std::process::Command::new("promtool")
            .args(["test", "rules", "tcploop-alerts.test.yml"])
            .current_dir(&tmp),
    );
    assert!(!o.status.success(), "the unit tests pass a broken rule");
    std::fs::remove_dir_all(&tmp).unwrap();
}

/// Every PromQL query of the dashboard: its panels' targets and its
/// template variables.
fn dashboard_queries() -> Vec<String> {
    let text = std::fs::read_to_string(deploy().join("grafana/tcploop-dashboard.json")).unwrap();
    let d: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut q = vec![];
    for p in d["panels"].as_array().unwrap() {
        let targets = p["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "panel {} has no query", p["title"]);
        for t in targets {
            q.push(t["expr"].as_str().unwrap().to_string());
        }
    }
    for v in d["templating"]["list"].as_array().unwrap() {
        if let Some(def) = v["definition"].as_str() {
            q.push(def.to_string());
        }
    }
    q
}

/// The `tcploop_*` metric names a query uses.
fn tcploop_metrics(query: &str) -> Vec<String> {
    let mut names = vec![];
    let mut rest = query;
    while let Some(i) = rest.find("tcploop_") {
        let name: String = rest[i..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[i + name.len()..];
        names.push(name);
    }
    names
}

/// The sample names of a classic-format /metrics page.
fn page_metrics(page: &str) -> std::collections::BTreeSet<String> {
    page.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap().to_string())
        .collect()
}

const ENV_CGROUP: &str = "TCPLOOP_TEST_CGROUP";

#[test]
fn dashboard_and_alerts_work_against_a_real_watch_and_prometheus() {
    let mount = common::cgroup2_mount();
    if common::skip_unless(
        common::is_root() && mount.is_some(),
        "dashboard_and_alerts_work_against_a_real_watch_and_prometheus",
        "root and a cgroup v2 hierarchy (the loop's owner runs in a docker-named cgroup)",
    ) {
        return;
    }
    let (cg, _id) = common::Cgroup::docker(&mount.unwrap(), 1);
    let envs = [(ENV_CGROUP, cg.0.to_str().unwrap())];
    let sandbox = Sandbox::range("40000-40009").envs(&envs);
    scenario_dashboard_and_alerts::run_ok(&sandbox);
}

/// The dashboard's panels of the shield daemon (`tcploop_shield_*`): not
/// served by `watch`, so scraped from a shield daemon, and checked against
/// the daemon's code too.
fn is_shield_query(q: &str) -> bool {
    q.contains("tcploop_shield_")
}

scenario! {
    fn scenario_dashboard_and_alerts(out) {
        let dir = common::temp_dir("deploy");
        let cgroup = PathBuf::from(std::env::var_os(ENV_CGROUP).unwrap());
        // An exposed listener (in the range, not reserved) and the watcher.
        let _service = std::net::TcpListener::bind("127.0.0.1:40001").unwrap();
        let _watch = Reaped(
            common::tcploop(&[
                "watch",
                "--all-netns",
                "--interval",
                "200ms",
                "--prometheus",
                "127.0.0.1:9977",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
        );
        until("the watch serves /metrics", || {
            curl(&["http://127.0.0.1:9977/metrics"])
        });
        let (_prometheus, web) = common::prometheus(
            &dir,
            &format!(
                "global:\n  scrape_interval: 500ms\n  scrape_timeout: 500ms\n  evaluation_interval: 500ms\n\
                 rule_files:\n  - {}\n\
                 scrape_configs:\n  - job_name: tcploop\n    static_configs:\n      - targets: ['127.0.0.1:9977']\n\
                 \x20 - job_name: tcploop-shield\n    static_configs:\n      - targets: ['127.0.0.1:9978']\n",
                deploy().join("prometheus/tcploop-alerts.yml").display()
            ),
        );

        // A loop, made as a plain client would, in a namespace of its own, by
        // a process in a docker-named cgroup; kept until the end.
        let looped = spawn_looper(Some(&cgroup));
        // The shield daemon, for its panels, once the loop is there (it would
        // refuse it afterwards); in the sandbox it covers the sandbox's
        // namespaces only, with its iptables mechanism.
        let _shield = Reaped(
            common::tcploop(&["shield", "daemon", "--prometheus", "127.0.0.1:9978"])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap(),
        );

        // Every metric the dashboard names is on the real page.
        let page = until("the loop on /metrics", || {
            curl(&["http://127.0.0.1:9977/metrics"])
                .filter(|p| p.contains("\ntcploop_loops_present 1\n"))
        });
        let exported = page_metrics(&page);
        let (shield, queries): (Vec<String>, Vec<String>) = dashboard_queries()
            .into_iter()
            .partition(|q| is_shield_query(q));
        assert!(!shield.is_empty());
        let daemon = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/shield_daemon.rs");
        let code = std::fs::read_to_string(&daemon).unwrap();
        for q in &shield {
            for n in tcploop_metrics(q) {
                let family = n.strip_suffix("_total").unwrap_or(&n);
                assert!(
                    code.contains(family),
                    "{q}: {n} is not in {}",
                    daemon.display()
                );
            }
        }
        for q in &queries {
            let names = tcploop_metrics(q);
            assert!(
                !names.is_empty(),
                "a dashboard query names no tcploop metric: {q}"
            );
            for n in names {
                assert!(
                    exported.contains(&n),
                    "dashboard query {q} names {n}, not exported: {exported:?}"
                );
            }
        }
        // ... and every panel has data once Prometheus has scraped a few times
        // (the shield's too: its daemon runs here).
        for q in queries.iter().chain(&shield) {
            let promql = q
                .replace("$instance", ".*")
                .replace("$__rate_interval", "2s");
            if promql.starts_with("label_values(") {
                let metric = promql
                    .trim_start_matches("label_values(")
                    .split(',')
                    .next()
                    .unwrap()
                    .to_string();
                until(&format!("{q} has values"), || {
                    prom_api(web, "/api/v1/query", Some(&metric))
                        .filter(|d| d["result"][0]["metric"]["instance"].is_string())
                });
                continue;
            }
            until(&format!("the dashboard's query {q} has data"), || {
                prom_api(web, "/api/v1/query", Some(&promql))
                    .filter(|d| d["result"].as_array().is_some_and(|r| !r.is_empty()))
            });
        }

        // The rules load, evaluate without error, and the loop alert goes
        // pending (its `for: 1m` is longer than this test waits).
        let alerts = until("TcploopLoopPresent pending", || {
            prom_api(web, "/api/v1/alerts", None).filter(|d| {
                d["alerts"].as_array().is_some_and(|a| {
                    a.iter()
                        .any(|x| x["labels"]["alertname"] == "TcploopLoopPresent")
                })
            })
        });
        let a = alerts["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["labels"]["alertname"] == "TcploopLoopPresent")
            .unwrap();
        assert_eq!(a["state"], "pending", "{a}");
        assert_eq!(a["labels"]["instance"], "127.0.0.1:9977", "{a}");
        // The loop is named by its container and namespace in Prometheus.
        let by_container = until("the loop's series with its container", || {
            prom_api(
                web,
                "/api/v1/query",
                Some("tcploop_loops{container=~\"docker/.+\"}"),
            )
            .filter(|d| d["result"].as_array().is_some_and(|r| !r.is_empty()))
        });
        assert_eq!(by_container["result"][0]["value"][1], "1", "{by_container}");
        assert!(
            by_container["result"][0]["metric"]["netns"].is_string(),
            "{by_container}"
        );
        let rules = until("the rules evaluated", || {
            prom_api(web, "/api/v1/rules", None).filter(|d| {
                d["groups"][0]["rules"]
                    .as_array()
                    .is_some_and(|r| r.iter().all(|r| r["health"] != "unknown"))
            })
        });
        let all: Vec<&serde_json::Value> = rules["groups"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|g| g["rules"].as_array().unwrap())
            .collect();
        assert_eq!(all.len(), 9, "{rules}");
        for r in all {
            assert_eq!(
                r["health"], "ok",
                "rule {} evaluates with an error: {r}",
                r["name"]
            );
        }
        drop(looped);
        std::fs::write(out, "ok").unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// A process in a network namespace of its own (made by `unshare -n`
/// inside the test's sandbox) that brings `lo` up, narrows the port range
/// and connects to itself, then holds the loop until its stdin closes.
fn spawn_looper(cgroup: Option<&Path>) -> Reaped {
    let script = "import socket,sys\n\
        for i in range(5000):\n\
        \x20   s=socket.socket()\n\
        \x20   try: s.connect(('127.0.0.1',40004))\n\
        \x20   except OSError: continue\n\
        \x20   if s.getsockname()==s.getpeername(): break\n\
        else: sys.exit('no loop')\n\
        print('looped', flush=True)\n\
        sys.stdin.read()\n";
    let child = std::process::Command::new("unshare")
        .args([
            "-n",
            "sh",
            "-c",
            "if [ -n \"$1\" ]; then echo $$ > \"$1/cgroup.procs\"; fi && \
             ip link set lo up && echo '40000 40009' > /proc/sys/net/ipv4/ip_local_port_range && \
             exec python3 -c \"$0\"",
        ])
        .arg(script)
        .arg(cgroup.map(|p| p.as_os_str().to_owned()).unwrap_or_default())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("unshare (util-linux) and python3");
    let mut r = Reaped(child);
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(r.0.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line, "looped\n", "the looper failed");
    r
}

#[test]
fn watch_all_netns_follows_namespaces_that_come_and_go() {
    scenario_watch_all_netns::run_ok(&Sandbox::range("40000-40009"));
}

scenario! {
    fn scenario_watch_all_netns(out) {
        use crate::common::{spawn_watch, wait_for};
        // The textfile is written after each scan: once it exists, the first
        // scan (which reports no appearance, only what is there) is done.
        let textfile = out.with_extension("prom");
        let _ = std::fs::remove_file(&textfile);
        let (_watch, rx) = spawn_watch(&[
            "watch",
            "--all-netns",
            "--json",
            "--interval",
            "100ms",
            "--textfile",
            textfile.to_str().unwrap(),
        ]);
        wait_for(&rx, "watch_started");
        until("the first scan", || textfile.exists().then_some(()));
        // A namespace that appears after the watch started, with a loop in it.
        let mut looper = spawn_looper(None);
        let pid = looper.0.id();
        let ino = std::fs::metadata(format!("/proc/{pid}/ns/net"))
            .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
            .unwrap();
        let appeared = until("its netns_appeared", || {
            rx.recv_timeout(std::time::Duration::from_secs(20))
                .ok()
                .filter(|v| v["type"] == "netns_appeared" && v["data"]["netns"]["inode"] == ino)
        });
        assert_eq!(appeared["data"]["netns"]["pid"], pid, "{appeared}");
        let ev = wait_for(&rx, "loop_appeared");
        assert_eq!(ev["local"], "127.0.0.1:40004", "{ev}");
        assert_eq!(ev["netns"]["inode"], ino, "{ev}");
        assert_eq!(ev["owners"][0]["command"], "python3", "{ev}");
        assert_eq!(ev["owners"][0]["pid"], pid, "{ev}");

        // The control: a watch of its own namespace only does not see it.
        let o = common::output(&mut common::tcploop(&["watch", "--json", "--count", "1"]));
        let own = common::json_lines(&o);
        assert!(
            !own.iter().any(|l| l["type"] == "loop_appeared"),
            "without --all-netns: {own:?}"
        );

        // The capabilities of tcploop-watch.service are enough (the loop is
        // found, owner included), and the one that setns(2) asks for is needed.
        let unit = std::fs::read_to_string(deploy().join("systemd/tcploop-watch.service")).unwrap();
        let caps: Vec<String> = unit
            .lines()
            .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
            .unwrap()
            .split_whitespace()
            .map(|c| c.trim_start_matches("CAP_").to_lowercase())
            .collect();
        let with_caps = |caps: &[String]| {
            let set: String = std::iter::once("-all".to_string())
                .chain(caps.iter().map(|c| format!("+{c}")))
                .collect::<Vec<_>>()
                .join(",");
            let o = common::output(
                std::process::Command::new("setpriv")
                    .args(["--bounding-set", &set, "--no-new-privs", "--"])
                    .arg(common::bin())
                    .args(["watch", "--all-netns", "--json", "--count", "1"]),
            );
            assert!(o.status.success(), "{}", common::stderr(&o));
            common::json_lines(&o)
        };
        let full = with_caps(&caps);
        let found = full
            .iter()
            .find(|l| l["type"] == "loop_appeared" && l["data"]["netns"]["inode"] == ino)
            .unwrap_or_else(|| panic!("with the unit's capabilities {caps:?}: {full:?}"));
        assert_eq!(found["data"]["owners"][0]["command"], "python3", "{found}");
        let less: Vec<String> = caps.iter().filter(|c| *c != "sys_admin").cloned().collect();
        let without = with_caps(&less);
        assert!(
            !without.iter().any(|l| l["type"] == "loop_appeared"),
            "without CAP_SYS_ADMIN: {without:?}"
        );
        assert!(
            without
                .iter()
                .any(|l| l["type"] == "netns_skipped" && l["data"]["netns"]["inode"] == ino),
            "without CAP_SYS_ADMIN the namespace is skipped, and said so: {without:?}"
        );

        // The namespace goes: the loop and the namespace are reported gone.
        drop(looper.0.stdin.take());
        let _ = looper.0.wait();
        let gone = wait_for(&rx, "loop_gone");
        assert_eq!(gone["netns"]["inode"], ino, "{gone}");
        let ns_gone = until("its netns_gone", || {
            rx.recv_timeout(std::time::Duration::from_secs(20))
                .ok()
                .filter(|v| v["type"] == "netns_gone" && v["data"]["netns"]["inode"] == ino)
        });
        assert_eq!(ns_gone["data"]["netns"]["pid"], pid);
        let _ = std::fs::remove_file(&textfile);
        std::fs::write(out, "ok").unwrap();
    }
}

/// Every YAML document of a file, as JSON values (PyYAML, Debian's
/// python3-yaml, does the parsing).
fn yaml_docs(path: &Path) -> Vec<serde_json::Value> {
    let o = common::output(std::process::Command::new("python3").args([
        "-c",
        "import json,sys,yaml; json.dump(list(yaml.safe_load_all(open(sys.argv[1]))), sys.stdout)",
        path.to_str().unwrap(),
    ]));
    assert!(
        o.status.success(),
        "{} does not parse as YAML (python3-yaml must be installed): {}",
        path.display(),
        common::stderr(&o)
    );
    serde_json::from_slice(&o.stdout).unwrap()
}

#[test]
fn the_daemonset_parses_is_confined_and_its_command_line_is_accepted() {
    let docs = yaml_docs(&deploy().join("kubernetes/tcploop-daemonset.yaml"));
    let kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["Namespace", "DaemonSet"]);
    let ds = &docs[1];
    let pod = &ds["spec"]["template"];
    assert_eq!(
        ds["spec"]["selector"]["matchLabels"], pod["metadata"]["labels"],
        "the selector selects the pods"
    );
    let spec = &pod["spec"];
    assert_eq!(
        spec["hostPID"], true,
        "every process and its namespace are seen"
    );
    assert_eq!(spec["automountServiceAccountToken"], false);
    let c = &spec["containers"][0];
    assert_confined_like(c, "tcploop-watch.service");
    for k in ["cpu", "memory"] {
        assert!(c["resources"]["limits"][k].is_string(), "a {k} limit");
        assert!(c["resources"]["requests"][k].is_string(), "a {k} request");
    }
    // The command line, with Kubernetes' $(VAR) expansion done.
    let env: Vec<&str> = c["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    let mut line = vec!["tcploop".to_string()];
    for a in c["args"].as_array().unwrap() {
        let a = a.as_str().unwrap();
        if let Some(var) = a.strip_prefix("$(").and_then(|r| r.split_once(')')) {
            assert!(env.contains(&var.0), "{a}: {} is not in env", var.0);
        }
        line.push(a.replace("$(NODE_IP)", "127.0.0.1"));
    }
    assert!(line.contains(&"--all-netns".to_string()), "{line:?}");
    assert_accepted(&line, "tcploop-daemonset.yaml");
    // Prometheus finds it where it listens.
    let ann = &pod["metadata"]["annotations"];
    assert_eq!(ann["prometheus.io/scrape"], "true");
    let port = ann["prometheus.io/port"].as_str().unwrap();
    let listen = line
        .iter()
        .skip_while(|a| *a != "--prometheus")
        .nth(1)
        .unwrap();
    assert!(
        listen.ends_with(&format!(":{port}")),
        "{listen} vs port {port}"
    );
    assert_eq!(c["ports"][0]["containerPort"].to_string(), port);

    let scrape = yaml_docs(&deploy().join("prometheus/kubernetes-scrape.yml"));
    let job = &scrape[0]["scrape_configs"][0];
    assert_eq!(
        job["kubernetes_sd_configs"][0]["namespaces"]["names"][0],
        "tcploop"
    );
    // the jobs the alert rules name: tcploop, and tcploop-shield for the shield's pods
    let jobs: Vec<&str> = job["relabel_configs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["target_label"] == "job")
        .map(|r| r["replacement"].as_str().unwrap())
        .collect();
    assert_eq!(jobs, ["tcploop", "tcploop-shield"]);
    assert_eq!(docs[0]["metadata"]["name"], "tcploop");
}

#[test]
fn the_image_command_line_is_accepted_and_prometheus_config_checks() {
    let text = std::fs::read_to_string(deploy().join("container/Dockerfile")).unwrap();
    let json_of = |word: &str| -> Vec<String> {
        let line = text
            .lines()
            .rev()
            .find_map(|l| l.strip_prefix(word))
            .unwrap_or_else(|| panic!("no {word}"));
        serde_json::from_str(line.trim()).unwrap()
    };
    let mut line = json_of("ENTRYPOINT ");
    assert_eq!(line, ["/usr/bin/tcploop"]);
    line[0] = "tcploop".into();
    line.extend(json_of("CMD "));
    assert_accepted(&line, "Dockerfile");
    let o = common::output(
        std::process::Command::new("promtool")
            .args(["check", "config", "prometheus.yml"])
            .current_dir(deploy().join("prometheus")),
    );
    assert!(
        o.status.success(),
        "{}{}",
        common::stdout(&o),
        common::stderr(&o)
    );
}

#[test]
fn audit_emit_prints_one_reservation_for_a_pod_a_container_and_a_host() {
    if crate::common::no_sandboxes() {
        return;
    }
    let emit = |format: &str| {
        let o = common::output(&mut common::sandboxed(
            "40000-40009",
            &["audit", "--ports", "40004,40005", "--emit", format],
        ));
        assert_eq!(o.status.code(), Some(0), "{}", common::stderr(&o));
        common::stdout(&o)
    };
    let dir = common::temp_dir("deploy-emit");
    let k8s = dir.join("pod.yaml");
    std::fs::write(&k8s, emit("k8s")).unwrap();
    let pod = yaml_docs(&k8s);
    let sysctl = &pod[0]["securityContext"]["sysctls"][0];
    assert_eq!(sysctl["name"], "net.ipv4.ip_local_reserved_ports");
    let value = sysctl["value"].as_str().unwrap().to_string();
    assert_eq!(value, "40004-40005");
    assert_eq!(
        emit("docker"),
        format!("--sysctl net.ipv4.ip_local_reserved_ports={value}\n")
    );
    assert!(emit("sysctl").ends_with(&format!("net.ipv4.ip_local_reserved_ports = {value}\n")));
    // The value fixes it: set as a runtime would, the audit finds nothing
    // exposed any more; the control, unset, it does.
    let audit_after = |set: bool| {
        let script = format!(
            "{} sysctl -q -w net.ipv4.ip_local_reserved_ports={value}; {} audit --ports 40004,40005",
            if set { "" } else { ":" },
            common::bin().display()
        );
        let o = common::output(&mut Sandbox::range("40000-40009").sh(&script));
        o.status.code()
    };
    assert_eq!(audit_after(true), Some(0));
    assert_eq!(audit_after(false), Some(1));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_dashboard_is_well_formed() {
    let text = std::fs::read_to_string(deploy().join("grafana/tcploop-dashboard.json")).unwrap();
    let d: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(d["uid"], "tcploop");
    let panels = d["panels"].as_array().unwrap();
    let mut ids: Vec<u64> = panels.iter().map(|p| p["id"].as_u64().unwrap()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), panels.len(), "panel ids are unique");
    // No two panels overlap on Grafana's 24-column grid.
    let rect = |p: &serde_json::Value| {
        let g = &p["gridPos"];
        let n = |k: &str| g[k].as_u64().unwrap();
        (n("x"), n("y"), n("w"), n("h"))
    };
    for (i, a) in panels.iter().enumerate() {
        let (ax, ay, aw, ah) = rect(a);
        assert!(ax + aw <= 24, "{} is wider than the grid", a["title"]);
        for b in &panels[i + 1..] {
            let (bx, by, bw, bh) = rect(b);
            let apart = ax + aw <= bx || bx + bw <= ax || ay + ah <= by || by + bh <= ay;
            assert!(apart, "{} and {} overlap", a["title"], b["title"]);
        }
        // every query uses the dashboard's data source variable
        for t in a["targets"].as_array().unwrap() {
            assert_eq!(t["datasource"]["uid"], "${datasource}", "{}", a["title"]);
        }
    }
}

/// The whole alerting path with the shipped rules: a real watch, a real
/// Prometheus evaluating `deploy/prometheus/tcploop-alerts.yml`, a real
/// Alertmanager, and a webhook receiver that writes what it gets. Five
/// loops form one after the other (each seen by the watch and scraped
/// before the next): `TcploopLoopsForming` (3 or more in 15 minutes, no
/// `for`) fires and is delivered.
#[test]
fn an_alert_reaches_alertmanager_and_its_receiver() {
    scenario_alertmanager::run_ok(&Sandbox::range("40000-40009"));
}

scenario! {
    fn scenario_alertmanager(out) {
        use crate::common::{spawn_watch, wait_for};
        use common::make_loop;
        let dir = common::temp_dir("am");
        let (_watch, rx) = spawn_watch(&[
            "watch",
            "--json",
            "--interval",
            "100ms",
            "--prometheus",
            "127.0.0.1:9977",
        ]);
        wait_for(&rx, "watch_started");

        // The receiver: every POST body appended to a file.
        let received = dir.join("received.json");
        let _hook = Reaped(
            std::process::Command::new("python3")
                .args([
                    "-c",
                    include_str!("fixtures/deploy_webhook.py"),
                ])
                .arg(&received)
                .spawn()
                .expect("python3"),
        );
        let am_config = dir.join("alertmanager.yml");
        std::fs::write(
            &am_config,
            "route:\n  receiver: hook\n  group_wait: 0s\n  group_interval: 1s\n  repeat_interval: 1h\n\
             receivers:\n  - name: hook\n    webhook_configs:\n      - url: http://127.0.0.1:5001/\n",
        )
        .unwrap();
        let _alertmanager = Reaped(
            std::process::Command::new("prometheus-alertmanager")
                .arg(format!("--config.file={}", am_config.display()))
                .arg(format!("--storage.path={}", dir.join("am").display()))
                .args([
                    "--web.listen-address=127.0.0.1:9093",
                    "--cluster.listen-address=",
                ])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("prometheus-alertmanager (Debian package prometheus-alertmanager)"),
        );
        let (_prometheus, web) = common::prometheus(
            &dir,
            &format!(
                "global:\n  scrape_interval: 500ms\n  scrape_timeout: 500ms\n  evaluation_interval: 500ms\n\
                 alerting:\n  alertmanagers:\n    - static_configs:\n        - targets: ['127.0.0.1:9093']\n\
                 rule_files:\n  - {}\n\
                 scrape_configs:\n  - job_name: tcploop\n    static_configs:\n      - targets: ['127.0.0.1:9977']\n",
                deploy().join("prometheus/tcploop-alerts.yml").display()
            ),
        );
        until("Prometheus scrapes the watch", || {
            prom_api(web, "/api/v1/query", Some("up{job=\"tcploop\"} == 1"))
                .filter(|d| d["result"].as_array().is_some_and(|r| !r.is_empty()))
        });

        // Five loops, one after the other, each seen and scraped.
        for i in 1..=5u32 {
            let s = make_loop("127.0.0.1", 40004);
            wait_for(&rx, "loop_appeared");
            socket2::SockRef::from(&s)
                .set_linger(Some(std::time::Duration::ZERO))
                .unwrap();
            drop(s);
            wait_for(&rx, "loop_gone");
            until(&format!("loop {i} scraped"), || {
                prom_api(web, "/api/v1/query", Some("sum(tcploop_loops_seen_total)"))
                    .filter(|d| d["result"][0]["value"][1].as_str() == Some(i.to_string().as_str()))
            });
        }

        // Delivered (that fewer than 3 loops do not fire is the control of the
        // rule's unit tests, alert_rules_check_and_pass_their_unit_tests).
        let body = until("TcploopLoopsForming delivered to the receiver", || {
            std::fs::read_to_string(&received)
                .ok()
                .filter(|t| t.contains("TcploopLoopsForming"))
        });
        let payload: serde_json::Value = body
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| v.to_string().contains("TcploopLoopsForming"))
            .unwrap();
        let alert = payload["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["labels"]["alertname"] == "TcploopLoopsForming")
            .unwrap();
        assert_eq!(alert["status"], "firing", "{payload}");
        assert_eq!(alert["labels"]["instance"], "127.0.0.1:9977", "{payload}");
        assert_eq!(alert["labels"]["severity"], "warning", "{payload}");
        assert!(
            alert["annotations"]["summary"]
                .as_str()
                .unwrap()
                .contains("TCP loops keep forming"),
            "{payload}"
        );
        std::fs::write(out, "ok").unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// A DaemonSet's container is confined as its systemd `unit` is: no
/// privilege escalation, a read-only root, not privileged, every capability
/// dropped but the unit's own.
fn assert_confined_like(c: &serde_json::Value, unit: &str) {
    let sc = &c["securityContext"];
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["privileged"], false);
    assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
    let mut add: Vec<String> = sc["capabilities"]["add"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    add.sort();
    assert_eq!(
        add,
        unit_caps(unit),
        "the same capabilities as the systemd unit"
    );
}

/// The capabilities of a systemd unit of deploy/systemd, as Kubernetes
/// names them.
fn unit_caps(unit: &str) -> Vec<String> {
    let text = std::fs::read_to_string(deploy().join("systemd").join(unit)).unwrap();
    let mut caps: Vec<String> = text
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .unwrap()
        .split_whitespace()
        .map(|c| c.trim_start_matches("CAP_").to_string())
        .collect();
    caps.sort();
    caps
}

#[test]
fn the_shield_daemonset_is_confined_like_its_unit() {
    let docs = yaml_docs(&deploy().join("kubernetes/tcploop-shield-daemonset.yaml"));
    assert_eq!(docs.len(), 1);
    let ds = &docs[0];
    assert_eq!(ds["kind"], "DaemonSet");
    assert_eq!(ds["metadata"]["namespace"], "tcploop");
    let pod = &ds["spec"]["template"];
    assert_eq!(
        ds["spec"]["selector"]["matchLabels"],
        pod["metadata"]["labels"]
    );
    let spec = &pod["spec"];
    assert_eq!(spec["hostPID"], true);
    assert_eq!(
        spec["hostNetwork"], true,
        "the node's own lo is shielded too"
    );
    let c = &spec["containers"][0];
    assert_confined_like(c, "tcploop-shield.service");
    assert!(c["resources"]["limits"]["memory"].is_string());
    let mounts: Vec<&str> = c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["mountPath"].as_str().unwrap())
        .collect();
    assert!(mounts.contains(&"/sys/fs/bpf"), "{mounts:?}");
    let mut line = vec!["tcploop".to_string()];
    for a in c["args"].as_array().unwrap() {
        line.push(a.as_str().unwrap().replace("$(NODE_IP)", "127.0.0.1"));
    }
    assert_eq!(line[1..3], ["shield", "daemon"]);
    assert_accepted(&line, "tcploop-shield-daemonset.yaml");
    assert_eq!(pod["metadata"]["annotations"]["prometheus.io/port"], "9978");
}
