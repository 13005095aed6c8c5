//! layercache cache server (stub).
