//! Repository URLs: where a repository lives, as a user types it.
//!
//! * a plain path or `file:///abs/path`: a directory on local disk (created if missing);
//! * `memory://name/prefix`: an in-memory store (lives as long as the process);
//! * `s3://bucket/prefix`, `gs://bucket/prefix`, `az://container/prefix`: cloud object
//!   stores, configured from the standard environment variables (`AWS_ACCESS_KEY_ID`,
//!   `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ENDPOINT_URL` or `AWS_ENDPOINT`,
//!   `AWS_ALLOW_HTTP`; `GOOGLE_SERVICE_ACCOUNT`...; `AZURE_STORAGE_ACCOUNT_NAME`...).

use crate::error::{Error, Result};
use object_store::ObjectStore;
use object_store::aws::AmazonS3Builder;
use object_store::azure::MicrosoftAzureBuilder;
use object_store::gcp::GoogleCloudStorageBuilder;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use std::sync::Arc;

/// A store and the prefix of the repository inside it.
#[derive(Clone, Debug)]
pub struct Location {
    /// The object store.
    pub store: Arc<dyn ObjectStore>,
    /// Repository prefix inside the store (may be empty).
    pub prefix: String,
    /// The URL as given, for messages.
    pub url: String,
}

/// Resolves a repository URL. Local directories are created when `create` is set.
pub fn connect(url: &str, create: bool) -> Result<Location> {
    // `s3:/bucket/x` (one slash) would otherwise be a local directory named `s3:`.
    if !url.contains("://")
        && let Some((scheme, rest)) = url.split_once(':')
        && scheme.len() > 1
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
        && rest.starts_with('/')
    {
        let path = rest.trim_start_matches('/');
        return Err(Error::Usage(format!(
            "{url}: looks like a URL with a malformed scheme; did you mean {scheme}://{path}? \
             (a local path with a colon: write it as ./{url})"
        )));
    }
    let (scheme, rest) = match url.split_once("://") {
        Some((s, r)) => (s.to_ascii_lowercase(), r),
        None => ("file".to_string(), url),
    };
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    let prefix = prefix.trim_matches('/').to_string();
    let store: Arc<dyn ObjectStore> = match scheme.as_str() {
        "file" => {
            if rest.is_empty() {
                return Err(Error::Usage(format!("{url}: empty path")));
            }
            let path = std::path::Path::new(rest);
            if create {
                std::fs::create_dir_all(path)?;
            } else if !path.is_dir() {
                return Err(Error::NotARepo {
                    location: url.to_string(),
                });
            }
            let fs = LocalFileSystem::new_with_prefix(path)
                .map_err(|e| Error::Usage(format!("{url}: {e}")))?;
            return Ok(Location {
                store: Arc::new(fs),
                prefix: String::new(),
                url: url.to_string(),
            });
        }
        "memory" => Arc::new(InMemory::new()),
        "s3" | "s3a" => Arc::new(
            AmazonS3Builder::from_env()
                .with_bucket_name(bucket)
                .build()
                .map_err(|e| Error::Usage(format!("{url}: {e}")))?,
        ),
        "gs" => Arc::new(
            GoogleCloudStorageBuilder::from_env()
                .with_bucket_name(bucket)
                .build()
                .map_err(|e| Error::Usage(format!("{url}: {e}")))?,
        ),
        "az" | "azure" | "abfs" => Arc::new(
            MicrosoftAzureBuilder::from_env()
                .with_container_name(bucket)
                .build()
                .map_err(|e| Error::Usage(format!("{url}: {e}")))?,
        ),
        other => {
            return Err(Error::Usage(format!(
                "{url}: unsupported scheme {other:?} (use a path, file://, memory://, s3://, gs:// or az://)"
            )));
        }
    };
    Ok(Location {
        store,
        prefix,
        url: url.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_schemes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("repo");
        let l = connect(p.to_str().unwrap(), true).unwrap();
        assert_eq!(l.prefix, "");
        assert!(p.is_dir());
        let f = connect(&format!("file://{}", p.display()), false).unwrap();
        assert_eq!(f.prefix, "");
        assert!(connect(dir.path().join("missing").to_str().unwrap(), false).is_err());
        assert_eq!(connect("memory://x/a/b/", false).unwrap().prefix, "a/b");
        assert!(connect("ftp://x", false).is_err());
    }
}
