//! masq's kernel policy tables: one routing table per uplink and the ip rules that select them.
//!
//! For uplink `i` of the spec masq installs, over netlink and tagged with [`MASQ_PROTOCOL`]:
//! - table `table`: a copy of main's non-default IPv4 routes plus `default via <gateway> dev <uplink>`;
//! - `from <address> lookup <table>` at priority [`RULE_PRIORITY_FROM`]` + i` (the gateway's own traffic);
//! - `fwmark <mark>/<mask> lookup <table>` at [`RULE_PRIORITY_FWMARK`]` + i` (packets masq marked).
//!
//! The protocol tag lets `masq down` find everything again after a crash ([`remove_all`]), and lets
//! [`PolicyTables::install`] adopt the identical leftovers of an earlier run instead of failing on them.
//! Routes in masq's tables that carry another protocol are never touched.

use std::{
    collections::{BTreeMap, HashSet},
    fmt,
    net::{IpAddr, Ipv4Addr},
    sync::{Arc, Mutex as StdMutex, Weak},
    time::Duration,
};

use anyhow::{Context, Result, anyhow, ensure};
use futures::{StreamExt, TryStreamExt};
use rtnetlink::{
    Handle, IpVersion, MulticastGroup, RouteMessageBuilder,
    packet_core::{NetlinkMessage, NetlinkPayload},
    packet_route::{
        AddressFamily, RouteNetlinkMessage,
        route::{
            RouteAddress, RouteAttribute, RouteFlags, RouteMessage, RouteMetric, RouteNextHop,
            RouteNextHopFlags, RouteProtocol, RouteScope, RouteType,
        },
        rule::{RuleAction, RuleAttribute, RuleMessage},
    },
};
use tokio::{
    sync::{Mutex, mpsc},
    task::JoinHandle,
    time::Instant,
};

use crate::config::RESERVED_TABLES;

/// `from <uplink address> lookup <table>` rules sit at this priority plus the uplink's index.
pub const RULE_PRIORITY_FROM: u32 = 1000;
/// `fwmark <mark>/<mask> lookup <table>` rules sit at this priority plus the uplink's index.
pub const RULE_PRIORITY_FWMARK: u32 = 1100;
/// Protocol id of every route and rule masq installs (`proto 109` in `ip` output).
///
/// Unassigned: linux/rtnetlink.h reserves 0–18, 42 (babel), 84 (ovn), 99 (openr) and 186–192,
/// iproute2's rt_protos names no more, FRR's private ids are 186–198. 109 is ASCII `m`.
pub const MASQ_PROTOCOL: u8 = 109;

/// Uplinks one rule range has room for: the two ranges must not overlap.
const RULE_RANGE: usize = (RULE_PRIORITY_FWMARK - RULE_PRIORITY_FROM) as usize;
const RT_TABLE_MAIN: u32 = 254;
/// Header value for table ids above 255, which travel in the table attribute.
const RT_TABLE_COMPAT: u8 = 252;
/// The monitor syncs this long after the first change of a burst.
const SETTLE_DELAY: Duration = Duration::from_millis(200);
/// The monitor also syncs this often, for changes the kernel does not announce (routes flushed
/// with a link going down).
const RESYNC_INTERVAL: Duration = Duration::from_secs(30);

/// One uplink's routing table and the marks and address that select it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UplinkTable {
    pub name: String,
    pub table: u32,
    pub mark: u32,
    /// `None` while the uplink's interface or address is missing: its table stays empty, so
    /// marked packets fall through to the next rule.
    pub route: Option<UplinkRoute>,
}

/// Where an uplink's default route leads, and the address whose traffic it carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UplinkRoute {
    pub ifindex: u32,
    pub address: Ipv4Addr,
    /// `None`: a point-to-point link (`default dev ppp0`).
    pub gateway: Option<Ipv4Addr>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicySpec {
    pub uplinks: Vec<UplinkTable>,
    /// The fwmark bits masq owns; the other bits belong to other software.
    pub mark_mask: u32,
}

impl PolicySpec {
    pub fn validate(&self) -> Result<()> {
        ensure!(
            self.uplinks.len() <= RULE_RANGE,
            "at most {RULE_RANGE} uplinks are supported, got {}",
            self.uplinks.len()
        );
        ensure!(self.mark_mask != 0, "the fwmark mask must not be 0");
        let mut tables = HashSet::new();
        let mut marks = HashSet::new();
        for uplink in &self.uplinks {
            let name = &uplink.name;
            ensure!(
                !RESERVED_TABLES.contains(&uplink.table),
                "uplink {name}: table {} is reserved (unspec, default, main or local)",
                uplink.table
            );
            ensure!(
                tables.insert(uplink.table),
                "uplink {name}: table {} is used by another uplink",
                uplink.table
            );
            ensure!(
                uplink.mark != 0 && uplink.mark & !self.mark_mask == 0,
                "uplink {name}: mark {:#x} must be non-zero and inside the mask {:#x}",
                uplink.mark,
                self.mark_mask
            );
            ensure!(
                marks.insert(uplink.mark),
                "uplink {name}: mark {:#x} is used by another uplink",
                uplink.mark
            );
            if let Some(route) = &uplink.route {
                ensure!(
                    !route.address.is_unspecified()
                        && route.gateway.is_none_or(|g| !g.is_unspecified()),
                    "uplink {name}: address and gateway must not be 0.0.0.0"
                );
            }
        }
        Ok(())
    }

    /// The rules of each uplink, in installation order.
    fn rules(&self) -> Vec<(&UplinkTable, IpRule)> {
        let from =
            self.uplinks.iter().zip(RULE_PRIORITY_FROM..).filter_map(|(uplink, priority)| {
                let selector = Selector::From(uplink.route?.address);
                Some((uplink, IpRule { priority, table: uplink.table, selector }))
            });
        let fwmark = self.uplinks.iter().zip(RULE_PRIORITY_FWMARK..).map(|(uplink, priority)| {
            let selector = Selector::FwMark { mark: uplink.mark, mask: self.mark_mask };
            (uplink, IpRule { priority, table: uplink.table, selector })
        });
        from.chain(fwmark).collect()
    }
}

/// masq's tables and rules, installed in the network namespace `install` ran in.
pub struct PolicyTables {
    netlink: Netlink,
    /// Changes when an uplink follows its interface ([`PolicyTables::update`]).
    spec: StdMutex<PolicySpec>,
    /// Rules added or adopted, removed again by `remove`.
    rules: StdMutex<Vec<IpRule>>,
    /// Syncs from the caller and the route monitor must not interleave.
    sync_lock: Mutex<()>,
}

impl PolicyTables {
    /// Opens its own netlink connection (spawned on the current tokio runtime) in the caller's
    /// network namespace, fills the uplink tables, then adds the rules. On failure, removes what it
    /// added and returns the error.
    pub async fn install(spec: PolicySpec) -> Result<PolicyTables> {
        spec.validate()?;
        let tables = PolicyTables {
            netlink: Netlink::connect()?,
            spec: StdMutex::new(spec),
            rules: StdMutex::new(Vec::new()),
            sync_lock: Mutex::new(()),
        };
        // Tables first: a rule never points at a half-filled table.
        let installed = match tables.sync_routes().await {
            Ok(()) => tables.install_rules().await,
            Err(err) => Err(err),
        };
        match installed {
            Ok(()) => Ok(tables),
            Err(err) => match tables.remove_installed().await {
                Ok(()) => Err(err.context("installing policy tables (rolled back)")),
                Err(cleanup) => Err(err.context(format!(
                    "installing policy tables; the rollback failed too: {cleanup:#}"
                ))),
            },
        }
    }

    pub fn spec(&self) -> PolicySpec {
        lock(&self.spec).clone()
    }

    /// Switch to `spec` (same uplinks, tables and marks; interfaces, addresses or gateways
    /// changed): routes first, then the rules that select them.
    pub async fn update(&self, spec: PolicySpec) -> Result<()> {
        spec.validate()?;
        {
            let _serialized = self.sync_lock.lock().await;
            *lock(&self.spec) = spec;
        }
        self.sync_routes().await?;
        self.install_rules().await
    }

    /// Makes each uplink table a copy of main's non-default IPv4 routes plus the uplink's default
    /// route: adds what is missing, deletes masq's routes that are stale. Idempotent.
    pub async fn sync_routes(&self) -> Result<()> {
        let _serialized = self.sync_lock.lock().await;
        let handle = &self.netlink.handle;
        let dump = dump_routes(handle).await?;
        let main_copies: Vec<TableRoute> = dump.iter().filter_map(copied_from_main).collect();
        let mut errors = Vec::new();
        for uplink in &self.spec().uplinks {
            if let Err(err) = sync_table(handle, uplink, &main_copies, &dump).await {
                errors.push(err.context(format!(
                    "syncing routes of uplink {} (table {})",
                    uplink.name, uplink.table
                )));
            }
        }
        combine(errors)
    }

    /// Deletes the rules and the routes masq installed.
    pub async fn remove(self) -> Result<()> {
        self.remove_installed().await
    }

    /// Adopts identical leftover rules, deletes other masq rules, adds the missing ones.
    async fn install_rules(&self) -> Result<()> {
        let _serialized = self.sync_lock.lock().await;
        let handle = self.netlink.handle.clone();
        let spec = self.spec();
        let wanted = spec.rules();
        let mut present = HashSet::new();
        for message in dump_rules(&handle).await? {
            if !is_masq_rule(&message) {
                continue;
            }
            match IpRule::parse(&message) {
                Some(rule) if wanted.iter().any(|(_, w)| *w == rule) => {
                    present.insert(rule);
                }
                _ => {
                    let label = rule_label(&message);
                    delete_rule(&handle, message)
                        .await
                        .with_context(|| format!("deleting stale masq rule {label}"))?;
                }
            }
        }
        *lock(&self.rules) = present.iter().copied().collect();
        for (uplink, rule) in wanted {
            if !present.contains(&rule) {
                add_rule(&handle, rule.to_message())
                    .await
                    .with_context(|| format!("uplink {}: adding rule `{rule}`", uplink.name))?;
                lock(&self.rules).push(rule);
            }
        }
        Ok(())
    }

    async fn remove_installed(&self) -> Result<()> {
        let handle = &self.netlink.handle;
        let mut errors = Vec::new();
        let rules = lock(&self.rules).clone();
        for rule in &rules {
            if let Err(err) = delete_rule(handle, rule.to_message()).await {
                errors.push(anyhow!(err).context(format!("deleting rule `{rule}`")));
            }
        }
        let tables: Vec<u32> = self.spec().uplinks.iter().map(|uplink| uplink.table).collect();
        if let Err(err) = delete_masq_routes(handle, Some(&tables)).await {
            errors.push(err);
        }
        combine(errors)
    }
}

fn lock<T>(mutex: &StdMutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A default route of the main table: the gateway a DHCP client (or the operator) set for an
/// interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DefaultRoute {
    pub oif: u32,
    pub gateway: Option<Ipv4Addr>,
    pub metric: u32,
}

/// Main's IPv4 default routes (those masq did not install) with their device and gateway.
pub async fn main_default_routes() -> Result<Vec<DefaultRoute>> {
    let netlink = Netlink::connect()?;
    let dump = dump_routes(&netlink.handle).await?;
    Ok(dump
        .iter()
        .filter(|m| table_of(m) == RT_TABLE_MAIN && !is_masq_route(m))
        .filter_map(TableRoute::parse)
        .filter(|r| r.prefix_len == 0 && r.kind == RouteType::Unicast)
        .filter_map(|r| Some(DefaultRoute { oif: r.oif?, gateway: r.gateway, metric: r.priority }))
        .collect())
}

/// For `masq down` and crash recovery: deletes every IPv4 rule with protocol [`MASQ_PROTOCOL`] and
/// every IPv4 route with that protocol in `tables` (all tables if `tables` is empty). Returns how
/// many rules and routes it deleted.
pub async fn remove_all(tables: &[u32]) -> Result<usize> {
    let netlink = Netlink::connect()?;
    let handle = &netlink.handle;
    let tables = (!tables.is_empty()).then_some(tables);
    let mut deleted = 0;
    let mut errors = Vec::new();
    for result in [delete_masq_rules(handle).await, delete_masq_routes(handle, tables).await] {
        match result {
            Ok(count) => deleted += count,
            Err(err) => errors.push(err),
        }
    }
    combine(errors).map(|()| deleted)
}

/// Keeps the uplink tables in sync with main; stops when dropped, aborted or stopped. It also
/// tells its owner of every link, address and route change ([`RouteMonitor::changed`]), so that
/// one netlink subscription serves the daemon's uplink following too.
pub struct RouteMonitor {
    task: JoinHandle<()>,
    changes: mpsc::Receiver<()>,
}

impl RouteMonitor {
    /// Waits for the next burst of host changes (coalesced); `None` once the monitor ended.
    pub async fn changed(&mut self) -> Option<()> {
        self.changes.recv().await
    }

    pub fn abort(&self) {
        self.task.abort();
    }

    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Stops the monitor and waits until it has let go of the tables (so that
    /// `Arc::try_unwrap` on them succeeds).
    pub async fn stop(mut self) {
        self.task.abort();
        // The task holds no strong reference between syncs; this waits out a sync in progress.
        let _cancelled = (&mut self.task).await;
    }
}

impl Drop for RouteMonitor {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Watches main-table route changes (and address and link changes, which move routes without
/// always announcing them) and calls `sync_routes` within a second of a change. Syncs once right
/// away and every 30 s besides. Ends when the tables are dropped.
pub fn spawn_route_monitor(tables: Arc<PolicyTables>) -> Result<RouteMonitor> {
    let groups = [MulticastGroup::Ipv4Route, MulticastGroup::Ipv4Ifaddr, MulticastGroup::Link];
    let (connection, handle, mut events) = rtnetlink::new_multicast_connection(&groups)
        .context("subscribing to route, address and link changes")?;
    let tables: Weak<PolicyTables> = Arc::downgrade(&tables);
    let (changed, changes) = mpsc::channel(1);
    let task = tokio::spawn(async move {
        // The connection runs as long as a handle to it exists.
        let _handle = handle;
        let mut connection = std::pin::pin!(connection);
        let mut resync = tokio::time::interval(RESYNC_INTERVAL);
        resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut due: Option<Instant> = None;
        loop {
            let settled = async move {
                match due {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            let sync_now = tokio::select! {
                () = &mut connection => {
                    eprintln!("masq: route monitor: netlink connection closed");
                    return;
                }
                event = events.next() => {
                    let Some((message, _)) = event else { return };
                    // Full: the owner has not looked yet and will see this one too.
                    let _ = changed.try_send(());
                    if needs_sync(&message) {
                        due.get_or_insert_with(|| Instant::now() + SETTLE_DELAY);
                    }
                    false
                }
                () = settled => true,
                _ = resync.tick() => true,
            };
            if sync_now {
                due = None;
                let Some(tables) = tables.upgrade() else {
                    return;
                };
                if let Err(err) = tables.sync_routes().await {
                    eprintln!("masq: route monitor: {err:#}");
                }
            }
        }
    });
    Ok(RouteMonitor { task, changes })
}

fn needs_sync(message: &NetlinkMessage<RouteNetlinkMessage>) -> bool {
    match &message.payload {
        NetlinkPayload::InnerMessage(
            RouteNetlinkMessage::NewRoute(route) | RouteNetlinkMessage::DelRoute(route),
        ) => table_of(route) == RT_TABLE_MAIN,
        NetlinkPayload::InnerMessage(
            RouteNetlinkMessage::NewAddress(_)
            | RouteNetlinkMessage::DelAddress(_)
            | RouteNetlinkMessage::NewLink(_)
            | RouteNetlinkMessage::DelLink(_),
        ) => true,
        // Events were lost: resync.
        NetlinkPayload::Overrun(_) => true,
        _ => false,
    }
}

/// A netlink connection whose task ends with it.
struct Netlink {
    handle: Handle,
    connection: JoinHandle<()>,
}

impl Netlink {
    fn connect() -> Result<Netlink> {
        let (connection, handle, _) =
            rtnetlink::new_connection().context("opening a rtnetlink socket")?;
        Ok(Netlink { handle, connection: tokio::spawn(connection) })
    }
}

impl Drop for Netlink {
    fn drop(&mut self) {
        self.connection.abort();
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct IpRule {
    priority: u32,
    table: u32,
    selector: Selector,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Selector {
    From(Ipv4Addr),
    FwMark { mark: u32, mask: u32 },
}

impl IpRule {
    fn to_message(self) -> RuleMessage {
        let mut message = RuleMessage::default();
        message.header.family = AddressFamily::Inet;
        message.header.action = RuleAction::ToTable;
        message.header.table = table_header(self.table);
        message.attributes.extend([
            RuleAttribute::Table(self.table),
            RuleAttribute::Priority(self.priority),
            RuleAttribute::Protocol(masq_protocol()),
        ]);
        match self.selector {
            Selector::From(address) => {
                message.header.src_len = 32;
                message.attributes.push(RuleAttribute::Source(address.into()));
            }
            Selector::FwMark { mark, mask } => {
                message
                    .attributes
                    .extend([RuleAttribute::FwMark(mark), RuleAttribute::FwMask(mask)]);
            }
        }
        message
    }

    /// Reads a rule of the shape masq installs; `None` for any other rule.
    fn parse(message: &RuleMessage) -> Option<IpRule> {
        let header = &message.header;
        if header.family != AddressFamily::Inet
            || header.action != RuleAction::ToTable
            || header.dst_len != 0
            || header.tos != 0
            || !header.flags.is_empty()
        {
            return None;
        }
        let mut table = u32::from(header.table);
        let mut priority = 0;
        let mut source = None;
        let (mut mark, mut mask) = (0, 0);
        for attribute in &message.attributes {
            match attribute {
                RuleAttribute::Table(id) => table = *id,
                RuleAttribute::Priority(value) => priority = *value,
                RuleAttribute::Source(IpAddr::V4(address)) => source = Some(*address),
                RuleAttribute::FwMark(value) => mark = *value,
                RuleAttribute::FwMask(value) => mask = *value,
                RuleAttribute::Protocol(_) | RuleAttribute::Other(_) => {}
                _ => return None,
            }
        }
        let selector = match (source, header.src_len, mark) {
            (Some(address), 32, 0) => Selector::From(address),
            (None, 0, mark) if mark != 0 => Selector::FwMark { mark, mask },
            _ => return None,
        };
        Some(IpRule { priority, table, selector })
    }
}

impl fmt::Display for IpRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.selector {
            Selector::From(address) => write!(f, "from {address}")?,
            Selector::FwMark { mark, mask } => write!(f, "fwmark {mark:#x}/{mask:#x}")?,
        }
        write!(f, " lookup {} priority {}", self.table, self.priority)
    }
}

fn rule_label(message: &RuleMessage) -> String {
    if let Some(rule) = IpRule::parse(message) {
        return format!("`{rule}`");
    }
    let priority = message.attributes.iter().find_map(|attribute| match attribute {
        RuleAttribute::Priority(priority) => Some(*priority),
        _ => None,
    });
    format!("with priority {}", priority.unwrap_or(0))
}

/// An IPv4 route as masq copies it between tables: everything but table and protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
struct TableRoute {
    destination: Ipv4Addr,
    prefix_len: u8,
    tos: u8,
    /// The metric; 0 when unset.
    priority: u32,
    scope: RouteScope,
    kind: RouteType,
    onlink: bool,
    gateway: Option<Ipv4Addr>,
    oif: Option<u32>,
    pref_source: Option<Ipv4Addr>,
    multipath: Vec<RouteNextHop>,
    metrics: Vec<RouteMetric>,
}

/// What identifies an IPv4 route within a table.
type RouteKey = (Ipv4Addr, u8, u8, u32);

impl TableRoute {
    fn parse(message: &RouteMessage) -> Option<TableRoute> {
        let header = &message.header;
        if header.address_family != AddressFamily::Inet {
            return None;
        }
        let mut route = TableRoute {
            destination: Ipv4Addr::UNSPECIFIED,
            prefix_len: header.destination_prefix_length,
            tos: header.tos,
            priority: 0,
            scope: header.scope,
            kind: header.kind,
            onlink: header.flags.contains(RouteFlags::Onlink),
            gateway: None,
            oif: None,
            pref_source: None,
            multipath: Vec::new(),
            metrics: Vec::new(),
        };
        for attribute in &message.attributes {
            match attribute {
                RouteAttribute::Destination(RouteAddress::Inet(address)) => {
                    route.destination = *address;
                }
                RouteAttribute::Gateway(RouteAddress::Inet(address)) => {
                    route.gateway = Some(*address);
                }
                RouteAttribute::PrefSource(RouteAddress::Inet(address)) => {
                    route.pref_source = Some(*address);
                }
                RouteAttribute::Oif(index) => route.oif = Some(*index),
                RouteAttribute::Priority(priority) => route.priority = *priority,
                RouteAttribute::MultiPath(hops) => {
                    // Keep only what a route add accepts; dead/linkdown are state, not config.
                    route.multipath = hops
                        .iter()
                        .map(|hop| {
                            let mut hop = hop.clone();
                            hop.flags &= RouteNextHopFlags::Onlink;
                            hop
                        })
                        .collect();
                }
                RouteAttribute::Metrics(metrics) => route.metrics = metrics.clone(),
                _ => {}
            }
        }
        Some(route)
    }

    fn default_via(route: &UplinkRoute) -> TableRoute {
        TableRoute {
            destination: Ipv4Addr::UNSPECIFIED,
            prefix_len: 0,
            tos: 0,
            priority: 0,
            scope: if route.gateway.is_some() { RouteScope::Universe } else { RouteScope::Link },
            kind: RouteType::Unicast,
            onlink: false,
            gateway: route.gateway,
            oif: Some(route.ifindex),
            pref_source: None,
            multipath: Vec::new(),
            metrics: Vec::new(),
        }
    }

    fn key(&self) -> RouteKey {
        (self.destination, self.prefix_len, self.tos, self.priority)
    }

    fn to_message(&self, table: u32) -> RouteMessage {
        let mut message = RouteMessageBuilder::<Ipv4Addr>::new()
            .protocol(masq_protocol())
            .scope(self.scope)
            .kind(self.kind)
            .build();
        message.header.table = table_header(table);
        message.header.tos = self.tos;
        if self.onlink {
            message.header.flags.insert(RouteFlags::Onlink);
        }
        message.header.destination_prefix_length = self.prefix_len;
        let attributes = &mut message.attributes;
        attributes.push(RouteAttribute::Table(table));
        if self.prefix_len > 0 {
            attributes.push(RouteAttribute::Destination(RouteAddress::Inet(self.destination)));
        }
        if self.priority != 0 {
            attributes.push(RouteAttribute::Priority(self.priority));
        }
        if let Some(gateway) = self.gateway {
            attributes.push(RouteAttribute::Gateway(RouteAddress::Inet(gateway)));
        }
        if let Some(oif) = self.oif {
            attributes.push(RouteAttribute::Oif(oif));
        }
        if let Some(source) = self.pref_source {
            attributes.push(RouteAttribute::PrefSource(RouteAddress::Inet(source)));
        }
        if !self.multipath.is_empty() {
            attributes.push(RouteAttribute::MultiPath(self.multipath.clone()));
        }
        if !self.metrics.is_empty() {
            attributes.push(RouteAttribute::Metrics(self.metrics.clone()));
        }
        message
    }
}

impl fmt::Display for TableRoute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.kind != RouteType::Unicast {
            write!(f, "{:?} ", self.kind)?;
        }
        if self.prefix_len == 0 {
            write!(f, "default")?;
        } else {
            write!(f, "{}/{}", self.destination, self.prefix_len)?;
        }
        if let Some(gateway) = self.gateway {
            write!(f, " via {gateway}")?;
        }
        if let Some(oif) = self.oif {
            write!(f, " dev #{oif}")?;
        }
        if let Some(source) = self.pref_source {
            write!(f, " src {source}")?;
        }
        if self.priority != 0 {
            write!(f, " metric {}", self.priority)?;
        }
        Ok(())
    }
}

/// Main's routes that every uplink table copies: all IPv4 routes except default routes.
fn copied_from_main(message: &RouteMessage) -> Option<TableRoute> {
    if table_of(message) != RT_TABLE_MAIN || is_masq_route(message) {
        return None;
    }
    let route = TableRoute::parse(message)?;
    let copyable = matches!(
        route.kind,
        RouteType::Unicast
            | RouteType::BlackHole
            | RouteType::Unreachable
            | RouteType::Prohibit
            | RouteType::Throw
    );
    (copyable && route.prefix_len > 0).then_some(route)
}

/// Brings one uplink table to main's copies plus the uplink's default route.
async fn sync_table(
    handle: &Handle,
    uplink: &UplinkTable,
    main_copies: &[TableRoute],
    dump: &[RouteMessage],
) -> Result<()> {
    let mut wanted: BTreeMap<RouteKey, TableRoute> = BTreeMap::new();
    // An uplink that is not there gets an empty table.
    if let Some(default) = &uplink.route {
        for route in main_copies.iter().cloned().chain([TableRoute::default_via(default)]) {
            wanted.entry(route.key()).or_insert(route);
        }
    }
    let mut present = HashSet::new();
    let mut foreign = HashSet::new();
    let mut stale = Vec::new();
    for message in dump.iter().filter(|message| table_of(message) == uplink.table) {
        let Some(route) = TableRoute::parse(message) else {
            continue;
        };
        if !is_masq_route(message) {
            foreign.insert(route.key());
        } else if wanted.get(&route.key()) != Some(&route) || !present.insert(route.key()) {
            stale.push((route, message));
        }
    }
    let mut errors = Vec::new();
    for (route, message) in stale {
        if let Err(err) = delete_route(handle, message).await {
            errors.push(anyhow!(err).context(format!("deleting stale `{route}`")));
        }
    }
    let mut missing: Vec<&TableRoute> =
        wanted.values().filter(|route| !present.contains(&route.key())).collect();
    // Link-scope routes first: gateways resolve through them.
    missing.sort_by_key(|route| std::cmp::Reverse(u8::from(route.scope)));
    for route in missing {
        if foreign.contains(&route.key()) {
            eprintln!(
                "masq: table {}: a route not installed by masq takes the place of `{route}`; leaving it",
                uplink.table
            );
            continue;
        }
        if let Err(err) = add_route(handle, route.to_message(uplink.table)).await {
            errors.push(anyhow!(err).context(format!("adding `{route}`")));
        }
    }
    combine(errors)
}

/// Deletes masq's IPv4 routes in `tables` (all tables for `None`); returns how many.
async fn delete_masq_routes(handle: &Handle, tables: Option<&[u32]>) -> Result<usize> {
    let mut deleted = 0;
    let mut errors = Vec::new();
    for message in dump_routes(handle).await? {
        let table = table_of(&message);
        if !is_masq_route(&message) || tables.is_some_and(|tables| !tables.contains(&table)) {
            continue;
        }
        match delete_route(handle, &message).await {
            Ok(()) => deleted += 1,
            Err(err) => {
                let route = TableRoute::parse(&message).map(|route| route.to_string());
                errors.push(anyhow!(err).context(format!(
                    "deleting `{}` from table {table}",
                    route.unwrap_or_default()
                )));
            }
        }
    }
    combine(errors).map(|()| deleted)
}

/// Deletes every IPv4 rule with masq's protocol; returns how many.
async fn delete_masq_rules(handle: &Handle) -> Result<usize> {
    let mut deleted = 0;
    let mut errors = Vec::new();
    for message in dump_rules(handle).await? {
        if !is_masq_rule(&message) {
            continue;
        }
        let label = rule_label(&message);
        match delete_rule(handle, message).await {
            Ok(()) => deleted += 1,
            Err(err) => errors.push(anyhow!(err).context(format!("deleting rule {label}"))),
        }
    }
    combine(errors).map(|()| deleted)
}

async fn dump_routes(handle: &Handle) -> Result<Vec<RouteMessage>> {
    let all_ipv4 = RouteMessageBuilder::<Ipv4Addr>::new().build();
    handle.route().get(all_ipv4).execute().try_collect().await.context("dumping IPv4 routes")
}

async fn dump_rules(handle: &Handle) -> Result<Vec<RuleMessage>> {
    handle.rule().get(IpVersion::V4).execute().try_collect().await.context("dumping IPv4 rules")
}

async fn add_route(handle: &Handle, message: RouteMessage) -> Result<(), rtnetlink::Error> {
    handle.route().add(message).execute().await
}

/// Deletes a route as dumped; one that is already gone counts as deleted.
async fn delete_route(handle: &Handle, dumped: &RouteMessage) -> Result<(), rtnetlink::Error> {
    let mut message = dumped.clone();
    // State flags (linkdown, offload, ...) are no part of a delete request.
    message.header.flags = RouteFlags::empty();
    ignore_errno(handle.route().del(message).execute().await, libc::ESRCH)
}

async fn add_rule(handle: &Handle, message: RuleMessage) -> Result<(), rtnetlink::Error> {
    let mut request = handle.rule().add();
    *request.message_mut() = message;
    request.execute().await
}

/// Deletes a rule; one that is already gone counts as deleted.
async fn delete_rule(handle: &Handle, message: RuleMessage) -> Result<(), rtnetlink::Error> {
    ignore_errno(handle.rule().del(message).execute().await, libc::ENOENT)
}

fn ignore_errno(result: Result<(), rtnetlink::Error>, errno: i32) -> Result<(), rtnetlink::Error> {
    match result {
        Err(rtnetlink::Error::NetlinkError(message)) if message.raw_code() == -errno => Ok(()),
        other => other,
    }
}

fn masq_protocol() -> RouteProtocol {
    RouteProtocol::from(MASQ_PROTOCOL)
}

fn is_masq_route(message: &RouteMessage) -> bool {
    message.header.protocol == masq_protocol()
}

fn is_masq_rule(message: &RuleMessage) -> bool {
    message.attributes.contains(&RuleAttribute::Protocol(masq_protocol()))
}

fn table_of(message: &RouteMessage) -> u32 {
    message
        .attributes
        .iter()
        .find_map(|attribute| match attribute {
            RouteAttribute::Table(table) => Some(*table),
            _ => None,
        })
        .unwrap_or(u32::from(message.header.table))
}

fn table_header(table: u32) -> u8 {
    u8::try_from(table).unwrap_or(RT_TABLE_COMPAT)
}

/// One error, or all of them in one.
fn combine(mut errors: Vec<anyhow::Error>) -> Result<()> {
    match errors.len() {
        0 => Ok(()),
        1 => Err(errors.remove(0)),
        count => {
            let all: Vec<String> = errors.iter().map(|err| format!("{err:#}")).collect();
            Err(anyhow!("{count} errors: {}", all.join("; ")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validate_rejects_marks_outside_the_mask_and_shared_tables() {
        let uplink = |name: &str, table, mark| UplinkTable {
            name: name.into(),
            table,
            mark,
            route: Some(UplinkRoute {
                ifindex: 1,
                address: Ipv4Addr::new(67, 17, 28, 12),
                gateway: Some(Ipv4Addr::new(67, 17, 28, 14)),
            }),
        };
        let spec = |uplinks| PolicySpec { uplinks, mark_mask: 0xff00 };
        assert!(spec(vec![uplink("a", 201, 0x100), uplink("b", 202, 0x200)]).validate().is_ok());
        let err = spec(vec![uplink("a", 201, 0x1_0000)]).validate().unwrap_err();
        assert!(err.to_string().contains("inside the mask"), "{err}");
        let err =
            spec(vec![uplink("a", 201, 0x100), uplink("b", 201, 0x200)]).validate().unwrap_err();
        assert!(err.to_string().contains("uplink b: table 201"), "{err}");
        assert!(spec(vec![uplink("a", 254, 0x100)]).validate().is_err());
    }
}
