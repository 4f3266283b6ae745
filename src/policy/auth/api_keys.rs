//! Compiling the API key table from the file the policy names (hashes only).

use super::*;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ApiKeysFile {
    keys: Vec<ApiKeyEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ApiKeyEntry {
    id: String,
    hash: String,
    tenant: Option<String>,
    #[serde(default)]
    roles: Vec<String>,
    #[serde(default)]
    scopes: Vec<String>,
    rate_limit: Option<ApiKeyLimit>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ApiKeyLimit {
    limit: u32,
    period: Dur,
}

impl Compiler {
    pub(super) fn api_keys(
        &mut self,
        a: &ApiKeysSpec,
        watched: &mut Vec<PathBuf>,
    ) -> Option<ApiKeyTable> {
        let at = "identity.api_keys.file";
        let path = resolve(&self.file, &a.file);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) => {
                self.err(at, format!("cannot read {}: {e}", path.display()));
                return None;
            }
        };
        self.inputs.update(path.as_os_str().as_encoded_bytes());
        self.inputs.update(text.as_bytes());
        watched.push(path.clone());
        let file: ApiKeysFile = match serde_norway::from_str(&text) {
            Ok(f) => f,
            Err(e) => {
                // The file holds only hashes, but keep its content out of the message anyway.
                let pos = e
                    .location()
                    .map(|l| format!(":{}:{}", l.line(), l.column()))
                    .unwrap_or_default();
                let msg = e.to_string();
                let msg = msg.split(" at line ").next().unwrap_or("invalid YAML");
                self.err(at, format!("{}{pos}: {msg}", path.display()));
                return None;
            }
        };
        let mut keys = Vec::new();
        let mut ids: HashMap<String, usize> = HashMap::new();
        for (i, k) in file.keys.into_iter().enumerate() {
            let here = format!("{}: keys[{i}]", path.display());
            if !is_name(&k.id) {
                self.err(
                    at,
                    format!("{here}.id: use letters, digits, `-` and `_` only"),
                );
                continue;
            }
            if ids.insert(k.id.clone(), i).is_some() {
                self.err(at, format!("{here}.id: duplicate id `{}`", k.id));
                continue;
            }
            let Some(hash) = apikey::parse_hash(&k.hash) else {
                self.err(
                    at,
                    format!("{here}.hash: expected `sha256:` and 64 hex digits (store the hash, never the key; see `ward apikey generate`)"),
                );
                continue;
            };
            let rate_limit = match k.rate_limit {
                Some(l) if l.limit == 0 || l.period.0 < Duration::from_secs(1) => {
                    self.err(
                        at,
                        format!("{here}.rate_limit: limit at least 1 and period at least 1s"),
                    );
                    continue;
                }
                Some(l) => Some((l.limit, l.period.0)),
                None => None,
            };
            keys.push(ApiKey {
                id: Arc::from(k.id.as_str()),
                hash,
                tenant: k.tenant,
                roles: k.roles,
                scopes: k.scopes,
                rate_limit,
            });
        }
        Some(ApiKeyTable {
            header: a
                .header
                .as_ref()
                .map_or(HeaderName::from_static("x-api-key"), |h| h.0.clone()),
            keys: ApiKeys { keys },
            file: path,
        })
    }
}
