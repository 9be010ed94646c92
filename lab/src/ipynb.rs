//! Notebook files: reading them, writing them the one way Jupyter does, and reading their cells'
//! sources and outputs, which Jupyter stores either as one string or as a list of lines.

use crate::sys::{At, CliResult};
use serde_json::{json, Value};
use std::path::Path;

/// A notebook read from `path`.
pub fn read(path: &Path) -> CliResult<Value> {
    let text = std::fs::read_to_string(path).at(path)?;
    serde_json::from_str(&text).map_err(|e| format!("{} is not valid notebook JSON: {e}", path.display()))
}

/// Notebook JSON the way Jupyter writes it: one-space indent, sorted keys, final newline.
pub fn to_json(nb: &Value) -> CliResult<String> {
    let mut buf = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(&mut buf, serde_json::ser::PrettyFormatter::with_indent(b" "));
    serde::Serialize::serialize(nb, &mut ser).map_err(|e| e.to_string())?;
    Ok(String::from_utf8(buf).map_err(|e| e.to_string())? + "\n")
}

/// Writes `nb` to `path` (as `to_json`), creating its folder.
pub fn write(path: &Path, nb: &Value) -> CliResult<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).at(dir)?;
    }
    std::fs::write(path, to_json(nb)?).at(path)
}

/// The kernelspec metadata every lab notebook carries.
pub fn kernel_metadata() -> Value {
    json!({
        "kernelspec": {"display_name": "Rust (lab)", "language": "rust", "name": "rust"},
        "language_info": {"codemirror_mode": "rust", "file_extension": ".rs", "mimetype": "text/rust", "name": "Rust", "pygment_lexer": "rust", "version": ""}
    })
}

/// A notebook text field, stored either as one string or as a list of lines.
pub fn join_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts.iter().filter_map(Value::as_str).collect(),
        _ => String::new(),
    }
}

/// A notebook cell's source as one string.
pub fn source_text(cell: &Value) -> String {
    join_text(&cell["source"])
}

/// The plain text of a stream or display output.
pub fn output_text(out: &Value) -> String {
    match out["output_type"].as_str() {
        Some("stream") => join_text(&out["text"]),
        Some("execute_result") | Some("display_data") => join_text(&out["data"]["text/plain"]),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notebooks_are_written_as_jupyter_writes_them() {
        let nb = json!({"cells": [], "metadata": {"b": 1, "a": [1]}, "nbformat": 4});
        assert_eq!(
            to_json(&nb).unwrap(),
            "{\n \"cells\": [],\n \"metadata\": {\n  \"a\": [\n   1\n  ],\n  \"b\": 1\n },\n \"nbformat\": 4\n}\n"
        );
    }

    #[test]
    fn sources_and_outputs_read_as_one_string_or_a_list() {
        assert_eq!(source_text(&json!({"source": ["a\n", "b"]})), "a\nb");
        assert_eq!(source_text(&json!({"source": "a\nb"})), "a\nb");
        assert_eq!(output_text(&json!({"output_type": "stream", "text": ["x"]})), "x");
        assert_eq!(output_text(&json!({"output_type": "display_data", "data": {"text/plain": "y"}})), "y");
        assert_eq!(output_text(&json!({"output_type": "error"})), "");
    }
}
