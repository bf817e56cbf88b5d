//! The integration tests: the `tcploop` binary driven as a user would, inside
//! network namespaces the tests create (`tcploop sandbox`), so that nothing
//! touches the host's own ports. One test binary, one module per area.

#[macro_use]
mod common;

mod apply;
mod audit;
mod bad_input;
mod check;
mod clobber;
mod connect;
mod container;
mod demo;
mod deploy;
mod docs;
mod doctor;
mod escape;
mod free_port;
mod kill;
mod procsys;
mod run;
mod scan;
mod schema;
mod serve;
mod shield;
mod trace;
