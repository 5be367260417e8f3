//! The seed topology (`shared/seed/TOPOLOGY.md`) in network namespaces, for `masq-lab lab` and the
//! end-to-end tests.
//!
//! ```text
//!                        client 64.70.12.210/24  eth0
//!                              | default via 64.70.12.1
//!                        core  to-client 64.70.12.1/24
//!          to-ispa 198.18.1.1/30                 to-ispb 198.18.2.1/30
//!                |                                     |
//!   ispa  to-core 198.18.1.2/30           ispb  to-core 198.18.2.2/30
//!         to-gw   67.17.28.14/28                to-gw   205.254.211.254/24
//!                |                                     |
//!   gw    eth4 67.17.28.12/28                   eth1 205.254.211.179/24 (main default)
//!         eth0 192.168.100.254/24
//!                |
//!   switch  bridge br0: ports gw, isolde, tristan
//!                |
//!   isolde 192.168.100.17/24    tristan 192.168.100.32/24   (eth0, default via .254)
//! ```
//!
//! How the client reaches the ISPs is the lab's choice: a `core` router with point-to-point link nets
//! from 198.18.0.0/15 (the benchmark range, RFC 2544), so no lab address looks like a real one.
//! core routes 67.17.28.0/28 via ispa and 205.254.211.0/24 via ispb; each ISP router has its default
//! via core and drops forwarded packets from the gw side whose source is not its customer's prefix
//! (an iptables FORWARD rule, so its counter proves "dropped as spoofed": [`Lab::spoof_drops`]).
//!
//! Namespaces are named `masq-<host>-<pid>-<n>-<random>` ([`NetNs::create`]); a run's pin directory
//! (`/sys/fs/bpf/masq-<pid>-<random>`) and log directory (in `$TMPDIR`) share the lab's id.
//! Every namespace is deleted when the [`Lab`] is dropped, when building it fails, and when the process
//! gets Ctrl-C or SIGTERM (a process-global registry that a signal handler cleans up). Nothing is
//! configured in the host namespace: veth pairs are created directly inside their namespaces.

use std::{
    collections::hash_map::RandomState,
    fmt,
    fs::{self, File},
    hash::{BuildHasher as _, Hasher as _},
    io::Read as _,
    net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Output, Stdio},
    sync::{
        Condvar, Mutex, MutexGuard, Once,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};

use crate::{
    netns::NetNs,
    seed::{
        CLIENT, CLIENT_NET, CLIENT_PREFIX_LEN, CLIENT_ROUTER, CORE_ROUTER, DSL_TABLE, GW_ISP_A,
        GW_ISP_B, GW_LAN, ISOLDE, ISP_A_NET, ISP_A_PREFIX_LEN, ISP_A_ROUTER, ISP_B_NET,
        ISP_B_PREFIX_LEN, ISP_B_ROUTER, ISPB_TABLE, LAN_NET, LAN_PREFIX_LEN, PUBLIC_ISP_A,
        PUBLIC_ISP_B, TRISTAN,
    },
    tun_relay::{TunEnd, TunRelay},
};

/// The ISP routers' interface toward gw: capture there to see by which uplink a packet left gw.
pub const ISP_GW_SIDE_IFACE: &str = "to-gw";
/// The line masq prints once its programs are attached.
pub use crate::daemon::MASQ_READY_LINE;

const MASQ_READY_TIMEOUT: Duration = Duration::from_secs(20);
const CHILD_STOP_GRACE: Duration = Duration::from_secs(5);
const LISTEN_TIMEOUT: Duration = Duration::from_secs(5);

/// The core's point-to-point links (/30s from 198.18.0.0/15), the lab's own addresses: core's end
/// toward ISP A is the seed's [`CORE_ROUTER`], the router on the way of the program tests.
const CORE_LINK_PREFIX_LEN: u8 = 30;
const CORE_TO_ISPA: Ipv4Addr = CORE_ROUTER;
const ISPA_TO_CORE: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 2);
const CORE_TO_ISPB: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 1);
const ISPB_TO_CORE: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 2);

/// A setup script: its lines are `format!` strings that name the addresses by their constants
/// (`"ip addr add {GW_LAN}/{LAN_PREFIX_LEN} dev eth0"`), so an unknown name does not compile.
macro_rules! script {
    ($($line:literal),* $(,)?) => {
        vec![$(format!($line)),*]
    };
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Host {
    Client,
    Core,
    IspA,
    IspB,
    Gw,
    Switch,
    Isolde,
    Tristan,
}

impl Host {
    pub const ALL: [Host; 8] = [
        Host::Client,
        Host::Core,
        Host::IspA,
        Host::IspB,
        Host::Gw,
        Host::Switch,
        Host::Isolde,
        Host::Tristan,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Host::Client => "client",
            Host::Core => "core",
            Host::IspA => "ispa",
            Host::IspB => "ispb",
            Host::Gw => "gw",
            Host::Switch => "switch",
            Host::Isolde => "isolde",
            Host::Tristan => "tristan",
        }
    }

    /// Commands run inside the host once its links exist and are up. Every interface keeps the
    /// kernel's defaults (checksum and segmentation offloads on, GRO off on veth): what users have.
    fn setup(self) -> Vec<String> {
        match self {
            Host::Client => script![
                "ip addr add {CLIENT}/{CLIENT_PREFIX_LEN} dev eth0",
                "ip route add default via {CLIENT_ROUTER}",
            ],
            Host::Core => script![
                "sysctl -qw net.ipv4.ip_forward=1",
                "ip addr add {CLIENT_ROUTER}/{CLIENT_PREFIX_LEN} dev to-client",
                "ip addr add {CORE_TO_ISPA}/{CORE_LINK_PREFIX_LEN} dev to-ispa",
                "ip addr add {CORE_TO_ISPB}/{CORE_LINK_PREFIX_LEN} dev to-ispb",
                "ip route add {ISP_A_NET} via {ISPA_TO_CORE}",
                "ip route add {ISP_B_NET} via {ISPB_TO_CORE}",
            ],
            // rp_filter off so spoofed packets reach the FORWARD rule and are counted there.
            Host::IspA => script![
                "sysctl -qw net.ipv4.ip_forward=1 net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.to-gw.rp_filter=0",
                "ip addr add {ISPA_TO_CORE}/{CORE_LINK_PREFIX_LEN} dev to-core",
                "ip addr add {ISP_A_ROUTER}/{ISP_A_PREFIX_LEN} dev to-gw",
                "ip route add default via {CORE_TO_ISPA}",
                "iptables -w -A FORWARD -i to-gw ! -s {ISP_A_NET} -m comment --comment spoofed -j DROP",
            ],
            Host::IspB => script![
                "sysctl -qw net.ipv4.ip_forward=1 net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.to-gw.rp_filter=0",
                "ip addr add {ISPB_TO_CORE}/{CORE_LINK_PREFIX_LEN} dev to-core",
                "ip addr add {ISP_B_ROUTER}/{ISP_B_PREFIX_LEN} dev to-gw",
                "ip route add default via {CORE_TO_ISPB}",
                "iptables -w -A FORWARD -i to-gw ! -s {ISP_B_NET} -m comment --comment spoofed -j DROP",
            ],
            // Loose reverse-path filtering: strict mode drops inbound ISP A traffic (see DESIGN-NOTES).
            Host::Gw => script![
                "sysctl -qw net.ipv4.ip_forward=1 net.ipv4.conf.all.rp_filter=2 net.ipv4.conf.default.rp_filter=2 net.ipv4.conf.eth0.rp_filter=2 net.ipv4.conf.eth1.rp_filter=2 net.ipv4.conf.eth4.rp_filter=2",
                "ip addr add {GW_LAN}/{LAN_PREFIX_LEN} dev eth0",
                "ip addr add {GW_ISP_B}/{ISP_B_PREFIX_LEN} dev eth1",
                "ip addr add {GW_ISP_A}/{ISP_A_PREFIX_LEN} dev eth4",
                "ip route add default via {ISP_B_ROUTER}",
            ],
            Host::Switch => script![
                "ip link add br0 type bridge",
                "ip link set gw master br0",
                "ip link set isolde master br0",
                "ip link set tristan master br0",
                "ip link set br0 up",
            ],
            Host::Isolde => script![
                "ip addr add {ISOLDE}/{LAN_PREFIX_LEN} dev eth0",
                "ip route add default via {GW_LAN}",
            ],
            Host::Tristan => script![
                "ip addr add {TRISTAN}/{LAN_PREFIX_LEN} dev eth0",
                "ip route add default via {GW_LAN}",
            ],
        }
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A host's interface by name.
type End = (Host, &'static str);

/// Veth pairs, one end each.
const LINKS: [(End, End); 8] = [
    ((Host::Client, "eth0"), (Host::Core, "to-client")),
    ((Host::Core, "to-ispa"), (Host::IspA, "to-core")),
    ((Host::Core, "to-ispb"), (Host::IspB, "to-core")),
    ((Host::IspA, "to-gw"), (Host::Gw, "eth4")),
    ((Host::IspB, "to-gw"), (Host::Gw, "eth1")),
    ((Host::Gw, "eth0"), (Host::Switch, "gw")),
    ((Host::Switch, "isolde"), (Host::Isolde, "eth0")),
    ((Host::Switch, "tristan"), (Host::Tristan, "eth0")),
];

/// What gw's LAN is, as gateways have it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LanDevice {
    /// `eth0` itself.
    #[default]
    Plain,
    /// A bridge `br-lan` with `eth0` as its port (OpenWrt's layout). (A VLAN subinterface
    /// cannot be built here: this kernel has no 802.1Q support.)
    Bridge,
}

impl LanDevice {
    /// masq's `lan.interface` for this LAN.
    pub fn interface(self) -> &'static str {
        match self {
            LanDevice::Plain => "eth0",
            LanDevice::Bridge => "br-lan",
        }
    }

    /// Moves gw's LAN address from eth0 onto the device (new devices inherit gw's loose
    /// `default.rp_filter`).
    fn setup(self) -> Vec<(Host, Vec<String>)> {
        match self {
            LanDevice::Plain => Vec::new(),
            LanDevice::Bridge => vec![(
                Host::Gw,
                script![
                    "ip addr del {GW_LAN}/{LAN_PREFIX_LEN} dev eth0",
                    "ip link add br-lan type bridge",
                    "ip link set eth0 master br-lan",
                    "ip addr add {GW_LAN}/{LAN_PREFIX_LEN} dev br-lan",
                    "ip link set br-lan up",
                ],
            )],
        }
    }
}

/// ISP A's line (ISP A, gw), a veth pair unless [`LabOptions::l3_isp_a`].
const ISP_A_LINE: (Host, Host) = (Host::IspA, Host::Gw);

/// What runs on gw besides its addresses and main default route.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum GatewayMode {
    /// Nothing: masq is run there.
    #[default]
    Bare,
    /// The textbook failure: DNAT and MASQUERADE with the main table only, so the reply for the ISP A
    /// address leaves by the main default (eth1) and ISP B drops it as spoofed.
    PlainDnat,
    /// The classic recipe of TOPOLOGY.md: per-uplink tables, source rules, CONNMARK, DNAT, MASQUERADE.
    Classic,
    /// Plain routing without NAT or conntrack, the benchmarks' ceiling: the client addresses
    /// isolde (192.168.100.17) itself, through ISP A both ways ([`forward_routes`]).
    Forward,
}

/// Public addresses on gw, DNAT of each to isolde, MASQUERADE out of each uplink.
fn plain_dnat() -> Vec<String> {
    script![
        "ip addr add {PUBLIC_ISP_A}/32 dev eth4",
        "ip addr add {PUBLIC_ISP_B}/32 dev eth1",
        "iptables -w -t nat -A PREROUTING -d {PUBLIC_ISP_A} -j DNAT --to-destination {ISOLDE}",
        "iptables -w -t nat -A PREROUTING -d {PUBLIC_ISP_B} -j DNAT --to-destination {ISOLDE}",
        "iptables -w -t nat -A POSTROUTING -o eth1 -j MASQUERADE",
        "iptables -w -t nat -A POSTROUTING -o eth4 -j MASQUERADE",
    ]
}

/// Policy routing of the classic recipe (applied with [`plain_dnat`]), in the example config's
/// tables (201 dsl, 202 isp-b). The CONNMARK marks 1 and 2 are the recipe's own.
fn classic_routing() -> Vec<String> {
    script![
        // dsl's table (ISP A): main's connected routes plus ISP A's default.
        "ip route add {LAN_NET} dev eth0 proto kernel scope link src {GW_LAN} table {DSL_TABLE}",
        "ip route add {ISP_B_NET} dev eth1 proto kernel scope link src {GW_ISP_B} table {DSL_TABLE}",
        "ip route add {ISP_A_NET} dev eth4 proto kernel scope link src {GW_ISP_A} table {DSL_TABLE}",
        "ip route add default via {ISP_A_ROUTER} dev eth4 table {DSL_TABLE}",
        // isp-b's table: the same connected routes plus ISP B's default.
        "ip route add {LAN_NET} dev eth0 proto kernel scope link src {GW_LAN} table {ISPB_TABLE}",
        "ip route add {ISP_B_NET} dev eth1 proto kernel scope link src {GW_ISP_B} table {ISPB_TABLE}",
        "ip route add {ISP_A_NET} dev eth4 proto kernel scope link src {GW_ISP_A} table {ISPB_TABLE}",
        "ip route add default via {ISP_B_ROUTER} dev eth1 table {ISPB_TABLE}",
        // gw's own traffic by source address.
        "ip rule add from {GW_ISP_A} lookup {DSL_TABLE}",
        "ip rule add from {GW_ISP_B} lookup {ISPB_TABLE}",
        // Connections marked by the uplink they came in on; replies from the LAN get the mark back.
        "iptables -w -t mangle -A PREROUTING -i eth4 -m conntrack --ctstate NEW -j CONNMARK --set-mark 1",
        "iptables -w -t mangle -A PREROUTING -i eth1 -m conntrack --ctstate NEW -j CONNMARK --set-mark 2",
        "iptables -w -t mangle -A PREROUTING -i eth0 -j CONNMARK --restore-mark",
        "ip rule add fwmark 1 lookup {DSL_TABLE}",
        "ip rule add fwmark 2 lookup {ISPB_TABLE}",
    ]
}

/// [`GatewayMode::Forward`]: the LAN routed through ISP A with its own addresses. gw sends the
/// client's replies back by ISP A, core and ISP A route the LAN prefix, and ISP A's spoof filter
/// lets the LAN prefix through (its customer's, in this mode).
fn forward_routes() -> Vec<(Host, Vec<String>)> {
    vec![
        (Host::Gw, script!["ip route add {CLIENT_NET} via {ISP_A_ROUTER} dev eth4"]),
        (Host::Core, script!["ip route add {LAN_NET} via {ISPA_TO_CORE}"]),
        (
            Host::IspA,
            script![
                "ip route add {LAN_NET} via {GW_ISP_A}",
                "iptables -w -I FORWARD -i to-gw -s {LAN_NET} -j ACCEPT",
            ],
        ),
    ]
}

impl GatewayMode {
    /// What to run, host by host.
    fn scripts(self) -> Vec<(Host, Vec<String>)> {
        match self {
            GatewayMode::Bare => Vec::new(),
            GatewayMode::PlainDnat => vec![(Host::Gw, plain_dnat())],
            GatewayMode::Classic => vec![(Host::Gw, [classic_routing(), plain_dnat()].concat())],
            GatewayMode::Forward => forward_routes(),
        }
    }
}

/// The XDP-friendly variant ([`LabOptions::xdp_friendly`]): the internet side sends complete
/// checksums, so XDP's incremental updates are right.
const XDP_FRIENDLY_SENDERS: &[(Host, &[&str])] = &[
    (Host::Client, &["ethtool -K eth0 tx off"]),
    (
        Host::Core,
        &["ethtool -K to-client tx off", "ethtool -K to-ispa tx off", "ethtool -K to-ispb tx off"],
    ),
    (Host::IspA, &["ethtool -K to-core tx off", "ethtool -K to-gw tx off"]),
    (Host::IspB, &["ethtool -K to-core tx off", "ethtool -K to-gw tx off"]),
];

/// The veth peers of gw's interfaces: in the XDP-friendly variant each runs an XDP program, so
/// frames XDP-redirected into gw's end are received (a veth needs its peer's NAPI for that).
const GW_PEERS: [End; 3] = [(Host::IspA, "to-gw"), (Host::IspB, "to-gw"), (Host::Switch, "gw")];

#[derive(Clone, Debug, Default)]
pub struct LabOptions {
    /// The variant where XDP is safe, tested in addition to the default: senders toward gw's
    /// uplinks without tx checksum offload, and masq's pass-through XDP program on the veth
    /// peers of gw's interfaces. Everything else keeps the kernel's defaults.
    pub xdp_friendly: bool,
    /// ISP A's line as a point-to-point L3 link (a tun device at each end joined by a relay,
    /// as PPPoE, LTE raw-ip or WireGuard are) instead of a veth pair.
    pub l3_isp_a: bool,
    /// The device gw's LAN address lives on (masq's `lan.interface`).
    pub lan: LanDevice,
    /// Applied to gw right after the build (see [`Lab::configure_gateway`]).
    pub gateway: GatewayMode,
    /// Print every setup command.
    pub verbose: bool,
    /// Keep the run directory (logs, captures) after the lab is gone; also with `MASQ_LAB_KEEP_LOGS=1`.
    pub keep_run_dir: bool,
}

/// The seed topology, torn down on drop.
pub struct Lab {
    id: String,
    namespaces: Vec<(Host, NetNs)>,
    run_dir: PathBuf,
    keep_run_dir: bool,
    verbose: bool,
    spawned: AtomicUsize,
    /// Process-group leaders started by this lab.
    pids: Mutex<Vec<i32>>,
    /// L3 links ([`LabOptions::l3_isp_a`]).
    relays: Vec<TunRelay>,
}

impl Lab {
    pub fn build(options: LabOptions) -> Result<Lab> {
        install_signal_handler();
        let id = format!("masq-{}-{:06x}", std::process::id(), random() & 0xff_ffff);
        let run_dir = std::env::temp_dir().join(format!("{id}-lab"));
        let keep_run_dir = options.keep_run_dir
            || std::env::var("MASQ_LAB_KEEP_LOGS").is_ok_and(|v| v == "1" || v == "true");
        // From here on, Drop removes whatever was made if a later step fails.
        let mut lab = Lab {
            id,
            namespaces: Vec::new(),
            run_dir,
            keep_run_dir,
            verbose: options.verbose,
            spawned: AtomicUsize::new(0),
            pids: Mutex::new(Vec::new()),
            relays: Vec::new(),
        };
        registry().dirs.push(lab.run_dir.clone());
        registry().dirs.push(lab.pin_dir());
        fs::create_dir_all(&lab.run_dir)
            .with_context(|| format!("creating {}", lab.run_dir.display()))?;
        for host in Host::ALL {
            let ns = NetNs::create(&format!("masq-{host}"))?;
            registry().namespaces.push(ns.name().to_string());
            lab.namespaces.push((host, ns));
        }
        for ((host_a, if_a), (host_b, if_b)) in LINKS {
            if options.l3_isp_a && (host_a, host_b) == ISP_A_LINE {
                let end = |host: Host, name: &str| TunEnd {
                    netns: lab.ns(host).path(),
                    name: name.to_owned(),
                };
                lab.log_command(
                    "host",
                    &format!("tun {if_a} in {host_a} <-> tun {if_b} in {host_b}"),
                );
                lab.relays.push(TunRelay::start(end(host_a, if_a), end(host_b, if_b))?);
                lab.run_script(host_a, &[&format!("ip link set {if_a} up")])?;
                lab.run_script(host_b, &[&format!("ip link set {if_b} up")])?;
                continue;
            }
            let (ns_a, ns_b) = (lab.ns(host_a).name(), lab.ns(host_b).name());
            let args = [
                "link", "add", "name", if_a, "netns", ns_a, "type", "veth", "peer", "name", if_b,
                "netns", ns_b,
            ];
            lab.log_command("host", &args.join(" "));
            let output = Command::new("ip").args(args).output()?;
            if !output.status.success() {
                bail!(
                    "ip {} failed: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&output.stderr).trim()
                );
            }
            lab.run_script(host_a, &[&format!("ip link set {if_a} up")])?;
            lab.run_script(host_b, &[&format!("ip link set {if_b} up")])?;
        }
        for host in Host::ALL {
            lab.run_script(host, &host.setup())?;
        }
        for (host, lines) in options.lan.setup() {
            lab.run_script(host, &lines)?;
        }
        if options.xdp_friendly {
            for (host, lines) in XDP_FRIENDLY_SENDERS {
                lab.run_script(*host, lines)?;
            }
            registry().dirs.push(lab.peer_pin_dir());
            lab.attach_peer_xdp()?;
        }
        lab.configure_gateway(options.gateway)?;
        Ok(lab)
    }

    /// Where the XDP-friendly variant pins its peers' links (removed with the lab).
    fn peer_pin_dir(&self) -> PathBuf {
        PathBuf::from("/sys/fs/bpf").join(format!("{}-peers", self.id))
    }

    /// Detach the XDP-friendly variant's program from `host`'s `iface` (one of [`GW_PEERS`]).
    pub fn detach_peer_xdp(&self, host: Host, iface: &str) -> Result<()> {
        let pin = self.peer_pin_dir().join(format!("link-{host}-{iface}"));
        crate::links::detach_and_unpin(&pin).with_context(|| format!("detaching {}", pin.display()))
    }

    /// masq's pass-through XDP program on every peer in [`GW_PEERS`], natively.
    fn attach_peer_xdp(&self) -> Result<()> {
        use aya::programs::{Xdp, XdpMode, links::FdLink};
        let peers: Vec<(PathBuf, &'static str, Host)> =
            GW_PEERS.iter().map(|&(host, iface)| (self.ns(host).path(), iface, host)).collect();
        let pin_dir = self.peer_pin_dir();
        fs::create_dir_all(&pin_dir)?;
        // On a thread of its own: it moves between the peers' namespaces.
        thread::spawn(move || -> Result<()> {
            let mut loader = aya::EbpfLoader::new();
            loader.map_max_entries(masq_common::map_names::CONNS, 64);
            loader.map_max_entries(masq_common::map_names::PENDING_CONNS, 64);
            let mut ebpf = loader.load(crate::dataplane::EBPF_OBJECT)?;
            let xdp: &mut Xdp = ebpf
                .program_mut(masq_common::program_names::XDP_PASS)
                .context("masq_xdp_pass missing")?
                .try_into()?;
            xdp.load()?;
            for (path, iface, host) in peers {
                let ns = File::open(&path)?;
                // SAFETY: setns changes only this thread's network namespace; the fd is valid.
                if unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&ns), libc::CLONE_NEWNET) }
                    != 0
                {
                    bail!("setns into {}: {}", path.display(), std::io::Error::last_os_error());
                }
                let id = xdp
                    .attach(iface, XdpMode::Driver)
                    .with_context(|| format!("XDP on {host} {iface}"))?;
                let link = FdLink::try_from(xdp.take_link(id)?)?;
                link.pin(pin_dir.join(format!("link-{host}-{iface}")))?;
            }
            Ok(())
        })
        .join()
        .map_err(|_| anyhow!("the peer XDP thread panicked"))?
    }

    /// Applies `mode` to gw. Call once, on a lab built with [`GatewayMode::Bare`] (the default).
    pub fn configure_gateway(&self, mode: GatewayMode) -> Result<()> {
        for (host, lines) in mode.scripts() {
            self.run_script(host, &lines)
                .with_context(|| format!("configuring the lab for gw as {mode:?}"))?;
        }
        Ok(())
    }

    /// Unique id of this lab run (`masq-<pid>-<random>`).
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn ns(&self, host: Host) -> &NetNs {
        self.namespaces
            .iter()
            .find_map(|(h, ns)| (*h == host).then_some(ns))
            .unwrap_or_else(|| panic!("lab namespace of {host} not created"))
    }

    /// Per-run directory for logs, captures and generated files.
    pub fn run_dir(&self) -> &Path {
        &self.run_dir
    }

    /// A bpffs directory unique to this run, removed with the lab (bpffs is shared by all namespaces).
    pub fn pin_dir(&self) -> PathBuf {
        PathBuf::from("/sys/fs/bpf").join(&self.id)
    }

    /// Runs `args` inside `host`; a non-zero exit is still `Ok` (inspect `status`).
    pub fn exec(&self, host: Host, args: &[&str]) -> Result<Output> {
        self.in_host(host, args)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {} in {host}", args.join(" ")))
    }

    /// Starts `args` in the background inside `host`, output to a log file in the run directory.
    pub fn spawn(&self, host: Host, args: &[&str]) -> Result<LabChild> {
        let program = args.first().context("empty command")?;
        let program = Path::new(program).file_name().unwrap_or_default();
        let n = self.spawned.fetch_add(1, Ordering::Relaxed);
        let log = self.run_dir.join(format!("{n:02}-{host}-{}.log", program.to_string_lossy()));
        self.spawn_logged(self.in_host(host, args), &format!("{host}: {}", args.join(" ")), log)
    }

    /// Starts `masq run -c <config> --pin-dir <pin_dir> <extra_args>` on gw and waits for
    /// [`MASQ_READY_LINE`] in its log (20 s, then an error with the log's tail).
    ///
    /// Uses `nsenter --net`, not `ip netns exec`, which remounts /sys and so hides /sys/fs/bpf.
    pub fn start_masq(
        &self,
        masq_bin: &Path,
        config: &Path,
        pin_dir: &Path,
        extra_args: &[&str],
    ) -> Result<LabChild> {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.ns(Host::Gw).path().display())).arg("--").arg(masq_bin);
        self.wait_for_masq(cmd, config, pin_dir, extra_args)
    }

    /// As [`Lab::start_masq`], started the way many users do: `ip netns exec`, which gives masq
    /// a private mount namespace with a fresh /sys (masq must still pin on the host's bpffs).
    pub fn start_masq_netns_exec(
        &self,
        masq_bin: &Path,
        config: &Path,
        pin_dir: &Path,
    ) -> Result<LabChild> {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", self.ns(Host::Gw).name()]).arg(masq_bin);
        self.wait_for_masq(cmd, config, pin_dir, &[])
    }

    /// Runs `<cmd> run -c <config> --pin-dir <pin_dir> <extra_args>` and waits for
    /// [`MASQ_READY_LINE`] in its log.
    fn wait_for_masq(
        &self,
        mut cmd: Command,
        config: &Path,
        pin_dir: &Path,
        extra_args: &[&str],
    ) -> Result<LabChild> {
        cmd.arg("run").arg("-c").arg(config).arg("--pin-dir").arg(pin_dir).args(extra_args);
        let n = self.spawned.fetch_add(1, Ordering::Relaxed);
        let log = self.run_dir.join(format!("{n:02}-gw-masq.log"));
        let mut masq = self.spawn_logged(cmd, "masq on gw", log.clone())?;
        let deadline = Instant::now() + MASQ_READY_TIMEOUT;
        loop {
            let text = fs::read_to_string(&log).unwrap_or_default();
            if text.lines().any(|l| l.contains(MASQ_READY_LINE)) {
                return Ok(masq);
            }
            if let Some(status) = masq.child.try_wait()? {
                bail!(
                    "masq exited ({status}) before it was ready; end of {}:\n{}",
                    log.display(),
                    tail(&text, 30)
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "masq not ready after {}s (no \"{MASQ_READY_LINE}\"); end of {}:\n{}",
                    MASQ_READY_TIMEOUT.as_secs(),
                    log.display(),
                    tail(&text, 30)
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts tcpdump on `iface` of `host` and returns once it is listening.
    pub fn capture(&self, host: Host, iface: &str, bpf_filter: &str) -> Result<Capture> {
        let n = self.spawned.fetch_add(1, Ordering::Relaxed);
        let file = self.run_dir.join(format!("{n:02}-{host}-{iface}.pcap"));
        let log = file.with_extension("log");
        let file_arg = file.to_string_lossy().into_owned();
        // -Z root: tcpdump would otherwise drop to user tcpdump and fail to write the run dir.
        let mut args = vec![
            "tcpdump",
            "-n",
            "-l",
            "-U",
            "--immediate-mode",
            "-Z",
            "root",
            "-i",
            iface,
            "-w",
            &file_arg,
        ];
        args.extend(bpf_filter.split_whitespace());
        let mut child = self.spawn_logged(
            self.in_host(host, &args),
            &format!("{host}: tcpdump -i {iface} {bpf_filter}"),
            log.clone(),
        )?;
        wait_for(LISTEN_TIMEOUT, || {
            if let Some(status) = child.child.try_wait()? {
                bail!(
                    "tcpdump on {host} {iface} exited ({status}): {}",
                    fs::read_to_string(&log).unwrap_or_default().trim()
                );
            }
            Ok(fs::read_to_string(&log)?.contains("listening on"))
        })
        .with_context(|| format!("tcpdump on {host} {iface} did not start listening"))?;
        Ok(Capture { child, file })
    }

    /// Serves `reply` (plus a newline) to every TCP connection on `port` of `host`.
    pub fn serve_tcp(&self, host: Host, port: u16, reply: &str) -> Result<LabChild> {
        self.serve(host, "tcp", port, &self.reply_file(host, "tcp", port, reply)?)
    }

    /// Answers every UDP datagram to `port` of `host` with `reply` (plus a newline).
    pub fn serve_udp(&self, host: Host, port: u16, reply: &str) -> Result<LabChild> {
        self.serve(host, "udp", port, &self.reply_file(host, "udp", port, reply)?)
    }

    /// Answers every TCP connection to `port` of `host` with the peer's `address:port` as
    /// `host` sees it: who a masqueraded connection came from.
    pub fn serve_tcp_peer_address(&self, host: Host, port: u16) -> Result<LabChild> {
        self.serve(host, "tcp", port, "SYSTEM:echo $SOCAT_PEERADDR")
    }

    fn reply_file(&self, host: Host, proto: &str, port: u16, reply: &str) -> Result<String> {
        let reply_file = self.run_dir.join(format!("reply-{host}-{proto}-{port}.txt"));
        fs::write(&reply_file, format!("{reply}\n"))?;
        Ok(format!("SYSTEM:cat {}", reply_file.display()))
    }

    /// socat on `host` answering `port` with `answer` (a socat address), once it listens.
    fn serve(&self, host: Host, proto: &str, port: u16, answer: &str) -> Result<LabChild> {
        let listen = match proto {
            "tcp" => format!("TCP-LISTEN:{port},fork,reuseaddr"),
            _ => format!("UDP-RECVFROM:{port},fork,reuseaddr"),
        };
        let server = self.spawn(host, &["socat", &listen, answer])?;
        let ss_filter = format!("sport = :{port}");
        let ss_proto = if proto == "tcp" { "-t" } else { "-u" };
        wait_for(LISTEN_TIMEOUT, || {
            let out = self.exec(host, &["ss", "-Hln", ss_proto, &ss_filter])?;
            Ok(!out.stdout.is_empty())
        })
        .with_context(|| format!("socat on {host} not listening on {proto} port {port}"))?;
        Ok(server)
    }

    /// Connects from `host` to `addr:port` and reads until the server closes. `None` when it
    /// fails or takes longer than `timeout`; the reply's trailing newline is removed.
    pub fn tcp_request(
        &self,
        host: Host,
        addr: Ipv4Addr,
        port: u16,
        timeout: Duration,
    ) -> Result<Option<String>> {
        Ok(self.ns(host).enter(move || {
            let deadline = Instant::now() + timeout;
            let mut stream =
                TcpStream::connect_timeout(&SocketAddr::from((addr, port)), timeout).ok()?;
            let mut reply = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                let left = deadline.checked_duration_since(Instant::now())?;
                stream.set_read_timeout(Some(left.max(Duration::from_millis(1)))).ok()?;
                match stream.read(&mut buf).ok()? {
                    0 => break,
                    n => reply.extend_from_slice(&buf[..n]),
                }
            }
            Some(String::from_utf8_lossy(&reply).trim_end_matches('\n').to_string())
        }))
    }

    /// Sends `payload` from `host` to `addr:port` over UDP (again every half second) and returns
    /// the first reply datagram (trailing newline removed); `None` when none arrives within
    /// `timeout`.
    pub fn udp_request(
        &self,
        host: Host,
        addr: Ipv4Addr,
        port: u16,
        payload: &str,
        timeout: Duration,
    ) -> Result<Option<String>> {
        let payload = payload.as_bytes().to_vec();
        self.ns(host).enter(move || {
            let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
            socket.connect((addr, port))?;
            let deadline = Instant::now() + timeout;
            let mut buf = [0u8; 65536];
            // Sent again every half second, as a resolver does: a datagram lost on a loaded
            // machine, or refused while socat's forking server re-listens, is not an answer.
            while let Some(left) = deadline.checked_duration_since(Instant::now()) {
                socket.send(&payload)?;
                socket.set_read_timeout(Some(left.min(UDP_RETRY).max(Duration::from_millis(1))))?;
                match socket.recv(&mut buf) {
                    Ok(n) => {
                        let text = String::from_utf8_lossy(&buf[..n]);
                        return Ok(Some(text.trim_end_matches('\n').to_string()));
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                        thread::sleep(Duration::from_millis(100));
                    }
                    Err(_) => {}
                }
            }
            Ok(None)
        })
    }

    /// The MAC address of `host`'s `iface`.
    pub fn mac(&self, host: Host, iface: &str) -> Result<[u8; 6]> {
        let text = self.ns(host).run_ok(&format!("cat /sys/class/net/{iface}/address"))?;
        parse_mac(&text).ok_or_else(|| anyhow!("{host} {iface}: bad MAC {text:?}"))
    }

    /// A raw IPv4 socket in `host`'s namespace, to send crafted packets (what an attacker would).
    pub fn raw_ip_socket(&self, host: Host) -> Result<RawIpSocket> {
        self.ns(host).enter(|| {
            // SAFETY: plain socket(2); the fd is owned at once.
            let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
            if fd < 0 {
                bail!("raw socket: {}", std::io::Error::last_os_error());
            }
            // SAFETY: a fresh fd nobody else owns.
            Ok(RawIpSocket(unsafe {
                <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd)
            }))
        })
    }

    /// One ICMP echo from `host` to `addr`; true when answered within `timeout` (whole seconds).
    pub fn ping(&self, host: Host, addr: Ipv4Addr, timeout: Duration) -> Result<bool> {
        let wait = timeout.as_secs().max(1).to_string();
        let out =
            self.exec(host, &["ping", "-n", "-q", "-c", "1", "-W", &wait, &addr.to_string()])?;
        Ok(out.status.success())
    }

    /// Packets dropped so far as spoofed by an ISP router's ingress filter (its iptables counter).
    /// Panics for hosts that are not ISP routers or when the counter cannot be read.
    pub fn spoof_drops(&self, isp: Host) -> u64 {
        assert!(matches!(isp, Host::IspA | Host::IspB), "{isp} has no spoof filter");
        let out = self
            .ns(isp)
            .run_ok("iptables -w -nvx -L FORWARD")
            .unwrap_or_else(|err| panic!("reading {isp}'s FORWARD counters: {err:#}"));
        out.lines()
            .find(|l| l.contains("/* spoofed */"))
            .and_then(|l| l.split_whitespace().next()?.parse().ok())
            .unwrap_or_else(|| panic!("no spoof rule counter in {isp}'s FORWARD chain:\n{out}"))
    }

    /// How to get a shell in each host, one line per host.
    pub fn describe_hosts(&self) -> String {
        self.namespaces
            .iter()
            .map(|(host, ns)| format!("  {:<8} ip netns exec {} bash\n", host.name(), ns.name()))
            .collect()
    }

    /// Shell command that removes the lab by hand (for when this process cannot).
    pub fn teardown_command(&self) -> String {
        let mut cmd = String::new();
        for (_, ns) in &self.namespaces {
            cmd += &format!("ip netns pids {0} | xargs -r kill; ip netns del {0}; ", ns.name());
        }
        cmd + &format!("rm -rf {} {}", self.pin_dir().display(), self.run_dir.display())
    }

    fn in_host(&self, host: Host, args: &[&str]) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", self.ns(host).name()]).args(args);
        cmd
    }

    fn run_script(&self, host: Host, lines: &[impl AsRef<str>]) -> Result<()> {
        for line in lines {
            let line = line.as_ref();
            self.log_command(host.name(), line);
            let args: Vec<&str> = line.split_whitespace().collect();
            self.ns(host).run(&args).with_context(|| format!("setting up {host}: {line}"))?;
        }
        Ok(())
    }

    fn log_command(&self, host: &str, line: &str) {
        if self.verbose {
            println!("lab[{host}]: {line}");
        }
    }

    /// Spawns `cmd` in its own process group with stdout and stderr appended to `log`.
    fn spawn_logged(&self, mut cmd: Command, what: &str, log: PathBuf) -> Result<LabChild> {
        let out = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        cmd.stdin(Stdio::null()).stdout(out.try_clone()?).stderr(out).process_group(0);
        let child = cmd.spawn().with_context(|| format!("starting {what}"))?;
        let pid = child.id() as i32;
        registry().children.push(pid);
        self.pids.lock().unwrap_or_else(|p| p.into_inner()).push(pid);
        Ok(LabChild { child, what: what.to_string(), log })
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Tun devices first: held by the relay, they would outlive their namespaces.
        self.relays.clear();
        // Children still running (a LabChild that outlives its lab) would keep namespaces alive.
        let pids = std::mem::take(&mut *self.pids.lock().unwrap_or_else(|p| p.into_inner()));
        let live = registry().children.clone();
        for pid in pids.into_iter().filter(|pid| live.contains(pid)) {
            signal_group(pid, libc::SIGKILL);
        }
        for (_, ns) in self.namespaces.drain(..) {
            registry().namespaces.retain(|n| n != ns.name());
            drop(ns);
        }
        let (pin_dir, peer_pin_dir) = (self.pin_dir(), self.peer_pin_dir());
        remove_dir(&pin_dir);
        remove_dir(&peer_pin_dir);
        // The gateway's port range died with its namespace; what masq saved of it goes too.
        let _ = fs::remove_file(crate::state::ports_file(&pin_dir));
        let _ = fs::remove_file(crate::events::socket_path(&pin_dir));
        if !self.keep_run_dir {
            remove_dir(&self.run_dir);
        }
        registry().dirs.retain(|d| *d != pin_dir && *d != peer_pin_dir && *d != self.run_dir);
    }
}

/// A background process in the lab; on drop: SIGTERM to its process group, up to 5 s, then SIGKILL.
pub struct LabChild {
    child: Child,
    what: String,
    log: PathBuf,
}

impl LabChild {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its stdout and stderr.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `Some(status)` once it has exited.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        Ok(self.child.try_wait()?)
    }

    /// Stops it as Drop does and returns how it ended.
    pub fn stop(mut self) -> Result<ExitStatus> {
        self.terminate().with_context(|| format!("stopping {}", self.what))
    }

    fn terminate(&mut self) -> Result<ExitStatus> {
        let pid = self.child.id() as i32;
        let status = match self.child.try_wait()? {
            Some(status) => status,
            None => {
                signal_group(pid, libc::SIGTERM);
                let deadline = Instant::now() + CHILD_STOP_GRACE;
                loop {
                    if let Some(status) = self.child.try_wait()? {
                        break status;
                    }
                    if Instant::now() > deadline {
                        signal_group(pid, libc::SIGKILL);
                        break self.child.wait()?;
                    }
                    thread::sleep(Duration::from_millis(20));
                }
            }
        };
        // Leftovers of the group (socat's per-connection children).
        signal_group(pid, libc::SIGKILL);
        registry().children.retain(|&p| p != pid);
        Ok(status)
    }
}

impl Drop for LabChild {
    fn drop(&mut self) {
        if let Err(err) = self.terminate() {
            eprintln!("warning: stopping {}: {err:#}", self.what);
        }
    }
}

/// A running tcpdump.
pub struct Capture {
    child: LabChild,
    file: PathBuf,
}

impl Capture {
    pub fn file(&self) -> &Path {
        &self.file
    }

    /// Stops tcpdump and returns the packets as `tcpdump -n -r` lines.
    pub fn stop(self) -> Result<Vec<String>> {
        // Packets seen just before stopping may still be on their way through the ring buffer.
        thread::sleep(Duration::from_millis(200));
        let Capture { child, file } = self;
        child.stop()?;
        let out = Command::new("tcpdump")
            .arg("-n")
            .arg("-r")
            .arg(&file)
            .output()
            .context("running tcpdump -r")?;
        if !out.status.success() {
            bail!(
                "tcpdump -n -r {} failed: {}",
                file.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect())
    }
}

/// Source address and port (None for ICMP) of each IPv4 packet in `tcpdump -n` lines.
pub fn packet_sources(lines: &[String]) -> Vec<(Ipv4Addr, Option<u16>)> {
    lines
        .iter()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            words.find(|w| *w == "IP")?;
            let src = words.next()?;
            match src.rsplit_once('.') {
                Some((addr, port)) if addr.matches('.').count() == 3 => {
                    Some((addr.parse().ok()?, Some(port.parse().ok()?)))
                }
                _ => Some((src.parse().ok()?, None)),
            }
        })
        .collect()
}

/// Number of packets from `addr` (and `port`, when given) in `tcpdump -n` lines.
pub fn count_from(lines: &[String], addr: Ipv4Addr, port: Option<u16>) -> usize {
    packet_sources(lines)
        .into_iter()
        .filter(|&(a, p)| a == addr && (port.is_none() || p == port))
        .count()
}

// ---------------------------------------------------------------------------------------------
// Cleanup on Ctrl-C / SIGTERM

#[derive(Default)]
struct Registry {
    namespaces: Vec<String>,
    /// Process-group leaders.
    children: Vec<i32>,
    dirs: Vec<PathBuf>,
}

static REGISTRY: Mutex<Registry> =
    Mutex::new(Registry { namespaces: Vec::new(), children: Vec::new(), dirs: Vec::new() });
/// Set while [`wait_for_ctrl_c`] waits: the signal then wakes it instead of exiting.
static WAITING_FOR_SIGNAL: AtomicBool = AtomicBool::new(false);
static SIGNALLED: (Mutex<bool>, Condvar) = (Mutex::new(false), Condvar::new());

fn registry() -> MutexGuard<'static, Registry> {
    REGISTRY.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn install_signal_handler() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if let Err(err) = ctrlc::set_handler(on_signal) {
            eprintln!("warning: no Ctrl-C cleanup for the lab: {err}");
        }
    });
}

fn on_signal() {
    if WAITING_FOR_SIGNAL.load(Ordering::SeqCst) {
        let (flag, wake) = &SIGNALLED;
        *flag.lock().unwrap_or_else(|p| p.into_inner()) = true;
        wake.notify_all();
        return;
    }
    eprintln!("masq lab: interrupted, removing the lab");
    let Registry { namespaces, children, dirs } = std::mem::take(&mut *registry());
    for &pid in &children {
        signal_group(pid, libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut alive = children;
    while !alive.is_empty() && Instant::now() < deadline {
        // SAFETY: waitpid on our own children; WNOHANG never blocks.
        alive
            .retain(|&pid| unsafe { libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG) } == 0);
        thread::sleep(Duration::from_millis(20));
    }
    for &pid in &alive {
        signal_group(pid, libc::SIGKILL);
    }
    for name in &namespaces {
        let _ = Command::new("ip").args(["netns", "del", name]).status();
    }
    let keep_logs = std::env::var("MASQ_LAB_KEEP_LOGS").is_ok_and(|v| v == "1" || v == "true");
    for dir in &dirs {
        if dir.starts_with("/sys/fs/bpf") || !keep_logs {
            remove_dir(dir);
        }
    }
    std::process::exit(130);
}

/// Blocks until Ctrl-C or SIGTERM; the lab stays up meanwhile and is removed by the caller's drops.
pub fn wait_for_ctrl_c() {
    install_signal_handler();
    WAITING_FOR_SIGNAL.store(true, Ordering::SeqCst);
    let (flag, wake) = &SIGNALLED;
    let mut signalled = flag.lock().unwrap_or_else(|p| p.into_inner());
    while !*signalled {
        signalled = wake.wait(signalled).unwrap_or_else(|p| p.into_inner());
    }
    *signalled = false;
    WAITING_FOR_SIGNAL.store(false, Ordering::SeqCst);
}

fn signal_group(pgid: i32, signal: i32) {
    // SAFETY: kill has no memory-safety preconditions; a negative pid names the process group.
    unsafe { libc::kill(-pgid, signal) };
}

fn remove_dir(dir: &Path) {
    if let Err(err) = fs::remove_dir_all(dir)
        && err.kind() != std::io::ErrorKind::NotFound
    {
        eprintln!("warning: removing {}: {err}", dir.display());
    }
}

/// Random bits from std's per-process hash seed.
fn random() -> u64 {
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    hasher.finish()
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// `aa:bb:cc:dd:ee:ff` (as /sys prints it) as bytes.
fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.trim().split(':');
    for byte in &mut mac {
        *byte = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// How long `Lab::udp_request` waits for an answer before sending again.
const UDP_RETRY: Duration = Duration::from_millis(500);

/// A raw IPv4 socket (`Lab::raw_ip_socket`): sends IPv4 packets exactly as built, spoofed
/// sources included, routed by their destination in the namespace it was opened in.
pub struct RawIpSocket(std::os::fd::OwnedFd);

impl RawIpSocket {
    /// Send one IPv4 packet (header included) to its destination address.
    pub fn send(&self, packet: &[u8]) -> Result<()> {
        use std::os::fd::AsRawFd as _;
        let dst = packet.get(16..20).context("not an IPv4 packet")?;
        let addr = libc::sockaddr_in {
            sin_family: libc::AF_INET as u16,
            sin_port: 0,
            sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(dst.try_into()?) },
            sin_zero: [0; 8],
        };
        // SAFETY: valid buffer and address of the sizes given.
        let sent = unsafe {
            libc::sendto(
                self.0.as_raw_fd(),
                packet.as_ptr().cast(),
                packet.len(),
                0,
                (&addr as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as u32,
            )
        };
        if sent != packet.len() as isize {
            bail!("sendto: {}", std::io::Error::last_os_error());
        }
        Ok(())
    }
}

/// Polls `ready` every 50 ms until it returns true, fails, or `timeout` passes.
fn wait_for(timeout: Duration, mut ready: impl FnMut() -> Result<bool>) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if ready()? {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(anyhow!("timed out after {}s", timeout.as_secs()));
        }
        thread::sleep(Duration::from_millis(50));
    }
}

// ---------------------------------------------------------------------------------------------
// `masq lab`: the demo

const EXAMPLE_CONFIG: &str = include_str!("../../examples/masq-gw.toml");

/// The example config with `dsl` added to dsl's `[[uplink]]` (its own keys, then subtables
/// such as `[uplink.health]`).
pub fn example_with_dsl(dsl: &str) -> String {
    let anchor = format!("gateway = \"{ISP_A_ROUTER}\"\n");
    assert!(EXAMPLE_CONFIG.contains(&anchor), "the example's dsl gateway line moved");
    EXAMPLE_CONFIG.replacen(&anchor, &format!("{anchor}{dsl}\n"), 1)
}
const DEMO_PORT: u16 = 80;
const DEMO_REPLY: &str = "hello from isolde";
const DEMO_TIMEOUT: Duration = Duration::from_secs(3);

/// One uplink of gw as the demo checks it: the public address published there, gw's interface and
/// the ISP router behind it.
#[derive(Clone, Copy, PartialEq)]
struct DemoUplink {
    public: Ipv4Addr,
    gw_iface: &'static str,
    isp: Host,
    isp_label: &'static str,
}

const DEMO_UPLINKS: [DemoUplink; 2] = [
    DemoUplink { public: PUBLIC_ISP_A, gw_iface: "eth4", isp: Host::IspA, isp_label: "ISP A" },
    DemoUplink { public: PUBLIC_ISP_B, gw_iface: "eth1", isp: Host::IspB, isp_label: "ISP B" },
];

/// Builds the lab, runs masq on gw with the default config and checks that isolde answers on both
/// public addresses (TCP and ping), each reply leaving by the uplink its request came in on, with the
/// public address as source. With `keep`, leaves everything up until Ctrl-C. Err when a check fails.
pub fn run_demo(masq_bin: &Path, keep: bool) -> Result<()> {
    println!("masq lab: building the seed topology in network namespaces");
    let lab = Lab::build(LabOptions::default())?;
    let config = lab.run_dir().join("masq-gw.toml");
    fs::write(&config, EXAMPLE_CONFIG)?;
    let pin_dir = lab.pin_dir();
    println!("masq lab: starting masq on gw ({})", config.display());
    let masq = lab.start_masq(masq_bin, &config, &pin_dir, &[])?;
    let server = lab.serve_tcp(Host::Isolde, DEMO_PORT, DEMO_REPLY)?;

    let mut failures = 0;
    for uplink in DEMO_UPLINKS {
        let public = uplink.public;
        let tcp =
            demo_check(&lab, uplink, &format!("{public}:{DEMO_PORT}"), "tcp src port 80", || {
                let reply = lab.tcp_request(Host::Client, public, DEMO_PORT, DEMO_TIMEOUT)?;
                Ok(reply.map(|text| format!("reply {text:?}")))
            })?;
        let ping = demo_check(
            &lab,
            uplink,
            &format!("{public} ping"),
            "icmp[icmptype] = icmp-echoreply",
            || {
                let answered = lab.ping(Host::Client, public, DEMO_TIMEOUT)?;
                Ok(answered.then(|| "echo reply".to_string()))
            },
        )?;
        failures += usize::from(!tcp) + usize::from(!ping);
    }
    failures += demo_outbound(&lab)?;

    if keep {
        println!("\nThe lab stays up. Enter a host with:\n{}", lab.describe_hosts());
        println!("masq log: {}", masq.log_path().display());
        println!("pins:     {}", pin_dir.display());
        println!("Tear down: Ctrl-C here, or `kill {}` from another shell.", std::process::id());
        println!("If this process was killed with SIGKILL: {}", lab.teardown_command());
        wait_for_ctrl_c();
        println!("masq lab: removing the lab");
    }
    drop(server);
    drop(masq);
    drop(lab);
    if failures > 0 {
        bail!("{failures} lab check(s) failed");
    }
    println!("masq lab: all checks passed");
    Ok(())
}

/// Outbound: tristan (policy: dsl) and isolde (default: isp-b) reach the client, which reports
/// the address each connection came from. Returns how many checks failed.
fn demo_outbound(lab: &Lab) -> Result<usize> {
    const PORT: u16 = 8080;
    let _server = lab.serve_tcp_peer_address(Host::Client, PORT)?;
    let mut failures = 0;
    for (host, expected, why) in [
        (Host::Tristan, GW_ISP_A, "dsl, by its [[policy]]"),
        (Host::Isolde, GW_ISP_B, "isp-b, the default policy"),
    ] {
        let seen = lab.tcp_request(host, CLIENT, PORT, DEMO_TIMEOUT)?;
        let seen_addr = seen.as_deref().and_then(|s| s.split(':').next()?.parse::<Ipv4Addr>().ok());
        let ok = seen_addr == Some(expected);
        failures += usize::from(!ok);
        let label = format!("{host} -> {CLIENT}:{PORT}");
        let what = seen.map_or("no answer".to_string(), |s| format!("seen by the client from {s}"));
        let verdict = if ok { "OK" } else { "FAILED" };
        println!("{label:<30} {what} (masqueraded: {why})  {verdict}");
    }
    Ok(failures)
}

/// Runs `request` from the client (it describes the answer, `None` when there was none) while
/// capturing `filter` on both ISP routers' gw-facing interfaces, prints one line saying by which
/// uplink the reply left gw, and returns whether that was `expected` with its public source.
fn demo_check(
    lab: &Lab,
    expected: DemoUplink,
    label: &str,
    filter: &str,
    request: impl FnOnce() -> Result<Option<String>>,
) -> Result<bool> {
    let captures = DEMO_UPLINKS.map(|uplink| {
        lab.capture(uplink.isp, ISP_GW_SIDE_IFACE, filter).map(|capture| (uplink, capture))
    });
    let drops_before = DEMO_UPLINKS.map(|uplink| lab.spoof_drops(uplink.isp));
    let answer = request()?;
    // (uplink, source address) of every reply seen leaving gw.
    let mut seen: Vec<(DemoUplink, Ipv4Addr)> = Vec::new();
    for capture in captures {
        let (uplink, capture) = capture?;
        for (src, _) in packet_sources(&capture.stop()?) {
            if !seen.contains(&(uplink, src)) {
                seen.push((uplink, src));
            }
        }
    }
    let mut route = if seen.is_empty() {
        "and nothing left masq-gw toward either ISP".to_string()
    } else {
        seen.iter()
            .map(|(uplink, src)| {
                format!(
                    "left masq-gw by {} ({}) with source {src}",
                    uplink.gw_iface, uplink.isp_label
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let ok = answer.is_some()
        && !seen.is_empty()
        && seen.iter().all(|&(uplink, src)| uplink == expected && src == expected.public);
    if !ok {
        for (uplink, before) in DEMO_UPLINKS.iter().zip(drops_before) {
            let dropped = lab.spoof_drops(uplink.isp) - before;
            if dropped > 0 {
                route += &format!(", {} dropped {dropped} as spoofed", uplink.isp_label);
            }
        }
    }
    println!(
        "client -> {label:<20} {} {route}  {}",
        answer.as_deref().unwrap_or("no reply"),
        if ok { "OK" } else { "FAILED" }
    );
    Ok(ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The lines `scripts` run on `host`.
    fn lines_on(scripts: &[(Host, Vec<String>)], host: Host) -> Vec<&str> {
        scripts
            .iter()
            .filter(|(h, _)| *h == host)
            .flat_map(|(_, l)| l)
            .map(String::as_str)
            .collect()
    }

    #[test]
    fn every_script_expands_to_the_seed_addresses() {
        let hosts: Vec<_> = Host::ALL.map(|host| (host, host.setup())).into();
        let bridge = LanDevice::Bridge.setup();
        let [plain_dnat, classic, forward] =
            [GatewayMode::PlainDnat, GatewayMode::Classic, GatewayMode::Forward]
                .map(GatewayMode::scripts);
        assert!(LanDevice::Plain.setup().is_empty() && GatewayMode::Bare.scripts().is_empty());
        let all = [&hosts, &bridge, &plain_dnat, &classic, &forward];
        for (host, lines) in all.into_iter().flatten() {
            for line in lines {
                assert!(!line.contains(['{', '}']), "{host}: a placeholder left in {line:?}");
            }
        }
        for (scripts, host, line) in [
            (&hosts, Host::Client, "ip addr add 64.70.12.210/24 dev eth0"),
            (&hosts, Host::Client, "ip route add default via 64.70.12.1"),
            (&hosts, Host::Core, "ip addr add 198.18.1.1/30 dev to-ispa"),
            (&hosts, Host::Core, "ip route add 67.17.28.0/28 via 198.18.1.2"),
            (&hosts, Host::Core, "ip route add 205.254.211.0/24 via 198.18.2.2"),
            (
                &hosts,
                Host::IspA,
                "iptables -w -A FORWARD -i to-gw ! -s 67.17.28.0/28 -m comment --comment spoofed -j DROP",
            ),
            (&hosts, Host::IspA, "ip route add default via 198.18.1.1"),
            (&hosts, Host::IspB, "ip addr add 205.254.211.254/24 dev to-gw"),
            (&hosts, Host::Gw, "ip addr add 192.168.100.254/24 dev eth0"),
            (&hosts, Host::Gw, "ip addr add 67.17.28.12/28 dev eth4"),
            (&hosts, Host::Gw, "ip route add default via 205.254.211.254"),
            (&hosts, Host::Isolde, "ip addr add 192.168.100.17/24 dev eth0"),
            (&hosts, Host::Tristan, "ip route add default via 192.168.100.254"),
            (&bridge, Host::Gw, "ip addr add 192.168.100.254/24 dev br-lan"),
            (
                &plain_dnat,
                Host::Gw,
                "iptables -w -t nat -A PREROUTING -d 205.254.211.17 -j DNAT --to-destination 192.168.100.17",
            ),
            (
                &classic,
                Host::Gw,
                "ip route add 192.168.100.0/24 dev eth0 proto kernel scope link src 192.168.100.254 table 201",
            ),
            (&classic, Host::Gw, "ip route add default via 205.254.211.254 dev eth1 table 202"),
            (&classic, Host::Gw, "ip rule add from 67.17.28.12 lookup 201"),
            (&classic, Host::Gw, "ip rule add fwmark 2 lookup 202"),
            (&classic, Host::Gw, "ip addr add 67.17.28.10/32 dev eth4"),
            (&forward, Host::Gw, "ip route add 64.70.12.0/24 via 67.17.28.14 dev eth4"),
            (&forward, Host::Core, "ip route add 192.168.100.0/24 via 198.18.1.2"),
            (&forward, Host::IspA, "iptables -w -I FORWARD -i to-gw -s 192.168.100.0/24 -j ACCEPT"),
        ] {
            let lines = lines_on(scripts, host);
            assert!(lines.contains(&line), "{host} lacks {line:?}: {lines:#?}");
        }
    }

    #[test]
    fn example_with_dsl_adds_after_the_dsl_gateway_line() {
        let config = example_with_dsl("# added");
        assert!(config.contains("gateway = \"67.17.28.14\"\n# added\n"), "{config}");
    }

    #[test]
    fn mac_parses() {
        assert_eq!(parse_mac("02:00:0a:ff:10:01\n"), Some([2, 0, 10, 255, 16, 1]));
        assert_eq!(parse_mac("02:00"), None);
    }
}
