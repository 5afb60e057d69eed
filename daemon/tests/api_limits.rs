//! The agent's API under abuse: a request that is not UTF-8 gets an
//! answer, and running out of file descriptors neither spins the accept
//! loop nor floods the log, and the agent answers again once the idle
//! connections are gone. The server runs in a child process of this test
//! binary (its descriptor limit lowered there alone). No root needed.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::Ipv4Addr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use weir_agent::dataplane::{Dataplane, DataplaneError};
use weir_agent::endpoints::Endpoints;
use weir_agent::store::Store;
use weir_agent_api::{EndpointCounters, Traffic};
use weir_datapath::abi::EpInfo;

/// A dataplane with no interfaces: the API's own behaviour is under test.
struct Nothing;

impl Dataplane for Nothing {
    fn interface(&self, _: &str) -> Option<weir_agent::dataplane::Interface> {
        None
    }
    fn wire(&mut self, _: &str, _: Ipv4Addr, _: EpInfo, _: bool) -> Result<(), DataplaneError> {
        Ok(())
    }
    fn update(&mut self, _: Ipv4Addr, _: EpInfo) -> Result<(), DataplaneError> {
        Ok(())
    }
    fn unwire(&mut self, _: &str, _: Ipv4Addr, _: u32) -> Result<(), DataplaneError> {
        Ok(())
    }
    fn counters(&mut self, _: u32) -> Result<EndpointCounters, DataplaneError> {
        Ok(EndpointCounters::default())
    }
    fn drops(&self) -> Result<Vec<(String, Traffic)>, DataplaneError> {
        Ok(Vec::new())
    }
    fn attached_interfaces(&self) -> Vec<String> {
        Vec::new()
    }
}

struct Dir(PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn dir(tag: &str) -> Dir {
    let d = std::env::temp_dir().join(format!("weir-api-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    Dir(d)
}

/// Serves the API on `socket` until the process ends.
async fn serve(socket: &Path, state: &Path) {
    let endpoints = Endpoints::open("n1".into(), "10.0.0.0/24".parse().unwrap(), Nothing, Store::new(state)).unwrap();
    let endpoints = Arc::new(std::sync::Mutex::new(endpoints));
    let (_tx, rx) = tokio::sync::watch::channel(Arc::new(weir_agent::cluster::ClusterState::default()));
    let (listener, _own) = weir_agent::api::bind(socket).unwrap();
    weir_agent::api::serve(
        listener,
        endpoints,
        rx,
        Arc::new(weir_agent::sync::SyncStatus::default()),
        None,
    )
    .await;
}

fn status(socket: &Path, wait: Duration) -> std::io::Result<String> {
    let mut s = UnixStream::connect(socket)?;
    s.set_read_timeout(Some(wait))?;
    s.write_all(b"{\"api\":\"weir.agent/v1\",\"op\":\"status\"}\n")?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line)?;
    Ok(line)
}

#[tokio::test]
async fn a_request_that_is_not_utf8_gets_a_bad_request_reply() {
    let d = dir("utf8");
    let socket = d.0.join("agent.sock");
    let server = tokio::spawn({
        let (socket, state) = (socket.clone(), d.0.join("state"));
        async move { serve(&socket, &state).await }
    });
    while !socket.exists() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let reply = tokio::task::spawn_blocking(move || {
        let mut s = UnixStream::connect(&socket).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"\xff\xfe not text\n").unwrap();
        let mut reply = String::new();
        s.read_to_string(&mut reply).unwrap();
        reply
    })
    .await
    .unwrap();
    assert!(reply.contains("bad_request") && reply.contains("UTF-8"), "{reply:?}");
    server.abort();
}

/// The child: lowers its descriptor limit and serves until killed.
#[test]
fn child_server() {
    let Ok(socket) = std::env::var("WEIR_API_LIMITS_SOCKET") else {
        return; // only ever run as the child of the test below
    };
    tracing_subscriber::fmt().with_writer(std::io::stderr).init();
    nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, 64, 64).unwrap();
    let state = PathBuf::from(std::env::var("WEIR_API_LIMITS_STATE").unwrap());
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(serve(Path::new(&socket), &state));
}

/// Clock ticks of CPU the process has used (utime + stime).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

#[test]
fn out_of_descriptors_the_agent_neither_spins_nor_floods_and_recovers() {
    let d = dir("emfile");
    let socket = d.0.join("agent.sock");
    let log = d.0.join("child.log");
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_server", "--nocapture"])
        .env("WEIR_API_LIMITS_SOCKET", &socket)
        .env("WEIR_API_LIMITS_STATE", d.0.join("state"))
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while status(&socket, Duration::from_secs(5)).is_err() {
        assert!(Instant::now() < deadline, "the child never served");
        std::thread::sleep(Duration::from_millis(20));
    }

    // Far more idle clients than the child has descriptors.
    let idle: Vec<UnixStream> = (0..150).filter_map(|_| UnixStream::connect(&socket).ok()).collect();
    assert!(idle.len() > 100, "only {} connections", idle.len());
    std::thread::sleep(Duration::from_millis(300));
    let (ticks, log_len) = (cpu_ticks(child.id()), std::fs::metadata(&log).unwrap().len());
    std::thread::sleep(Duration::from_secs(1));
    let used = cpu_ticks(child.id()) - ticks;
    let logged = std::fs::metadata(&log).unwrap().len() - log_len;
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .unwrap()
        .unwrap_or(100) as u64;
    assert!(
        used * 2 < hz,
        "the agent used {used} of {hz} ticks in a second: it spins"
    );
    assert!(logged < 20_000, "{logged} bytes of log in a second");

    // Idle connections time out (2 s each, a few rounds of them ahead of
    // it in the backlog); the agent answers again with all of them open.
    let answered = status(&socket, Duration::from_secs(30));
    drop(idle);
    let _ = child.kill();
    let _ = child.wait();
    let answered = answered.unwrap_or_else(|e| {
        panic!(
            "the agent never answered again ({e}): {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        )
    });
    assert!(answered.contains("\"status\""), "{answered}");
}
