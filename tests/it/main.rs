//! Integration tests: the real server on an ephemeral loopback port, with a real redb file and
//! blob directory in a temp dir. One binary, one module per area.

mod common;
mod data;
mod fanout;
mod formats;
mod images;
mod import;
mod keys_support;
mod keystone;
mod limits;
mod list;
mod matrix;
mod members;
mod metadefs;
mod mirror;
mod nbd;
mod observe;
mod ops;
mod restart;
mod s3;
mod tls;
mod ui;
mod v1;
mod vendor;
