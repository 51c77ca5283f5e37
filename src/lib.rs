//! The `relaymesh` binary's library: assembling roles into processes.
//!
//! [`Mesh`] starts every service as its own gRPC server on loopback plus the
//! gateway, as `relaymesh up` does; tests use it to start the mesh on port 0.
//! This is the one crate that depends on every service.

pub mod mesh;
pub mod roles;

pub use mesh::{Mesh, MeshOptions};
