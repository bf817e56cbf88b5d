//! Integration tests of `tcploop free-port`.
