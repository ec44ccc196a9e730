//! Real CNI plugins (Debian's containernetworking-plugins in /usr/lib/cni): bridge + host-local +
//! portmap between pinned network namespaces. Private addresses only (10.250.x.0/24 on a bridge
//! created by the test, no gateway, no masquerade); nothing leaves the host. Skipped loudly
//! without root or without the plugins.

use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use unicri_network_cni::netns::{self, NetNs, run_in};
use unicri_network_cni::{Cni, CniOptions, PodNetwork, PortMapping};

const PLUGINS: &str = "/usr/lib/cni";

/// Debian's portmap (1.1.1) races with itself creating its shared chains (`CNI-HOSTPORT-SETMARK`
/// "File exists") when two ADDs run at once on a fresh host, so the tests of this file take
/// turns.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn skip() -> bool {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIP: real CNI plugin tests need root");
        return true;
    }
    for p in ["bridge", "host-local", "portmap", "loopback"] {
        if !Path::new(PLUGINS).join(p).exists() {
            eprintln!(
                "SKIP: {PLUGINS}/{p} missing (apt-get install -y containernetworking-plugins)"
            );
            return true;
        }
    }
    false
}

/// A private test network: its own bridge name, subnet, config, cache, IPAM state and pin dir.
/// Drop tears every pod down, unpins, removes the bridge — also when the test failed.
struct Fixture {
    tmp: tempfile::TempDir,
    bridge: String,
    subnet_octet: u8,
    network: String,
    pods: Vec<PodNetwork>,
}

impl Fixture {
    fn new() -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        let tag = rand::random::<u32>() & 0xff_ffff;
        let bridge = format!("ucni{tag:06x}");
        let subnet_octet = 1 + (rand::random::<u8>() % 250);
        let network = format!("ucni-test-{tag:06x}");
        let f = Fixture {
            tmp,
            bridge,
            subnet_octet,
            network,
            pods: vec![],
        };
        let conf_dir = f.tmp.path().join("net.d");
        std::fs::create_dir_all(&conf_dir).expect("mkdir net.d");
        let conflist = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": f.network,
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": f.bridge,
                    "isGateway": false,
                    "ipMasq": false,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": format!("10.250.{}.0/24", f.subnet_octet)}]],
                        "dataDir": f.ipam_dir(),
                    }
                },
                {"type": "portmap", "capabilities": {"portMappings": true}}
            ]
        });
        std::fs::write(
            conf_dir.join("10-test.conflist"),
            serde_json::to_vec_pretty(&conflist).expect("json"),
        )
        .expect("write conflist");
        f
    }

    fn ipam_dir(&self) -> PathBuf {
        self.tmp.path().join("ipam")
    }

    fn cni(&self) -> Cni {
        let mut opts = CniOptions::new(
            self.tmp.path().join("net.d"),
            vec![PathBuf::from(PLUGINS)],
            self.tmp.path().join("cache"),
        );
        opts.plugin_timeout = Duration::from_secs(30);
        Cni::new(opts)
    }

    fn pin_dir(&self) -> PathBuf {
        self.tmp.path().join("netns")
    }

    fn pod(&mut self, name: &str, host_port: Option<u16>) -> PodNetwork {
        let sandbox_id = format!("{}{}", name, rand::random::<u64>());
        let pod = PodNetwork {
            netns: self.pin_dir().join(&sandbox_id),
            sandbox_id,
            pod_namespace: "default".into(),
            pod_name: name.into(),
            pod_uid: format!("uid-{name}"),
            port_mappings: host_port
                .map(|host_port| PortMapping {
                    host_port,
                    container_port: 8080,
                    protocol: "tcp".into(),
                    host_ip: String::new(),
                })
                .into_iter()
                .collect(),
            ..PodNetwork::default()
        };
        NetNs::create(&pod.netns).expect("create netns");
        self.pods.push(pod.clone());
        pod
    }

    fn subnet_contains(&self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(v4) => {
                let o = v4.octets();
                o[0] == 10 && o[1] == 250 && o[2] == self.subnet_octet
            }
            IpAddr::V6(_) => false,
        }
    }

    /// IP files host-local still holds for this network.
    fn leased_ips(&self) -> Vec<String> {
        let dir = self.ipam_dir().join(&self.network);
        std::fs::read_dir(dir)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.parse::<IpAddr>().is_ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    fn bridge_ports(&self) -> Vec<String> {
        std::fs::read_dir(format!("/sys/class/net/{}/brif", self.bridge))
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let cni = self.cni();
        let pods = std::mem::take(&mut self.pods);
        // teardown is async; run it on a private runtime on its own thread (we may be inside one)
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            for pod in &pods {
                if let Err(e) = rt.block_on(cni.teardown_pod(pod)) {
                    eprintln!("fixture cleanup: teardown {}: {e}", pod.sandbox_id);
                }
                let _ = NetNs::remove(&pod.netns);
            }
        })
        .join();
        let _ = netns::release_pin_dir(&self.pin_dir());
        if Path::new("/sys/class/net").join(&self.bridge).exists() {
            let _ = Command::new("ip")
                .args(["link", "del", &self.bridge])
                .status();
        }
    }
}

fn mounted(path: &Path) -> bool {
    let info = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let p = path.to_string_lossy();
    info.lines()
        .any(|l| l.split(' ').nth(4) == Some(p.as_ref()))
}

fn nat_rules() -> String {
    Command::new("iptables")
        .args(["-t", "nat", "-S"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// Host-side interfaces a result reports (the veth ends), i.e. everything but the bridge and the
/// sandbox interface.
fn host_veths(result: &serde_json::Value, bridge: &str) -> Vec<String> {
    result["interfaces"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|i| i["sandbox"].as_str().unwrap_or_default().is_empty())
        .filter_map(|i| i["name"].as_str())
        .filter(|n| *n != bridge)
        .map(String::from)
        .collect()
}

fn loopback_works() -> bool {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| TcpStream::connect_timeout(&l.local_addr()?, Duration::from_secs(2)))
        .is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_pods_on_a_bridge() {
    if skip() {
        return;
    }
    let _serial = SERIAL.lock().await;
    let mut fx = Fixture::new();
    let cni = fx.cni();
    cni.status().expect("network ready");
    let port_a = 20000 + rand::random::<u16>() % 20000;
    let a = fx.pod("a", Some(port_a));
    let b = fx.pod("b", None);

    let st_a = cni.setup_pod(&a).await.expect("setup a");
    let st_b = cni.setup_pod(&b).await.expect("setup b");
    // CHECK of the whole list (bridge, host-local, portmap) right after b's ADD, on b only.
    // Two limitations of Debian's plugins (1.1.1), not ours: portmap's CHECK always checks the
    // ip6tables chain, so it fails for an IPv4-only pod *with* port mappings; and bridge's CHECK
    // compares the bridge MAC with the cached result, which changes when a later veth with a
    // lower MAC joins (a bridge without a fixed MAC takes the lowest MAC of its ports).
    cni.check_pod(&b).await.expect("CHECK b");
    let ip_a = st_a.primary_ip().expect("ip a");
    let ip_b = st_b.primary_ip().expect("ip b");
    assert!(fx.subnet_contains(ip_a), "{ip_a}");
    assert!(fx.subnet_contains(ip_b), "{ip_b}");
    assert_ne!(ip_a, ip_b);
    assert_eq!(st_a.network, fx.network);
    assert_eq!(fx.leased_ips().len(), 2);
    let veths: Vec<String> = [&st_a, &st_b]
        .iter()
        .flat_map(|s| host_veths(&s.result, &fx.bridge))
        .collect();
    assert_eq!(veths.len(), 2, "{veths:?}");
    for v in &veths {
        assert!(Path::new("/sys/class/net").join(v).exists(), "{v} on host");
    }
    let mut ports = fx.bridge_ports();
    ports.sort();
    let mut want = veths.clone();
    want.sort();
    assert_eq!(ports, want);

    // portmap installed its DNAT rules for both pods
    let rules = nat_rules();
    assert!(
        rules.contains(&a.sandbox_id),
        "no portmap rule for a:\n{rules}"
    );
    assert!(rules.contains(&port_a.to_string()));

    // lo is up (loopback plugin) and the pod's address is on eth0, in each netns
    for (pod, ip) in [(&a, ip_a), (&b, ip_b)] {
        let (lo, own) = run_in(&pod.netns, || {
            (
                loopback_works(),
                TcpListener::bind(SocketAddr::new(ip, 0)).is_ok(),
            )
        })
        .expect("run_in");
        assert!(lo, "lo up in {}", pod.sandbox_id);
        assert!(own, "{ip} assigned in {}", pod.sandbox_id);
    }

    // a → b over the bridge: listener created in b's netns, connect from a's netns
    let listener = run_in(&b.netns, || TcpListener::bind(SocketAddr::new(ip_b, 0)))
        .expect("run_in b")
        .expect("listen in b");
    let target = listener.local_addr().expect("addr");
    let local = run_in(&a.netns, move || {
        TcpStream::connect_timeout(&target, Duration::from_secs(5)).and_then(|s| s.local_addr())
    })
    .expect("run_in a")
    .expect("connect a -> b");
    let (_conn, peer) = listener.accept().expect("accept");
    assert_eq!(peer.ip(), ip_a);
    assert_eq!(local.ip(), ip_a);

    // DEL twice is fine
    cni.teardown_pod(&a).await.expect("DEL a");
    cni.teardown_pod(&a).await.expect("DEL a again");
    cni.teardown_pod(&b).await.expect("DEL b");
    NetNs::remove(&a.netns).expect("unpin a");
    NetNs::remove(&b.netns).expect("unpin b");
    NetNs::remove(&b.netns).expect("unpin b twice");

    assert!(!mounted(&a.netns) && !mounted(&b.netns), "pin mounts left");
    assert!(!a.netns.exists() && !b.netns.exists());
    for v in &veths {
        assert!(
            !Path::new("/sys/class/net").join(v).exists(),
            "veth {v} left on host"
        );
    }
    assert!(fx.bridge_ports().is_empty());
    assert!(
        fx.leased_ips().is_empty(),
        "host-local still holds {:?}",
        fx.leased_ips()
    );
    let rules = nat_rules();
    assert!(
        !rules.contains(&a.sandbox_id) && !rules.contains(&b.sandbox_id),
        "portmap rules left:\n{rules}"
    );
    assert!(
        std::fs::read_dir(fx.tmp.path().join("cache"))
            .expect("cache dir")
            .flatten()
            .all(|d| std::fs::read_dir(d.path())
                .map(|mut e| e.next().is_none())
                .unwrap_or(true)),
        "cache entries left"
    );
}

/// The restart case: the netns is already gone and a fresh `Cni` (no in-memory state) tears the
/// pod down from the cache alone; IP and portmap rules are released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn teardown_after_netns_gone_and_restart() {
    if skip() {
        return;
    }
    let _serial = SERIAL.lock().await;
    let mut fx = Fixture::new();
    let port = 20000 + rand::random::<u16>() % 20000;
    let c = fx.pod("c", Some(port));
    let st = fx.cni().setup_pod(&c).await.expect("setup c");
    let veths = host_veths(&st.result, &fx.bridge);
    assert_eq!(fx.leased_ips().len(), 1);

    NetNs::remove(&c.netns).expect("unpin first");
    assert!(!mounted(&c.netns));
    let restarted = fx.cni();
    restarted.teardown_pod(&c).await.expect("DEL without netns");
    restarted
        .teardown_pod(&c)
        .await
        .expect("DEL without netns, again");
    assert!(
        fx.leased_ips().is_empty(),
        "host-local still holds {:?}",
        fx.leased_ips()
    );
    for v in &veths {
        assert!(
            !Path::new("/sys/class/net").join(v).exists(),
            "veth {v} left on host"
        );
    }
    assert!(!nat_rules().contains(&c.sandbox_id), "portmap rules left");
}
