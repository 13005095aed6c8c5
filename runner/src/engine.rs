//! The Docker engine through bollard: connect (API version negotiated: Engine 20.10 speaks 1.41),
//! list and inspect images, and the pure layer arithmetic restore needs (chain IDs, skip sets).

use layercache_shared::image_ref::ImageRef;
use std::collections::{HashMap, HashSet};

use anyhow::{Context, bail};
use bollard::Docker;
use bollard::query_parameters::{ListImagesOptionsBuilder, TagImageOptionsBuilder};
use layercache_shared::Digest;
use layercache_shared::api::ImageInfo;
use sha2::{Digest as _, Sha256};

use crate::detect::EngineFacts;

/// A connected engine.
#[derive(Clone)]
pub struct Engine {
    /// The bollard client, version-negotiated.
    pub docker: Docker,
}

/// An image the engine has: its ID, parent and tags.
#[derive(Debug, Clone)]
pub struct LocalImage {
    /// The image it was built on (empty for pulled or base images).
    pub parent: Option<Digest>,
    /// `repo:tag` names.
    pub tags: Vec<String>,
}

/// What `DOCKER_HOST` says, for error messages.
pub fn docker_host() -> String {
    std::env::var("DOCKER_HOST").unwrap_or_else(|_| "unix:///var/run/docker.sock (default)".into())
}

impl Engine {
    /// Connects to the engine `DOCKER_HOST` names (or the default socket), negotiates the API
    /// version and checks it answers.
    pub async fn connect() -> anyhow::Result<Engine> {
        let host = docker_host();
        let fail = || {
            format!("cannot reach the Docker engine at {host}; start dockerd or set DOCKER_HOST")
        };
        let docker = Docker::connect_with_defaults().with_context(fail)?;
        let docker = docker.negotiate_version().await.with_context(fail)?;
        docker.ping().await.with_context(fail)?;
        Ok(Engine { docker })
    }

    /// What the engine says about itself: version, platform, image store (see [`crate::detect`]).
    pub async fn facts(&self) -> anyhow::Result<EngineFacts> {
        let version = self
            .docker
            .version()
            .await
            .context("failed to ask the engine its version (`docker version`)")?;
        let info = self
            .docker
            .info()
            .await
            .context("failed to ask the engine about its image store (`docker info`)")?;
        Ok(EngineFacts::new(
            version.version.as_deref().unwrap_or_default(),
            &self.docker.client_version().to_string(),
            version.os.as_deref().unwrap_or("linux"),
            version.arch.as_deref().unwrap_or("amd64"),
            &info.driver_status.unwrap_or_default(),
        ))
    }

    /// Every image the engine has, intermediate ones included, by ID.
    pub async fn local_images(&self) -> anyhow::Result<HashMap<Digest, LocalImage>> {
        let opts = ListImagesOptionsBuilder::default().all(true).build();
        let list = self
            .docker
            .list_images(Some(opts))
            .await
            .context("failed to list the engine's images")?;
        let mut out = HashMap::new();
        for summary in list {
            let Ok(id) = summary.id.parse::<Digest>() else {
                continue;
            };
            let parent = summary.parent_id.parse::<Digest>().ok();
            let tags = summary
                .repo_tags
                .into_iter()
                .filter(|t| t != "<none>:<none>")
                .collect();
            out.insert(id, LocalImage { parent, tags });
        }
        Ok(out)
    }

    /// The full ID and diff_ids (`RootFS.Layers`) of an image by name or ID.
    pub async fn inspect(&self, reference: &str) -> anyhow::Result<(Digest, Vec<Digest>)> {
        let info = self
            .docker
            .inspect_image(reference)
            .await
            .with_context(|| format!("failed to inspect image `{reference}`"))?;
        let id: Digest = info
            .id
            .as_deref()
            .unwrap_or_default()
            .parse()
            .with_context(|| format!("image `{reference}` has no sha256 ID"))?;
        let mut layers = Vec::new();
        for l in info.root_fs.and_then(|r| r.layers).unwrap_or_default() {
            layers.push(
                l.parse::<Digest>()
                    .with_context(|| format!("image `{reference}` has a bad layer digest"))?,
            );
        }
        Ok((id, layers))
    }

    /// Chain IDs of every layer of every local image: what the engine's layer store holds.
    pub async fn local_chains(
        &self,
        images: &HashMap<Digest, LocalImage>,
    ) -> anyhow::Result<HashSet<Digest>> {
        let mut chains = HashSet::new();
        for id in images.keys() {
            let (_, layers) = self.inspect(&id.to_string()).await?;
            chains.extend(chain_ids(&layers));
        }
        Ok(chains)
    }

    /// Tags `id` as each `repo:tag` of `tags`.
    pub async fn tag(&self, id: &str, tags: &[String]) -> anyhow::Result<()> {
        for tag in tags {
            let reference: ImageRef = tag.parse()?;
            let repo = reference.name();
            let t = reference.tag_or_latest();
            let opts = TagImageOptionsBuilder::default().repo(&repo).tag(t).build();
            self.docker
                .tag_image(id, Some(opts))
                .await
                .with_context(|| format!("failed to tag image {id} as `{tag}`"))?;
        }
        Ok(())
    }
}

/// Chain IDs of a layer stack: `chain[0] = diff[0]`, `chain[n] = sha256(chain[n-1] + " " + diff[n])`,
/// how the engine names a layer together with everything below it.
pub fn chain_ids(diff_ids: &[Digest]) -> Vec<Digest> {
    let mut out: Vec<Digest> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => *d,
            Some(prev) => {
                let sum: [u8; 32] = Sha256::digest(format!("{prev} {d}").as_bytes()).into();
                Digest::from_hex(&hex::encode(sum)).unwrap_or(*d)
            }
        };
        out.push(next);
    }
    out
}

/// The diff_ids the download may leave out: a layer is skipped only if, at every position it
/// takes in the entry's images, the chain up to it already exists locally.
pub fn skip_set(images: &[ImageInfo], local_chains: &HashSet<Digest>) -> HashSet<Digest> {
    let mut present: HashMap<Digest, bool> = HashMap::new();
    for image in images {
        let diffs: Vec<Digest> = image.layers.iter().map(|l| l.diff_id).collect();
        for (diff, chain) in diffs.iter().zip(chain_ids(&diffs)) {
            let have = local_chains.contains(&chain);
            present
                .entry(*diff)
                .and_modify(|p| *p &= have)
                .or_insert(have);
        }
    }
    present
        .into_iter()
        .filter_map(|(d, have)| have.then_some(d))
        .collect()
}

/// Build output lines that carry stage results, parsed as the legacy builder prints them.
#[derive(Debug, Default)]
pub struct StageTracker {
    /// Final image (short ID as printed) of each finished stage, in order.
    finished: Vec<String>,
    /// The last ` ---> <id>` of the stage being built.
    current: Option<String>,
    /// `Successfully built <id>`.
    pub built: Option<String>,
}

impl StageTracker {
    /// Feeds one output line.
    pub fn line(&mut self, line: &str) {
        let t = line.trim();
        if is_from_step(t) {
            self.finished.extend(self.current.take());
        } else if let Some(rest) = t.strip_prefix("---> ") {
            let rest = rest.trim();
            if rest.len() >= 12 && rest.bytes().all(|b| b.is_ascii_hexdigit()) {
                self.current = Some(rest.to_string());
            }
        } else if let Some(id) = t.strip_prefix("Successfully built ") {
            self.built = Some(id.trim().to_string());
        }
    }

    /// Final images of the stages before the last one (the last one is the built image).
    pub fn earlier_stages(&self) -> &[String] {
        &self.finished
    }
}

/// Whether a build output line is `Step N/M : FROM …`, the start of a stage.
fn is_from_step(line: &str) -> bool {
    line.strip_prefix("Step ")
        .and_then(|rest| rest.split_once(" : "))
        .is_some_and(|(_, instr)| instr.trim_start().to_ascii_uppercase().starts_with("FROM "))
}

/// Fails when the engine's build output says the build failed.
pub fn check_build_error(detail: Option<bollard::models::ErrorDetail>) -> anyhow::Result<()> {
    if let Some(detail) = detail {
        bail!(
            "docker build failed: {}",
            detail.message.unwrap_or_else(|| "unknown error".into())
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use layercache_shared::api::LayerInfo;

    fn d(s: &str) -> Digest {
        Digest::of(s.as_bytes())
    }

    #[test]
    fn chain_ids_match_the_engine_definition() {
        let (a, b) = (d("a"), d("b"));
        let chain = chain_ids(&[a, b]);
        assert_eq!(chain[0], a);
        assert_eq!(chain[1], Digest::of(format!("{a} {b}").as_bytes()));
        assert!(chain_ids(&[]).is_empty());
    }

    fn image(layers: &[Digest]) -> ImageInfo {
        ImageInfo {
            id: d(&format!("{layers:?}")),
            parent: None,
            tags: vec![],
            config_size: 1,
            layers: layers
                .iter()
                .map(|l| LayerInfo {
                    diff_id: *l,
                    size: 1,
                })
                .collect(),
        }
    }

    #[test]
    fn skip_set_needs_the_whole_chain_locally() {
        let (a, b, c) = (d("a"), d("b"), d("c"));
        let entry = [image(&[a, b]), image(&[a, b, c])];
        // Locally: an image with layers [a, b].
        let local: HashSet<Digest> = chain_ids(&[a, b]).into_iter().collect();
        let skip = skip_set(&entry, &local);
        assert_eq!(skip, HashSet::from([a, b]));
        // `b` present only on top of another base is not enough.
        let other: HashSet<Digest> = chain_ids(&[c, b]).into_iter().collect();
        assert!(skip_set(&entry, &other).is_empty());
    }

    #[test]
    fn skip_set_requires_every_occurrence_present() {
        let (a, b) = (d("a"), d("b"));
        // `a` is at the bottom of one image and on top of `b` in another.
        let entry = [image(&[a]), image(&[b, a])];
        let local: HashSet<Digest> = chain_ids(&[a]).into_iter().collect();
        assert!(skip_set(&entry, &local).is_empty());
    }

    #[test]
    fn stage_tracker_finds_each_stages_last_image() {
        let out = "Step 1/6 : FROM scratch AS builder\n ---> \nStep 2/6 : COPY busybox /bin/busybox\n ---> Using cache\n ---> 1111111111aa\nStep 3/6 : RUN x\n ---> Running in 999999999999\nRemoving intermediate container 999999999999\n ---> 2222222222bb\nStep 4/6 : FROM scratch\n ---> \nStep 5/6 : COPY --from=builder /a /a\n ---> 3333333333cc\nStep 6/6 : CMD [\"x\"]\n ---> 4444444444dd\nSuccessfully built 4444444444dd\n";
        let mut t = StageTracker::default();
        for line in out.lines() {
            t.line(line);
        }
        assert_eq!(t.earlier_stages(), ["2222222222bb"]);
        assert_eq!(t.built.as_deref(), Some("4444444444dd"));
    }

    #[test]
    fn tags_split_at_the_tag_colon() {}
}
