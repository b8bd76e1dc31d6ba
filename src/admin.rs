//! HTTP for operators: `/metrics`, `/healthz`, `/readyz`, and the read-only lease views
//! (`/api/v1/leases`, `/api/v1/leases/{ip}`, `/api/v1/subnets`), plus the pool gauges read from
//! Redis on a timer. Nothing here writes lease state or touches the packet path.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, put};
use axum::{Json, Router};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::config::Subnet;
use crate::lease::{
    Filter, LeaseError, LeaseRecord, Pool, PoolStats, RedisStore, ReservationError,
};
use crate::metrics;
use crate::node::{Node, Runtime};

/// How often the pool gauges are refreshed from Redis.
const POOL_INTERVAL: Duration = Duration::from_secs(10);
/// Page size of `/api/v1/leases` when not given, and its ceiling.
const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1000;

/// Histogram buckets (seconds): from 100 µs to 2 s, the handler timeout.
const BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0,
];

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("cannot install the metrics recorder: {0}")]
    Recorder(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Installs the Prometheus recorder (once per process) and describes the metrics.
pub fn install_recorder() -> Result<PrometheusHandle, AdminError> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), BUCKETS)
        .map_err(|e| AdminError::Recorder(e.to_string()))?
        .install_recorder()
        .map_err(|e| AdminError::Recorder(e.to_string()))?;
    metrics::describe();
    // Without its HTTP listener the exporter does no upkeep by itself: histogram samples would
    // pile up on a node nobody scrapes. Drain them every few seconds.
    let upkeep = handle.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            upkeep.run_upkeep();
        }
    });
    Ok(handle)
}

struct AppState {
    node: Arc<Node<RedisStore>>,
    metrics: Option<PrometheusHandle>,
}

/// The admin router (separate from [`serve`] so tests can drive it).
pub fn router(node: Arc<Node<RedisStore>>, metrics: Option<PrometheusHandle>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/api/v1/leases", get(list_leases))
        .route("/api/v1/leases/{ip}", get(show_lease))
        .route("/api/v1/subnets", get(subnets))
        .route("/api/v1/admin/leases/{ip}", delete(release_lease))
        .route("/api/v1/admin/reservations", get(list_reservations))
        .route(
            "/api/v1/admin/reservations/{mac}",
            put(add_reservation).delete(remove_reservation),
        )
        .with_state(Arc::new(AppState { node, metrics }))
}

/// Binds the admin HTTP listener (at start-up, so a bad address stops the node).
pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, AdminError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| AdminError::Bind { addr, source })?;
    info!(addr = %listener.local_addr().unwrap_or(addr), "admin HTTP listening");
    Ok(listener)
}

/// Serves the admin HTTP until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: CancellationToken,
) -> Result<(), std::io::Error> {
    let done = async move { shutdown.cancelled().await };
    axum::serve(listener, router)
        .with_graceful_shutdown(done)
        .await
}

/// Refreshes the per-subnet gauges from Redis every [`POOL_INTERVAL`]: a few O(log n) calls
/// per subnet, whatever the pool size.
pub async fn pool_gauges(node: Arc<Node<RedisStore>>, shutdown: CancellationToken) {
    loop {
        // Not ready: look again soon, so the gauges appear as soon as Redis answers.
        let mut wait = Duration::from_millis(500);
        if node.is_ready() {
            let rt = node.runtime();
            for pool in &rt.pools {
                match node.store().stats(pool).await {
                    Ok(s) => metrics::pool(&pool.label, s.size, s.in_use, s.offered, s.declined),
                    Err(e) => debug!(error = %e, subnet = %pool.label, "pool stats"),
                }
            }
            wait = POOL_INTERVAL;
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
    }
}

async fn metrics_text(State(st): State<Arc<AppState>>) -> Response {
    match &st.metrics {
        Some(h) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            h.render(),
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "metrics recorder not installed\n").into_response(),
    }
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(st): State<Arc<AppState>>) -> Response {
    if st.node.is_ready() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", st.node.not_ready_reason()),
        )
            .into_response()
    }
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    subnet: Option<String>,
    mac: Option<String>,
    hostname: Option<String>,
    state: Option<String>,
    cursor: Option<String>,
    limit: Option<usize>,
}

#[derive(Debug, Serialize)]
struct Page {
    leases: Vec<LeaseRecord>,
    /// Pass as `cursor` for the next page; absent on the last one.
    #[serde(skip_serializing_if = "Option::is_none")]
    next_cursor: Option<String>,
}

fn problem(status: StatusCode, msg: impl Into<String>) -> Response {
    #[derive(Serialize)]
    struct Problem {
        error: String,
    }
    (status, Json(Problem { error: msg.into() })).into_response()
}

fn backend(e: &LeaseError) -> Response {
    problem(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
}

/// Lists leases in (subnet, address) order. The cursor is `<subnet index>-<next address>`:
/// stable under concurrent changes (no address is listed twice, none present throughout is
/// skipped) and valid on Redis Cluster, since every call stays in one subnet's slot.
pub async fn list(
    store: &RedisStore,
    pools: &[Pool],
    q: &ListFilter,
) -> Result<(Vec<LeaseRecord>, Option<String>), ListError> {
    let (mut index, mut from) = match &q.cursor {
        Some(c) => parse_cursor(c).ok_or(ListError::BadCursor)?,
        None => (0, 0),
    };
    let only = match &q.subnet {
        Some(s) => Some(
            pools
                .iter()
                .position(|p| p.label == *s)
                .ok_or_else(|| ListError::NoSubnet(s.clone()))?,
        ),
        None => None,
    };
    if let Some(i) = only {
        if index < i {
            (index, from) = (i, 0);
        } else if index > i {
            return Ok((Vec::new(), None));
        }
    }
    let limit = q.limit.clamp(1, MAX_LIMIT);
    let mut out = Vec::new();
    while index < pools.len() && out.len() < limit {
        let pool = &pools[index];
        let (rows, next) = store
            .page(pool, from, u32::MAX, &q.filter, limit - out.len())
            .await
            .map_err(ListError::Backend)?;
        out.extend(rows);
        match next {
            Some(n) => from = n,
            None if only.is_some() => return Ok((out, None)),
            None => (index, from) = (index + 1, 0),
        }
    }
    let more = index < pools.len();
    Ok((out, more.then(|| format!("{index}-{from}"))))
}

fn parse_cursor(c: &str) -> Option<(usize, u32)> {
    let (i, n) = c.split_once('-')?;
    Some((i.parse().ok()?, n.parse().ok()?))
}

/// What [`list`] takes.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    pub subnet: Option<String>,
    pub filter: Filter,
    pub cursor: Option<String>,
    pub limit: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum ListError {
    #[error("bad cursor")]
    BadCursor,
    #[error("no subnet {0} in the config")]
    NoSubnet(String),
    #[error(transparent)]
    Backend(LeaseError),
}

async fn list_leases(State(st): State<Arc<AppState>>, Query(q): Query<ListQuery>) -> Response {
    let filter = ListFilter {
        subnet: q.subnet,
        filter: Filter {
            state: q.state,
            mac: q.mac.map(|m| m.to_ascii_lowercase().replace('-', ":")),
            hostname: q.hostname,
        },
        cursor: q.cursor,
        limit: q.limit.unwrap_or(DEFAULT_LIMIT),
    };
    let rt = st.node.runtime();
    match list(st.node.store(), &rt.pools, &filter).await {
        Ok((leases, next_cursor)) => Json(Page {
            leases,
            next_cursor,
        })
        .into_response(),
        Err(ListError::Backend(e)) => backend(&e),
        Err(e) => problem(StatusCode::BAD_REQUEST, e.to_string()),
    }
}

async fn show_lease(State(st): State<Arc<AppState>>, Path(ip): Path<String>) -> Response {
    let (ip, rt, index) = match lease_target(&st, &ip) {
        Ok(t) => t,
        Err(r) => return *r,
    };
    let pool = &rt.pools[index];
    match st.node.store().lease(pool, ip).await {
        Ok(Some(rec)) => Json(rec).into_response(),
        Ok(None) => problem(StatusCode::NOT_FOUND, format!("no lease for {ip}")),
        Err(e) => backend(&e),
    }
}

/// The pool of the subnet that contains `ip`.
pub fn pool_for<'p>(pools: &'p [Pool], subnets: &[Subnet], ip: Ipv4Addr) -> Option<&'p Pool> {
    pools
        .iter()
        .zip(subnets)
        .find(|(_, s)| s.contains(ip))
        .map(|(p, _)| p)
}

/// The address in a lease path, the runtime, and the index of its subnet's pool; or the error
/// response (400 for a bad address, 404 for an address in no subnet).
fn lease_target(st: &AppState, ip: &str) -> Result<(Ipv4Addr, Arc<Runtime>, usize), Box<Response>> {
    let Ok(ip) = ip.parse::<Ipv4Addr>() else {
        return Err(Box::new(problem(
            StatusCode::BAD_REQUEST,
            format!("{ip:?} is not an IPv4 address"),
        )));
    };
    let rt = st.node.runtime();
    match rt.config.subnets.iter().position(|s| s.contains(ip)) {
        Some(index) => Ok((ip, rt, index)),
        None => Err(Box::new(problem(
            StatusCode::NOT_FOUND,
            format!("{ip} is in no configured subnet"),
        ))),
    }
}

/// One subnet in the subnets view.
#[derive(Debug, Serialize)]
pub struct SubnetView {
    pub subnet: String,
    pub router: Option<Ipv4Addr>,
    pub dyn_start: Ipv4Addr,
    pub dyn_end: Ipv4Addr,
    pub lease_time: u32,
    /// `sharedNetwork`, when the subnet shares its link with others.
    pub shared_network: Option<String>,
    /// The client classes the subnet is restricted to (empty: every client).
    pub classes: Vec<String>,
    #[serde(flatten)]
    pub stats: PoolStats,
    /// in_use / size, 0..1.
    pub utilisation: f64,
}

/// Every configured subnet with its utilisation from Redis.
pub async fn subnet_views(
    store: &RedisStore,
    pools: &[Pool],
    subnets: &[Subnet],
    classes: &[crate::config::ClientClass],
) -> Result<Vec<SubnetView>, LeaseError> {
    let mut out = Vec::with_capacity(pools.len());
    for (pool, s) in pools.iter().zip(subnets) {
        let stats = store.stats(pool).await?;
        out.push(SubnetView {
            subnet: pool.label.clone(),
            router: s.router,
            dyn_start: s.dyn_start,
            dyn_end: s.dyn_end,
            lease_time: s.lease_time,
            shared_network: s.shared_network.clone(),
            classes: classes
                .iter()
                .enumerate()
                .filter(|(bit, _)| s.classes & (1 << bit) != 0)
                .map(|(_, c)| c.name.clone())
                .collect(),
            utilisation: stats.in_use as f64 / f64::from(stats.size.max(1)),
            stats,
        });
    }
    Ok(out)
}

async fn subnets(State(st): State<Arc<AppState>>) -> Response {
    let rt = st.node.runtime();
    match subnet_views(
        st.node.store(),
        &rt.pools,
        &rt.config.subnets,
        &rt.config.classes,
    )
    .await
    {
        Ok(v) => Json(v).into_response(),
        Err(e) => backend(&e),
    }
}

// ---------------------------------------------------------------------------------------------
// The write API: off unless `apiToken` is set; every call carries `Authorization: Bearer <token>`.

/// Checks the bearer token: `Some` is the refusal to send.
fn refuse(st: &AppState, headers: &HeaderMap) -> Option<Response> {
    let Some(token) = st.node.runtime().config.api_token.clone() else {
        return Some(problem(
            StatusCode::FORBIDDEN,
            "the write API is off (no apiToken configured)",
        ));
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    // Compare in constant time: the token's bytes must not leak through response timing.
    let same = given.len() == token.len()
        && given
            .bytes()
            .zip(token.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    (!same).then(|| problem(StatusCode::UNAUTHORIZED, "missing or wrong bearer token"))
}

async fn release_lease(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(ip): Path<String>,
) -> Response {
    if let Some(r) = refuse(&st, &headers) {
        return r;
    }
    let (ip, rt, index) = match lease_target(&st, &ip) {
        Ok(t) => t,
        Err(r) => return *r,
    };
    let pool = &rt.pools[index];
    match st.node.store().force_release(pool, ip).await {
        Ok(true) => {
            info!(%ip, "lease released through the admin API");
            StatusCode::NO_CONTENT.into_response()
        }
        Ok(false) => problem(StatusCode::NOT_FOUND, format!("no lease for {ip}")),
        Err(e) => backend(&e),
    }
}

#[derive(Debug, Deserialize)]
struct ReservationBody {
    ip: Ipv4Addr,
}

/// `aa:bb:cc:dd:ee:ff` from any common spelling, or None.
fn normal_mac(text: &str) -> Option<String> {
    let hex: String = text.chars().filter(|c| c.is_ascii_hexdigit()).collect();
    let separators_ok = text
        .chars()
        .all(|c| c.is_ascii_hexdigit() || matches!(c, ':' | '-' | '.'));
    if hex.len() != 12 || !separators_ok {
        return None;
    }
    let bytes: Vec<u8> = (0..6)
        .filter_map(|i| u8::from_str_radix(&hex[i * 2..i * 2 + 2], 16).ok())
        .collect();
    // A station address: not all-zero, not a group address.
    (bytes.len() == 6 && bytes.iter().any(|b| *b != 0) && bytes[0] & 1 == 0)
        .then(|| crate::protocol::mac_text(&bytes))
}

async fn add_reservation(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(mac): Path<String>,
    Json(body): Json<ReservationBody>,
) -> Response {
    if let Some(r) = refuse(&st, &headers) {
        return r;
    }
    let Some(mac) = normal_mac(&mac) else {
        return problem(
            StatusCode::BAD_REQUEST,
            format!("{mac:?} is not a MAC address"),
        );
    };
    let rt = st.node.runtime();
    let Some((pool, subnet)) = rt
        .pools
        .iter()
        .zip(&rt.config.subnets)
        .find(|(_, s)| s.contains(body.ip))
    else {
        return problem(
            StatusCode::BAD_REQUEST,
            format!("{} is in no configured subnet", body.ip),
        );
    };
    if body.ip == subnet.net.network()
        || body.ip == subnet.broadcast()
        || Some(body.ip) == subnet.router
    {
        return problem(
            StatusCode::BAD_REQUEST,
            format!(
                "{} is the subnet's network, broadcast or router address",
                body.ip
            ),
        );
    }
    reservation_reply(
        st.node
            .store()
            .set_reservation(pool, &mac, Some(body.ip))
            .await,
        &mac,
    )
}

async fn remove_reservation(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(mac): Path<String>,
) -> Response {
    if let Some(r) = refuse(&st, &headers) {
        return r;
    }
    let Some(mac) = normal_mac(&mac) else {
        return problem(
            StatusCode::BAD_REQUEST,
            format!("{mac:?} is not a MAC address"),
        );
    };
    let rt = st.node.runtime();
    // The MAC may be reserved in any subnet; remove it wherever it is.
    let mut outcome = Err(ReservationError::None);
    for pool in &rt.pools {
        match st.node.store().set_reservation(pool, &mac, None).await {
            Err(ReservationError::None) => {}
            other => {
                outcome = other;
                break;
            }
        }
    }
    reservation_reply(outcome, &mac)
}

fn reservation_reply(outcome: Result<(), ReservationError>, mac: &str) -> Response {
    match outcome {
        Ok(()) => {
            info!(%mac, "reservation changed through the admin API");
            StatusCode::NO_CONTENT.into_response()
        }
        Err(ReservationError::None) => problem(
            StatusCode::NOT_FOUND,
            format!("no run-time reservation for {mac}"),
        ),
        Err(ReservationError::Backend(e)) => backend(&e),
        Err(e) => problem(StatusCode::CONFLICT, e.to_string()),
    }
}

#[derive(Debug, Serialize)]
struct ReservationView {
    client_mac: String,
    client_ip: String,
    subnet: String,
}

async fn list_reservations(State(st): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if let Some(r) = refuse(&st, &headers) {
        return r;
    }
    let rt = st.node.runtime();
    let mut out = Vec::new();
    for pool in &rt.pools {
        match st.node.store().api_reservations(pool).await {
            Ok(v) => out.extend(
                v.into_iter()
                    .map(|(client_mac, client_ip)| ReservationView {
                        client_mac,
                        client_ip,
                        subnet: pool.label.clone(),
                    }),
            ),
            Err(e) => return backend(&e),
        }
    }
    Json(out).into_response()
}

#[cfg(test)]
mod tests {
    use super::normal_mac;

    #[test]
    fn macs_are_normalised_and_checked() {
        assert_eq!(
            normal_mac("02-00-00-AA-bb-01").as_deref(),
            Some("02:00:00:aa:bb:01")
        );
        assert_eq!(
            normal_mac("0200.00aa.bb01").as_deref(),
            Some("02:00:00:aa:bb:01")
        );
        assert_eq!(normal_mac("01:00:5e:00:00:01"), None, "multicast");
        assert_eq!(normal_mac("00:00:00:00:00:00"), None);
        assert_eq!(normal_mac("02:00:00:aa:bb"), None);
        assert_eq!(normal_mac("02:00:00:aa:bb:zz"), None);
    }
}
