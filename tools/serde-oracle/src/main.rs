//! Reads hex-encoded byte strings, one per line, on stdin and prints, for each, one JSON line
//! with serde_json's verdict for `PolicyDocument` (the aa-core derives) from `from_slice` and
//! from `from_str`: `{"ok": "<hex of to_vec>"}` or `{"err": "<message>"}`.
use serde::{Deserialize, Serialize};
use std::io::{BufRead, Write};

#[derive(Serialize, Deserialize)]
struct PolicyDocument {
    version: u32,
    name: String,
    rules: Vec<PolicyRule>,
    #[serde(default)]
    enforcement_mode: EnforcementMode,
}

#[derive(Serialize, Deserialize)]
struct PolicyRule {
    action_pattern: String,
    decision: PolicyDecision,
}

#[derive(Serialize, Deserialize)]
enum PolicyDecision {
    Allow,
    Deny,
    RequireApproval,
}

#[derive(Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
enum EnforcementMode {
    #[default]
    Enforce,
    Observe,
    Disabled,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("input lines are hex"))
        .collect()
}

fn verdict(result: Result<PolicyDocument, String>) -> serde_json::Value {
    match result {
        Ok(document) => serde_json::json!({ "ok": hex(&serde_json::to_vec(&document).unwrap()) }),
        Err(message) => serde_json::json!({ "err": message }),
    }
}

fn main() {
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    for line in std::io::stdin().lock().lines() {
        let bytes = unhex(line.unwrap().trim());
        let slice = serde_json::from_slice::<PolicyDocument>(&bytes).map_err(|e| e.to_string());
        let text = match std::str::from_utf8(&bytes) {
            Ok(text) => serde_json::from_str::<PolicyDocument>(text).map_err(|e| e.to_string()),
            Err(e) => Err(format!("not UTF-8: {e}")),
        };
        let row = serde_json::json!({ "slice": verdict(slice), "str": verdict(text) });
        writeln!(out, "{row}").unwrap();
    }
}
