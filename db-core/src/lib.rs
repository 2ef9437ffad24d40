//! Weir's database server (`weir serve`) and the `weir` command-line client.
//!
//! Module map (dependencies point downwards only):
//!
//! | module | role |
//! |---|---|
//! | [`cli`] | `weir` subcommands: `serve` and the admin client commands |
//! | [`server`] | HTTP API (axum), admin gRPC service, one port |
//! | [`engine`] | processing engine, core side: plugin host process and session, WAL triggers |
//! | [`auth`] | API tokens (hashed), bearer/token headers |
//! | [`query`] | DataFusion SQL over buffer + Parquet, system tables, output formats |
//! | [`write_buffer`] | validation, WAL-backed buffer, Parquet snapshots, restart |
//! | [`wal`] | group-commit write-ahead log on the object store |
//! | [`catalog`] | databases, tables, columns, triggers, tokens; persisted JSON |
//! | [`trigger`] | trigger definitions: specifications, schedules, the checks of a new trigger |
//! | [`lp`] | line protocol parser |
//! | [`storage`] | object store paths and durable writes |
//! | [`telemetry`] | Prometheus metrics, logging |
//! | [`time`] | injectable clocks |

pub mod auth;
pub mod catalog;
pub mod cli;
pub mod engine;
pub mod lp;
pub mod query;
pub mod server;
pub mod storage;
pub mod telemetry;
#[cfg(test)]
mod test_util;
pub mod time;
pub mod trigger;
pub mod wal;
pub mod write_buffer;
