//! Integration tests of `tcploop scan`.
