//! Garage for the server's tests: [`layercache_test_support::garage::Garage`] (a real S3 store on
//! loopback, one node or a 3-node cluster), plus the server's own settings for it
//! ([`Garage::location`], [`Garage::blob_store`]), which the test-support crate cannot build
//! without depending on the server. Everything else is the test-support type's, through `Deref`.

#![allow(dead_code, unused_imports)] // each test uses its own part

use std::ops::{Deref, DerefMut};

use layercache_server::store::blobs::{BlobLocation, S3Location};

pub use layercache_test_support::garage::{REGION, garage_bin};

/// A running Garage (see the module docs).
pub struct Garage(layercache_test_support::garage::Garage);

impl Garage {
    /// Starts one node, lays it out, creates bucket `layercache` and a key allowed on it.
    pub fn start() -> Garage {
        Garage(layercache_test_support::garage::Garage::start())
    }

    /// Starts `nodes` nodes as one cluster (replication factor 3 when there are 3 or more).
    pub fn cluster(nodes: usize) -> Garage {
        Garage(layercache_test_support::garage::Garage::cluster(nodes))
    }

    /// The settings a server needs, for `prefix` in the bucket.
    pub fn location(&self, prefix: &str) -> S3Location {
        S3Location::parse(&self.blob_store_url(prefix))
            .unwrap()
            .option("AWS_ENDPOINT_URL", &self.endpoint)
            .option("AWS_REGION", REGION)
            .option("AWS_ACCESS_KEY_ID", &self.key_id)
            .option("AWS_SECRET_ACCESS_KEY", &self.secret)
            .option("AWS_ALLOW_HTTP", "true")
    }

    /// [`Garage::location`] as a `--blob-store` setting.
    pub fn blob_store(&self, prefix: &str) -> BlobLocation {
        BlobLocation::S3(self.location(prefix))
    }
}

impl Deref for Garage {
    type Target = layercache_test_support::garage::Garage;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl DerefMut for Garage {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}
