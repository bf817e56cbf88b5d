//! Integration tests of `tcploop check`.
