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
/// `unary!(channel, send_message, req)`. The method's proto name
/// (`SendMessage`), which its span and metrics carry as a call over the
/// network does, is made from the Rust name at compile time
/// ([`proto_method_name`]).
#[macro_export]
macro_rules! unary {
    ($client:expr, $method:ident, $req:expr) => {{
        const METHOD: &str = {
            const RUST_NAME: &str = stringify!($method);
            const NAME: [u8; $crate::proto_method_len(RUST_NAME)] = $crate::proto_method_name(RUST_NAME);
            match ::core::str::from_utf8(&NAME) {
                Ok(name) => name,
                Err(_) => panic!("a method name is ASCII"),
            }
        };
        $client.unary(
            METHOD,
            $req,
            |handler, req| async move { handler.$method(req).await },
            |mut client, req| async move { client.$method(req).await },
        )
    }};
}

/// The length of [`proto_method_name`]`(rust_name)`.
pub const fn proto_method_len(rust_name: &str) -> usize {
    let bytes = rust_name.as_bytes();
    let (mut i, mut len) = (0, 0);
    while i < bytes.len() {
        if bytes[i] != b'_' {
            len += 1;
        }
        i += 1;
    }
    len
}

/// A method's proto name from the name tonic generated for it, as ASCII
/// bytes: `send_message` is `SendMessage`. `N` is
/// [`proto_method_len`]`(rust_name)`. Exact for a proto name of
/// capitalised words without runs of capitals (`GetIceServers`, not
/// `GetICEServers`); a test checks it for every method the mesh serves.
pub const fn proto_method_name<const N: usize>(rust_name: &str) -> [u8; N] {
    let bytes = rust_name.as_bytes();
    let mut name = [0u8; N];
    let (mut i, mut n) = (0, 0);
    let mut word_start = true;
    while i < bytes.len() && n < N {
        let b = bytes[i];
        if b == b'_' {
            word_start = true;
        } else {
            name[n] = if word_start { b.to_ascii_uppercase() } else { b };
            n += 1;
            word_start = false;
        }
        i += 1;
    }
    name
}

#[cfg(test)]
mod tests {
    use heck::ToSnakeCase;
    use prost::Message;

    /// The proto name [`unary!`] gives each method from its Rust name.
    fn from_rust_name(rust_name: &str) -> String {
        let made: [u8; 64] = super::proto_method_name(rust_name);
        String::from_utf8(made[..super::proto_method_len(rust_name)].to_vec()).unwrap()
    }

    #[test]
    fn every_served_method_gets_its_proto_name_back_from_its_rust_name() {
        let files = prost_types::FileDescriptorSet::decode(relaymesh_proto::FILE_DESCRIPTOR_SET).unwrap();
        let methods: Vec<String> = files
            .file
            .iter()
            .flat_map(|f| &f.service)
            .flat_map(|s| &s.method)
            .filter_map(|m| m.name.clone())
            .collect();
        assert!(methods.len() > 20, "the mesh's methods: {methods:?}");
        for method in methods {
            // tonic names a method's Rust function by heck's snake case.
            assert_eq!(from_rust_name(&method.to_snake_case()), method);
        }
    }

    #[test]
    fn a_rust_name_becomes_capitalised_words() {
        assert_eq!(from_rust_name("send_message"), "SendMessage");
        assert_eq!(from_rust_name("drop_session"), "DropSession");
        assert_eq!(from_rust_name("query"), "Query");
        assert_eq!(super::proto_method_len("relay_signal"), "RelaySignal".len());
    }
}
