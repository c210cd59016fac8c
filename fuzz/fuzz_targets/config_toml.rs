//! Configuration parsing: a TOML file's text plus environment variables, layered as `regent start` does
//! (`Config::load_toml_str`), then dumped as `--dump-config` does and loaded back.
//!
//! Input: the TOML text, optionally followed by a line `%%` and environment lines `NAME=value`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use regent::config::{Config, Overrides};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (toml, env_text) = text.split_once("\n%%\n").unwrap_or((text, ""));
    let env: Vec<(&str, &str)> = env_text.lines().filter_map(|l| l.split_once('=')).collect();
    let lookup = |name: &str| env.iter().rev().find(|(k, _)| *k == name).map(|(_, v)| v.to_string());
    let Ok(config) = Config::load_toml_str(toml, &lookup, &Overrides::default()) else { return };
    // A valid configuration dumps to TOML that loads back to the same configuration (secrets are masked).
    let dumped = config.to_toml();
    let again = Config::load_toml_str(&dumped, &|_| None, &Overrides::default())
        .unwrap_or_else(|e| panic!("the dump of a valid config does not load: {e}\n{dumped}"));
    assert_eq!(again.to_toml(), dumped);
});
