//! The read-side configuration: a YAML file of `---`-separated documents (`read_sides::parse_yaml`), or, when the
//! input starts with `ENV\n`, `COS_READ_SIDE_CONFIG__<SETTING>__<ID>=value` lines (`read_sides::load`).
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use regent::config::read_sides;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let loaded = match text.strip_prefix("ENV\n") {
        Some(env) => {
            let vars: Vec<(String, String)> = env
                .lines()
                .filter_map(|l| l.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            read_sides::load("", &vars)
        }
        None => read_sides::parse_yaml(Path::new("fuzz.yaml"), text),
    };
    if let Ok(read_sides) = loaded {
        for settings in &read_sides {
            assert!(read_sides::is_valid_id(&settings.id), "invalid id accepted: {:?}", settings.id);
            let _ = settings.endpoint();
        }
    }
});
