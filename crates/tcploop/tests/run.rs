//! Integration tests of `tcploop run`.
