//! Calls between roles of one process, without the socket.
//!
//! `relaymesh up` runs every role in one process, and each still serves
//! gRPC on its own port for other processes. A call from one of its roles to
//! another (the gateway's `SendMessage` to the channel service, signaling's
//! calls to the match service) would cross loopback TCP and both HTTP/2
//! stacks: about eight task hand-offs and 150 µs on a two-core box, several
//! times the work of the call itself.
//!
//! When in-process calls are on ([`set_enabled`], which `relaymesh up` does
//! unless `--in-process-calls false`), a [`crate::GrpcServer`] serving
//! plain HTTP/2 also registers its routes here under the address it listens
//! on, and a client channel whose URL names exactly that address hands each
//! call to those routes directly: the same generated service, the same
//! protobuf encoding, metadata, trace context, status codes, per-method
//! metrics and request span as over the network, run in the caller's task.
//! Each call looks the address up again, so a server that stops
//! (unregistered as it starts draining) sends the next call to the network
//! path, where it is refused as it would be from another process.
//!
//! A server may also register typed handlers ([`crate::GrpcServer::handles_in_process`]):
//! the generated service trait object itself. A [`crate::LocalOrRemote`]
//! client then calls the handler with the typed request, skipping the
//! protobuf encoding, HTTP request and routing as well, while keeping what
//! a caller can observe: the request span, the per-method metrics, the
//! server's concurrency limit and the caller's deadline.
//!
//! TLS servers never register: a call that asked for TLS gets TLS.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, RwLock};

use tonic::body::Body;
use tower::BoxError;
use tower::util::BoxCloneSyncService;

/// A server's routes with its layers, as a client calls them.
pub type LocalService = BoxCloneSyncService<http::Request<Body>, http::Response<Body>, BoxError>;

static ENABLED: AtomicBool = AtomicBool::new(false);

/// The servers of this process, by the address each listens on. Each
/// entry carries the registration's id, so a stopping server removes its
/// own entry and never a newer one on the same address.
static SERVERS: LazyLock<RwLock<HashMap<SocketAddr, LocalServer>>> = LazyLock::new(Default::default);

struct LocalServer {
    id: u64,
    routes: LocalService,
    /// None for routes registered alone ([`register`]).
    handlers: Option<ServedHandlers>,
}

/// A server's typed handlers, by type (`Arc<dyn SomeService>`, stored as
/// `Arc<dyn Any>` holding it).
#[derive(Default)]
pub(crate) struct Handlers {
    by_type: HashMap<TypeId, Arc<dyn Any + Send + Sync>>,
}

impl Handlers {
    pub(crate) fn add<T: ?Sized + Send + Sync + 'static>(&mut self, handler: Arc<T>) {
        self.by_type.insert(TypeId::of::<Arc<T>>(), Arc::new(handler));
    }

    /// The handlers of a server whose calls `limit` counts.
    pub(crate) fn limited_by(self, limit: Arc<tokio::sync::Semaphore>) -> ServedHandlers {
        ServedHandlers { handlers: self, limit }
    }
}

/// A serving server's typed handlers and the concurrency limit they share
/// with its routes.
pub(crate) struct ServedHandlers {
    handlers: Handlers,
    limit: Arc<tokio::sync::Semaphore>,
}

/// A typed handler of a server of this process, with the server's
/// concurrency limit.
pub(crate) struct LocalHandler<T: ?Sized> {
    pub(crate) handler: Arc<T>,
    pub(crate) limit: Arc<tokio::sync::Semaphore>,
}

/// The typed handler `T` of the server of this process listening on
/// `addr`, if it registered one.
pub(crate) fn handler<T: ?Sized + Send + Sync + 'static>(addr: SocketAddr) -> Option<LocalHandler<T>> {
    let servers = SERVERS.read().unwrap_or_else(std::sync::PoisonError::into_inner);
    let served = servers.get(&addr)?.handlers.as_ref()?;
    let handler = served
        .handlers
        .by_type
        .get(&TypeId::of::<Arc<T>>())?
        .downcast_ref::<Arc<T>>()?
        .clone();
    Some(LocalHandler {
        handler,
        limit: served.limit.clone(),
    })
}

static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// Turns in-process calls on or off for servers started from now on.
/// Servers already registered stay until they stop.
pub fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// Whether servers started now register for in-process calls.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// The server of this process listening on `addr`, if it takes in-process
/// calls.
pub fn lookup(addr: SocketAddr) -> Option<LocalService> {
    let servers = SERVERS.read().unwrap_or_else(std::sync::PoisonError::into_inner);
    servers.get(&addr).map(|server| server.routes.clone())
}

/// A server's registration; dropping it removes the server's entry.
#[derive(Debug)]
pub struct Registration {
    addr: SocketAddr,
    id: u64,
}

/// Registers `service` as the server listening on `addr`.
pub fn register(addr: SocketAddr, service: LocalService) -> Registration {
    register_server(addr, service, None)
}

/// Registers `routes` and the typed `handlers` of the server listening on
/// `addr`.
pub(crate) fn register_server(
    addr: SocketAddr,
    routes: LocalService,
    handlers: Option<ServedHandlers>,
) -> Registration {
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    let mut servers = SERVERS.write().unwrap_or_else(std::sync::PoisonError::into_inner);
    servers.insert(addr, LocalServer { id, routes, handlers });
    Registration { addr, id }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut servers = SERVERS.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        if servers.get(&self.addr).is_some_and(|server| server.id == self.id) {
            servers.remove(&self.addr);
        }
    }
}

/// The address a channel to `host:port` calls in process, when the host is
/// an IP address (a name may resolve elsewhere: it always goes out). `host`
/// as a parsed URL target holds it: an IPv6 address without its brackets.
pub fn target(host: &str, port: u16) -> Option<SocketAddr> {
    let ip: std::net::IpAddr = host.parse().ok()?;
    Some(SocketAddr::new(ip, port))
}
