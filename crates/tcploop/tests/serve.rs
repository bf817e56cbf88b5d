//! `watch --prometheus`: one slow or idle client cannot block the scrape.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::Reaped;
use crate::common::{self, Sandbox};

#[test]
fn a_scrape_answers_while_20_idle_clients_and_a_slowloris_are_connected() {
    scenario_slow_clients::run_ok(&Sandbox::range("40000-40999"));
}

scenario! {
    fn scenario_slow_clients(out) {
        let mut watch = Reaped(
            common::tcploop(&[
                "watch",
                "--json",
                "--interval",
                "100ms",
                "--prometheus",
                "127.0.0.1:0",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
        );
        let mut first = String::new();
        BufReader::new(watch.0.stdout.take().unwrap())
            .read_line(&mut first)
            .unwrap();
        let started: serde_json::Value = serde_json::from_str(&first).unwrap();
        let addr: SocketAddr = started["data"]["prometheus"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();

        // 20 clients that connect and send nothing
        let idle: Vec<TcpStream> = (0..20).map(|_| TcpStream::connect(addr).unwrap()).collect();
        // a slowloris: one byte of a request every 4 s, on a thread
        let mut slow = TcpStream::connect(addr).unwrap();
        let mut slow_w = slow.try_clone().unwrap();
        let trickle = std::thread::spawn(move || {
            for b in b"GET /metrics HTTP/1.1\r\n\r\n" {
                if slow_w.write_all(&[*b]).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_secs(4));
            }
        });
        std::thread::sleep(Duration::from_millis(200));

        // a real scrape, bounded at 1 s
        let url = format!("http://{addr}/metrics");
        let o = Command::new("curl")
            .args(["-sS", "--max-time", "1", &url])
            .output()
            .expect("curl");
        let body = String::from_utf8_lossy(&o.stdout);
        assert!(
            o.status.success(),
            "curl failed while slow clients were connected: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(body.contains("tcploop_scans_total "), "{body}");

        // The control: the idle clients were still connected during the scrape
        // (the server had not dropped them to make room).
        for s in &idle {
            s.set_nonblocking(true).unwrap();
            let mut b = [0u8; 1];
            let r = (&*s).read(&mut b);
            assert!(
                matches!(&r, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
                "an idle client was closed before its deadline: {r:?}"
            );
        }

        // The slowloris is cut off by the whole-request deadline (5 s), though
        // it keeps sending: it reads end-of-file with no answer.
        slow.set_read_timeout(Some(Duration::from_secs(15)))
            .unwrap();
        let t0 = Instant::now();
        let mut got = vec![];
        let r = slow.read_to_end(&mut got);
        assert!(r.is_ok(), "{r:?} after {:?}", t0.elapsed());
        assert!(got.is_empty(), "{}", String::from_utf8_lossy(&got));
        drop(slow);
        // the trickling thread ends at its next write (the socket is gone)
        drop(trickle);

        // 405 with Allow, and 400 for a malformed request line, from curl too
        let o = Command::new("curl")
            .args(["-sS", "-i", "--max-time", "2", "-X", "POST", &url])
            .output()
            .unwrap();
        let r = String::from_utf8_lossy(&o.stdout);
        assert!(r.starts_with("HTTP/1.1 405"), "{r}");
        assert!(r.contains("Allow: GET, HEAD"), "{r}");
        let mut bad = TcpStream::connect(addr).unwrap();
        bad.write_all(b"NOT A REQUEST\r\n\r\n").unwrap();
        let mut r = String::new();
        bad.read_to_string(&mut r).unwrap();
        assert!(r.starts_with("HTTP/1.1 400"), "{r}");

        // more connections than the cap: the extra ones get 503 at once
        let held: Vec<TcpStream> = (0..40).map(|_| TcpStream::connect(addr).unwrap()).collect();
        std::thread::sleep(Duration::from_millis(300));
        let mut busy = 0;
        for s in &held {
            s.set_nonblocking(true).unwrap();
            let mut b = [0u8; 12];
            if let Ok(n) = (&*s).read(&mut b) {
                if b[..n].starts_with(b"HTTP/1.1 503") {
                    busy += 1;
                }
            }
        }
        assert!(busy > 0, "no connection over the cap was refused");
        drop(idle);
        std::fs::write(out, "ok").unwrap();
    }
}
