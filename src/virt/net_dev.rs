//! Interface counters of a running container, from the kernel.
//!
//! Docker's stats list only interfaces its libnetwork made, and an instance
//! has none: its networking is disabled and its Neutron ports are plugged by
//! the port plumbing. So diagnostics read `/proc/<pid>/net/dev`, which shows
//! the counters of the namespace of `pid`, and each interface's MAC from the
//! container's own sysfs.

use super::NicStats;

/// Parses `/proc/net/dev`; the loopback device is left out (Nova reports
/// the instance's NICs).
pub fn parse(text: &str) -> Vec<NicStats> {
    let mut out = Vec::new();
    for line in text.lines().skip(2) {
        let Some((name, counters)) = line.split_once(':') else { continue };
        let name = name.trim();
        let n: Vec<u64> = counters.split_whitespace().map_while(|w| w.parse().ok()).collect();
        if name.is_empty() || name == "lo" || n.len() < 12 {
            continue;
        }
        out.push(NicStats {
            name: name.to_string(),
            mac_address: None,
            rx_octets: n[0],
            rx_packets: n[1],
            rx_errors: n[2],
            rx_drop: n[3],
            tx_octets: n[8],
            tx_packets: n[9],
            tx_errors: n[10],
            tx_drop: n[11],
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// The NICs of the container whose init process is `pid`, with their MACs
/// where sysfs shows them.
pub async fn read(pid: i64) -> std::io::Result<Vec<NicStats>> {
    let text = tokio::fs::read_to_string(format!("/proc/{pid}/net/dev")).await?;
    let mut nics = parse(&text);
    for nic in &mut nics {
        let path = format!("/proc/{pid}/root/sys/class/net/{}/address", nic.name);
        nic.mac_address = tokio::fs::read_to_string(path).await.ok().map(|m| m.trim().to_string());
    }
    Ok(nics)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NET_DEV: &str = "\
Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:     140       2    0    0    0     0          0         0      140       2    0    0    0     0       0          0
  eth1: 1000 10 1 2 0 0 0 0 2000 20 3 4 0 0 0 0
tap0123456789ab:  5 6 7 8 0 0 0 0 9 10 11 12 0 0 0 0
  bad: 1 2 x
";

    #[test]
    fn counters_by_interface_without_loopback() {
        let nics = parse(NET_DEV);
        assert_eq!(nics.iter().map(|n| n.name.as_str()).collect::<Vec<_>>(), ["eth1", "tap0123456789ab"]);
        let e = &nics[0];
        assert_eq!((e.rx_octets, e.rx_packets, e.rx_errors, e.rx_drop), (1000, 10, 1, 2));
        assert_eq!((e.tx_octets, e.tx_packets, e.tx_errors, e.tx_drop), (2000, 20, 3, 4));
        assert_eq!(nics[1].tx_drop, 12);
        assert!(parse("").is_empty());
    }

    #[tokio::test]
    async fn reads_this_process_namespace() {
        let nics = read(std::process::id() as i64).await.unwrap();
        assert!(nics.iter().all(|n| n.name != "lo"));
    }
}
