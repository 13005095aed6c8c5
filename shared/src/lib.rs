//! What the layercache server and runner agree on.
//!
//! - [`digest`]: the `sha256:<hex>` [`Digest`] newtype, validated once, and a hashing writer.
//! - [`names`]: [`Namespace`] and [`CacheKey`], the two halves of an entry's name.
//! - [`dockerfile`]: a Dockerfile parser, enough to compute cache keys.
//! - [`classic`]: the BuildKit-only syntax the classic builder refuses.
//! - [`key`]: the cache key and instruction-prefix hashes of a Dockerfile + build args + target.
//! - [`archive`]: the `docker save` tarball format, read (legacy and OCI layouts) and written (legacy).
//! - [`image_ref`]: [`image_ref::ImageRef`], an image reference validated once (oci-spec's grammar).
//! - [`oci`]: OCI and Docker distribution documents (media types, descriptors, manifests).
//! - [`api`]: the JSON bodies of the HTTP API, shared by server and runner.
//! - [`parents`]: images ordered parents first, in linear time.
//! - [`size`]: human sizes, parsed (`10G`, `64m`) and printed (`1.5 MiB`), through bytesize.

pub mod api;
pub mod archive;
pub mod classic;
pub mod digest;
pub mod dockerfile;
pub mod image_ref;
pub mod key;
pub mod names;
pub mod oci;
pub mod parents;
pub mod size;

pub use digest::{Digest, DigestError};
pub use names::{CacheKey, NameError, Namespace};
