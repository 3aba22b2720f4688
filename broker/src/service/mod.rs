//! The client-facing gRPC services.

pub mod admin;
pub mod auth;
pub mod consumer;
pub mod deadline;
pub mod groups;
pub mod producer;
pub mod quotas;
pub mod subscribe_route;
pub mod subscription;
