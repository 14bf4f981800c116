//! The daemons' TOML configurations (ntmd, dc, nps, relay) as their `--config` loaders parse them:
//! any text gives a configuration or an error, never a panic; an error that names a line names
//! one of the text's lines.
#![no_main]
use host::config::Load as _;
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fn line_ok(text: &str, msg: &str) {
    // "<path>:<line>: key: message"
    let Some(rest) = msg.strip_prefix("/nonexistent/fuzz.toml:") else { return };
    let Some((n, _)) = rest.split_once(':') else { return };
    if let Ok(n) = n.parse::<usize>() {
        assert!(n >= 1 && n <= text.lines().count() + 1, "line {n} of {} in {msg:?}", text.lines().count());
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    // A path whose directory does not exist: relative key and certificate files are never found.
    let path = Path::new("/nonexistent/fuzz.toml");
    if let Err(e) = ntmd::config::Config::parse(text, path) {
        line_ok(text, &e.to_string());
    }
    if let Err(e) = ntm_dc::config::Config::parse(text, path) {
        line_ok(text, &e.to_string());
    }
    if let Err(e) = nps::config::Config::parse(text, path) {
        line_ok(text, &e.to_string());
    }
    if let Err(e) = ntm_relay::config::Config::parse(text, path) {
        line_ok(text, &e.to_string());
    }
});
