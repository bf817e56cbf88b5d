//! Integration tests of `tcploop connect`.
