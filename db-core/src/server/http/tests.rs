//! Router tests (no sockets).
