//! Cache keys. (Stub: to be written.)
