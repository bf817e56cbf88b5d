//! The integration tests: the tcploop binary driven as a user would, inside
//! namespaces the tests create.
