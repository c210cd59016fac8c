//! Read-side configuration: which read-side handlers (`ReadSideHandlerService`) the node feeds, and how.
//!
//! Two sources, as in Chief of State (CoS):
//! - `COS_READ_SIDE_CONFIG` ([`super::ReadSideConfig::config`]): a YAML file, or a folder searched recursively for
//!   `*.yaml` / `*.yml` files (sorted by path; hidden entries, such as the `..data` links of a Kubernetes
//!   ConfigMap mount, are skipped). Each file holds one or more `---`-separated documents, one read side each.
//! - Otherwise, the environment form `COS_READ_SIDE_CONFIG__<SETTING>__<ID>`. When `COS_READ_SIDE_CONFIG` is set,
//!   these variables are ignored (as in CoS).
//!
//! Unlike CoS, a value that does not parse is an error naming the file or variable, never a silent default.
//! See the "Read sides" section of `docs/configuration.md` and `config/readsides.example.yaml`.

use super::ConfigError;
use serde::Deserialize;
use serde_yaml_ng::Value;
use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// Prefix of the environment form: `COS_READ_SIDE_CONFIG__<SETTING>__<ID>`.
pub const ENV_PREFIX: &str = "COS_READ_SIDE_CONFIG__";

/// Default deadline of each `HandleReadSide` call, in milliseconds.
pub const DEFAULT_TIMEOUT_MS: u64 = 30_000;

/// What a read side does when its handler fails on an event (answers `successful = false`, errors, times out).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum FailurePolicy {
    /// Stop the read side (the default).
    #[default]
    Stop,
    /// Skip the event: commit its offset and go on.
    Skip,
    /// Retry the event, then skip it.
    ReplaySkip,
    /// Retry the event, then stop.
    ReplayStop,
}

impl FailurePolicy {
    /// Every policy, in declaration order.
    pub const ALL: [FailurePolicy; 4] =
        [FailurePolicy::Stop, FailurePolicy::Skip, FailurePolicy::ReplaySkip, FailurePolicy::ReplayStop];

    /// The canonical (CoS) spelling: `STOP`, `SKIP`, `REPLAY_SKIP`, `REPLAY_STOP`.
    pub fn as_str(self) -> &'static str {
        match self {
            FailurePolicy::Stop => "STOP",
            FailurePolicy::Skip => "SKIP",
            FailurePolicy::ReplaySkip => "REPLAY_SKIP",
            FailurePolicy::ReplayStop => "REPLAY_STOP",
        }
    }
}

impl fmt::Display for FailurePolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for FailurePolicy {
    type Err = String;

    /// Case-insensitive; `REPLAY-SKIP` / `REPLAY-STOP` are accepted too. Surrounding blanks are ignored.
    fn from_str(s: &str) -> Result<Self, String> {
        let normalized = s.trim().to_ascii_uppercase().replace('-', "_");
        FailurePolicy::ALL
            .into_iter()
            .find(|p| p.as_str() == normalized)
            .ok_or_else(|| format!("expected STOP, SKIP, REPLAY_SKIP or REPLAY_STOP, got {s:?}"))
    }
}

/// How Regent talks to a read-side handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ReadSideProtocol {
    /// `ReadSideHandlerService` over gRPC (the default, and the only one for now).
    #[default]
    Grpc,
    /// CoS's HTTP/JSON: `POST {base}/v1/readside/handle`.
    Http,
}

impl ReadSideProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            ReadSideProtocol::Grpc => "grpc",
            ReadSideProtocol::Http => "http",
        }
    }
}

impl fmt::Display for ReadSideProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ReadSideProtocol {
    type Err = String;

    /// `grpc` or `http`, case-insensitive.
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "grpc" => Ok(ReadSideProtocol::Grpc),
            "http" => Ok(ReadSideProtocol::Http),
            _ => Err(format!("expected grpc or http, got {s:?}")),
        }
    }
}

/// One read side, as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadSideSettings {
    /// `readSideId`: matches `^[A-Za-z0-9]([A-Za-z0-9_-]*[A-Za-z0-9])?$`, unique.
    pub id: String,
    pub protocol: ReadSideProtocol,
    pub host: String,
    /// 0 = not set (only allowed when the read side is disabled).
    pub port: u16,
    pub use_tls: bool,
    /// Deadline of each `HandleReadSide` call, in milliseconds; at least 1.
    pub timeout_ms: u64,
    /// `false`: the read side starts paused (resume it through the manager API).
    pub auto_start: bool,
    /// `false`: the read side is configured but not run; callers skip it.
    pub enabled: bool,
    pub failure_policy: FailurePolicy,
    /// With `use_tls`: the PEM file of the CA trusted for the handler's certificate (`read_side.tls_ca_file`, the
    /// same for every read side); empty = the system's roots.
    pub tls_ca_file: String,
}

impl ReadSideSettings {
    /// A read side with every setting at its default (no host, no port).
    pub fn with_defaults(id: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            protocol: ReadSideProtocol::Grpc,
            host: String::new(),
            port: 0,
            use_tls: false,
            timeout_ms: DEFAULT_TIMEOUT_MS,
            auto_start: true,
            enabled: true,
            failure_policy: FailurePolicy::Stop,
            tls_ca_file: String::new(),
        }
    }

    /// The handler's URL: `http://host:port` (`https` with `use_tls`), an IPv6 host in brackets.
    pub fn endpoint(&self) -> String {
        let scheme = if self.use_tls { "https" } else { "http" };
        let host = if self.host.contains(':') && !self.host.starts_with('[') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        format!("{scheme}://{host}:{}", self.port)
    }
}

/// The process environment as `(name, value)` pairs, for [`load`]; variables whose name or value is not valid
/// Unicode are left out.
pub fn process_env_vars() -> Vec<(String, String)> {
    std::env::vars_os().filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?))).collect()
}

/// Loads the read sides: from the YAML file or folder `config` (`COS_READ_SIDE_CONFIG`) when it is not blank,
/// otherwise from the `COS_READ_SIDE_CONFIG__<SETTING>__<ID>` variables among `env_vars` (pass every variable of
/// the process, e.g. [`process_env_vars`]).
///
/// Read sides come back in file order (sorted paths, then document order) or, from the environment, sorted by id.
/// Disabled read sides are included, with `enabled == false`. Errors name the file (and document) or the variable,
/// and the value at fault.
pub fn load(config: &str, env_vars: &[(String, String)]) -> Result<Vec<ReadSideSettings>, ConfigError> {
    let config = config.trim();
    if config.is_empty() {
        return load_env(env_vars);
    }
    let ignored = env_vars.iter().filter(|(k, _)| k.starts_with(ENV_PREFIX)).count();
    if ignored > 0 {
        tracing::warn!(
            "COS_READ_SIDE_CONFIG is set: ignoring {ignored} {ENV_PREFIX}<SETTING>__<ID> environment variable(s)"
        );
    }
    load_path(Path::new(config))
}

/// A read side and where it was defined (for duplicate reports).
struct Sourced {
    settings: ReadSideSettings,
    /// Its document number in its file.
    document: usize,
    /// `path (document n)`
    source: String,
}

// ----------------------------------------------------------------------------------------------------------------
// YAML files

fn file_error(path: &Path, message: impl Into<String>) -> ConfigError {
    ConfigError::File { path: path.to_path_buf(), message: message.into() }
}

fn load_path(path: &Path) -> Result<Vec<ReadSideSettings>, ConfigError> {
    let meta =
        std::fs::metadata(path).map_err(|e| file_error(path, format!("cannot read COS_READ_SIDE_CONFIG: {e}")))?;
    let files = if meta.is_dir() {
        let mut files = Vec::new();
        let mut visited = HashSet::new();
        collect_yaml_files(path, &mut files, &mut visited)?;
        files.sort();
        files
    } else {
        vec![path.to_path_buf()]
    };
    let mut all: Vec<Sourced> = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).map_err(|e| file_error(file, e.to_string()))?;
        add_unique(&mut all, file, parse_text(file, &text)?)?;
    }
    Ok(all.into_iter().map(|s| s.settings).collect())
}

/// Appends the read sides of `file` to `all`, refusing an id defined twice.
fn add_unique(all: &mut Vec<Sourced>, file: &Path, read_sides: Vec<Sourced>) -> Result<(), ConfigError> {
    for read_side in read_sides {
        if let Some(first) = all.iter().find(|s| s.settings.id == read_side.settings.id) {
            return Err(file_error(
                file,
                format!(
                    "document {}: readSideId {:?} is already defined in {}",
                    read_side.document, read_side.settings.id, first.source
                ),
            ));
        }
        all.push(read_side);
    }
    Ok(())
}

/// Parses the text of one read-side YAML file, as if it were read from `file` (named in errors): its read sides
/// in document order, or the first error. Public for the fuzz targets (`fuzz/`); [`load`] reads the files.
pub fn parse_yaml(file: &Path, text: &str) -> Result<Vec<ReadSideSettings>, ConfigError> {
    let mut all = Vec::new();
    add_unique(&mut all, file, parse_text(file, text)?)?;
    Ok(all.into_iter().map(|s| s.settings).collect())
}

fn is_yaml(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("yaml") || e.eq_ignore_ascii_case("yml"))
}

/// Every `*.yaml` / `*.yml` file under `dir`, recursively; symbolic links are followed (each real folder visited
/// once), hidden entries skipped.
fn collect_yaml_files(dir: &Path, out: &mut Vec<PathBuf>, visited: &mut HashSet<PathBuf>) -> Result<(), ConfigError> {
    let real = dir.canonicalize().map_err(|e| file_error(dir, e.to_string()))?;
    if !visited.insert(real) {
        return Ok(());
    }
    let entries = std::fs::read_dir(dir).map_err(|e| file_error(dir, e.to_string()))?;
    for entry in entries {
        let entry = entry.map_err(|e| file_error(dir, e.to_string()))?;
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let path = entry.path();
        let meta = std::fs::metadata(&path).map_err(|e| file_error(&path, e.to_string()))?;
        if meta.is_dir() {
            collect_yaml_files(&path, out, visited)?;
        } else if meta.is_file() && is_yaml(&path) {
            out.push(path);
        }
    }
    Ok(())
}

/// The YAML keys of a read side, in the order of the docs.
const YAML_KEYS: &[&str] =
    &["readSideId", "protocol", "host", "port", "useTls", "timeout", "autoStart", "enabled", "failurePolicy"];

fn parse_text(path: &Path, text: &str) -> Result<Vec<Sourced>, ConfigError> {
    let mut read_sides = Vec::new();
    for (index, document) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let number = index + 1;
        // A syntax error ends the file: the iterator would repeat it forever.
        let value = Value::deserialize(document)
            .map_err(|e| file_error(path, format!("document {number}: not valid YAML: {e}")))?;
        if value.is_null() {
            continue; // an empty document (a stray `---`, a comment-only file)
        }
        let settings =
            parse_document(&value).map_err(|message| file_error(path, format!("document {number}: {message}")))?;
        read_sides.push(Sourced {
            settings,
            document: number,
            source: format!("{} (document {number})", path.display()),
        });
    }
    Ok(read_sides)
}

/// One document → one read side; the error names the key and value at fault.
fn parse_document(value: &Value) -> Result<ReadSideSettings, String> {
    let Value::Mapping(mapping) = value else {
        return Err(format!("expected a mapping of read-side keys ({}), got {}", YAML_KEYS.join(", "), kind(value)));
    };
    let mut fields: BTreeMap<&str, String> = BTreeMap::new();
    for (key, value) in mapping {
        let Some(key) = key.as_str() else {
            return Err(format!("keys must be strings, got {}", kind(key)));
        };
        let Some(known) = YAML_KEYS.iter().find(|k| **k == key) else {
            return Err(format!("unknown key {key:?}; expected one of {}", YAML_KEYS.join(", ")));
        };
        if let Some(text) = scalar_text(value).map_err(|e| format!("{key}: {e}"))? {
            fields.insert(known, text);
        }
    }
    let id = fields.remove("readSideId").ok_or("readSideId is required")?;
    let mut settings = ReadSideSettings::with_defaults(id);
    for (key, text) in &fields {
        let setting = Setting::from_yaml_key(key).expect("every YAML key but readSideId is a setting");
        setting.apply(&mut settings, text).map_err(|e| format!("{key}: {e}"))?;
    }
    validate(&settings).map_err(|(setting, message)| match setting {
        Some(setting) => format!("{}: {message}", setting.yaml_key()),
        None => message,
    })?;
    Ok(settings)
}

/// The text of a scalar (`None` for null); numbers and booleans as written in YAML 1.2.
fn scalar_text(value: &Value) -> Result<Option<String>, String> {
    match value {
        Value::Null => Ok(None),
        Value::Bool(b) => Ok(Some(b.to_string())),
        Value::Number(n) => Ok(Some(n.to_string())),
        Value::String(s) => Ok(Some(s.clone())),
        other => Err(format!("expected a single value, got {}", kind(other))),
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

// ----------------------------------------------------------------------------------------------------------------
// Settings, shared by both forms

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Setting {
    Protocol,
    Host,
    Port,
    UseTls,
    Timeout,
    AutoStart,
    Enabled,
    FailurePolicy,
}

impl Setting {
    const ALL: [Setting; 8] = [
        Setting::Protocol,
        Setting::Host,
        Setting::Port,
        Setting::UseTls,
        Setting::Timeout,
        Setting::AutoStart,
        Setting::Enabled,
        Setting::FailurePolicy,
    ];

    fn yaml_key(self) -> &'static str {
        match self {
            Setting::Protocol => "protocol",
            Setting::Host => "host",
            Setting::Port => "port",
            Setting::UseTls => "useTls",
            Setting::Timeout => "timeout",
            Setting::AutoStart => "autoStart",
            Setting::Enabled => "enabled",
            Setting::FailurePolicy => "failurePolicy",
        }
    }

    /// The `<SETTING>` of the environment form.
    fn env_name(self) -> &'static str {
        match self {
            Setting::Protocol => "PROTOCOL",
            Setting::Host => "HOST",
            Setting::Port => "PORT",
            Setting::UseTls => "USE_TLS",
            Setting::Timeout => "TIMEOUT",
            Setting::AutoStart => "AUTO_START",
            Setting::Enabled => "ENABLED",
            Setting::FailurePolicy => "FAILURE_POLICY",
        }
    }

    fn from_yaml_key(key: &str) -> Option<Setting> {
        Setting::ALL.into_iter().find(|s| s.yaml_key() == key)
    }

    fn from_env_name(name: &str) -> Option<Setting> {
        Setting::ALL.into_iter().find(|s| s.env_name().eq_ignore_ascii_case(name))
    }

    /// Parses `text` into its field of `settings`. A blank value of a non-text setting leaves the default.
    fn apply(self, settings: &mut ReadSideSettings, text: &str) -> Result<(), String> {
        let trimmed = text.trim();
        if self != Setting::Host && trimmed.is_empty() {
            return Ok(());
        }
        match self {
            Setting::Protocol => settings.protocol = text.parse()?,
            Setting::Host => settings.host = trimmed.to_string(),
            Setting::Port => {
                settings.port =
                    trimmed.parse().map_err(|_| format!("expected a port number (1 to 65535), got {text:?}"))?
            }
            Setting::Timeout => {
                settings.timeout_ms =
                    trimmed.parse().map_err(|_| format!("expected an integer number of milliseconds, got {text:?}"))?
            }
            Setting::UseTls => settings.use_tls = parse_bool(text)?,
            Setting::AutoStart => settings.auto_start = parse_bool(text)?,
            Setting::Enabled => settings.enabled = parse_bool(text)?,
            Setting::FailurePolicy => settings.failure_policy = text.parse()?,
        }
        Ok(())
    }
}

fn parse_bool(text: &str) -> Result<bool, String> {
    match text.trim().to_ascii_lowercase().as_str() {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(format!("expected true or false, got {text:?}")),
    }
}

/// `^[A-Za-z0-9]([A-Za-z0-9_-]*[A-Za-z0-9])?$`
pub fn is_valid_id(id: &str) -> bool {
    let bytes = id.as_bytes();
    match (bytes.first(), bytes.last()) {
        (Some(first), Some(last)) => {
            first.is_ascii_alphanumeric()
                && last.is_ascii_alphanumeric()
                && bytes.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'_' || *b == b'-')
        }
        _ => false,
    }
}

/// Checks one read side; the error names the setting at fault (`None`: the id).
fn validate(settings: &ReadSideSettings) -> Result<(), (Option<Setting>, String)> {
    if !is_valid_id(&settings.id) {
        return Err((
            None,
            format!(
                "readSideId {:?} is not valid: letters, digits, '_' and '-', starting and ending with a letter or digit",
                settings.id
            ),
        ));
    }
    if settings.timeout_ms < 1 {
        return Err((Some(Setting::Timeout), "must be at least 1 millisecond, got 0".into()));
    }
    if settings.enabled {
        if settings.host.is_empty() {
            return Err((Some(Setting::Host), format!("read side {:?} is enabled but has no host", settings.id)));
        }
        if settings.port == 0 {
            return Err((
                Some(Setting::Port),
                format!("read side {:?} is enabled but has no port (1 to 65535)", settings.id),
            ));
        }
    }
    Ok(())
}

// ----------------------------------------------------------------------------------------------------------------
// The environment form

fn env_error(var: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Env { var: var.into(), message: message.into() }
}

fn load_env(env_vars: &[(String, String)]) -> Result<Vec<ReadSideSettings>, ConfigError> {
    // id → setting → (variable, value); BTreeMaps keep the result independent of the environment's order.
    let mut by_id: BTreeMap<&str, BTreeMap<Setting, (&str, &str)>> = BTreeMap::new();
    for (name, value) in env_vars {
        if !name.starts_with(ENV_PREFIX) {
            continue;
        }
        let parts: Vec<&str> = name.split("__").collect();
        let [_, setting_name, id] = parts[..] else {
            return Err(env_error(
                name,
                format!(
                    "expected {ENV_PREFIX}<SETTING>__<ID>, with exactly two \"__\" separators (the id cannot contain \"__\")"
                ),
            ));
        };
        let Some(setting) = Setting::from_env_name(setting_name) else {
            let known: Vec<&str> = Setting::ALL.iter().map(|s| s.env_name()).collect();
            return Err(env_error(
                name,
                format!("unknown setting {setting_name:?}; expected one of {}", known.join(", ")),
            ));
        };
        if !is_valid_id(id) {
            return Err(env_error(
                name,
                format!(
                    "read side id {id:?} is not valid: letters, digits, '_' and '-', starting and ending with a letter or digit"
                ),
            ));
        }
        if let Some((other, _)) = by_id.entry(id).or_default().insert(setting, (name, value)) {
            return Err(env_error(name, format!("sets the same setting as {other}")));
        }
    }
    let mut read_sides = Vec::with_capacity(by_id.len());
    for (id, vars) in by_id {
        let mut settings = ReadSideSettings::with_defaults(id);
        for (setting, (name, value)) in &vars {
            setting.apply(&mut settings, value).map_err(|e| env_error(name, e))?;
        }
        validate(&settings).map_err(|(setting, message)| {
            // Name the variable that was (or should have been) set.
            let setting = setting.unwrap_or(Setting::Host);
            let var = vars
                .get(&setting)
                .map(|(name, _)| name.to_string())
                .unwrap_or_else(|| format!("{ENV_PREFIX}{}__{id}", setting.env_name()));
            env_error(&var, message)
        })?;
        read_sides.push(settings);
    }
    Ok(read_sides)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn write(dir: &Path, relative: &str, text: &str) -> PathBuf {
        let path = dir.join(relative);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, text).unwrap();
        path
    }

    fn load_yaml(text: &str) -> Result<Vec<ReadSideSettings>, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "readsides.yaml", text);
        load(path.to_str().unwrap(), &[])
    }

    fn err_text(result: Result<Vec<ReadSideSettings>, ConfigError>) -> String {
        result.unwrap_err().to_string()
    }

    #[test]
    fn defaults() {
        let sides = load_yaml("readSideId: search\nhost: localhost\nport: 50052\n").unwrap();
        let expected =
            ReadSideSettings { host: "localhost".into(), port: 50052, ..ReadSideSettings::with_defaults("search") };
        assert_eq!(sides, std::slice::from_ref(&expected));
        assert_eq!(expected.protocol, ReadSideProtocol::Grpc);
        assert!(!expected.use_tls);
        assert_eq!(expected.timeout_ms, 30_000);
        assert!(expected.auto_start);
        assert!(expected.enabled);
        assert_eq!(expected.failure_policy, FailurePolicy::Stop);
        assert_eq!(FailurePolicy::default(), FailurePolicy::Stop);
        assert_eq!(expected.endpoint(), "http://localhost:50052");

        assert_eq!(load("", &[]).unwrap(), [], "nothing configured, nothing loaded");
        assert_eq!(load("  ", &env(&[("COS_READ_SIDE_CONFIG", "")])).unwrap(), []);
    }

    #[test]
    fn example_file_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/readsides.example.yaml");
        let sides = load(path.to_str().unwrap(), &[]).unwrap();
        let ids: Vec<&str> = sides.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(ids, ["search-index", "ledger", "kafka-out"]);
        let full = &sides[0];
        assert_eq!(
            *full,
            ReadSideSettings {
                host: "search.internal".into(),
                port: 50052,
                ..ReadSideSettings::with_defaults("search-index")
            },
            "the first document spells out every default"
        );
        assert!(!sides[2].enabled);
    }

    #[test]
    fn endpoint_brackets_ipv6_and_uses_https_with_tls() {
        let mut side = ReadSideSettings { host: "::1".into(), port: 9, ..ReadSideSettings::with_defaults("a") };
        assert_eq!(side.endpoint(), "http://[::1]:9");
        side.use_tls = true;
        side.host = "[fe80::1]".into();
        assert_eq!(side.endpoint(), "https://[fe80::1]:9");
    }

    #[test]
    fn a_file_with_several_documents() {
        let sides = load_yaml(
            "# comment\n---\nreadSideId: search\nprotocol: GRPC\nhost: search.local\nport: 50052\nuseTls: true\n\
             timeout: 1500\nautoStart: false\nenabled: true\nfailurePolicy: skip\n---\n\
             readSideId: kafka-out_2\nhost: kafka\nport: \"50053\"\nfailurePolicy: REPLAY-STOP\n---\n\
             readSideId: 42\nenabled: false\n---\n",
        )
        .unwrap();
        assert_eq!(sides.len(), 3);
        assert_eq!(
            sides[0],
            ReadSideSettings {
                id: "search".into(),
                protocol: ReadSideProtocol::Grpc,
                host: "search.local".into(),
                port: 50052,
                use_tls: true,
                timeout_ms: 1500,
                auto_start: false,
                enabled: true,
                failure_policy: FailurePolicy::Skip,
                tls_ca_file: String::new(),
            }
        );
        assert_eq!(sides[0].endpoint(), "https://search.local:50052");
        assert_eq!((sides[1].id.as_str(), sides[1].port), ("kafka-out_2", 50053));
        assert_eq!(sides[1].failure_policy, FailurePolicy::ReplayStop);
        assert_eq!(sides[2].id, "42", "a numeric id is an id");
        assert!(!sides[2].enabled, "disabled read sides are returned, marked so, and need no host or port");
    }

    #[test]
    fn a_folder_with_nested_files() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "b.yaml", "readSideId: b\nhost: h\nport: 2\n");
        write(dir.path(), "a/z.yml", "readSideId: az\nhost: h\nport: 3\n---\nreadSideId: az2\nhost: h\nport: 4\n");
        write(dir.path(), "a/deeper/c.YAML", "readSideId: c\nhost: h\nport: 5\n");
        write(dir.path(), "notes.txt", "readSideId: ignored\n");
        write(dir.path(), ".hidden/x.yaml", "readSideId: hidden\nhost: h\nport: 6\n");
        write(dir.path(), "..data/x.yaml", "readSideId: b\nhost: h\nport: 7\n");
        let sides = load(dir.path().to_str().unwrap(), &[]).unwrap();
        let ids: Vec<&str> = sides.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(ids, ["c", "az", "az2", "b"], "sorted paths, then document order; hidden and non-YAML skipped");
        let empty = tempfile::tempdir().unwrap();
        assert_eq!(load(empty.path().to_str().unwrap(), &[]).unwrap(), []);
    }

    #[test]
    fn a_missing_path_is_an_error() {
        let err = load("/nonexistent/readsides", &[]).unwrap_err();
        assert!(matches!(err, ConfigError::File { .. }), "{err}");
        assert!(err.to_string().contains("/nonexistent/readsides"), "{err}");
    }

    #[test]
    fn every_failure_policy_spelling() {
        let cases = [
            ("STOP", FailurePolicy::Stop),
            ("stop", FailurePolicy::Stop),
            ("Skip", FailurePolicy::Skip),
            ("SKIP", FailurePolicy::Skip),
            ("REPLAY_SKIP", FailurePolicy::ReplaySkip),
            ("replay_skip", FailurePolicy::ReplaySkip),
            ("REPLAY-SKIP", FailurePolicy::ReplaySkip),
            ("Replay-Skip", FailurePolicy::ReplaySkip),
            ("REPLAY_STOP", FailurePolicy::ReplayStop),
            ("replay-stop", FailurePolicy::ReplayStop),
            ("REPLAY-STOP", FailurePolicy::ReplayStop),
        ];
        for (text, policy) in cases {
            assert_eq!(text.parse::<FailurePolicy>(), Ok(policy), "{text}");
            let sides = load_yaml(&format!("readSideId: a\nhost: h\nport: 1\nfailurePolicy: {text}\n")).unwrap();
            assert_eq!(sides[0].failure_policy, policy, "{text} in YAML");
            let sides = load(
                "",
                &env(&[
                    ("COS_READ_SIDE_CONFIG__HOST__A", "h"),
                    ("COS_READ_SIDE_CONFIG__PORT__A", "1"),
                    ("COS_READ_SIDE_CONFIG__FAILURE_POLICY__A", text),
                ]),
            )
            .unwrap();
            assert_eq!(sides[0].failure_policy, policy, "{text} in the environment");
        }
        for policy in FailurePolicy::ALL {
            assert_eq!(policy.to_string().parse::<FailurePolicy>(), Ok(policy));
        }
        for bad in ["REPLAY", "replayskip", "STOP_REPLAY", "retry"] {
            assert!(bad.parse::<FailurePolicy>().is_err(), "{bad}");
        }
        let err = err_text(load_yaml("readSideId: a\nhost: h\nport: 1\nfailurePolicy: RETRY\n"));
        assert!(err.contains("failurePolicy: expected STOP, SKIP, REPLAY_SKIP or REPLAY_STOP, got \"RETRY\""), "{err}");
    }

    #[test]
    fn unknown_key_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let path =
            write(dir.path(), "rs.yaml", "readSideId: a\nhost: h\nport: 1\n---\nreadSideId: b\nhots: h\nport: 1\n");
        let err = load(path.to_str().unwrap(), &[]).unwrap_err();
        let text = err.to_string();
        assert!(matches!(&err, ConfigError::File { path: p, .. } if *p == path), "{err:?}");
        assert!(
            text.contains("rs.yaml") && text.contains("document 2") && text.contains("unknown key \"hots\""),
            "{text}"
        );
    }

    #[test]
    fn bad_values_in_files_are_named() {
        let cases = [
            ("readSideId: a\nhost: h\nport: 70000\n", "port: expected a port number (1 to 65535), got \"70000\""),
            ("readSideId: a\nhost: h\nport: 1\nuseTls: yes\n", "useTls: expected true or false, got \"yes\""),
            ("readSideId: a\nhost: h\nport: 1\ntimeout: 5s\n", "timeout: expected an integer number of milliseconds"),
            ("readSideId: a\nhost: h\nport: 1\ntimeout: 0\n", "timeout: must be at least 1"),
            ("readSideId: a\nhost: h\nport: 1\nprotocol: kafka\n", "protocol: expected grpc or http, got \"kafka\""),
            ("readSideId: a\nhost: [h]\nport: 1\n", "host: expected a single value, got a list"),
            ("host: h\nport: 1\n", "readSideId is required"),
            ("- readSideId: a\n", "expected a mapping"),
            ("readSideId: a\nhost: h\n  port: 1\n", "not valid YAML"),
        ];
        for (yaml, expected) in cases {
            let err = err_text(load_yaml(yaml));
            assert!(err.contains(expected), "{yaml:?}: {err}");
            assert!(err.contains("readsides.yaml: document 1: "), "{yaml:?}: {err}");
        }
    }

    #[test]
    fn bad_id_rejected() {
        for bad in ["-a", "a-", "_a", "a_", "a.b", "a b", "é", "\"\""] {
            let err = err_text(load_yaml(&format!("readSideId: {bad}\nhost: h\nport: 1\n")));
            assert!(err.contains("readSideId") && err.contains("is not valid"), "{bad}: {err}");
        }
        for good in ["a", "A1", "a-b_c", "a__b", "9", "a--z"] {
            assert!(is_valid_id(good), "{good}");
        }
        for bad in ["", "-", "_", "a-", "-a", "a.b", "a/b", "ü"] {
            assert!(!is_valid_id(bad), "{bad}");
        }
        let err = load("", &env(&[("COS_READ_SIDE_CONFIG__HOST__a.b", "h")])).unwrap_err();
        assert!(matches!(&err, ConfigError::Env { var, .. } if var == "COS_READ_SIDE_CONFIG__HOST__a.b"), "{err}");
        assert!(err.to_string().contains("\"a.b\" is not valid"), "{err}");
    }

    #[test]
    fn duplicate_ids_name_both_sources() {
        let err = err_text(load_yaml("readSideId: a\nhost: h\nport: 1\n---\nreadSideId: a\nhost: h\nport: 2\n"));
        assert!(
            err.contains("document 2: readSideId \"a\" is already defined in ") && err.contains("(document 1)"),
            "{err}"
        );

        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "one.yaml", "readSideId: dup\nhost: h\nport: 1\n");
        write(
            dir.path(),
            "sub/two.yaml",
            "readSideId: other\nhost: h\nport: 1\n---\nreadSideId: dup\nhost: h\nport: 2\n",
        );
        let err = err_text(load(dir.path().to_str().unwrap(), &[]));
        assert!(err.contains("one.yaml (document 1)") && err.contains("two.yaml: document 2: "), "{err}");
        assert!(err.contains("\"dup\" is already defined in"), "{err}");
    }

    #[test]
    fn missing_host_or_port_for_an_enabled_side() {
        let err = err_text(load_yaml("readSideId: a\nport: 1\n"));
        assert!(err.contains("host: read side \"a\" is enabled but has no host"), "{err}");
        let err = err_text(load_yaml("readSideId: a\nhost: h\n"));
        assert!(err.contains("port: read side \"a\" is enabled but has no port"), "{err}");
        let err = err_text(load_yaml("readSideId: a\nhost: h\nport: 0\n"));
        assert!(err.contains("port: read side \"a\" is enabled but has no port"), "{err}");
        assert!(load_yaml("readSideId: a\nenabled: false\n").is_ok(), "a disabled side needs neither");

        let err = load("", &env(&[("COS_READ_SIDE_CONFIG__PORT__A", "1")])).unwrap_err();
        assert_eq!(
            err,
            ConfigError::Env {
                var: "COS_READ_SIDE_CONFIG__HOST__A".into(),
                message: "read side \"A\" is enabled but has no host".into()
            }
        );
        let err = load("", &env(&[("COS_READ_SIDE_CONFIG__HOST__A", "h")])).unwrap_err();
        assert!(err.to_string().starts_with("COS_READ_SIDE_CONFIG__PORT__A: "), "{err}");
    }

    #[test]
    fn env_form_with_several_ids_and_settings() {
        let sides = load(
            "",
            &env(&[
                ("PATH", "/usr/bin"),
                ("cos_read_side_config__host__lower", "not ours: the prefix is case-sensitive"),
                ("COS_READ_SIDE_CONFIG__HOST__KAFKA", "kafka"),
                ("COS_READ_SIDE_CONFIG__PORT__KAFKA", "50053"),
                ("COS_READ_SIDE_CONFIG__HOST__DB_WRITER", "db"),
                ("COS_READ_SIDE_CONFIG__PORT__DB_WRITER", "50052"),
                ("COS_READ_SIDE_CONFIG__PROTOCOL__DB_WRITER", "grpc"),
                ("COS_READ_SIDE_CONFIG__USE_TLS__DB_WRITER", "TRUE"),
                ("COS_READ_SIDE_CONFIG__TIMEOUT__DB_WRITER", "1000"),
                ("COS_READ_SIDE_CONFIG__auto_start__DB_WRITER", "false"),
                ("COS_READ_SIDE_CONFIG__Failure_Policy__DB_WRITER", "replay_skip"),
                ("COS_READ_SIDE_CONFIG__ENABLED__off", "false"),
            ]),
        )
        .unwrap();
        let ids: Vec<&str> = sides.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(ids, ["DB_WRITER", "KAFKA", "off"], "sorted by id, ids verbatim");
        assert_eq!(
            sides[0],
            ReadSideSettings {
                id: "DB_WRITER".into(),
                protocol: ReadSideProtocol::Grpc,
                host: "db".into(),
                port: 50052,
                use_tls: true,
                timeout_ms: 1000,
                auto_start: false,
                enabled: true,
                failure_policy: FailurePolicy::ReplaySkip,
                tls_ca_file: String::new(),
            }
        );
        assert_eq!(
            sides[1],
            ReadSideSettings { host: "kafka".into(), port: 50053, ..ReadSideSettings::with_defaults("KAFKA") }
        );
        assert!(!sides[2].enabled);
    }

    #[test]
    fn env_form_ignored_when_config_set() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "rs.yaml", "readSideId: file\nhost: h\nport: 1\n");
        let vars = env(&[
            ("COS_READ_SIDE_CONFIG__HOST__ENV", "h"),
            ("COS_READ_SIDE_CONFIG__PORT__ENV", "not even a number"),
            ("COS_READ_SIDE_CONFIG__BROKEN", "x"),
        ]);
        let sides = load(path.to_str().unwrap(), &vars).unwrap();
        let ids: Vec<&str> = sides.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(ids, ["file"]);
    }

    #[test]
    fn invalid_env_values_name_the_variable() {
        let base = [("COS_READ_SIDE_CONFIG__HOST__A", "h"), ("COS_READ_SIDE_CONFIG__PORT__A", "1")];
        let cases = [
            ("COS_READ_SIDE_CONFIG__PORT__B", "abc", "expected a port number (1 to 65535), got \"abc\""),
            ("COS_READ_SIDE_CONFIG__PORT__B", "65536", "expected a port number"),
            ("COS_READ_SIDE_CONFIG__USE_TLS__A", "yes", "expected true or false, got \"yes\""),
            // CoS silently reads an unparsable AUTO_START as false; Regent refuses it.
            ("COS_READ_SIDE_CONFIG__AUTO_START__A", "ture", "expected true or false, got \"ture\""),
            ("COS_READ_SIDE_CONFIG__ENABLED__A", "0", "expected true or false"),
            ("COS_READ_SIDE_CONFIG__TIMEOUT__A", "-5", "expected an integer number of milliseconds"),
            ("COS_READ_SIDE_CONFIG__TIMEOUT__A", "0", "must be at least 1"),
            ("COS_READ_SIDE_CONFIG__FAILURE_POLICY__A", "RETRY", "expected STOP, SKIP, REPLAY_SKIP or REPLAY_STOP"),
            ("COS_READ_SIDE_CONFIG__PROTOCOL__A", "kafka", "expected grpc or http, got \"kafka\""),
            ("COS_READ_SIDE_CONFIG__COLOR__A", "red", "unknown setting \"COLOR\""),
            ("COS_READ_SIDE_CONFIG__HOST", "h", "exactly two \"__\" separators"),
            ("COS_READ_SIDE_CONFIG__HOST__A__B", "h", "exactly two \"__\" separators"),
            ("COS_READ_SIDE_CONFIG__HOST__", "h", "read side id \"\" is not valid"),
            ("COS_READ_SIDE_CONFIG__host__A", "h", "sets the same setting as COS_READ_SIDE_CONFIG__HOST__A"),
        ];
        for (var, value, expected) in cases {
            let mut pairs = base.to_vec();
            pairs.push((var, value));
            let err = load("", &env(&pairs)).unwrap_err();
            let ConfigError::Env { var: named, message } = &err else { panic!("{var}: {err:?}") };
            assert_eq!(named, var, "{value}: {err}");
            assert!(message.contains(expected), "{var}={value}: {err}");
        }
        // A blank number or boolean counts as unset, as in the main loader.
        let mut pairs = base.to_vec();
        pairs.push(("COS_READ_SIDE_CONFIG__TIMEOUT__A", " "));
        assert_eq!(load("", &env(&pairs)).unwrap()[0].timeout_ms, DEFAULT_TIMEOUT_MS);
    }
}
