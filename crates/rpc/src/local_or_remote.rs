//! A client that calls a server of this process through its typed handler.
//!
//! In-process calls through the routes (`crate::local`) still encode the
//! request, build an HTTP request, route it, decode it, and do the same for
//! the answer: on a two-core box about 13 % of the core that answers a chat
//! message. A [`LocalOrRemote`] hands the typed request to the generated
//! service trait object the server registered
//! ([`crate::GrpcServer::handles_in_process`]) and gets the typed answer
//! back, or a `tonic::Status` with its details as the handler made it.
//!
//! What a caller or an operator can observe stays as it is over the
//! network: the request span (`package.Service/Method`, a child of the
//! caller's span), `relaymesh_grpc_server_*` metrics per method and code,
//! the server's concurrency limit (shared with its network callers), and the
//! caller's deadline, answered UNAVAILABLE as [`crate::client`] does. Each
//! call looks the handler up again, so a server that starts draining sends
//! the next call to the network, where it is refused.

use std::future::Future;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tonic::{Request, Response, Status};
use tracing::Instrument;

/// Calls to one service: to the typed handler `T` (`dyn FooService`) of a
/// server of this process listening at the client's one address, else
/// through `C`, the generated client over the network.
pub struct LocalOrRemote<C, T: ?Sized> {
    remote: C,
    /// The full service name (`relaymesh.channel.v1.ChannelService`).
    service: &'static str,
    /// The one address the client calls, when a server of this process
    /// may listen on it.
    local: Option<SocketAddr>,
    /// The caller's deadline for a call.
    timeout: Duration,
    handler: PhantomData<fn() -> Arc<T>>,
}

impl<C: Clone, T: ?Sized> Clone for LocalOrRemote<C, T> {
    fn clone(&self) -> Self {
        Self {
            remote: self.remote.clone(),
            service: self.service,
            local: self.local,
            timeout: self.timeout,
            handler: PhantomData,
        }
    }
}

impl<C: Clone, T: ?Sized + Send + Sync + 'static> LocalOrRemote<C, T> {
    /// `remote` is the client of `url` (what `connect_*` made of it);
    /// `service` the generated `SERVICE_NAME`; `timeout` the deadline of a
    /// call, as `remote`'s channel has it.
    pub fn new(remote: C, url: &str, service: &'static str, timeout: Duration) -> Self {
        Self {
            remote,
            service,
            local: crate::client::plain_single_target(url),
            timeout,
            handler: PhantomData,
        }
    }

    /// The network client.
    pub fn remote(&self) -> C {
        self.remote.clone()
    }

    /// Calls `method` (its proto name, `SendMessage`) with `req`: `local`
    /// with the handler when this process serves it, else `remote` with
    /// the client. Use [`crate::unary!`] to spell both.
    pub async fn unary<Req, Resp, L, LF, R, RF>(
        &self,
        method: &'static str,
        req: Req,
        local: L,
        remote: R,
    ) -> Result<Response<Resp>, Status>
    where
        L: FnOnce(Arc<T>, Request<Req>) -> LF,
        LF: Future<Output = Result<Response<Resp>, Status>>,
        R: FnOnce(C, Request<Req>) -> RF,
        RF: Future<Output = Result<Response<Resp>, Status>>,
    {
        let Some(found) = self.local.and_then(crate::local::handler::<T>) else {
            return remote(self.remote.clone(), Request::new(req)).await;
        };
        let service = self.service;
        let span = crate::server::method_span(service, method);
        let call = async move {
            // The server's limit counts this call as one of its own.
            let _permit = found
                .limit
                .acquire_owned()
                .await
                .map_err(|_| Status::unavailable("the server is stopping"))?;
            let started = Instant::now();
            let out = local(found.handler, Request::new(req)).await;
            let code = out.as_ref().map_or_else(Status::code, |_| tonic::Code::Ok);
            tracing::Span::current().record("rpc.grpc.status_code", code as i32);
            crate::metrics_layer::record_local_call(service, method, code, started.elapsed());
            out
        }
        .instrument(span);
        match tokio::time::timeout(self.timeout, call).await {
            Ok(out) => out,
            Err(_) => Err(crate::client::no_answer_in_time()),
        }
    }
}

/// Calls a unary method through a [`LocalOrRemote`], naming it once:
/// `unary!(channel, send_message, "SendMessage", req)`.
#[macro_export]
macro_rules! unary {
    ($client:expr, $method:ident, $name:literal, $req:expr) => {
        $client.unary(
            $name,
            $req,
            |handler, req| async move { handler.$method(req).await },
            |mut client, req| async move { client.$method(req).await },
        )
    };
}
