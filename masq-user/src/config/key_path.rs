//! TOML errors as one line naming the key path (`uplink[1].address`) where the parser stopped.

use super::*;

/// Turns a TOML syntax / unknown key / type error into one line naming the key and position.
pub(super) fn toml_error(text: &str, e: &toml::de::Error) -> ConfigError {
    let message = e
        .message()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
        .replace('`', "\"");
    let Some(span) = e.span() else {
        return ConfigError::new("config", message);
    };
    let (line, column) = line_col(text, span.start);
    let key = key_path_at(text, span.start);
    let key = if key.is_empty() { "config".to_owned() } else { key };
    ConfigError::new(key, format!("{message} (line {line}, column {column})"))
}

/// 1-based line and column (in characters) of byte `offset`.
pub(super) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |p| p + 1);
    (line, before[line_start..].chars().count() + 1)
}

/// The key path (`uplink[1].address`) of the line holding byte `offset`, found by following the
/// table headers before it. Good enough for masq's flat config; it does not parse TOML.
pub(super) fn key_path_at(text: &str, offset: usize) -> String {
    let mut table = String::new();
    let mut array_counts: Vec<(String, usize)> = Vec::new();
    let mut last_key: Option<String> = None;
    let mut end = 0;
    for line in text.split_inclusive('\n') {
        end += line.len();
        let at_offset = offset < end;
        let trimmed = line.trim();
        if let Some((name, is_array)) = table_header(trimmed) {
            table = if is_array {
                let index = match array_counts.iter_mut().find(|(n, _)| *n == name) {
                    Some((_, count)) => {
                        *count += 1;
                        *count - 1
                    }
                    None => {
                        array_counts.push((name.clone(), 1));
                        0
                    }
                };
                format!("{name}[{index}]")
            } else {
                name
            };
            last_key = None;
            if at_offset {
                return table;
            }
            continue;
        }
        if let Some(key) = line_key(trimmed) {
            last_key = Some(key);
        }
        if at_offset {
            break;
        }
    }
    match last_key {
        Some(key) if table.is_empty() => key,
        Some(key) => format!("{table}.{key}"),
        None => table,
    }
}

/// `[name]` → `(name, false)`, `[[name]]` → `(name, true)`.
pub(super) fn table_header(line: &str) -> Option<(String, bool)> {
    let line = strip_comment(line);
    let (inner, is_array) = if let Some(rest) = line.strip_prefix("[[") {
        (rest.strip_suffix("]]")?, true)
    } else {
        (line.strip_prefix('[')?.strip_suffix(']')?, false)
    };
    let name = normalize_key(inner)?;
    Some((name, is_array))
}

/// The key of a `key = value` line.
pub(super) fn line_key(line: &str) -> Option<String> {
    let (key, _) = line.split_once('=')?;
    normalize_key(key)
}

/// `a . "b"` → `a.b`; `None` if this cannot be a key.
pub(super) fn normalize_key(raw: &str) -> Option<String> {
    let key: String =
        raw.chars().filter(|c| !c.is_whitespace() && *c != '"' && *c != '\'').collect();
    let ok = !key.is_empty()
        && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.');
    ok.then_some(key)
}

pub(super) fn strip_comment(line: &str) -> &str {
    line.split_once('#').map_or(line, |(before, _)| before).trim()
}
