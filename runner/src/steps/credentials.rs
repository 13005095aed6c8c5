//! Registry credentials for `type: push` steps: the ones `docker login` stored (`config.json`
//! under `DOCKER_CONFIG`, else `~/.docker`, including `credsStore` / `credHelpers` helpers), found
//! with the `docker_credential` crate, as the Docker CLI would send them.

use bollard::auth::DockerCredentials;
use layercache_shared::image_ref::{self, ImageRef};

/// Docker Hub's key in `config.json`.
const DOCKER_HUB: &str = "https://index.docker.io/v1/";

/// The key of `image`'s registry in `config.json`: its host, or Docker Hub's legacy URL.
pub fn registry_host(image: &ImageRef) -> &str {
    match image.registry() {
        image_ref::DOCKER_HUB => DOCKER_HUB,
        host => host,
    }
}

/// What `docker login` stored for `host`, if anything; the `Err` says why a stored credential
/// could not be read (a helper that failed, a malformed entry).
pub fn credentials_for(host: &str) -> Result<Option<DockerCredentials>, String> {
    use docker_credential::{CredentialRetrievalError as E, DockerCredential};
    match docker_credential::get_credential(host) {
        Ok(DockerCredential::UsernamePassword(username, password)) => Ok(Some(DockerCredentials {
            username: Some(username),
            password: Some(password),
            serveraddress: Some(host.to_string()),
            ..Default::default()
        })),
        Ok(DockerCredential::IdentityToken(token)) => Ok(Some(DockerCredentials {
            identitytoken: Some(token),
            serveraddress: Some(host.to_string()),
            ..Default::default()
        })),
        Err(E::NoCredentialConfigured | E::ConfigNotFound | E::ConfigReadError) => Ok(None),
        Err(e) => Err(format!("cannot read the stored login for `{host}`: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_host_is_the_first_component_when_it_names_a_host() {
        let host = |s: &str| registry_host(&s.parse().unwrap()).to_string();
        assert_eq!(host("127.0.0.1:5000/app:ci"), "127.0.0.1:5000");
        assert_eq!(host("ghcr.io/acme/app"), "ghcr.io");
        assert_eq!(host("localhost/app"), "localhost");
        assert_eq!(host("acme/app"), DOCKER_HUB);
        assert_eq!(host("app"), DOCKER_HUB);
    }
}
