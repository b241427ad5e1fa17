//! What the simulator's HTTP tests share: each test file uses the module of its topic.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod corpus;
pub mod http;
pub mod resources;
