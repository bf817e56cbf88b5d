//! Integration tests of `tcploop audit`.
