//! Dockerfile parsing. (Stub: to be written.)
