//! `net::setup`/`teardown` in a real pod netns (a veth `eth0` like CNI's).

mod common;

use unicri_runtime_vm::net::{self, NetNames};
use unicri_vm_agent::proto;

#[test]
fn taps_are_made_redirected_and_removed() {
    if !common::is_root() {
        eprintln!("SKIP taps_are_made_redirected_and_removed: needs root");
        return;
    }
    let ns = common::PodNetns::new("net", 251);
    let names = NetNames::default();
    let pod = net::setup(&ns.pin, &names, &net::ctl_mac("p")).expect("setup");
    // again: idempotent
    let again = net::setup(&ns.pin, &names, &net::ctl_mac("p")).expect("setup again");
    assert_eq!(pod, again);

    assert_eq!(pod.nic, Some(("tap0_vm".to_string(), ns.mac.clone())));
    assert_eq!(pod.ctl_tap, "ctl0");
    assert_eq!(
        pod.interfaces,
        vec![proto::Interface {
            mac: ns.mac.clone(),
            name: "eth0".into(),
            mtu: 1400,
            addresses: vec!["10.251.0.2/24".into()],
        }]
    );
    assert_eq!(
        pod.routes,
        vec![proto::Route {
            destination: "0.0.0.0/0".into(),
            gateway: Some("10.251.0.1".into()),
            device: "eth0".into(),
        }]
    );
    let links = ns.links();
    assert!(links.contains(&"tap0_vm".to_string()), "{links:?}");
    assert!(links.contains(&"ctl0".to_string()), "{links:?}");
    // taps: persistent, root-owned, eth0's MTU
    let details = common::sh(&["ip", "-n", &ns.pod, "-d", "-j", "link", "show", "tap0_vm"]);
    let v: serde_json::Value = serde_json::from_str(&details).expect("json");
    assert_eq!(v[0]["mtu"], 1400, "{details}");
    assert_eq!(v[0]["linkinfo"]["info_kind"], "tun", "{details}");
    assert_eq!(v[0]["linkinfo"]["info_data"]["type"], "tap", "{details}");
    assert_eq!(v[0]["linkinfo"]["info_data"]["pi"], false, "{details}");
    assert_eq!(v[0]["linkinfo"]["info_data"]["vnet_hdr"], true, "{details}");
    assert_eq!(v[0]["linkinfo"]["info_data"]["persist"], true, "{details}");
    let neigh = common::sh(&["ip", "-n", &ns.pod, "neigh", "show", "dev", "ctl0"]);
    assert!(
        neigh.contains(&format!(
            "{} lladdr {} PERMANENT",
            proto::GUEST_CTL_IP,
            net::ctl_mac("p")
        )),
        "{neigh}"
    );
    let ctl = common::sh(&["ip", "-n", &ns.pod, "-j", "addr", "show", "ctl0"]);
    assert!(ctl.contains(proto::HOST_CTL_IP), "{ctl}");
    assert!(ctl.contains("\"mtu\":1400"), "{ctl}");
    for (from, to) in [("eth0", "tap0_vm"), ("tap0_vm", "eth0")] {
        let f = common::sh(&[
            "ip", "netns", "exec", &ns.pod, "tc", "filter", "show", "dev", from, "parent", "ffff:",
        ]);
        assert!(
            f.contains("mirred") && f.contains(&format!("to device {to}")),
            "{from}: {f}"
        );
    }

    // frames from the peer are redirected (the filter's counters move): a UDP datagram to
    // the pod's address makes the peer send an ARP request through eth0's ingress
    let _ = common::sh_ok(&[
        "ip",
        "netns",
        "exec",
        &ns.peer,
        "bash",
        "-c",
        "echo x > /dev/udp/10.251.0.2/9",
    ]);
    std::thread::sleep(std::time::Duration::from_millis(200));
    let stats = common::sh(&[
        "ip", "netns", "exec", &ns.pod, "tc", "-s", "filter", "show", "dev", "eth0", "parent",
        "ffff:",
    ]);
    assert!(
        !stats.contains("Sent 0 bytes 0 pkt"),
        "nothing redirected: {stats}"
    );

    net::teardown(&ns.pin, &names).expect("teardown");
    net::teardown(&ns.pin, &names).expect("teardown again");
    let links = ns.links();
    assert!(
        !links.iter().any(|l| l == "tap0_vm" || l == "ctl0"),
        "{links:?}"
    );
    let qd = common::sh(&[
        "ip", "netns", "exec", &ns.pod, "tc", "qdisc", "show", "dev", "eth0",
    ]);
    assert!(!qd.contains("ingress"), "{qd}");
}

#[test]
fn a_pod_without_eth0_gets_only_the_control_tap() {
    if !common::is_root() {
        eprintln!("SKIP a_pod_without_eth0_gets_only_the_control_tap: needs root");
        return;
    }
    let ns = common::PodNetns::new("noeth", 252);
    common::sh(&["ip", "-n", &ns.pod, "link", "del", "eth0"]);
    let names = NetNames::default();
    let pod = net::setup(&ns.pin, &names, &net::ctl_mac("p")).expect("setup");
    assert_eq!(pod.nic, None);
    assert!(pod.interfaces.is_empty());
    assert_eq!(ns.links(), vec!["lo".to_string(), "ctl0".to_string()]);
    net::teardown(&ns.pin, &names).expect("teardown");
    assert_eq!(ns.links(), vec!["lo".to_string()]);
}
