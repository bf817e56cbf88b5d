//! Integration tests of `tcploop demo`.
