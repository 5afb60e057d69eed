//! `weir lab serve`: the pod's "containers". Answers every TCP connection and
//! UDP datagram on the given ports with the pod's name and a newline. With
//! `--echo-peer` (the lab's external host) the answer is `NAME PEER-IP`, so
//! a test can see which source address arrived (a masqueraded pod's node).

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr, TcpListener, UdpSocket};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use super::state::Proc;
use super::{netns, procs};

/// A `PORT/PROTO` argument: `80/TCP`, `53/udp`; bare `80` means TCP.
pub fn parse_port(s: &str) -> Result<(u16, Proto), String> {
    let (port, proto) = s.split_once('/').unwrap_or((s, "tcp"));
    let port: u16 = port.parse().map_err(|_| format!("bad port in {s:?}"))?;
    let proto = Proto::parse(proto).ok_or_else(|| format!("bad protocol in {s:?} (tcp, udp or sctp)"))?;
    Ok((port, proto))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
    /// Crafted packets on raw sockets (`sctp.rs`): this kernel has no SCTP.
    Sctp,
}

impl std::fmt::Display for Proto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "TCP",
            Proto::Udp => "UDP",
            Proto::Sctp => "SCTP",
        })
    }
}

impl Proto {
    pub fn parse(s: &str) -> Option<Proto> {
        match s.to_ascii_lowercase().as_str() {
            "tcp" => Some(Proto::Tcp),
            "udp" => Some(Proto::Udp),
            "sctp" => Some(Proto::Sctp),
            _ => None,
        }
    }
}

/// What a server answers: its name, and with `echo_peer` the peer's address.
#[derive(Debug, Clone)]
struct Reply {
    name: String,
    echo_peer: bool,
}

impl Reply {
    fn to(&self, peer: IpAddr) -> String {
        if self.echo_peer {
            format!("{} {peer}\n", self.name)
        } else {
            format!("{}\n", self.name)
        }
    }
}

/// Starts `weir lab serve` through `cmd` (a command running the weir
/// binary, with no arguments yet) and waits until it has bound every port.
pub fn start<P: std::fmt::Display + std::fmt::Debug>(
    mut cmd: Command,
    netns_path: &str,
    name: &str,
    ports: &[(u16, P)],
    echo_peer: bool,
    marker: String,
    log_path: &Path,
) -> Result<Proc> {
    let log = File::create(log_path).with_context(|| format!("creating {}", log_path.display()))?;
    cmd.args(["serve", "--netns", netns_path, "--name", name]);
    for (port, proto) in ports {
        cmd.arg("--port").arg(format!("{port}/{proto}"));
    }
    if echo_peer {
        cmd.arg("--echo-peer");
    }
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting the servers of {name}"))?;
    let proc_ = procs::record(child.id(), marker);
    let mut line = String::new();
    if let Some(out) = child.stdout.take() {
        let _ = BufReader::new(out).read_line(&mut line);
    }
    if line.trim() != "ready" {
        procs::stop_all(std::slice::from_ref(&proc_), Duration::from_secs(1));
        let _ = child.wait();
        let log = std::fs::read_to_string(log_path).unwrap_or_default();
        bail!("servers for ports {ports:?} did not start: {}", log.trim());
    }
    Ok(proc_)
}

/// Enter the netns, bind every port, print `ready` on stdout, then serve forever.
pub fn run(netns_path: &str, name: &str, ports: &[(u16, Proto)], echo_peer: bool) -> Result<()> {
    netns::enter(netns_path)?;
    let reply = Reply {
        name: name.to_owned(),
        echo_peer,
    };
    let mut threads = Vec::new();
    let sctp: Vec<u16> = ports
        .iter()
        .filter(|(_, p)| *p == Proto::Sctp)
        .map(|(n, _)| *n)
        .collect();
    if !sctp.is_empty() {
        threads.push(std::thread::spawn(move || {
            if let Err(e) = super::sctp::serve_here(sctp) {
                eprintln!("{e:#}");
            }
        }));
    }
    for &(port, proto) in ports {
        let reply = reply.clone();
        match proto {
            Proto::Tcp => {
                let l =
                    TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)).with_context(|| format!("binding {port}/TCP"))?;
                threads.push(std::thread::spawn(move || serve_tcp(l, reply)));
            }
            Proto::Udp => {
                let s =
                    UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port)).with_context(|| format!("binding {port}/UDP"))?;
                threads.push(std::thread::spawn(move || serve_udp(s, reply)));
            }
            Proto::Sctp => {}
        }
    }
    println!("ready");
    std::io::stdout().flush().ok();
    for t in threads {
        let _ = t.join();
    }
    bail!("all listeners stopped")
}

fn serve_tcp(listener: TcpListener, reply: Reply) {
    for conn in listener.incoming() {
        match conn {
            Ok(mut s) => {
                let _ = s.set_write_timeout(Some(Duration::from_secs(1)));
                let peer = s.peer_addr().map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |a| a.ip());
                let _ = s.write_all(reply.to(peer).as_bytes());
                let _ = s.shutdown(std::net::Shutdown::Both);
            }
            Err(e) => {
                eprintln!("accept: {e}");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

/// Answers every datagram; one larger than the answer gets an answer as
/// large (padded after its first line), so big datagrams both ways (what a
/// large DNS answer is) can be tried.
fn serve_udp(sock: UdpSocket, reply: Reply) {
    let mut buf = vec![0u8; 65536];
    loop {
        match sock.recv_from(&mut buf) {
            Ok((n, peer)) => {
                let mut answer = reply.to(peer.ip()).into_bytes();
                if n > answer.len() {
                    answer.resize(n, b'.');
                }
                if let Err(e) = sock.send_to(&answer, peer) {
                    eprintln!("send to {peer}: {e}");
                }
            }
            Err(e) => {
                eprintln!("recv: {e}");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_name_and_optionally_the_peer() {
        let peer: IpAddr = "172.30.0.11".parse().unwrap();
        assert_eq!(
            Reply {
                name: "web".into(),
                echo_peer: false
            }
            .to(peer),
            "web\n"
        );
        assert_eq!(
            Reply {
                name: "external".into(),
                echo_peer: true
            }
            .to(peer),
            "external 172.30.0.11\n"
        );
    }

    #[test]
    fn parses_ports() {
        assert_eq!(parse_port("80/TCP").unwrap(), (80, Proto::Tcp));
        assert_eq!(parse_port("53/udp").unwrap(), (53, Proto::Udp));
        assert_eq!(parse_port("8080").unwrap(), (8080, Proto::Tcp));
        assert_eq!(parse_port("82/SCTP").unwrap(), (82, Proto::Sctp));
        assert!(parse_port("80/icmp").is_err());
        assert!(parse_port("x/tcp").is_err());
    }
}
